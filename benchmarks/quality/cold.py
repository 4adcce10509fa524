"""Cold-start items: a copy of a prepared dataset with a share of its items held out of training,
and per-rule metrics on the held-out and the warm test targets."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np
import tensorflow as tf

from bivrec_tf import config as config_lib
from bivrec_tf.evaluate import Ranker, rank_metrics, resolve_history_exclusion
from input_pipelines import NUM_RESERVED
from input_pipelines.dataset import PreparedDataset, eval_dataset
from input_pipelines.prepared import write_prepared

from benchmarks.quality.roster import KS
from benchmarks.quality.runs import load_trained


def read_split(ds: PreparedDataset, split: str):
  """[(history list, targets list)] of a split, in file order."""
  spec = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}
  out = []
  for batch in ds.records(split).batch(8192):
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
  features = {m: (ds.features[m][NUM_RESERVED:], ds.present[m][NUM_RESERVED:]) for m in ds.features}
  meta = {k: ds.meta[k] for k in ("source", "protocol", "recommended_max_len") if k in ds.meta}
  meta["cold_holdout"] = {
    "source": str(ds.path),
    "share": share,
    "seed": seed,
    "num_items": int(len(held)),
    "items": held.tolist(),
  }
  return write_prepared(
    out_dir, list(ds.vocab[NUM_RESERVED:]), features, splits, meta, overwrite=out_dir.exists()
  )


def topk_per_rule(
  model,
  ds: PreparedDataset,
  cfg: config_lib.Config,
  max_len: int,
  weights: Sequence[float],
  split: str = "test",
):
  """({rule: top-k ids `[N, kmax]`}, targets `[N, T]`) over a split."""
  ev = cfg.eval
  ranker = Ranker(
    model, max(ev.ks), ev.item_chunk, resolve_history_exclusion(ev, ds)["exclude_history"]
  )
  ranker.refresh()
  tops: Dict[str, list] = {}
  targets = []
  for batch in eval_dataset(ds, split, max_len, ev.eval_batch_size):
    for rule, top in ranker.topk(batch["history"], weights, batch["full_history"]).items():
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
    out[label] = {
      part: rank_metrics(top, np.where(mask, targets, 0), KS) for part, mask in sel.items()
    }
  out["num_targets"] = {part: int(mask.sum()) for part, mask in sel.items()}
  return out
