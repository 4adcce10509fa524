"""One markdown row per stored run of several quality-benchmark stores, with the diagnostics.

    python -m benchmarks.screening_table runs/screen/*-standard.json

Screening runs are `python -m benchmarks.quality --quick --tag NAME <train flags>` (one seed each);
this prints, per run: the flags that differ from the default config, best validation NDCG@20,
test NDCG@20 (fused, ID view, MM view), fusion weight, best epoch, the interests' mean pairwise
cosine and largest win share per view, and the cross-view and diversity terms' share of the
gradient on each view's encoder at the best epoch.
"""

import json
import sys
from pathlib import Path
from typing import List

from bivrec_tf.config import Config

NAN = float("nan")


def changed_fields(config: dict) -> str:
  """`field=value` for every config field that differs from Config() (data/run fields skipped)."""
  default = Config().to_dict()
  out = []
  for section in ("model", "loss", "train"):
    for key, value in config[section].items():
      if key in ("seed", "run_dir") or default[section].get(key) == (
        tuple(value) if isinstance(value, list) else value
      ):
        continue
      value = ",".join(map(str, value)) if isinstance(value, list) else value
      out.append(f"{key}={value}")
  return " ".join(out) or "(default)"


def row(store: Path, rec: dict) -> str:
  d = rec.get("diagnostics", {})
  t = rec["test_rows"]
  val = max(rec["val_curve"]) if rec.get("val_curve") else NAN
  if rec["model"] == "late_fusion":
    val = rec["valid"][f"fused@{rec['fusion_weight']:.2f}"]["ndcg@20"]

  def g(key):
    return d.get(key, NAN)

  shares = ", ".join(
    f"{k[len('gshare_') :]} {v:.0%}"
    for k, v in d.items()
    if k.startswith(("gshare_sem", "gshare_alloc", "gshare_div")) and v > 0
  )
  name = store.name.replace("-standard.json", "")
  return (
    f"| {name} | {rec['model']} | {changed_fields(rec['config'])} | {val:.4f} | "
    f"{rec['test']['ndcg@20']:.4f} | {t.get('ID view', {}).get('ndcg@20', NAN):.4f} | "
    f"{t.get('MM view', {}).get('ndcg@20', NAN):.4f} | {rec['fusion_weight']:.1f} | "
    f"{rec['best_epoch']}/{rec['epochs_run']} | {g('cos_id'):.2f} / {g('cos_mm'):.2f} | "
    f"{g('maxwin_id'):.2f} / {g('maxwin_mm'):.2f} | {shares} |"
  )


def main(argv: List[str]) -> int:
  print(
    "| store | model | flags | val NDCG@20 | test NDCG@20 | ID view | MM view | w | best epoch "
    "| cosine id / mm | max win id / mm | cross-view and diversity gradient shares |"
  )
  print("|---" * 12 + "|")
  for path in map(Path, argv):
    for rec in json.loads(path.read_text()):
      print(row(path, rec).replace("nan", "–"))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
