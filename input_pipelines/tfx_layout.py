"""ExampleGen-ready data: a prepared dataset directory <-> the layout of a TFX Examples artifact.

`python -m input_pipelines.tfx_layout --from-prepared DIR --out TFX_DIR` writes::

    TFX_DIR/
      Split-train/data_tfrecord-00000-of-00001.gz   gzipped TFRecords of tf.train.Example:
      Split-eval/data_tfrecord-00000-of-00001.gz      `history` bytes list: raw item ids,
      Split-test/data_tfrecord-00000-of-00001.gz                chronological (may be empty)
                                                      `target`  bytes list: raw item ids (>= 1)
      schema.pbtxt     tensorflow_metadata Schema of the two features (ImportSchemaGen reads it)
      items/           the item side: item_vocab.txt, features/<modality>.npy (+ _present.npy)
                       copied byte for byte, dataset.json (the source's, with no splits)

and `--from-examples EXAMPLES_DIR --items ITEMS_DIR --out DIR` reads such a directory, or the
output directory of any ExampleGen (an Examples artifact's URI), back into a prepared directory
(`input_pipelines.prepared`), which is what training reads.

The names are TFX 1.21's (github.com/tensorflow/tfx at v1.21.0): an Examples artifact keeps
split `<name>` in `<uri>/Split-<name>/` (`tfx/types/standard_artifact_utils.py`,
`get_split_uris`) and ExampleGen writes `data_tfrecord-SSSSS-of-NNNNN.gz` there
(`tfx/components/example_gen/write_split.py`: `DEFAULT_FILE_NAME = 'data_tfrecord'`,
`file_name_suffix='.gz'`; the artifact's `file_format` is `tfrecords_gzip`). The prepared splits
map as train <-> train, valid <-> eval (TFX's default evaluation split, the one the Trainer's
`eval_files` name), test <-> test; other split names are kept.

Examples carry raw item ids (bytes), not the prepared directory's vocabulary indices: the data
is then meaningful to StatisticsGen / SchemaGen, and `predict_examples` of the exported model
takes the `eval` examples as they are (its `history` feature). Reading them back maps ids through
the item vocabulary; an id that is not in it is an error naming the file, record and field.
Files ending in `.gz` are read as gzipped TFRecords, others as plain TFRecords.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import json
import pathlib
import shutil
import sys
from typing import Iterator, Mapping, Sequence

import numpy as np

from input_pipelines import NUM_RESERVED
from input_pipelines.errors import DataError, run_cli

SPLIT_PREFIX = "Split-"
FILE_PREFIX = "data_tfrecord"
SCHEMA_FILE = "schema.pbtxt"
ITEMS_DIR = "items"
# prepared split name -> TFX split name (others are the same in both)
TO_TFX = {"valid": "eval"}
FROM_TFX = {v: k for k, v in TO_TFX.items()}
FEATURES = ("history", "target")
READ_BATCH = 8192


def tfx_split(split: str) -> str:
  """The TFX split name of a prepared split (`valid` -> `eval`)."""
  return TO_TFX.get(split, split)


def prepared_split(name: str) -> str:
  """The prepared split name of a TFX split (`eval` -> `valid`)."""
  return FROM_TFX.get(name, name)


def shard_file(shard: int, num_shards: int) -> str:
  """ExampleGen's file name of one shard: `data_tfrecord-00000-of-00001.gz`."""
  return f"{FILE_PREFIX}-{shard:05d}-of-{num_shards:05d}.gz"


def split_of_pattern(pattern: str) -> str:
  """The TFX split a file pattern of `FnArgs.train_files` / `eval_files` names
  (`<uri>/Split-eval/*` -> `eval`; a directory not named `Split-<name>` gives its own name)."""
  parent = pathlib.PurePosixPath(str(pattern).rstrip("/")).parent.name
  return parent[len(SPLIT_PREFIX) :] if parent.startswith(SPLIT_PREFIX) else parent


# --- the schema --------------------------------------------------------------------------------------


def make_schema(min_history: int = 0):
  """The tensorflow_metadata `Schema` of the examples (what SchemaGen infers, written down):
  `history` and `target` BYTES lists present in every example, `target` with at least one value
  and absent in the SERVING environment (the label, not a model input); `min_history` = the
  shortest history in the data."""
  from tensorflow_metadata.proto.v0 import schema_pb2

  schema = schema_pb2.Schema()
  schema.default_environment.extend(["TRAINING", "SERVING"])
  for name, least, comment in (
    ("history", min_history, "raw item ids the user interacted with, oldest first"),
    ("target", 1, "raw item ids of the next interaction(s): the label"),
  ):
    feature = schema.feature.add()
    feature.name = name
    feature.type = schema_pb2.BYTES
    feature.presence.min_fraction = 1.0
    feature.presence.min_count = 1
    feature.value_count.min = least
    feature.annotation.comment.append(comment)
    if name == "target":
      feature.not_in_environment.append("SERVING")
  return schema


def read_schema(path) -> object:
  """A schema.pbtxt as a `schema_pb2.Schema`; a file that does not parse names itself."""
  from google.protobuf import text_format
  from tensorflow_metadata.proto.v0 import schema_pb2

  try:
    return text_format.Parse(pathlib.Path(path).read_text(encoding="utf-8"), schema_pb2.Schema())
  except text_format.ParseError as err:
    raise DataError(path, f"not a tensorflow_metadata Schema in text format: {err}") from None


# --- prepared -> TFX layout ----------------------------------------------------------------------------


def _index_batches(records):
  """Batches of a prepared split's records (`PreparedDataset.records`: one file or its shards, in
  order): (history values, history row splits, target values, target row splits) as numpy,
  vocabulary indices."""
  import tensorflow as tf

  spec = {f: tf.io.RaggedFeature(tf.int64) for f in FEATURES}

  def parse(serialized):
    p = tf.io.parse_example(serialized, spec)
    return tuple(t for f in FEATURES for t in (p[f].flat_values, p[f].row_splits))

  return records.batch(READ_BATCH).map(parse).as_numpy_iterator()


def _bytes_example(history: Sequence[bytes], target: Sequence[bytes]) -> bytes:
  import tensorflow as tf

  feature = {
    name: tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))
    for name, values in (("history", history), ("target", target))
  }
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def write_tfx_layout(prepared_dir, out_dir, overwrite: bool = False) -> pathlib.Path:
  """Writes the TFX layout (module docstring) of a prepared dataset directory, atomically (a
  temporary sibling renamed at the end). Returns `out_dir`."""
  import tensorflow as tf

  from input_pipelines.dataset import PreparedDataset
  from input_pipelines.prepared import make_tmp_dir, release_tmp_lock, remove_stale_tmp_dirs

  out_dir = pathlib.Path(out_dir)
  check_target(out_dir, overwrite)
  ds = PreparedDataset.load(prepared_dir)
  vocab = np.asarray([v.encode("utf-8") for v in ds.vocab], dtype=object)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_tmp_dirs(out_dir.parent, out_dir.name)
  tmp, lock = make_tmp_dir(out_dir.parent, out_dir.name)
  try:
    min_history = None
    for split in ds.splits:
      split_dir = tmp / f"{SPLIT_PREFIX}{tfx_split(split)}"
      split_dir.mkdir()
      options = tf.io.TFRecordOptions(compression_type="GZIP")
      with tf.io.TFRecordWriter(str(split_dir / shard_file(0, 1)), options) as writer:
        for h_vals, h_rows, t_vals, t_rows in _index_batches(ds.records(split)):
          h_ids, t_ids = vocab[h_vals], vocab[t_vals]
          lengths = np.diff(h_rows)
          least = int(lengths.min()) if lengths.size else 0
          min_history = least if min_history is None else min(min_history, least)
          for i in range(len(h_rows) - 1):
            writer.write(
              _bytes_example(h_ids[h_rows[i] : h_rows[i + 1]], t_ids[t_rows[i] : t_rows[i + 1]])
            )
    from google.protobuf import text_format

    schema = make_schema(min_history or 0)
    (tmp / SCHEMA_FILE).write_text(text_format.MessageToString(schema), encoding="utf-8")
    _copy_item_side(ds, tmp / ITEMS_DIR)
    _move_into_place(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    release_tmp_lock(lock)
  return out_dir


def _copy_item_side(ds, items: pathlib.Path) -> None:
  """item_vocab.txt and the feature files byte for byte, and dataset.json without splits."""
  meta = dict(ds.meta)
  files = [meta.get("vocab_file", "item_vocab.txt")]
  for info in meta["modalities"].values():
    files += [info["file"], info["present_file"]]
  for rel in files:
    (items / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ds.path / rel, items / rel)
  meta["splits"] = {}
  meta["items_of"] = str(ds.path)
  (items / "dataset.json").write_text(
    json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
  )


def _move_into_place(tmp: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Renames the finished `tmp` to `out_dir`; an existing `out_dir` (overwrite) is moved aside
  first and removed after, so readers see the old or the new directory, never none."""
  if not out_dir.exists():
    os.rename(tmp, out_dir)
    return
  old = out_dir.parent / f".old-{out_dir.name}-{os.getpid()}"
  os.rename(out_dir, old)
  os.rename(tmp, out_dir)
  shutil.rmtree(old, ignore_errors=True)


def check_target(out_dir, overwrite: bool) -> None:
  """FileExistsError when `out_dir` exists and `overwrite` is off (checked before any work)."""
  if pathlib.Path(out_dir).exists() and not overwrite:
    raise FileExistsError(f"output directory already exists: {out_dir} (pass --overwrite)")


# --- TFX layout / ExampleGen output -> prepared ----------------------------------------------------------


def split_files(patterns: Sequence[str]) -> list[str]:
  """The files of a split's patterns (`FnArgs.train_files` style: `<uri>/Split-train/*`), sorted
  per pattern, in pattern order. A pattern that matches nothing is an error."""
  import tensorflow as tf

  files = []
  for pattern in patterns:
    found = sorted(f for f in tf.io.gfile.glob(str(pattern)) if not tf.io.gfile.isdir(f))
    if not found:
      raise FileNotFoundError(f"no example files match {pattern}")
    files += [f for f in found if f not in files]
  return files


class _ItemIndex:
  """Raw item id (bytes) -> vocabulary index, vectorized in TensorFlow (-1 = unknown)."""

  def __init__(self, vocab: np.ndarray):
    import tensorflow as tf

    keys = tf.constant([str(v) for v in vocab[NUM_RESERVED:]])
    values = tf.range(NUM_RESERVED, len(vocab), dtype=tf.int64)
    self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), -1)


def _is_gzip(file: str) -> bool:
  return file.endswith((".gz", ".gzip"))


def _first_bad_record(file: str) -> tuple[int, str, str]:
  """(1-based record, field, what is wrong) of the first record of `file` that is not a
  tf.train.Example with bytes lists `history` / `target`."""
  import tensorflow as tf

  records = tf.data.TFRecordDataset(file, compression_type="GZIP" if _is_gzip(file) else "")
  n = 0
  try:
    for n, raw in enumerate(records.as_numpy_iterator(), start=1):
      try:
        example = tf.train.Example.FromString(raw)
      except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError)
        return n, "", "not a serialized tf.train.Example"
      for field in FEATURES:
        kind = example.features.feature[field].WhichOneof("kind")
        if kind not in (None, "bytes_list"):
          return (
            n,
            field,
            f"is a {kind}, expected a bytes_list of raw item ids (int64 indices are the "
            "prepared directory's format: convert it with "
            "python -m input_pipelines.tfx_layout --from-prepared)",
          )
  except tf.errors.OpError as err:
    return n + 1, "", f"unreadable TFRecord ({err.message.splitlines()[0]})"
  return n + 1, "", "unreadable"


def read_examples(files: Sequence[str], vocab: np.ndarray) -> Iterator[tuple[list, list]]:
  """(history, targets) vocabulary indices of every example in `files`, in file order.

  Each file is read in large batches (parse + id lookup in TensorFlow). Raises DataError naming
  the file, the record (1-based, within the file) and the field for a record that is not a
  tf.train.Example with bytes lists `history` / `target`, an example without target, or an item
  id not in `vocab`.
  """
  import tensorflow as tf

  index = _ItemIndex(vocab)
  spec = {f: tf.io.RaggedFeature(tf.string) for f in FEATURES}

  def parse(serialized):
    p = tf.io.parse_example(serialized, spec)
    out = []
    for f in FEATURES:
      ids = p[f].flat_values
      out += [index.table.lookup(ids), ids, p[f].row_splits]
    return tuple(out)

  for file in files:
    data = (
      tf.data.TFRecordDataset(file, compression_type="GZIP" if _is_gzip(file) else "")
      .batch(READ_BATCH)
      .map(parse)
    )
    done = 0
    try:
      for h_idx, h_ids, h_rows, t_idx, t_ids, t_rows in data.as_numpy_iterator():
        for field, idx, ids, rows in (
          ("history", h_idx, h_ids, h_rows),
          ("target", t_idx, t_ids, t_rows),
        ):
          if (idx < 0).any():
            j = int(np.flatnonzero(idx < 0)[0])
            record = done + int(np.searchsorted(rows, j, side="right"))
            raise DataError(
              file,
              f"item id {ids[j].decode('utf-8', 'replace')!r} is not in the item vocabulary",
              line=record,
              field=field,
              line_label="record",
            )
        empty = np.flatnonzero(np.diff(t_rows) == 0)
        if empty.size:
          raise DataError(
            file, "example without a target", done + int(empty[0]) + 1, "target", "record"
          )
        for i in range(len(h_rows) - 1):
          yield (
            h_idx[h_rows[i] : h_rows[i + 1]].tolist(),
            t_idx[t_rows[i] : t_rows[i + 1]].tolist(),
          )
        done += len(h_rows) - 1
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
      record, field, what = _first_bad_record(file)
      raise DataError(file, what, record, field or None, "record") from None


# Fields of dataset.json that write_prepared computes (never copied from the item side).
_COMPUTED = (
  "schema_version",
  "num_items",
  "vocab_size",
  "pad_index",
  "oov_index",
  "vocab_file",
  "modalities",
  "splits",
  "statistics",
  "items_of",
)


def examples_to_prepared(
  out_dir,
  items_dir,
  splits: Mapping[str, Sequence[str]],
  overwrite: bool = False,
) -> pathlib.Path:
  """A prepared dataset directory from example files and an item side.

  Args:
    out_dir: the prepared directory to write (atomically, `input_pipelines.prepared`).
    items_dir: item_vocab.txt, features/ and dataset.json: the `items/` of a TFX layout, or
      any prepared dataset directory (its splits are ignored).
    splits: prepared split name ("train", "valid", "test", ...) -> file patterns, e.g.
      `{"train": fn_args.train_files, "valid": [".../Split-eval/*"]}`; "train" is required.
    overwrite: replace an existing `out_dir`.

  The item side is kept as it is: item_vocab.txt, the feature files (byte for byte) and their
  dataset.json entries (standardization moments included); the examples are the same index
  lists as the source's. The directory appears atomically (written next to it, then renamed).
  """
  from input_pipelines.dataset import PreparedDataset
  from input_pipelines.prepared import write_prepared

  out_dir = pathlib.Path(out_dir)
  check_target(out_dir, overwrite)
  items = PreparedDataset.load(items_dir)
  files = {split: split_files(patterns) for split, patterns in splits.items()}
  meta = {k: v for k, v in items.meta.items() if k not in _COMPUTED}
  meta["items_source"] = meta.pop("source", None)
  meta["source"] = "input_pipelines.tfx_layout"
  meta["example_files"] = files
  staging = out_dir.parent / f".staging-{out_dir.name}-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  try:
    write_prepared(
      staging,
      list(items.vocab[NUM_RESERVED:]),
      {},  # the item tables are copied below, unchanged
      {split: read_examples(f, items.vocab) for split, f in files.items()},
      meta,
    )
    _add_item_tables(items, staging)
    _move_into_place(staging, out_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out_dir


def _add_item_tables(items, prepared: pathlib.Path) -> None:
  """Copies the item side's feature files and their dataset.json entries into `prepared`."""
  meta_file = prepared / "dataset.json"
  meta = json.loads(meta_file.read_text(encoding="utf-8"))
  for name, info in items.meta["modalities"].items():
    for rel in (info["file"], info["present_file"]):
      (prepared / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(items.path / rel, prepared / rel)
    meta["modalities"][name] = info
  meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def layout_splits(examples_dir) -> dict:
  """{prepared split name: [file pattern]} of the `Split-<name>` directories of an Examples
  artifact directory (TFX split `eval` -> `valid`)."""
  examples_dir = pathlib.Path(examples_dir)
  if not examples_dir.is_dir():
    raise FileNotFoundError(f"examples directory not found: {examples_dir}")
  found = sorted(p for p in examples_dir.glob(f"{SPLIT_PREFIX}*") if p.is_dir())
  if not found:
    raise FileNotFoundError(f"no {SPLIT_PREFIX}<name> directories in {examples_dir}")
  return {prepared_split(p.name[len(SPLIT_PREFIX) :]): [str(p / "*")] for p in found}


def read_tfx_layout(examples_dir, out_dir, items_dir=None, overwrite: bool = False):
  """`examples_to_prepared` for every `Split-<name>` of `examples_dir`; the item side defaults
  to `examples_dir/items`."""
  items_dir = items_dir or pathlib.Path(examples_dir) / ITEMS_DIR
  return examples_to_prepared(out_dir, items_dir, layout_splits(examples_dir), overwrite)


# --- command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m input_pipelines.tfx_layout",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  mode = p.add_mutually_exclusive_group(required=True)
  mode.add_argument(
    "--from-prepared", metavar="DIR", help="a prepared dataset directory -> the TFX layout"
  )
  mode.add_argument(
    "--from-examples",
    metavar="DIR",
    help="a TFX layout or an ExampleGen output directory (Split-<name>/) -> a prepared directory",
  )
  p.add_argument("--items", metavar="DIR", help="--from-examples: item side (default DIR/items)")
  p.add_argument("--out", required=True, help="directory to write")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.from_prepared:
    if args.items:
      raise ValueError("--items goes with --from-examples")
    out = write_tfx_layout(args.from_prepared, args.out, args.overwrite)
  else:
    out = read_tfx_layout(args.from_examples, args.out, args.items, args.overwrite)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(run_cli(main))
