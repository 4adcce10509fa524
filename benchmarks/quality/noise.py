"""Noisy multimodal features: test metrics with Gaussian noise added to the trained model's
feature tables at test time only."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bivrec_tf.evaluate import Ranker, best_fusion, evaluate, resolve_history_exclusion
from input_pipelines.dataset import eval_dataset

from benchmarks.quality.roster import KS
from benchmarks.quality.runs import load_trained

NOISE_SIGMAS = (0.0, 0.25, 0.5, 1.0, 2.0)


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
  ranker = Ranker(
    model, max(ev.ks), ev.item_chunk, resolve_history_exclusion(ev, ds)["exclude_history"]
  )
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
