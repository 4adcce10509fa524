"""The paper-style quality report: baselines, ablations and BivRec's practical advantages.

    python -m benchmarks.quality --data synthetic --models all --quick
    python -m benchmarks.quality --data data_cache/scientific --models all --seeds 3 --max-len 20
    python -m benchmarks.quality --data synthetic --mode cold      # 10 % of items held out
    python -m benchmarks.quality --data synthetic --mode noise     # noisy features at test time
    python -m benchmarks.quality --data synthetic --mode cost      # time to best, vs SASRec

Every model is a preset of the one BivRecModel (`bivrec_tf/presets.py`) trained by
`bivrec_tf.train.run` (same data pipeline, early stopping on validation NDCG@20, fusion weight
tuned on validation only, full-ranking test metrics), in a fresh run directory under
`--work-dir`, without export. Any `python -m bivrec_tf.train` flag not listed here (`--max-len
20`, `--epochs 1`, `--lambda-sem 0.5`) overrides every model's config after its preset.

Modes (each writes its own delimited section of `--out`, replaced in place on a rerun):

- `standard`: test Recall/NDCG@{10,20,50} (mean ± std over seeds) and training time per model:
  Popularity, SASRec, ComiRec-SA, MM-seq, BivRec and the ablations; two-view presets report the
  fused row, single-view presets their own view; plus a bar chart of NDCG@20
  (`docs/quality_<data>_ndcg20.png`).
- `cold`: a copy of the dataset with `--cold-share` of the items seen in training removed from
  every training example and from every history (they stay as valid/test targets); recall on the
  test targets that are held-out items, per view (ID view, MM view, fused) and per model.
- `noise` (reuses matching `standard` runs): Gaussian noise of std sigma (in units of the
  per-dimension std: features are standardized) added to every present multimodal feature row
  after training, at test time only; test NDCG@20 per view and fused (w kept from clean
  validation, and re-tuned on noisy validation).
- `cost`: wall time and epochs until the best validation NDCG@20, BivRec against SASRec, and how
  long BivRec needs to pass SASRec's best validation score (shares its runs with `standard`).

Per-run records are kept in `<work-dir>/<data>[-<tag>]-<mode>.json`; a rerun skips (model, seed)
pairs it already has (`--fresh` to start over), so seeds can be added later and a killed run
resumes. Tables are rendered from all records in that store.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np
import tensorflow as tf

from bivrec_tf import config as config_lib
from bivrec_tf import train as train_lib
from bivrec_tf.evaluate import Ranker, best_fusion, evaluate, rank_metrics
from bivrec_tf.io_utils import write_text_atomic
from bivrec_tf.late_fusion import LateFusion
from bivrec_tf.presets import (ABLATIONS, BASELINES, DESIGN_ABLATIONS, PRESETS, VARIANTS,
                               apply_preset)
from input_pipelines import NUM_RESERVED
from input_pipelines.dataset import PreparedDataset, eval_dataset
from input_pipelines.prepared import write_prepared

MODES = ("standard", "cold", "noise", "cost")
# `late_fusion` is not a preset: the `id_only` and `mm_only` runs of the same seed, fused.
LATE_FUSION = "late_fusion"
ALL_MODELS = ("bivrec",) + BASELINES + (LATE_FUSION,) + ABLATIONS + VARIANTS
ORDER = (*BASELINES, LATE_FUSION, "bivrec", *ABLATIONS, *VARIANTS, *DESIGN_ABLATIONS)
DEFAULT_MODELS = {"standard": ALL_MODELS, "cold": ("bivrec", "sasrec", "mm_seq"),
                  "noise": ("bivrec", "mm_seq"), "cost": ("bivrec", "sasrec")}
LABELS = {
    "bivrec": "BivRec", "bivrec_design": "BivRec, DESIGN.md formulation (all modules on)",
    "sasrec": "SASRec", "comirec_sa": "ComiRec-SA", "mm_seq": "MM-seq (ID-free SASRec)",
    LATE_FUSION: "Late fusion (ID view and MM view trained separately)",
    "id_only": "BivRec, ID view only", "mm_only": "BivRec, MM view only",
    "single_interest": "BivRec, one interest per view (module 2 off)",
    "no_cross_view": "BivRec, no cross-view losses (module 3 off)",
    "multi_scale": "BivRec + multi-scale (P={1,2,4})", "encoder": "BivRec + Transformer block",
    "gaussian": "BivRec + Gaussian prior", "cluster": "BivRec + cluster rounds (R=2)",
    "no_sem": "BivRec, no L_sem", "no_alloc": "BivRec, no L_alloc",
    "design_id_only": "DESIGN formulation, ID view only",
    "design_mm_only": "DESIGN formulation, MM view only",
    "design_single_scale": "DESIGN formulation, single scale (P={1})",
    "design_no_gaussian": "DESIGN formulation, no Gaussian prior",
    "design_no_cluster": "DESIGN formulation, no cluster rounds (R=0)",
    "design_no_sem": "DESIGN formulation, no L_sem",
    "design_no_alloc": "DESIGN formulation, no L_alloc"}
KS = (10, 20, 50)
COLUMNS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]
NOISE_SIGMAS = (0.0, 0.25, 0.5, 1.0, 2.0)
BASE_SEED = 42
COMMAND = ["python -m benchmarks.quality"]  # the running command line, recorded with each run


# --- configs and runs ----------------------------------------------------------------------------

def model_config(name: str, data: str, seed: int, run_dir: Path,
                 overrides: Optional[argparse.Namespace] = None) -> config_lib.Config:
  """Preset `name` on `data`, no export, given seed and run dir; `overrides` (parsed train flags)
  applied after the preset."""
  cfg = config_lib.Config().replace(data={"data": str(data)}, export={"export": False})
  cfg = apply_preset(cfg, name)
  if overrides is not None:
    cfg = config_lib.from_flags(overrides, cfg)
  return cfg.replace(train={"seed": seed, "run_dir": str(run_dir)})


def main_row(summary: dict) -> Dict[str, float]:
  """The model's own test row: fused BivRec for two views, else the single view's row."""
  rows = {k: v for k, v in summary["test"].items() if k != "Popularity"}
  fused = [k for k in rows if k.startswith("BivRec")]
  return rows[fused[0]] if fused else next(iter(rows.values()))


def epoch_end_times(run_dir: Path) -> List[float]:
  """Seconds from the start of `fit` to the end of each epoch (validation included), read from
  the run's TensorBoard event file (its first event is written when training begins)."""
  files = sorted((run_dir / "tensorboard" / "train").glob("events.out.tfevents*"))
  if not files:
    return []
  start, ends = None, {}
  for event in tf.compat.v1.train.summary_iterator(str(files[0])):
    if start is None:
      start = event.wall_time
    for value in event.summary.value:
      if value.tag == "epoch_loss":
        ends[int(event.step)] = event.wall_time - start
  return [ends[e] for e in sorted(ends)]


def train_one(name: str, data: str, seed: int, work_dir: Path,
              overrides: Optional[argparse.Namespace]) -> dict:
  """Trains preset `name` once in a fresh run directory; returns a JSON-able record."""
  runs = work_dir / "runs"
  runs.mkdir(parents=True, exist_ok=True)
  run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-s{seed}-", dir=runs))
  cfg = model_config(name, data, seed, run_dir, overrides)
  tf.keras.backend.clear_session()
  summary = train_lib.run(cfg, verbose=0)
  monitor = f"val_ndcg{cfg.eval.monitor_k}"
  record = {
      "model": name, "seed": seed, "run_dir": str(run_dir), "config": cfg.to_dict(),
      "test": main_row(summary), "test_rows": summary["test"],
      "fusion_weight": summary["fusion_weight"], "best_epoch": summary["best_epoch"],
      "epochs_run": summary["epochs_run"], "fit_seconds": summary["fit_seconds"],
      "wall_seconds": summary["wall_seconds"], "max_len": summary["max_len"],
      "val_curve": [e[monitor] for e in summary["epoch_logs"]],
      "valid": summary["valid"], "diagnostics": summary.get("diagnostics", {}),
      "epoch_end_seconds": epoch_end_times(run_dir),
      "finished": datetime.datetime.now().isoformat(timespec="seconds"),
  }
  return record


def load_trained(record: dict, clear: bool = True):
  """(model with the run's best weights, its dataset, config) for post-hoc evaluation."""
  cfg = config_lib.Config.from_dict(record["config"])
  ds = train_lib.load_data(cfg)
  if clear:
    tf.keras.backend.clear_session()
  model = train_lib.build_model(cfg, ds, record["max_len"])
  model.load_weights(str(Path(record["run_dir"]) / "checkpoints" / "best")).expect_partial()
  return model, ds, cfg


def late_fusion_record(id_rec: dict, mm_rec: dict) -> dict:
  """The `late_fusion` record of one seed: the separately trained `id_only` and `mm_only` runs,
  fused by BivRec's rule with w tuned on validation (same grid), then tested once."""
  id_model, ds, cfg = load_trained(id_rec)
  mm_model, _, _ = load_trained(mm_rec, clear=False)
  fused = LateFusion(id_model, mm_model)
  ev = cfg.eval
  ranker = Ranker(fused, max(ev.ks), ev.item_chunk, ev.exclude_history)
  grid = [float(w) for w in np.linspace(0.0, 1.0, ev.fusion_grid)]
  max_len = id_rec["max_len"]
  valid = evaluate(ranker, eval_dataset(ds, "valid", max_len, ev.eval_batch_size), KS, grid)
  w = best_fusion(valid, f"ndcg@{ev.monitor_k}")
  test = evaluate(ranker, eval_dataset(ds, "test", max_len, ev.eval_batch_size), KS, [w])
  rows = {"Popularity": id_rec["test_rows"]["Popularity"], "ID view": test["id"],
          "MM view": test["mm"], f"Late fusion (w={w:.2f})": test[f"fused@{w:.2f}"]}
  return {
      "model": LATE_FUSION, "seed": id_rec["seed"], "run_dir": id_rec["run_dir"],
      "parts": [id_rec["run_dir"], mm_rec["run_dir"]], "config": id_rec["config"],
      "test": test[f"fused@{w:.2f}"], "test_rows": rows, "fusion_weight": w,
      "valid": valid, "best_epoch": max(id_rec["best_epoch"], mm_rec["best_epoch"]),
      "epochs_run": max(id_rec["epochs_run"], mm_rec["epochs_run"]),
      "fit_seconds": id_rec["fit_seconds"] + mm_rec["fit_seconds"],
      "wall_seconds": id_rec["wall_seconds"] + mm_rec["wall_seconds"], "max_len": max_len,
      "val_curve": [], "finished": datetime.datetime.now().isoformat(timespec="seconds"),
  }


def ensure_late_fusion(store: "Store", seeds: Sequence[int]) -> None:
  """Adds the `late_fusion` record of every seed whose `id_only` and `mm_only` runs exist."""
  for seed in seeds:
    runs = {r["model"]: r for r in store.records if r["seed"] == seed}
    if store.has(LATE_FUSION, seed) or not {"id_only", "mm_only"} <= set(runs):
      continue
    record = late_fusion_record(runs["id_only"], runs["mm_only"])
    record["command"] = COMMAND[0]
    store.add(record)
    print(f"[quality] late_fusion seed {seed}: NDCG@20 {record['test']['ndcg@20']:.4f} "
          f"(w={record['fusion_weight']:.1f})", flush=True)


# --- the record store ----------------------------------------------------------------------------

class Store:
  """Per-run records of one (data, tag, mode) in a JSON file, written after every run."""

  def __init__(self, path: Path, fresh: bool = False):
    self.path = path
    self.records: List[dict] = []
    if path.exists() and fresh:
      os.replace(path, path.with_suffix(".json.old"))  # the previous store is kept aside
    elif path.exists():
      self.records = json.loads(path.read_text())

  def has(self, model: str, seed: int) -> bool:
    return any(r["model"] == model and r["seed"] == seed for r in self.records)

  def add(self, record: dict) -> None:
    """Adds (or replaces) one record; merges with records other processes wrote meanwhile, so
    several benchmark runs can share one store."""
    import fcntl  # pylint: disable=import-outside-toplevel
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{self.path}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      on_disk = json.loads(self.path.read_text()) if self.path.exists() else []
      merged = {(r["model"], r["seed"]): r for r in [*on_disk, *self.records]}
      merged[(record["model"], record["seed"])] = record
      self.records = list(merged.values())
      write_text_atomic(self.path, json.dumps(self.records, indent=1, default=float))

  def by_model(self) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for r in sorted(self.records, key=lambda r: r["seed"]):
      out.setdefault(r["model"], []).append(r)
    return out


# --- cold-start dataset --------------------------------------------------------------------------

def read_split(ds: PreparedDataset, split: str):
  """[(history list, targets list)] of a split, in file order."""
  spec = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}
  out = []
  for batch in tf.data.TFRecordDataset(str(ds.split_path(split))).batch(8192):
    parsed = tf.io.parse_example(batch, spec)
    hist = tf.RaggedTensor.from_sparse(parsed["history"]).to_list()
    tgt = tf.RaggedTensor.from_sparse(parsed["target"]).to_list()
    out += list(zip(hist, tgt))
  return out


def make_cold_copy(src, out_dir: Path, share: float = 0.1, seed: int = 0) -> Path:
  """A copy of the prepared dataset `src` in which `share` of the items seen in training are held
  out: removed from every train example (as history item or target; examples left without
  target or history are dropped) and from every valid/test history, kept as valid/test targets.
  The held-out item indices are listed in dataset.json under `cold_holdout.items`."""
  out_dir = Path(out_dir)
  if (out_dir / "dataset.json").is_file():
    return out_dir
  ds = PreparedDataset.load(src)
  rng = np.random.default_rng(seed)
  warm = np.flatnonzero(ds.seen_in_train)
  held = np.sort(rng.choice(warm, size=max(1, int(round(share * len(warm)))), replace=False))
  is_held = np.zeros(ds.vocab_size, bool)
  is_held[held] = True

  def strip(examples, train: bool):
    kept = []
    for history, targets in examples:
      history = [i for i in history if not is_held[i]]
      if train:
        targets = [i for i in targets if not is_held[i]]
      if history and targets:
        kept.append((history, targets))
    return kept

  splits = {s: strip(read_split(ds, s), s == "train") for s in ds.splits}
  features = {m: (ds.features[m][NUM_RESERVED:], ds.present[m][NUM_RESERVED:])
              for m in ds.features}
  meta = {k: ds.meta[k] for k in ("source", "protocol", "recommended_max_len") if k in ds.meta}
  meta["cold_holdout"] = {"source": str(ds.path), "share": share, "seed": seed,
                          "num_items": int(len(held)), "items": held.tolist()}
  return write_prepared(out_dir, list(ds.vocab[NUM_RESERVED:]), features, splits, meta,
                        overwrite=out_dir.exists())


def topk_per_rule(model, ds: PreparedDataset, cfg: config_lib.Config, max_len: int,
                  weights: Sequence[float], split: str = "test"):
  """({rule: top-k ids `[N, kmax]`}, targets `[N, T]`) over a split."""
  ev = cfg.eval
  ranker = Ranker(model, max(ev.ks), ev.item_chunk, ev.exclude_history)
  ranker.refresh()
  tops: Dict[str, list] = {}
  targets = []
  for batch in eval_dataset(ds, split, max_len, ev.eval_batch_size):
    for rule, top in ranker.topk(batch["history"], weights).items():
      tops.setdefault(rule, []).append(top)
    targets.append(batch["targets"].numpy())
  width = max(t.shape[1] for t in targets)
  targets = np.concatenate([np.pad(t, [(0, 0), (0, width - t.shape[1])]) for t in targets])
  return {r: np.concatenate(t) for r, t in tops.items()}, targets


def cold_eval(record: dict) -> dict:
  """Test metrics of every scoring rule on held-out-item targets and on warm targets."""
  model, ds, cfg = load_trained(record)
  held = np.zeros(ds.vocab_size, bool)
  held[ds.meta["cold_holdout"]["items"]] = True
  w = record["fusion_weight"]
  tops, targets = topk_per_rule(model, ds, cfg, record["max_len"], [w])
  safe = np.clip(targets, 0, ds.vocab_size - 1)
  sel = {"held_out": held[safe], "warm": ds.seen_in_train[safe]}
  out = {}
  for rule, top in tops.items():
    label = {"id": "ID view", "mm": "MM view"}.get(rule, "fused")
    out[label] = {part: rank_metrics(top, np.where(mask, targets, 0), KS)
                  for part, mask in sel.items()}
  out["num_targets"] = {part: int(mask.sum()) for part, mask in sel.items()}
  return out


# --- noisy features ------------------------------------------------------------------------------

def noise_eval(record: dict, sigmas: Sequence[float] = NOISE_SIGMAS) -> dict:
  """Test NDCG/Recall per rule with N(0, sigma^2) added to every present feature entry of the
  trained model's (non-trainable) feature tables; clean tables restored afterwards."""
  model, ds, cfg = load_trained(record)
  if "mm" not in model.views:
    raise ValueError(f"{record['model']}: noise mode needs a model with the MM view")
  ev = cfg.eval
  max_len = record["max_len"]
  tower = model.views["mm"].tower
  clean = {m: tower.tables[m].numpy() for m in tower.modalities}
  rng = np.random.default_rng(record["seed"])
  ranker = Ranker(model, max(ev.ks), ev.item_chunk, ev.exclude_history)
  test = eval_dataset(ds, "test", max_len, ev.eval_batch_size)
  valid = eval_dataset(ds, "valid", max_len, ev.eval_batch_size)
  two_views = len(model.view_names) == 2
  grid = [float(w) for w in np.linspace(0.0, 1.0, ev.fusion_grid)]
  w = record["fusion_weight"]
  out = {}
  try:
    for sigma in sigmas:
      for m, table in clean.items():
        present = tower.present_masks[m].numpy()[:, None]
        noise = rng.normal(0.0, sigma, table.shape).astype(np.float32) * present
        tower.tables[m].assign(table + noise)
      res = evaluate(ranker, test, KS, [w] if two_views else [])
      row = {{"id": "ID view", "mm": "MM view"}.get(r, "fused"): v for r, v in res.items()}
      if two_views:
        w_noisy = best_fusion(evaluate(ranker, valid, KS, grid), f"ndcg@{ev.monitor_k}")
        retuned = evaluate(ranker, test, KS, [w_noisy])
        row["fused, w re-tuned"] = retuned[f"fused@{w_noisy:.2f}"]
        row["w re-tuned"] = w_noisy
      out[f"{sigma:g}"] = row
  finally:
    for m, table in clean.items():
      tower.tables[m].assign(table)
  return out


# --- formatting ----------------------------------------------------------------------------------

def mean_std(values: Sequence[float], digits: int = 4) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def header(cols: Sequence[str]) -> str:
  return ("| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")


def col_title(c: str) -> str:
  return c.replace("recall", "Recall").replace("ndcg", "NDCG")


def standard_table(by_model: Dict[str, List[dict]], order: Sequence[str]) -> str:
  """Markdown: Popularity, baselines, BivRec, ablations; mean ± std over seeds."""
  key = "ndcg@20"
  lines = [header(["model", *map(col_title, COLUMNS), "ΔNDCG@20 vs BivRec", "seeds",
                   "train time (s)", "best epoch / run"])]
  any_rec = next(iter(by_model.values()))[0]
  pop = any_rec["test_rows"]["Popularity"]
  lines.append("| Popularity | " + " | ".join(f"{pop[c]:.4f}" for c in COLUMNS) +
               " | | – | – | – |")
  ref = (np.mean([r["test"][key] for r in by_model["bivrec"]]) if "bivrec" in by_model
         else None)
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
    lines.append(f"| {label} `{name}` | " + " | ".join(cells) +
                 f" | {delta} | {len(recs)} | {mean_std([r['fit_seconds'] for r in recs], 0)} "
                 f"| {epochs} |")
  return "\n".join(lines)


def views_table(recs: List[dict]) -> str:
  """BivRec's own views scored alone and fused (test, mean ± std)."""
  def rows(rec):
    return {("fused (w tuned on valid)" if k.startswith("BivRec") else k): v
            for k, v in rec["test_rows"].items() if k != "Popularity"}
  lines = [header(["BivRec rule", *map(col_title, COLUMNS)])]
  for label in rows(recs[0]):
    lines.append(f"| {label} | " + " | ".join(
        mean_std([rows(r)[label][c] for r in recs]) for c in COLUMNS) + " |")
  ws = ", ".join(f"{r['fusion_weight']:.1f}" for r in recs)
  return "\n".join(lines) + f"\n\nFusion weight w per seed: {ws}."


def bar_chart(by_model: Dict[str, List[dict]], order: Sequence[str], path: Path,
              title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = [n for n in order if n in by_model]
  pop = next(iter(by_model.values()))[0]["test_rows"]["Popularity"]["ndcg@20"]
  labels = ["Popularity"] + [LABELS[n] for n in names]
  means = [pop] + [np.mean([r["test"]["ndcg@20"] for r in by_model[n]]) for n in names]
  errs = [0.0] + [np.std([r["test"]["ndcg@20"] for r in by_model[n]], ddof=1)
                  if len(by_model[n]) > 1 else 0.0 for n in names]
  colors = ["#999999"] + ["#d62728" if n == "bivrec" else
                          "#1f77b4" if n in BASELINES else
                          "#2ca02c" if n in VARIANTS else
                          "#9467bd" if n in DESIGN_ABLATIONS else "#ff7f0e" for n in names]
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
  y = np.arange(len(labels))[::-1]
  ax.barh(y, means, xerr=errs, color=colors, capsize=3)
  ax.set_yticks(y, labels)
  for yi, m, e in zip(y, means, errs):
    ax.text(m + e, yi, f"  {m:.4f}", va="center", fontsize=8)
  ax.set_xlabel("test NDCG@20 (full ranking; mean ± std over seeds)")
  ax.set_title(title, fontsize=10)
  ax.set_xlim(0, max(means) * 1.22)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def noise_chart(results: Dict[str, List[dict]], path: Path, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for model, recs in results.items():
    sigmas = list(recs[0]["noise"])
    rules = [r for r in recs[0]["noise"][sigmas[0]] if r != "w re-tuned"]
    for rule in rules:
      ys = [np.mean([r["noise"][s][rule]["ndcg@20"] for r in recs]) for s in sigmas]
      ax.plot([float(s) for s in sigmas], ys, marker="o",
              label=f"{LABELS[model]}: {rule}" if len(rules) > 1 else LABELS[model])
  ax.set_xlabel("feature noise sigma (x per-dimension std), test time only")
  ax.set_ylabel("test NDCG@20")
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_section(out: Path, key: str, body: str) -> None:
  """Replaces (or appends) the block between `<!-- BEGIN quality:key -->` and its END marker."""
  import fcntl  # pylint: disable=import-outside-toplevel
  begin, end = f"<!-- BEGIN quality:{key} -->", f"<!-- END quality:{key} -->"
  block = f"{begin}\n{body.rstrip()}\n{end}"
  out.parent.mkdir(parents=True, exist_ok=True)
  lock_path = Path(tempfile.gettempdir()) / (
      "quality-" + re.sub(r"[^A-Za-z0-9]", "_", str(out.resolve())) + ".lock")
  with open(lock_path, "w") as lock:  # concurrent benchmark runs update the same file
    fcntl.flock(lock, fcntl.LOCK_EX)
    text = out.read_text() if out.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
      text = pattern.sub(lambda _: block, text)
    else:
      text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    write_text_atomic(out, text)


def git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def provenance(command: str, records: List[dict], data_desc: str) -> str:
  cfg = records[0]["config"]
  tr, m, ls = cfg["train"], cfg["model"], cfg["loss"]
  seeds = sorted({r["seed"] for r in records})
  commands = list(dict.fromkeys([r["command"] for r in records if "command" in r] + [command]))
  return ("Commands (the table pools the stored runs of all of them): " +
          ", ".join(f"`{c}`" for c in commands) + f" (code at commit `{git_commit()}`, "
          f"{datetime.date.today().isoformat()}). Data: {data_desc}. Full ranking over the "
          f"whole catalogue, history items {'excluded' if cfg['eval']['exclude_history'] else 'not excluded'}; "
          f"early stopping on validation NDCG@20 (patience {tr['patience']}, at most "
          f"{tr['epochs']} epochs), fusion weight tuned on validation; L={records[0]['max_len']}, "
          f"d={m['dim']}, batch {tr['batch_size']}, lr {tr['learning_rate']}, "
          f"{ls['num_negatives']} sampled negatives; training seeds {seeds}. Times are wall "
          f"seconds of `fit` (validation included) on a shared 2-core CPU" +
          ("; with `--threads 1` each run had one core (two benchmark runs in parallel, "
           "pinned with `taskset`)." if "--threads 1" in command else "."))


# --- the modes -----------------------------------------------------------------------------------

def reusable(record: dict, name: str, data: str, seed: int, overrides) -> bool:
  """Whether a stored run trained exactly what (name, data, seed, flags) asks for."""
  if record["model"] != name or record["seed"] != seed:
    return False
  wanted = model_config(name, data, seed, Path(record["run_dir"]), overrides).to_dict()
  trained = (Path(record["run_dir"]) / "checkpoints").is_dir()
  return trained and json.loads(json.dumps(wanted)) == record["config"]


def ensure_runs(store: Store, models: Sequence[str], data: str, seeds: Sequence[int],
                work_dir: Path, overrides, post=None, donor: Optional[Store] = None) -> None:
  """Trains every (model, seed) missing from `store`; a matching run of `donor` (the standard
  store) is evaluated by `post` instead of training again."""
  for seed in seeds:
    for name in models:
      if store.has(name, seed):
        continue
      t0 = time.time()
      found = [r for r in (donor.records if donor else []) if reusable(r, name, data, seed,
                                                                      overrides)]
      record = dict(found[0]) if found else train_one(name, data, seed, work_dir, overrides)
      if found:
        print(f"[quality] {name} seed {seed}: reusing {record['run_dir']}", flush=True)
      if post is not None:
        record.update(post(record))
      record.setdefault("command", COMMAND[0])
      store.add(record)
      print(f"[quality] {name} seed {seed}: NDCG@20 {record['test']['ndcg@20']:.4f} "
            f"(best epoch {record['best_epoch']}/{record['epochs_run']}, "
            f"{time.time() - t0:.0f} s)", flush=True)


def store_name(args) -> str:
  return data_name(args.data) + (f"-{args.tag}" if args.tag else "")


def data_name(data: str) -> str:
  if data.startswith("synthetic"):  # synthetic[:variant][?key=value...]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", data).strip("_")
  return Path(data).name


def describe_data(data: str) -> str:
  if data == "synthetic":
    return "the embedded default (`--data synthetic`: 3,000 items, 1,500 users, loo)"
  if data.startswith("synthetic"):
    return f"the generated variant `--data {data}` (input_pipelines/synthetic.py)"
  ds_meta = json.loads((Path(data) / "dataset.json").read_text())
  st = ds_meta.get("statistics", {})
  users = st.get("num_users")
  users = f"{users:,}" if isinstance(users, int) else "?"
  return (f"`{data}` ({ds_meta['num_items']:,} items, {users} users, "
          f"modalities {sorted(ds_meta['modalities'])}, protocol {ds_meta.get('protocol', '?')})")


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
  body = [f"## Quality: baselines and ablations, {name}", "",
          provenance(command, store.records, describe_data(args.data)), "",
          standard_table(by_model, order), "",
          "Baselines and ablations are presets of the same model (`bivrec_tf/presets.py`); "
          "two-view presets report the fused row (w tuned on validation), single-view presets "
          "their own view. ΔNDCG@20 is relative to BivRec's mean; bold = best NDCG@20.", "",
          f"![NDCG@20]({png.name})"]
  if "bivrec" in by_model:
    body += ["", "BivRec's views, scored alone inside the jointly trained model:", "",
             views_table(by_model["bivrec"])]
  return "\n".join(body)


def run_cold(args, store, models, seeds, overrides, command) -> str:
  src = train_lib.load_data(config_lib.Config().replace(data={"data": args.data})).path
  name = data_name(args.data)
  cold_dir = make_cold_copy(src, args.work_dir / "data" / f"{name}-cold{args.cold_share:g}",
                            args.cold_share, seed=0)
  ensure_runs(store, models, str(cold_dir), seeds, args.work_dir, overrides, post=lambda r: {
      "cold": cold_eval(r)})
  meta = json.loads((cold_dir / "dataset.json").read_text())
  by_model = store.by_model()
  n = next(iter(by_model.values()))[0]["cold"]["num_targets"]
  cols = ["Recall@20", "Recall@50", "NDCG@20"]
  lines = [header(["model", "scoring rule", *[f"held-out {c}" for c in cols],
                   *[f"warm {c}" for c in cols], "seeds"])]
  for model in dict.fromkeys(["bivrec", *ORDER]):
    if model not in by_model:
      continue
    recs = by_model[model]
    rules = [k for k in recs[0]["cold"] if k != "num_targets"]
    for rule in rules:
      cells = [mean_std([r["cold"][rule][part][c.lower()] for r in recs])
               for part in ("held_out", "warm") for c in cols]
      lines.append(f"| {LABELS[model]} | {rule} | " + " | ".join(cells) + f" | {len(recs)} |")
  h = meta["cold_holdout"]
  body = [f"## Cold-start items, {name}", "",
          provenance(command, store.records, describe_data(args.data) +
                     f", with {h['num_items']} of its items seen in training "
                     f"({100 * h['share']:g} %, chosen at random, seed {h['seed']}) held out of "
                     "training entirely: removed from every training example and every history, "
                     "kept as valid/test targets"), "",
          "\n".join(lines), "",
          f"Test targets: {n['held_out']} are held-out items, {n['warm']} are warm (seen in "
          "training). The fused rule scores items never seen in training by the MM view alone "
          "(DESIGN.md section 3), everything else by w·s_id + (1-w)·s_mm with w tuned on "
          "validation. An untrained ID embedding ranks held-out items essentially at random "
          "(and sampled-negative training pushes them down)."]
  return "\n".join(body)


def run_noise(args, store, models, seeds, overrides, command) -> str:
  sigmas = tuple(float(s) for s in args.noise_sigmas.split(","))
  donor = Store(args.work_dir / f"{store_name(args)}-standard.json")
  ensure_runs(store, models, args.data, seeds, args.work_dir, overrides, post=lambda r: {
      "noise": noise_eval(r, sigmas)}, donor=donor)
  by_model = store.by_model()
  name = data_name(args.data)
  sig = list(next(iter(by_model.values()))[0]["noise"])
  lines = [header(["model", "scoring rule", *[f"σ={s}" for s in sig]])]
  for model in ["bivrec", "mm_seq", "mm_only", *[m for m in by_model if m not in
                                                 ("bivrec", "mm_seq", "mm_only")]]:
    if model not in by_model:
      continue
    recs = by_model[model]
    rules = [k for k in recs[0]["noise"][sig[0]] if k != "w re-tuned"]
    for rule in rules:
      cells = [mean_std([r["noise"][s][rule]["ndcg@20"] for r in recs]) for s in sig]
      lines.append(f"| {LABELS[model]} | {rule} | " + " | ".join(cells) + " |")
    if "w re-tuned" in recs[0]["noise"][sig[0]]:
      lines.append(f"| {LABELS[model]} | w re-tuned on noisy valid | " + " | ".join(
          ", ".join(f"{r['noise'][s]['w re-tuned']:.1f}" for r in recs) for s in sig) + " |")
  png = Path(args.out).parent / f"quality_{name}_noise.png"
  noise_chart(by_model, png, f"Test-time feature noise, {name}")
  body = [f"## Noisy multimodal features, {name}", "",
          provenance(command, store.records, describe_data(args.data)), "",
          "Test NDCG@20 after adding N(0, σ²) to every present entry of the standardized "
          "feature tables of the trained model (history and candidate items alike), test time "
          "only; σ in units of the per-dimension feature std. `fused` keeps the w tuned on "
          "clean validation; `fused, w re-tuned` picks w again on equally noisy validation.", "",
          "\n".join(lines), "", f"![noise]({png.name})"]
  return "\n".join(body)


def cost_stats(rec: dict) -> dict:
  curve = rec["val_curve"]
  ends = rec["epoch_end_seconds"]
  if len(ends) != len(curve):  # no event file: pro-rata
    ends = [rec["fit_seconds"] * (i + 1) / len(curve) for i in range(len(curve))]
  best = int(np.argmax(curve))
  return {"best_val": curve[best], "best_epoch": best + 1, "time_to_best": ends[best],
          "sec_per_epoch": ends[-1] / len(curve), "fit": rec["fit_seconds"],
          "curve": curve, "ends": ends}


def run_cost(args, store, models, seeds, overrides, command) -> str:
  ensure_runs(store, models, args.data, seeds, args.work_dir, overrides)
  by_model = store.by_model()
  name = data_name(args.data)
  lines = [header(["model", "best valid NDCG@20", "epochs to best", "time to best (s)",
                   "s / epoch", "total fit (s)", "test NDCG@20", "seeds"])]
  by_model = {m: recs for m, recs in by_model.items() if m in models}
  stats = {m: [cost_stats(r) for r in recs] for m, recs in by_model.items()}
  for model in ["sasrec", "bivrec", *[m for m in by_model if m not in ("sasrec", "bivrec")]]:
    if model not in stats:
      continue
    st, recs = stats[model], by_model[model]
    lines.append(f"| {LABELS[model]} | {mean_std([s['best_val'] for s in st])} | "
                 f"{mean_std([s['best_epoch'] for s in st], 1)} | "
                 f"{mean_std([s['time_to_best'] for s in st], 0)} | "
                 f"{mean_std([s['sec_per_epoch'] for s in st], 1)} | "
                 f"{mean_std([s['fit'] for s in st], 0)} | "
                 f"{mean_std([r['test']['ndcg@20'] for r in recs])} | {len(recs)} |")
  notes = []
  if "bivrec" in stats and "sasrec" in stats:
    for sb, ss in zip(stats["bivrec"], stats["sasrec"]):
      passed = [i for i, v in enumerate(sb["curve"]) if v >= ss["best_val"]]
      if passed:
        i = passed[0]
        notes.append(f"BivRec passed SASRec's best validation NDCG@20 ({ss['best_val']:.4f}, "
                     f"reached by SASRec after {ss['best_epoch']} epochs / "
                     f"{ss['time_to_best']:.0f} s) after {i + 1} epoch(s) / {sb['ends'][i]:.0f} s")
      else:
        notes.append(f"BivRec never reached SASRec's best validation NDCG@20 "
                     f"({ss['best_val']:.4f})")
  body = [f"## Training cost, {name}", "",
          provenance(command, store.records, describe_data(args.data)), "",
          "Epochs and wall time until the best validation NDCG@20 (the restored checkpoint); "
          "times are read from the TensorBoard event file of each run (end of each epoch, "
          "validation included).", "", "\n".join(lines), ""]
  body += [f"- seed pair {i + 1}: {n}." for i, n in enumerate(notes)]
  return "\n".join(body)


# --- command line --------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)  # `--seed` is a train flag, not --seeds
  parser.add_argument("--data", default="synthetic", help="'synthetic' or a prepared directory")
  parser.add_argument("--models", default=None,
                      help="'all', 'design' (the DESIGN.md formulation and its ablations) or "
                           "comma-separated presets (default depends on --mode; "
                           f"known: {', '.join(ALL_MODELS)})")
  parser.add_argument("--seeds", type=int, default=None,
                      help="training seeds per model (42, 43, ...); default 3, 1 with --quick")
  parser.add_argument("--quick", action="store_true", help="one seed (unless --seeds is given)")
  parser.add_argument("--mode", choices=MODES, default="standard")
  parser.add_argument("--out", default="docs/results.md", help="markdown file to update")
  parser.add_argument("--work-dir", type=Path, default=Path("runs/quality"),
                      help="run directories, derived datasets and the per-run record store")
  parser.add_argument("--tag", default="", help="names a separate store and section (variants)")
  parser.add_argument("--fresh", action="store_true",
                      help="start a new record store (the old one is kept as <store>.json.old)")
  parser.add_argument("--cold-share", type=float, default=0.1)
  parser.add_argument("--threads", type=int, default=0,
                      help="TensorFlow intra- and inter-op threads (0 = TensorFlow's default)")
  parser.add_argument("--noise-sigmas", default=",".join(f"{s:g}" for s in NOISE_SIGMAS))
  args, rest = parser.parse_known_args(argv)
  train_parser = argparse.ArgumentParser(prog="train flags", add_help=False)
  config_lib.add_flags(train_parser)
  overrides = train_parser.parse_args(rest)
  models = args.models
  if models in (None, ""):
    models = DEFAULT_MODELS[args.mode]
  elif models == "all":
    models = ALL_MODELS
  elif models == "design":
    models = ("bivrec_design",) + DESIGN_ABLATIONS
  else:
    models = tuple(m.strip() for m in models.split(",") if m.strip())
  unknown = [m for m in models if m not in PRESETS and m != LATE_FUSION]
  if unknown:
    parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(PRESETS)}")
  if args.mode == "noise" and any("mm" not in apply_preset(config_lib.Config(), m).model.views
                                  for m in models):
    parser.error("--mode noise needs models with the MM view")
  if args.seeds is None:
    args.seeds = 1 if args.quick else 3
  return args, models, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args, models, overrides = parse_args(argv)
  command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in argv)
  COMMAND[0] = command
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  name = store_name(args)
  store_mode = "standard" if args.mode == "cost" else args.mode  # cost reuses standard runs
  store = Store(args.work_dir / f"{name}-{store_mode}.json", fresh=args.fresh)
  seeds = [BASE_SEED + i for i in range(args.seeds)]
  runner = {"standard": run_standard, "cold": run_cold, "noise": run_noise,
            "cost": run_cost}[args.mode]
  t0 = time.time()
  body = runner(args, store, models, seeds, overrides, command)
  write_section(Path(args.out), f"{args.mode}:{name}", body)
  print(body)
  print(f"\n[quality] wrote section quality:{args.mode}:{name} of {args.out} "
        f"({time.time() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
