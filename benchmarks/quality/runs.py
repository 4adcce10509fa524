"""Training one preset once for the benchmark, loading a trained run back, and reusing stored
runs that trained exactly the requested configuration."""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import tensorflow as tf

from bivrec_tf import config as config_lib
from bivrec_tf import train as train_lib
from bivrec_tf.builders import restore_trained
from bivrec_tf.presets import apply_preset

from benchmarks.quality.store import Store

COMMAND = ["python -m benchmarks.quality"]  # the running command line, recorded with each run


def model_config(
  name: str, data: str, seed: int, run_dir: Path, overrides: Optional[argparse.Namespace] = None
) -> config_lib.Config:
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


def train_one(
  name: str, data: str, seed: int, work_dir: Path, overrides: Optional[argparse.Namespace]
) -> dict:
  """Trains preset `name` once in a fresh run directory; returns a JSON-able record."""
  runs = work_dir / "runs"
  runs.mkdir(parents=True, exist_ok=True)
  run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-s{seed}-", dir=runs))
  cfg = model_config(name, data, seed, run_dir, overrides)
  tf.keras.backend.clear_session()
  summary = train_lib.run(cfg, verbose=0)
  monitor = f"val_ndcg{cfg.eval.monitor_k}"
  record = {
    "model": name,
    "seed": seed,
    "run_dir": str(run_dir),
    "config": cfg.to_dict(),
    "test": main_row(summary),
    "test_rows": summary["test"],
    "fusion_weight": summary["fusion_weight"],
    "best_epoch": summary["best_epoch"],
    "epochs_run": summary["epochs_run"],
    "fit_seconds": summary["fit_seconds"],
    "wall_seconds": summary["wall_seconds"],
    "max_len": summary["max_len"],
    "val_curve": [e[monitor] for e in summary["epoch_logs"]],
    "valid": summary["valid"],
    "diagnostics": summary.get("diagnostics", {}),
    "exclude_history": summary["exclude_history"],  # the resolved setting (auto -> bool)
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
  restore_trained(model, str(Path(record["run_dir"]) / "checkpoints" / "best"))
  return model, ds, cfg


def reusable(record: dict, name: str, data: str, seed: int, overrides) -> bool:
  """Whether a stored run trained exactly what (name, data, seed, flags) asks for."""
  if record["model"] != name or record["seed"] != seed:
    return False
  wanted = model_config(name, data, seed, Path(record["run_dir"]), overrides).to_dict()
  trained = (Path(record["run_dir"]) / "checkpoints").is_dir()
  return trained and json.loads(json.dumps(wanted)) == record["config"]


def ensure_runs(
  store: Store,
  models: Sequence[str],
  data: str,
  seeds: Sequence[int],
  work_dir: Path,
  overrides,
  post=None,
  donor: Optional[Store] = None,
) -> None:
  """Trains every (model, seed) missing from `store`; a matching run of `donor` (the standard
  store) is evaluated by `post` instead of training again."""
  for seed in seeds:
    for name in models:
      if store.has(name, seed):
        continue
      t0 = time.time()
      found = [
        r for r in (donor.records if donor else []) if reusable(r, name, data, seed, overrides)
      ]
      record = dict(found[0]) if found else train_one(name, data, seed, work_dir, overrides)
      if found:
        print(f"[quality] {name} seed {seed}: reusing {record['run_dir']}", flush=True)
      if post is not None:
        record.update(post(record))
      record.setdefault("command", COMMAND[0])
      store.add(record)
      print(
        f"[quality] {name} seed {seed}: NDCG@20 {record['test']['ndcg@20']:.4f} "
        f"(best epoch {record['best_epoch']}/{record['epochs_run']}, "
        f"{time.time() - t0:.0f} s)",
        flush=True,
      )
