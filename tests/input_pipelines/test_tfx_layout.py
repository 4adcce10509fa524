"""ExampleGen-ready data (input_pipelines.tfx_layout): the layout TFX 1.21's ImportExampleGen
writes, and the way back from it to the prepared directory training reads."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from input_pipelines import prepare, tfx_layout
from input_pipelines.dataset import PreparedDataset
from input_pipelines.errors import DataError, run_cli
from input_pipelines.synthetic import generate

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  root = tmp_path_factory.mktemp("layout")
  prepared = generate(root / "prepared", seed=2, num_items=120, num_users=90, num_topics=4)
  return prepared, tfx_layout.write_tfx_layout(prepared, root / "tfx")


def _records(file, compression=""):
  return list(tf.data.TFRecordDataset(str(file), compression).as_numpy_iterator())


def _examples(file, compression):
  return [tf.train.Example.FromString(r) for r in _records(file, compression)]


def test_layout_has_examplegen_names_gzip_files_and_raw_ids(layout):
  prepared, out = layout
  assert sorted(p.name for p in out.iterdir()) == [
    "Split-eval",
    "Split-test",
    "Split-train",
    "items",
    "schema.pbtxt",
  ]
  ds = PreparedDataset.load(prepared)
  for split, name in (("train", "train"), ("valid", "eval"), ("test", "test")):
    files = list((out / f"Split-{name}").iterdir())
    assert [f.name for f in files] == ["data_tfrecord-00000-of-00001.gz"]
    with gzip.open(files[0]) as f:  # real gzip, as ExampleGen's .gz shards
      f.read(1)
    got = _examples(files[0], "GZIP")
    source = _examples(ds.split_path(split), "")
    assert len(got) == len(source) == ds.num_examples(split)
    for g, s in zip(got, source):
      for field in ("history", "target"):
        ids = [ds.vocab[i] for i in s.features.feature[field].int64_list.value]
        assert [v.decode() for v in g.features.feature[field].bytes_list.value] == ids


def test_schema_describes_every_example(layout):
  from tensorflow_metadata.proto.v0 import schema_pb2

  _, out = layout
  schema = tfx_layout.read_schema(out / "schema.pbtxt")
  features = {f.name: f for f in schema.feature}
  assert set(features) == {"history", "target"}
  assert list(schema.default_environment) == ["TRAINING", "SERVING"]
  assert list(features["target"].not_in_environment) == ["SERVING"]  # the label
  for split in ("train", "eval", "test"):
    for example in _examples(out / f"Split-{split}" / tfx_layout.shard_file(0, 1), "GZIP"):
      for name, feature in features.items():
        value = example.features.feature[name]
        assert feature.type == schema_pb2.BYTES and value.WhichOneof("kind") == "bytes_list"
        assert len(value.bytes_list.value) >= feature.value_count.min


def test_round_trip_gives_the_same_training_data(layout, tmp_path):
  prepared, out = layout
  back = tfx_layout.read_tfx_layout(out, tmp_path / "back")
  a, b = PreparedDataset.load(prepared), PreparedDataset.load(back)
  assert a.splits == b.splits and list(a.vocab) == list(b.vocab)
  for split in a.splits:  # the same examples, byte for byte
    assert _records(a.split_path(split)) == _records(b.split_path(split)), split
  for name, info in a.meta["modalities"].items():  # the item tables untouched
    assert b.meta["modalities"][name] == info
    for rel in (info["file"], info["present_file"]):
      assert (prepared / rel).read_bytes() == (back / rel).read_bytes()
  np.testing.assert_array_equal(a.item_counts, b.item_counts)
  assert b.meta["protocol"] == a.meta["protocol"]
  assert b.meta["recommended_max_len"] == a.meta["recommended_max_len"]


def test_examplegen_shards_and_a_prepared_item_side_read_alike(layout, tmp_path):
  """ExampleGen writes N shards; a prepared directory works as the item side too."""
  prepared, out = layout
  records = _records(out / "Split-train" / tfx_layout.shard_file(0, 1), "GZIP")
  split_dir = tmp_path / "examples" / "Split-train"
  split_dir.mkdir(parents=True)
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  for shard, part in enumerate((records[:100], records[100:])):
    with tf.io.TFRecordWriter(str(split_dir / tfx_layout.shard_file(shard, 2)), options) as w:
      for r in part:
        w.write(r)
  back = tfx_layout.examples_to_prepared(
    tmp_path / "back", prepared, {"train": [str(split_dir / "*")]}
  )
  ds = PreparedDataset.load(back)
  assert ds.splits == ["train"]
  assert _records(ds.split_path("train")) == _records(
    PreparedDataset.load(prepared).split_path("train")
  )


def _write(path, examples, compression="GZIP"):
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type=compression)) as w:
    for e in examples:
      w.write(e.SerializeToString())


def _example(**features):
  out = {}
  for name, values in features.items():
    if values and isinstance(values[0], int):
      out[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    else:
      out[name] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[v.encode() for v in values])
      )
  return tf.train.Example(features=tf.train.Features(feature=out))


@pytest.mark.parametrize(
  "bad, message",
  [
    (_example(history=["item_00001"], target=["no-such"]), "record 2, field 'target': item id 'no-such' is not in"),
    (_example(history=["item_00001", "nope"], target=["item_00002"]), "record 2, field 'history': item id 'nope'"),
    (_example(history=["item_00001"], target=[]), "record 2, field 'target': example without a target"),
    (_example(history=[3, 4], target=[5]), "record 2, field 'history': is a int64_list, expected a bytes_list"),
  ],
)  # fmt: skip
def test_bad_examples_name_file_record_and_field(layout, tmp_path, bad, message):
  _, out = layout
  file = tmp_path / "ex" / "Split-train" / tfx_layout.shard_file(0, 1)
  _write(file, [_example(history=["item_00003"], target=["item_00004"]), bad])
  with pytest.raises(DataError, match=str(file) + ", " + message.replace("(", r"\(")):
    tfx_layout.read_tfx_layout(tmp_path / "ex", tmp_path / "out", out / "items")
  assert not (tmp_path / "out").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["ex"]  # no staging directory left


def test_uncompressed_files_are_read_too(layout, tmp_path):
  _, out = layout
  _write(
    tmp_path / "ex" / "Split-train" / "part.tfrecord",
    [_example(history=[], target=["item_00004"])],
    "",
  )
  back = tfx_layout.read_tfx_layout(tmp_path / "ex", tmp_path / "out", out / "items")
  assert PreparedDataset.load(back).num_examples("train") == 1


def test_prepare_writes_the_layout_next_to_the_prepared_directory(tmp_path):
  args = ["--format", "csv", "--interactions", str(FIXTURES / "log.csv"), "--quiet"]
  prepare.main([*args, "--out", str(tmp_path / "p"), "--tfx-out", str(tmp_path / "t")])
  assert (tmp_path / "t" / "Split-eval" / tfx_layout.shard_file(0, 1)).is_file()
  back = tfx_layout.read_tfx_layout(tmp_path / "t", tmp_path / "back")
  a, b = PreparedDataset.load(tmp_path / "p"), PreparedDataset.load(back)
  for split in a.splits:
    assert _records(a.split_path(split)) == _records(b.split_path(split))
  # a sharded prepared directory (--shards) gives the same layout
  prepare.main(
    [*args, "--out", str(tmp_path / "ps"), "--shards", "2", "--tfx-out", str(tmp_path / "ts")]
  )
  for split in ("train", "eval", "test"):
    file = tfx_layout.shard_file(0, 1)
    assert _records(tmp_path / "ts" / f"Split-{split}" / file, "GZIP") == _records(
      tmp_path / "t" / f"Split-{split}" / file, "GZIP"
    )
  # an existing --tfx-out is refused before anything is written
  with pytest.raises(FileExistsError, match="--overwrite"):
    prepare.main([*args, "--out", str(tmp_path / "p2"), "--tfx-out", str(tmp_path / "t")])
  assert not (tmp_path / "p2").exists()


def test_command_line_both_ways(layout, tmp_path, capsys):
  prepared, _ = layout
  t, p = str(tmp_path / "t"), str(tmp_path / "p")
  assert run_cli(tfx_layout.main, ["--from-prepared", str(prepared), "--out", t]) == 0
  assert run_cli(tfx_layout.main, ["--from-examples", t, "--out", t]) == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last == f"error: output directory already exists: {t} (pass --overwrite)"
  assert run_cli(tfx_layout.main, ["--from-examples", t, "--out", p]) == 0
  assert json.loads((tmp_path / "p" / "dataset.json").read_text())["source"] == (
    "input_pipelines.tfx_layout"
  )
