"""TFDS: the `bivrec_sequences` builder and `--data tfds:movielens/...` (never downloads:
MovieLens is replaced by `tfds.testing.mock_data`)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipelines import tfds_builder
from input_pipelines.dataset import PreparedDataset
from input_pipelines.prepared import write_prepared
from input_pipelines.tfds_movielens import prepare_tfds

TRAIN = [([2], [3]), ([2, 3], [4]), ([5, 6, 7], [2])]
VALID = [([2, 3, 4], [5, 6])]
TEST = [([2, 3, 4, 5], [7])]


@pytest.fixture()
def prepared(tmp_path):
  return write_prepared(
    tmp_path / "my data",
    [f"item{k}" for k in range(6)],
    {"text": (np.arange(18.0).reshape(6, 3), np.ones(6, bool))},
    {"train": TRAIN, "valid": VALID, "test": TEST},
    {"protocol": "loo"},
  )


def _as_tuples(ds):
  return sorted(
    (
      tuple(x["history"].numpy().tolist()),
      tuple(x["target"].numpy().tolist()),
      tuple(x["history_ids"].numpy().astype(str).tolist()),
    )
    for x in ds
  )


def test_bivrec_sequences_builder_serves_the_prepared_examples(prepared, tmp_path):
  splits, info = tfds_builder.load(prepared, data_dir=tmp_path / "tfds", with_info=True)
  vocab = ["[PAD]", "[OOV]"] + [f"item{k}" for k in range(6)]
  for name, examples in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
    assert _as_tuples(splits[name]) == sorted(
      (tuple(h), tuple(t), tuple(vocab[i] for i in h)) for h, t in examples
    )
    assert info.splits[name].num_examples == len(examples)
  assert info.metadata["vocab_size"] == 8
  assert info.metadata["modalities"]["text"]["dim"] == 3
  # tfds.load by name, as a TFDS user would, reuses the built data.
  again = tfds.load(
    "bivrec_sequences",
    split="test",
    data_dir=tmp_path / "tfds",
    builder_kwargs={"prepared_dir": str(prepared)},
  )
  assert len(list(again)) == 1


def test_each_prepared_directory_gets_its_own_builder_config(prepared, tmp_path):
  other = write_prepared(
    tmp_path / "other", ["a", "b", "c"], {}, {"train": [([2], [3])], "test": [([2, 3], [4])]}, {}
  )
  a = tfds_builder.config_for(prepared).name
  b = tfds_builder.config_for(other).name
  assert a != b and a.startswith("my_data_")


def _movielens_rows():
  """6 users x 8 ratings over 10 movies, file order not chronological."""
  rng = np.random.default_rng(0)
  users = np.repeat(np.arange(6), 8)
  movies = np.array([(u * 3 + j) % 10 for u in range(6) for j in range(8)])
  ts = np.array([1000 * u + 10 * j for u in range(6) for j in range(8)], np.int64)
  perm = rng.permutation(users.size)
  return users[perm], movies[perm], ts[perm]


def _mock_movielens(builder, split=None, **kwargs):
  users, movies, ts = _movielens_rows()
  genres = tf.ragged.constant([[m % 3, 5] if m != 9 else [] for m in movies], dtype=tf.int64)
  return tf.data.Dataset.from_tensor_slices(
    {
      "user_id": np.array([str(u).encode() for u in users]),
      "movie_id": np.array([str(m).encode() for m in movies]),
      "timestamp": ts,
      "movie_title": np.array([f"Movie number {m} ({1990 + m})".encode() for m in movies]),
      "movie_genres": genres,
      "user_rating": np.full(users.size, 4.0, np.float32),
    }
  )


def test_tfds_movielens_becomes_a_prepared_directory_with_a_text_modality(tmp_path):
  with tfds.testing.mock_data(as_dataset_fn=_mock_movielens):
    path = prepare_tfds("movielens/100k-ratings", root=tmp_path, data_dir=tmp_path / "none")
  ds = PreparedDataset.load(path)
  assert path.name.startswith("tfds-movielens-100k-ratings-")
  assert ds.num_items == 10 and ds.meta["source"] == "tfds:movielens/100k-ratings"
  assert ds.present["text"][2:].all() and ds.features["text"].shape[1] == 128
  users, movies, ts = _movielens_rows()
  seqs = {}
  for u, m, _ in sorted(zip(users, movies, ts), key=lambda r: (r[0], r[2])):
    seqs.setdefault(u, []).append(str(m))
  test = [
    ([ds.vocab[i] for i in h], [ds.vocab[i] for i in t]) for h, t in _read(ds.split_path("test"))
  ]
  assert sorted(h + t for h, t in test) == sorted(seqs.values())
  # Cached: a second call does not read TFDS again (no mock needed).
  assert prepare_tfds("movielens/100k-ratings", root=tmp_path, data_dir=tmp_path / "none") == path


def test_train_load_data_accepts_tfds_names(tmp_path):
  from bivrec_tf.config import Config
  from bivrec_tf.train import load_data

  cfg = Config().replace(data={"data": "tfds:movielens/100k-ratings", "data_cache": str(tmp_path)})
  with tfds.testing.mock_data(as_dataset_fn=_mock_movielens):
    ds = load_data(cfg)
  assert ds.num_items == 10 and "text" in ds.features


def test_missing_local_tfds_data_is_a_clear_error_not_a_download(tmp_path):
  with pytest.raises(FileNotFoundError, match="not available locally.*tfds build"):
    prepare_tfds("movielens/100k-ratings", root=tmp_path, data_dir=tmp_path / "empty")
  assert not list(tmp_path.glob("tfds-*"))


def test_random_mock_movielens_without_repeat_users_is_empty_after_filtering(tmp_path):
  from input_pipelines.errors import DataError

  with tfds.testing.mock_data(num_examples=20):  # random user ids: nobody has 5 ratings
    with pytest.raises(DataError, match="no interactions left after filtering"):
      prepare_tfds("movielens/100k-ratings", root=tmp_path, data_dir=tmp_path / "none")
  assert not [p for p in tmp_path.iterdir() if p.name != "none"]


def _read(path):
  spec = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}
  for rec in tf.data.TFRecordDataset(str(path)):
    p = tf.io.parse_single_example(rec, spec)
    yield (
      tf.sparse.to_dense(p["history"]).numpy().tolist(),
      tf.sparse.to_dense(p["target"]).numpy().tolist(),
    )
