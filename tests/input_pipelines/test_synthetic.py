"""Properties of the embedded synthetic dataset (input_pipelines.synthetic)."""

import json

import numpy as np
import pytest

from input_pipelines import synthetic
from input_pipelines.dataset import PreparedDataset
from input_pipelines.synthetic import ensure_synthetic, generate, structure_report

SMALL = dict(num_items=400, num_users=300, num_topics=8)


def _contents(path):
  ds = PreparedDataset.load(path)
  files = {
    p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
  }
  return ds, files


def _split_examples(path, split):
  hist, tgt = synthetic._read_split(path, split)
  return hist, tgt


def test_generator_is_deterministic_for_a_seed_and_differs_across_seeds(tmp_path):
  _, a = _contents(generate(tmp_path / "a", seed=1, **SMALL))
  _, b = _contents(generate(tmp_path / "b", seed=1, **SMALL))
  _, c = _contents(generate(tmp_path / "c", seed=2, **SMALL))
  assert a == b
  assert a["train.tfrecord"] != c["train.tfrecord"]
  assert a["features/text.npy"] != c["features/text.npy"]


def test_ensure_synthetic_reuses_the_cache(tmp_path, monkeypatch):
  first = ensure_synthetic(tmp_path, seed=0, **SMALL)
  stamp = (first / "dataset.json").stat().st_mtime_ns

  def fail(*args, **kwargs):
    raise AssertionError("regenerated a cached dataset")

  monkeypatch.setattr(synthetic, "generate", fail)
  again = ensure_synthetic(tmp_path, seed=0, **SMALL)
  assert again == first and (again / "dataset.json").stat().st_mtime_ns == stamp
  with pytest.raises(AssertionError, match="regenerated"):
    ensure_synthetic(tmp_path, seed=1, **SMALL)  # other seed -> other directory
  assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_cache_key_depends_on_seed_params_and_version(monkeypatch):
  key = synthetic.cache_key(0, **SMALL)
  assert key == synthetic.cache_key(0, **SMALL)
  assert key != synthetic.cache_key(1, **SMALL)
  assert key != synthetic.cache_key(0, **{**SMALL, "partner_prob": 0.1})
  monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
  assert key != synthetic.cache_key(0, **SMALL)


def test_unknown_generator_parameter_is_rejected(tmp_path):
  with pytest.raises(TypeError, match="num_itemz"):
    generate(tmp_path / "x", num_itemz=10)


def test_loo_protocol_splits_each_user_sequence(tmp_path):
  path = generate(tmp_path / "d", seed=0, **SMALL)
  meta = json.loads((path / "dataset.json").read_text())
  assert meta["protocol"] == "loo" and meta["source"] == "synthetic"
  assert meta["recommended_max_len"] == 20
  assert set(meta["modalities"]) == {"text", "image"}
  valid_h, valid_t = _split_examples(path, "valid")
  test_h, test_t = _split_examples(path, "test")
  train_h, train_t = _split_examples(path, "train")
  assert len(valid_h) == len(test_h) == SMALL["num_users"]
  for vh, vt, th in zip(valid_h, valid_t, test_h):
    assert th == vh + [vt]  # test history = valid history + valid target
  # train examples are every prefix (length >= 1) of the valid history, with the next item.
  expected = [(vh[:j], vh[j]) for vh in valid_h for j in range(1, len(vh))]
  assert [(h, int(t)) for h, t in zip(train_h, train_t)] == expected
  stats = meta["statistics"]
  assert stats["num_users"] == SMALL["num_users"]
  assert stats["num_interactions"] == sum(len(h) + 1 for h in test_h)


def test_cold_items_never_occur_in_train_but_occur_as_targets(tmp_path):
  path = generate(tmp_path / "d", seed=0, **SMALL)
  ds = PreparedDataset.load(path)
  _, test_t = _split_examples(path, "test")
  _, valid_t = _split_examples(path, "valid")
  cold_targets = ~ds.seen_in_train[np.concatenate([valid_t, test_t])]
  assert 0.02 < cold_targets.mean() < 0.2
  assert not ds.present["image"].all() and ds.present["image"][2:].mean() > 0.85
  assert ds.present["text"][2:].all()


def test_planted_structure_separates_the_views(tmp_path):
  path = generate(tmp_path / "d", seed=0, num_items=1000, num_users=800, num_topics=12)
  report = structure_report(path)
  for split in ("valid", "test"):
    r = report[split]
    assert r["popularity_recall"] < 0.1
    assert r["transitions_recall"] > 2 * r["popularity_recall"]
    assert r["feature_knn_recall"] > 2 * r["popularity_recall"]
    assert r["cold_recall"]["transitions"] == 0.0
    assert r["cold_recall"]["feature_knn"] > 0.1
