"""The `late_fusion` row: the separately trained `id_only` and `mm_only` runs of one seed, fused
by BivRec's rule."""

from __future__ import annotations

import datetime
from typing import Sequence

import numpy as np

from bivrec_tf.evaluate import Ranker, best_fusion, evaluate, resolve_history_exclusion
from bivrec_tf.late_fusion import LateFusion
from input_pipelines.dataset import eval_dataset

from benchmarks.quality.roster import KS, LATE_FUSION
from benchmarks.quality.runs import COMMAND, load_trained
from benchmarks.quality.store import Store


def late_fusion_record(id_rec: dict, mm_rec: dict) -> dict:
  """The `late_fusion` record of one seed: the separately trained `id_only` and `mm_only` runs,
  fused by BivRec's rule with w tuned on validation (same grid), then tested once."""
  id_model, ds, cfg = load_trained(id_rec)
  mm_model, _, _ = load_trained(mm_rec, clear=False)
  fused = LateFusion(id_model, mm_model)
  ev = cfg.eval
  exclude = resolve_history_exclusion(ev, ds)["exclude_history"]  # as the runs were evaluated
  ranker = Ranker(fused, max(ev.ks), ev.item_chunk, exclude)
  grid = [float(w) for w in np.linspace(0.0, 1.0, ev.fusion_grid)]
  max_len = id_rec["max_len"]
  valid = evaluate(ranker, eval_dataset(ds, "valid", max_len, ev.eval_batch_size), KS, grid)
  w = best_fusion(valid, f"ndcg@{ev.monitor_k}")
  test = evaluate(ranker, eval_dataset(ds, "test", max_len, ev.eval_batch_size), KS, [w])
  rows = {
    "Popularity": id_rec["test_rows"]["Popularity"],
    "ID view": test["id"],
    "MM view": test["mm"],
    f"Late fusion (w={w:.2f})": test[f"fused@{w:.2f}"],
  }
  return {
    "model": LATE_FUSION,
    "seed": id_rec["seed"],
    "run_dir": id_rec["run_dir"],
    "parts": [id_rec["run_dir"], mm_rec["run_dir"]],
    "config": id_rec["config"],
    "test": test[f"fused@{w:.2f}"],
    "test_rows": rows,
    "fusion_weight": w,
    "valid": valid,
    "best_epoch": max(id_rec["best_epoch"], mm_rec["best_epoch"]),
    "exclude_history": exclude,
    "epochs_run": max(id_rec["epochs_run"], mm_rec["epochs_run"]),
    "fit_seconds": id_rec["fit_seconds"] + mm_rec["fit_seconds"],
    "wall_seconds": id_rec["wall_seconds"] + mm_rec["wall_seconds"],
    "max_len": max_len,
    "val_curve": [],
    "finished": datetime.datetime.now().isoformat(timespec="seconds"),
  }


def ensure_late_fusion(store: Store, seeds: Sequence[int]) -> None:
  """Adds the `late_fusion` record of every seed whose `id_only` and `mm_only` runs exist."""
  for seed in seeds:
    runs = {r["model"]: r for r in store.records if r["seed"] == seed}
    if store.has(LATE_FUSION, seed) or not {"id_only", "mm_only"} <= set(runs):
      continue
    record = late_fusion_record(runs["id_only"], runs["mm_only"])
    record["command"] = COMMAND[0]
    store.add(record)
    print(
      f"[quality] late_fusion seed {seed}: NDCG@20 {record['test']['ndcg@20']:.4f} "
      f"(w={record['fusion_weight']:.1f})",
      flush=True,
    )
