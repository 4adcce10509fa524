"""Poisoned prepared directories stop before training, with one line naming the file and the
row/record (issue 11); a non-finite loss stops training with exit status 2 and no export."""

import json
import struct

import numpy as np
import pytest
import tensorflow as tf

from input_pipelines.dataset import PreparedDataset
from input_pipelines.errors import DataError
from input_pipelines.prepared import write_prepared

N = 12


def _write(path):
  rng = np.random.default_rng(0)
  item_ids = [f"it{i}" for i in range(N)]
  feats = {"text": (rng.normal(size=(N, 4)), np.ones(N, bool))}
  train = [(list(range(2, 2 + k)), [2 + k]) for k in range(1, 9)] * 3
  splits = {
    "train": train,
    "valid": [([2, 3], [4]), ([5], [6])],
    "test": [([2, 3, 4], [5]), ([7], [8]), ([9, 10], [11])],
  }
  return write_prepared(path, item_ids, feats, splits, {"recommended_max_len": 8})


@pytest.fixture
def prepared(tmp_path):
  return _write(tmp_path / "ds")


def _example(history, target):
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        "history": tf.train.Feature(int64_list=tf.train.Int64List(value=history)),
        "target": tf.train.Feature(int64_list=tf.train.Int64List(value=target)),
      }
    )
  ).SerializeToString()


def _rewrite(file, examples):
  with tf.io.TFRecordWriter(str(file)) as writer:
    for history, target in examples:
      writer.write(_example(history, target))


def _error(path) -> str:
  with pytest.raises(DataError) as err:
    PreparedDataset.load(path)
  text = str(err.value)
  assert "\n" not in text
  return text


def test_a_good_directory_loads(prepared):
  ds = PreparedDataset.load(prepared)
  assert ds.num_examples("train") == 24 and ds.item_counts.sum() == 24


def test_nan_or_inf_in_a_features_file(prepared):
  file = prepared / "features" / "text.npy"
  table = np.load(file)
  table[5, 2] = np.nan
  np.save(file, table)
  assert _error(prepared) == (
    f"{file}: row 5 (item index 5), column 2: nan; features must be finite (was the file "
    "written by input_pipelines.prepare?)"
  )
  table[5, 2] = 0.0
  table[7, 0] = np.inf
  np.save(file, table)
  assert "row 7 (item index 7), column 0: inf" in _error(prepared)


def test_truncated_tfrecord_is_found_before_training(prepared):
  file = prepared / "test.tfrecord"
  data = file.read_bytes()
  file.write_bytes(data[:-7])
  message = _error(prepared)
  assert message.startswith(f"{file}, record 3: truncated or corrupt TFRecord")


def test_corrupt_tfrecord_names_the_record(prepared):
  file = prepared / "valid.tfrecord"
  data = bytearray(file.read_bytes())
  (length,) = struct.unpack("<Q", data[:8])
  data[12 + length + 4 + 12 + 2] ^= 0xFF  # a byte inside the second record's payload
  file.write_bytes(bytes(data))
  assert _error(prepared).startswith(f"{file}, record 2: truncated or corrupt TFRecord")


@pytest.mark.parametrize(
  "split,examples,where",
  [
    (
      "train",
      [([2], [3])] * 23 + [([2, 9999], [3])],
      "record 24, field 'history': item index 9999 outside [1, 14)",
    ),
    (
      "test",
      [([2], [3]), ([2], [14]), ([2], [3])],
      "record 2, field 'target': item index 14 outside [1, 14)",
    ),
    ("valid", [([2], [3]), ([-1], [3])], "record 2, field 'history': item index -1 outside"),
    ("valid", [([2], [3]), ([2], [])], "record 2, field 'target': example without a target"),
  ],
)
def test_out_of_range_ids_in_any_split(prepared, split, examples, where):
  file = prepared / f"{split}.tfrecord"
  _rewrite(file, examples)
  assert _error(prepared).startswith(f"{file}, {where}")


def test_a_dataset_json_that_lies(prepared):
  meta_file = prepared / "dataset.json"
  meta = json.loads(meta_file.read_text())
  meta["splits"]["test"]["num_examples"] = 30
  meta_file.write_text(json.dumps(meta))
  assert _error(prepared) == (
    f"{meta_file}, field 'splits.test.num_examples': declares 30 "
    "examples for split 'test' but test.tfrecord holds 3"
  )
  meta["splits"]["test"]["num_examples"] = 3
  meta["num_items"], meta["vocab_size"] = 10, 12  # consistent with each other, not the files
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="item_vocab.txt: has 14 rows, expected vocab_size 12"):
    PreparedDataset.load(prepared)
  meta["num_items"], meta["vocab_size"] = "12", 14
  meta_file.write_text(json.dumps(meta))
  assert _error(prepared).startswith(f"{meta_file}, field 'num_items': '12' is not a positive")


def test_invalid_dataset_json_names_the_file_and_line(prepared):
  meta_file = prepared / "dataset.json"
  text = meta_file.read_text().splitlines()
  text[3] = text[3] + " oops"
  meta_file.write_text("\n".join(text))
  message = _error(prepared)
  assert message.startswith(f"{meta_file}, line 4: invalid JSON: ")
  meta_file.write_bytes(b'{"a": "\xff"}')
  assert _error(prepared).startswith(f"{meta_file}, line 1: invalid UTF-8")


def _poison_nan(ds):
  file = ds / "features" / "text.npy"
  table = np.load(file)
  table[4, 1] = np.nan
  np.save(file, table)
  return file, "row 4 (item index 4), column 1: nan"


def _poison_truncated(ds):
  file = ds / "test.tfrecord"
  file.write_bytes(file.read_bytes()[:-3])
  return file, "record 3: truncated or corrupt TFRecord"


def _poison_out_of_range(ds):
  file = ds / "train.tfrecord"
  _rewrite(file, [([2], [3])] * 10 + [([2, 9999], [3])] + [([2], [3])] * 13)
  return file, "record 11, field 'history': item index 9999 outside [1, 14)"


def _poison_lying_json(ds):
  file = ds / "dataset.json"
  meta = json.loads(file.read_text())
  meta["splits"]["train"]["num_examples"] = 1000
  file.write_text(json.dumps(meta))
  return file, "field 'splits.train.num_examples': declares 1000 examples"


@pytest.mark.parametrize(
  "poison",
  [_poison_nan, _poison_truncated, _poison_out_of_range, _poison_lying_json],
  ids=lambda f: f.__name__[8:],
)
def test_train_cli_stops_before_training_with_one_line(prepared, tmp_path, capsys, poison):
  """The issue's "done when": each poison stops `python -m bivrec_tf.train` before training
  (no run directory, no export) with one line naming the file, and exit status 2."""
  from bivrec_tf import train

  file, what = poison(prepared)
  args = [
    "--data",
    str(prepared),
    "--run-dir",
    str(tmp_path / "run"),
    "--export-base",
    str(tmp_path / "exports"),
    "--epochs",
    "1",
    "--no-jit-compile",
  ]
  assert train.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {file}") and what in err and len(err.splitlines()) == 1, err
  assert not (tmp_path / "run").exists() and not (tmp_path / "exports").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_training_without_export(prepared, tmp_path, capsys, monkeypatch):
  """Data that passes validation can still diverge (here: features poisoned after loading, as a
  stand-in for a too-high learning rate): the run stops at the first non-finite loss, exits 2
  and exports nothing."""
  from bivrec_tf import train

  real_load = train.load_data

  def poisoned(cfg):
    ds = real_load(cfg)
    ds.features["text"] = np.full_like(ds.features["text"], np.nan)
    return ds

  monkeypatch.setattr(train, "load_data", poisoned)
  args = [
    "--data",
    str(prepared),
    "--run-dir",
    str(tmp_path / "run"),
    "--export-base",
    str(tmp_path / "exports"),
    "--epochs",
    "2",
    "--no-jit-compile",
    "--batch-size",
    "4",
    "--dim",
    "8",
    "--num-heads",
    "1",
    "--num-interests",
    "2",
    "--max-len",
    "8",
  ]
  assert train.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("error: training stopped: loss is nan at epoch 1, step 1")
  assert not (tmp_path / "exports").exists()
  assert not (tmp_path / "run" / "metrics.json").exists()
