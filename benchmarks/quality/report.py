"""Markdown: cells (mean ± std over seeds), the standard and views tables, and the delimited
section of the results file that each mode replaces in place."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from bivrec_tf.io_utils import write_text_atomic

from benchmarks.quality.roster import COLUMNS, LABELS


def mean_std(values: Sequence[float], digits: int = 4) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def header(cols: Sequence[str]) -> str:
  return "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|"


def col_title(c: str) -> str:
  return c.replace("recall", "Recall").replace("ndcg", "NDCG")


def standard_table(by_model: Dict[str, List[dict]], order: Sequence[str]) -> str:
  """Markdown: Popularity, baselines, BivRec, ablations; mean ± std over seeds."""
  key = "ndcg@20"
  lines = [
    header(
      [
        "model",
        *map(col_title, COLUMNS),
        "ΔNDCG@20 vs BivRec",
        "seeds",
        "train time (s)",
        "best epoch / run",
      ]
    )
  ]
  any_rec = next(iter(by_model.values()))[0]
  pop = any_rec["test_rows"]["Popularity"]
  lines.append(
    "| Popularity | " + " | ".join(f"{pop[c]:.4f}" for c in COLUMNS) + " | | – | – | – |"
  )
  ref = np.mean([r["test"][key] for r in by_model["bivrec"]]) if "bivrec" in by_model else None
  best = max(np.mean([r["test"][key] for r in recs]) for recs in by_model.values())
  for name in order:
    if name not in by_model:
      continue
    recs = by_model[name]
    cells = []
    for c in COLUMNS:
      cell = mean_std([r["test"][c] for r in recs])
      if c == key and np.mean([r["test"][key] for r in recs]) == best:
        cell = f"**{cell}**"
      cells.append(cell)
    mean_key = np.mean([r["test"][key] for r in recs])
    delta = "" if ref is None or name == "bivrec" else f"{100 * (mean_key / ref - 1):+.1f} %"
    label = f"**{LABELS[name]}**" if name == "bivrec" else LABELS[name]
    epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in recs)
    lines.append(
      f"| {label} `{name}` | "
      + " | ".join(cells)
      + f" | {delta} | {len(recs)} | {mean_std([r['fit_seconds'] for r in recs], 0)} "
      f"| {epochs} |"
    )
  return "\n".join(lines)


def views_table(recs: List[dict]) -> str:
  """BivRec's own views scored alone and fused (test, mean ± std)."""

  def rows(rec):
    return {
      ("fused (w tuned on valid)" if k.startswith("BivRec") else k): v
      for k, v in rec["test_rows"].items()
      if k != "Popularity"
    }

  lines = [header(["BivRec rule", *map(col_title, COLUMNS)])]
  for label in rows(recs[0]):
    lines.append(
      f"| {label} | "
      + " | ".join(mean_std([rows(r)[label][c] for r in recs]) for c in COLUMNS)
      + " |"
    )
  ws = ", ".join(f"{r['fusion_weight']:.1f}" for r in recs)
  return "\n".join(lines) + f"\n\nFusion weight w per seed: {ws}."


def write_section(out: Path, key: str, body: str) -> None:
  """Replaces (or appends) the block between `<!-- BEGIN quality:key -->` and its END marker."""
  import fcntl  # pylint: disable=import-outside-toplevel

  begin, end = f"<!-- BEGIN quality:{key} -->", f"<!-- END quality:{key} -->"
  block = f"{begin}\n{body.rstrip()}\n{end}"
  out.parent.mkdir(parents=True, exist_ok=True)
  lock_path = Path(tempfile.gettempdir()) / (
    "quality-" + re.sub(r"[^A-Za-z0-9]", "_", str(out.resolve())) + ".lock"
  )
  with open(lock_path, "w") as lock:  # concurrent benchmark runs update the same file
    fcntl.flock(lock, fcntl.LOCK_EX)
    text = out.read_text() if out.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
      text = pattern.sub(lambda _: block, text)
    else:
      text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    write_text_atomic(out, text)
