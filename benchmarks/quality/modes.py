"""The four modes (`standard`, `cold`, `noise`, `cost`): each trains or reuses what it needs and
returns the markdown body of its section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bivrec_tf import config as config_lib
from bivrec_tf import train as train_lib

from benchmarks.quality.cold import cold_eval, make_cold_copy
from benchmarks.quality.late_fusion import ensure_late_fusion
from benchmarks.quality.noise import noise_eval
from benchmarks.quality.plots import bar_chart, noise_chart
from benchmarks.quality.provenance import describe_data, provenance
from benchmarks.quality.report import header, mean_std, standard_table, views_table
from benchmarks.quality.roster import LABELS, LATE_FUSION, ORDER
from benchmarks.quality.runs import ensure_runs
from benchmarks.quality.store import Store, data_name, store_name


def run_standard(args, store, models, seeds, overrides, command) -> str:
  trained = [m for m in models if m != LATE_FUSION]
  if LATE_FUSION in models:
    trained += [m for m in ("id_only", "mm_only") if m not in trained]
  ensure_runs(store, trained, args.data, seeds, args.work_dir, overrides)
  if LATE_FUSION in models:
    ensure_late_fusion(store, seeds)
  by_model = store.by_model()
  order = ORDER
  name = data_name(args.data) + (f"_{args.tag}" if args.tag else "")
  png = Path(args.out).parent / f"quality_{name}_ndcg20.png"
  bar_chart(by_model, order, png, f"BivRec, baselines and ablations on {name}")
  body = [
    f"## Quality: baselines and ablations, {name}",
    "",
    provenance(command, store.records, describe_data(args.data)),
    "",
    standard_table(by_model, order),
    "",
    "Baselines and ablations are presets of the same model (`bivrec_tf/presets.py`); "
    "two-view presets report the fused row (w tuned on validation), single-view presets "
    "their own view. ΔNDCG@20 is relative to BivRec's mean; bold = best NDCG@20.",
    "",
    f"![NDCG@20]({png.name})",
  ]
  if "bivrec" in by_model:
    body += [
      "",
      "BivRec's views, scored alone inside the jointly trained model:",
      "",
      views_table(by_model["bivrec"]),
    ]
  return "\n".join(body)


def run_cold(args, store, models, seeds, overrides, command) -> str:
  src = train_lib.load_data(config_lib.Config().replace(data={"data": args.data})).path
  name = data_name(args.data)
  cold_dir = make_cold_copy(
    src, args.work_dir / "data" / f"{name}-cold{args.cold_share:g}", args.cold_share, seed=0
  )
  ensure_runs(
    store,
    models,
    str(cold_dir),
    seeds,
    args.work_dir,
    overrides,
    post=lambda r: {"cold": cold_eval(r)},
  )
  meta = json.loads((cold_dir / "dataset.json").read_text())
  by_model = store.by_model()
  n = next(iter(by_model.values()))[0]["cold"]["num_targets"]
  cols = ["Recall@20", "Recall@50", "NDCG@20"]
  lines = [
    header(
      [
        "model",
        "scoring rule",
        *[f"held-out {c}" for c in cols],
        *[f"warm {c}" for c in cols],
        "seeds",
      ]
    )
  ]
  for model in dict.fromkeys(["bivrec", *ORDER]):
    if model not in by_model:
      continue
    recs = by_model[model]
    rules = [k for k in recs[0]["cold"] if k != "num_targets"]
    for rule in rules:
      cells = [
        mean_std([r["cold"][rule][part][c.lower()] for r in recs])
        for part in ("held_out", "warm")
        for c in cols
      ]
      lines.append(f"| {LABELS[model]} | {rule} | " + " | ".join(cells) + f" | {len(recs)} |")
  h = meta["cold_holdout"]
  body = [
    f"## Cold-start items, {name}",
    "",
    provenance(
      command,
      store.records,
      describe_data(args.data) + f", with {h['num_items']} of its items seen in training "
      f"({100 * h['share']:g} %, chosen at random, seed {h['seed']}) held out of "
      "training entirely: removed from every training example and every history, "
      "kept as valid/test targets",
    ),
    "",
    "\n".join(lines),
    "",
    f"Test targets: {n['held_out']} are held-out items, {n['warm']} are warm (seen in "
    "training). The fused rule scores items never seen in training by the MM view alone "
    "(DESIGN.md section 3), everything else by w·s_id + (1-w)·s_mm with w tuned on "
    "validation. An untrained ID embedding ranks held-out items essentially at random "
    "(and sampled-negative training pushes them down).",
  ]
  return "\n".join(body)


def run_noise(args, store, models, seeds, overrides, command) -> str:
  sigmas = tuple(float(s) for s in args.noise_sigmas.split(","))
  donor = Store(args.work_dir / f"{store_name(args)}-standard.json")
  ensure_runs(
    store,
    models,
    args.data,
    seeds,
    args.work_dir,
    overrides,
    post=lambda r: {"noise": noise_eval(r, sigmas)},
    donor=donor,
  )
  by_model = store.by_model()
  name = data_name(args.data)
  sig = list(next(iter(by_model.values()))[0]["noise"])
  lines = [header(["model", "scoring rule", *[f"σ={s}" for s in sig]])]
  for model in [
    "bivrec",
    "mm_seq",
    "mm_only",
    *[m for m in by_model if m not in ("bivrec", "mm_seq", "mm_only")],
  ]:
    if model not in by_model:
      continue
    recs = by_model[model]
    rules = [k for k in recs[0]["noise"][sig[0]] if k != "w re-tuned"]
    for rule in rules:
      cells = [mean_std([r["noise"][s][rule]["ndcg@20"] for r in recs]) for s in sig]
      lines.append(f"| {LABELS[model]} | {rule} | " + " | ".join(cells) + " |")
    if "w re-tuned" in recs[0]["noise"][sig[0]]:
      lines.append(
        f"| {LABELS[model]} | w re-tuned on noisy valid | "
        + " | ".join(", ".join(f"{r['noise'][s]['w re-tuned']:.1f}" for r in recs) for s in sig)
        + " |"
      )
  png = Path(args.out).parent / f"quality_{name}_noise.png"
  noise_chart(by_model, png, f"Test-time feature noise, {name}")
  body = [
    f"## Noisy multimodal features, {name}",
    "",
    provenance(command, store.records, describe_data(args.data)),
    "",
    "Test NDCG@20 after adding N(0, σ²) to every present entry of the standardized "
    "feature tables of the trained model (history and candidate items alike), test time "
    "only; σ in units of the per-dimension feature std. `fused` keeps the w tuned on "
    "clean validation; `fused, w re-tuned` picks w again on equally noisy validation.",
    "",
    "\n".join(lines),
    "",
    f"![noise]({png.name})",
  ]
  return "\n".join(body)


def cost_stats(rec: dict) -> dict:
  curve = rec["val_curve"]
  ends = rec["epoch_end_seconds"]
  if len(ends) != len(curve):  # no event file: pro-rata
    ends = [rec["fit_seconds"] * (i + 1) / len(curve) for i in range(len(curve))]
  best = int(np.argmax(curve))
  return {
    "best_val": curve[best],
    "best_epoch": best + 1,
    "time_to_best": ends[best],
    "sec_per_epoch": ends[-1] / len(curve),
    "fit": rec["fit_seconds"],
    "curve": curve,
    "ends": ends,
  }


def run_cost(args, store, models, seeds, overrides, command) -> str:
  ensure_runs(store, models, args.data, seeds, args.work_dir, overrides)
  by_model = store.by_model()
  name = data_name(args.data)
  lines = [
    header(
      [
        "model",
        "best valid NDCG@20",
        "epochs to best",
        "time to best (s)",
        "s / epoch",
        "total fit (s)",
        "test NDCG@20",
        "seeds",
      ]
    )
  ]
  by_model = {m: recs for m, recs in by_model.items() if m in models}
  stats = {m: [cost_stats(r) for r in recs] for m, recs in by_model.items()}
  for model in ["sasrec", "bivrec", *[m for m in by_model if m not in ("sasrec", "bivrec")]]:
    if model not in stats:
      continue
    st, recs = stats[model], by_model[model]
    lines.append(
      f"| {LABELS[model]} | {mean_std([s['best_val'] for s in st])} | "
      f"{mean_std([s['best_epoch'] for s in st], 1)} | "
      f"{mean_std([s['time_to_best'] for s in st], 0)} | "
      f"{mean_std([s['sec_per_epoch'] for s in st], 1)} | "
      f"{mean_std([s['fit'] for s in st], 0)} | "
      f"{mean_std([r['test']['ndcg@20'] for r in recs])} | {len(recs)} |"
    )
  notes = []
  if "bivrec" in stats and "sasrec" in stats:
    for sb, ss in zip(stats["bivrec"], stats["sasrec"]):
      passed = [i for i, v in enumerate(sb["curve"]) if v >= ss["best_val"]]
      if passed:
        i = passed[0]
        notes.append(
          f"BivRec passed SASRec's best validation NDCG@20 ({ss['best_val']:.4f}, "
          f"reached by SASRec after {ss['best_epoch']} epochs / "
          f"{ss['time_to_best']:.0f} s) after {i + 1} epoch(s) / {sb['ends'][i]:.0f} s"
        )
      else:
        notes.append(
          f"BivRec never reached SASRec's best validation NDCG@20 ({ss['best_val']:.4f})"
        )
  body = [
    f"## Training cost, {name}",
    "",
    provenance(command, store.records, describe_data(args.data)),
    "",
    "Epochs and wall time until the best validation NDCG@20 (the restored checkpoint); "
    "times are read from the TensorBoard event file of each run (end of each epoch, "
    "validation included).",
    "",
    "\n".join(lines),
    "",
  ]
  body += [f"- seed pair {i + 1}: {n}." for i, n in enumerate(notes)]
  return "\n".join(body)
