"""Sharded splits, the batch encoder of the examples and the pieces the two preparation paths
share (input_pipelines.shards, records, readers.ByteRange, protocols)."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from input_pipelines import prepare, protocols, readers
from input_pipelines.dataset import PreparedDataset, eval_dataset
from input_pipelines.errors import DataError
from input_pipelines.records import encode_batch, ragged
from input_pipelines.shards import shard_starts

FIX = pathlib.Path(__file__).parent / "fixtures"


def _run(*argv):
  return prepare.run(prepare.build_parser().parse_args([*map(str, argv), "--quiet"]))


def _proto(history, target) -> bytes:
  feature = {
    "history": tf.train.Feature(int64_list=tf.train.Int64List(value=history)),
    "target": tf.train.Feature(int64_list=tf.train.Int64List(value=target)),
  }
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def test_batch_encoder_gives_the_bytes_of_the_protobuf_serializer():
  rng = np.random.default_rng(0)
  for _ in range(30):
    n = int(rng.integers(1, 40))
    hist = [
      rng.integers(1, 10 ** rng.integers(1, 13), rng.integers(0, 300)).tolist() for _ in range(n)
    ]
    tgt = [
      rng.integers(1, 10 ** rng.integers(1, 13), rng.integers(0, 4)).tolist() for _ in range(n)
    ]
    assert encode_batch(ragged(hist), ragged(tgt)) == [_proto(h, t) for h, t in zip(hist, tgt)]


def test_shards_hold_contiguous_nearly_equal_runs():
  for total, k in [(10, 3), (2, 5), (0, 2), (1000, 7)]:
    starts = shard_starts(total, k)
    assert starts[0] == 0 and starts[-1] == total and (np.diff(starts) >= 0).all()
    assert np.diff(starts).max() - np.diff(starts).min() <= 1


@pytest.mark.parametrize("protocol", ["loo", "user_split", "given"])
def test_example_counts_match_the_examples(protocol):
  rng = np.random.default_rng(1)
  for _ in range(200):
    n = int(rng.integers(1 if protocol != "loo" else 3, 12))
    s = rng.integers(0, 50, n)
    lab = rng.integers(0, 3, n) if protocol == "given" else None
    for split in protocols.SPLITS:
      built = list(protocols.user_examples(protocol, split, s, lab, None))
      assert protocols.count_user_examples(protocol, split, n, lab) == len(built)


def test_a_file_read_in_parts_gives_the_rows_and_line_numbers_of_one_read(tmp_path):
  text = 'user,item,title\nu1,i1,plain\n\nu2,i2,"two\nlines"\nu3,i3,"a ""quote"""\nu4,i4,x\n'
  path = tmp_path / "t.csv"
  path.write_text(text * 20)
  header, rows = readers.iter_rows(path)
  whole = list(rows)
  crossings = {}
  for part_bytes in (7, 40, 333, 1 << 20):
    starts = readers.split_at_lines(path, part_bytes)
    got, crossed = [], False
    for k, start in enumerate(starts):
      end = starts[k + 1] if k + 1 < len(starts) else None
      part = readers.ByteRange(start, end, readers.count_lines(path, 0, start))
      try:
        got += list(readers.iter_rows(path, names=header if start else None, part=part)[1])
      except DataError:  # a part that starts inside a quoted field
        pass
      # a row that runs across `end` (the quoted line break) is read by the part before
      crossed |= end is not None and part.stopped_at != end
    crossings[part_bytes] = crossed
    if not crossed:
      assert got == whole, part_bytes
  assert crossings[7] and not crossings[1 << 20]


@pytest.fixture(scope="module")
def single_and_sharded(tmp_path_factory):
  d = tmp_path_factory.mktemp("shards")
  argv = ["--format", "csv", "--interactions", FIX / "log.csv", "--k-core", "2"]
  return _run(*argv, "--out", d / "single"), _run(*argv, "--shards", "3", "--out", d / "sharded")


def test_shards_read_in_order_are_the_single_file(single_and_sharded):
  single, sharded = (PreparedDataset.load(p) for p in single_and_sharded)
  meta = json.loads((sharded.path / "dataset.json").read_text())
  assert meta["splits"]["train"]["files"] == [
    f"train-0000{k}-of-00003.tfrecord.gz" for k in range(3)
  ]
  for split in single.splits:
    a = [r.numpy() for r in single.records(split)]
    assert a == [r.numpy() for r in sharded.records(split)]
    assert sum(meta["splits"][split]["shard_examples"]) == len(a)
  e1 = [b["history"].tolist() for b in eval_dataset(single, "test", 5, 2).as_numpy_iterator()]
  assert e1 == [
    b["history"].tolist() for b in eval_dataset(sharded, "test", 5, 2).as_numpy_iterator()
  ]
  assert (single.item_counts == sharded.item_counts).all()


def test_a_shard_count_that_disagrees_with_its_file_names_the_shard(single_and_sharded, tmp_path):
  import shutil

  d = tmp_path / "copy"
  shutil.copytree(single_and_sharded[1], d)
  meta = json.loads((d / "dataset.json").read_text())
  counts = meta["splits"]["valid"]["shard_examples"]
  counts[0], counts[1] = counts[0] + 1, counts[1] - 1
  (d / "dataset.json").write_text(json.dumps(meta))
  with pytest.raises(DataError, match="shard 0 of split 'valid'.*valid-00000-of-00003"):
    PreparedDataset.load(d)
