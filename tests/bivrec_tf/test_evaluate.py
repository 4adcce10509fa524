"""Full-ranking evaluation: chunking, and history exclusion as one resolved setting that masks the
user's whole history (not only the last max_len items the model reads)."""

import argparse

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf import config as config_lib
from bivrec_tf.config import Config, EvalConfig
from bivrec_tf.evaluate import Ranker, evaluate, popularity_metrics, resolve_history_exclusion
from bivrec_tf.model import FIRST_ITEM, BivRecModel
from input_pipelines.dataset import PreparedDataset
from input_pipelines.prepared import write_prepared

V = 30  # 28 real items, indices 2..29
MAX_LEN = 4
NUM_ITEMS = V - FIRST_ITEM


def _model(v=V, max_len=MAX_LEN, seed=0):
  rng = np.random.default_rng(seed)
  cfg = Config().replace(model={"dim": 8, "num_interests": 2})
  seen = rng.random(v) > 0.2  # some cold items: the fused rule scores them by the MM view
  return BivRecModel(
    cfg,
    v,
    max_len,
    {"text": rng.normal(size=(v, 5)).astype(np.float32)},
    {"text": np.ones(v, bool)},
    item_counts=rng.integers(0, 5, v),
    seen_in_train=seen,
  )


def _long_histories(rows=5, length=12, seed=1):
  """(history `[rows, MAX_LEN]` the model reads, whole history `[rows, length]`): distinct items,
  most recent last."""
  rng = np.random.default_rng(seed)
  full = np.stack([rng.permutation(np.arange(FIRST_ITEM, V))[:length] for _ in range(rows)])
  return full[:, -MAX_LEN:], full


def test_chunked_full_ranking_equals_unchunked():
  v = 103
  rng = np.random.default_rng(0)
  model = _model(v, 10)
  history = rng.integers(0, v, (6, 10))
  weights = [0.0, 0.3, 1.0]
  for exclude in (False, True):
    whole = Ranker(model, kmax=20, item_chunk=10_000, exclude_history=exclude).topk(
      history, weights
    )
    chunked = Ranker(model, kmax=20, item_chunk=7, exclude_history=exclude).topk(history, weights)
    assert whole.keys() == chunked.keys() and len(whole) == 5
    for name in whole:
      np.testing.assert_array_equal(whole[name], chunked[name])
      assert np.all(whole[name] >= 2)  # padding / OOV never ranked
      if exclude:
        for row, h in zip(whole[name], history):
          assert not set(row) & set(h[h >= 2])


@pytest.mark.parametrize("item_chunk", [7, 10_000])
def test_exclusion_ranks_exactly_the_items_outside_the_whole_history(item_chunk):
  # Asking for every item not in the 12-item history: with the whole history masked the list is
  # exactly the complement; masking only the last MAX_LEN items would let the 8 older ones in.
  history, full = _long_histories()
  k = NUM_ITEMS - full.shape[1]
  ranker = Ranker(_model(), kmax=k, item_chunk=item_chunk, exclude_history=True)
  for name, top in ranker.topk(history, [0.0, 0.5, 1.0], seen=full).items():
    for row, h in zip(top, full):
      assert sorted(row) == sorted(set(range(FIRST_ITEM, V)) - set(h)), name


def _batch(history, full, targets):
  return {
    "history": tf.constant(history, tf.int64),
    "full_history": tf.constant(full, tf.int64),
    "targets": tf.constant(targets, tf.int64),
  }


def test_exclusion_makes_a_repeat_of_an_old_history_item_unreachable_and_keeping_it_does_not():
  # The target is the oldest history item, outside the MAX_LEN items the model reads.
  history, full = _long_histories()
  targets = full[:, :1]
  data = [_batch(history, full, targets)]
  model = _model()
  kept = evaluate(Ranker(model, NUM_ITEMS, exclude_history=False), data, [NUM_ITEMS], [0.5])
  excluded = evaluate(Ranker(model, NUM_ITEMS, exclude_history=True), data, [NUM_ITEMS], [0.5])
  for rule in kept:
    assert kept[rule][f"hitrate@{NUM_ITEMS}"] == 1.0  # every item is ranked: the repeat is hit
    assert excluded[rule][f"hitrate@{NUM_ITEMS}"] == 0.0


def test_popularity_baseline_excludes_the_whole_history():
  counts = np.zeros(V, np.int64)
  counts[FIRST_ITEM:] = np.arange(NUM_ITEMS, 0, -1)  # item 2 most popular, then 3, ...
  full = np.arange(FIRST_ITEM, FIRST_ITEM + 10)[None, :]  # the 10 most popular items
  history = full[:, -MAX_LEN:]
  target = np.array([[FIRST_ITEM + 10]])  # the most popular unseen item
  data = [_batch(history, full, target)]
  assert popularity_metrics(counts, data, [1], exclude_history=True)["hitrate@1"] == 1.0
  assert popularity_metrics(counts, data, [1], exclude_history=False)["hitrate@1"] == 0.0


def _prepared(tmp_path, name, train):
  ids = [f"i{k}" for k in range(8)]
  return PreparedDataset.load(
    write_prepared(
      tmp_path / name, ids, {}, {"train": train, "valid": train[:2], "test": train[:2]}
    )
  )


def test_auto_excludes_history_on_data_without_repeats(tmp_path):
  ds = _prepared(tmp_path, "fresh", [([2], [3]), ([2, 3], [4]), ([5, 6], [7]), ([7], [8])])
  info = resolve_history_exclusion(EvalConfig(), ds)
  assert info["train_repeat_rate"] == 0.0
  assert info["exclude_history"] is True and info["setting"] == "auto"


def test_auto_keeps_history_on_data_made_mostly_of_repeats(tmp_path):
  ds = _prepared(tmp_path, "repeats", [([2], [2]), ([2, 3], [3]), ([5, 6], [5]), ([7], [8])])
  info = resolve_history_exclusion(EvalConfig(), ds)
  assert info["train_repeat_rate"] == 0.75
  assert info["exclude_history"] is False and info["setting"] == "auto"


def test_an_explicit_setting_wins_over_the_repeat_rate(tmp_path):
  fresh = _prepared(tmp_path, "fresh", [([2], [3]), ([2, 3], [4])])
  repeats = _prepared(tmp_path, "repeats", [([2], [2]), ([2, 3], [3])])
  off = resolve_history_exclusion(EvalConfig(exclude_history=False), fresh)
  on = resolve_history_exclusion(EvalConfig(exclude_history=True), repeats)
  assert off["exclude_history"] is False and off["setting"] == "off"
  assert on["exclude_history"] is True and on["setting"] == "on"


def test_ranker_refuses_an_unresolved_auto_setting():
  with pytest.raises(ValueError, match="exclude_history"):
    Ranker(_model(), kmax=5, exclude_history=None)


def test_history_flags_force_the_setting_and_no_flag_means_auto():
  parser = argparse.ArgumentParser()
  config_lib.add_flags(parser)

  def setting(*argv):
    return config_lib.from_flags(parser.parse_args(list(argv))).eval.exclude_history

  assert setting() is None
  assert setting("--exclude-history") is True
  assert setting("--no-exclude-history") is False
  with pytest.raises(ValueError, match="repeat_threshold"):
    EvalConfig(repeat_threshold=1.5).validate()
