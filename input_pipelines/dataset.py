"""Reading a prepared dataset directory and turning its splits into tf.data pipelines.

Histories are **right-aligned**: the last position holds the most recent item, padding (0) is on
the left, and histories longer than `max_len` keep their last `max_len` items (DESIGN.md
section 3). All parsing is vectorized over batches: records are batched first, then parsed with
`tf.io.parse_example`; no Python code runs per example.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow as tf

from input_pipelines import NUM_RESERVED, SCHEMA_VERSION
from input_pipelines.errors import DataError

_PARSE_SPEC = {
  "history": tf.io.VarLenFeature(tf.int64),
  "target": tf.io.VarLenFeature(tf.int64),
}


@dataclasses.dataclass
class PreparedDataset:
  """A loaded prepared dataset directory (see `input_pipelines.prepared`).

  Attributes:
    path: the directory.
    meta: the parsed dataset.json.
    vocab: str [V]; row = item index (0 "[PAD]", 1 "[OOV]").
    vocab_size: V = num_items + 2.
    features: modality -> float32 [V, D] (standardized; rows 0, 1 and absent items zero).
    present: modality -> bool [V].
    item_counts: int64 [V]; how often each item is a target in the train split.
    seen_in_train: bool [V]; item occurs anywhere (history or target) in the train split.
  """

  path: pathlib.Path
  meta: dict
  vocab: np.ndarray
  vocab_size: int
  features: dict
  present: dict
  item_counts: np.ndarray
  seen_in_train: np.ndarray
  _repeat_rates: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @classmethod
  def load(cls, path, validate: bool = True) -> "PreparedDataset":
    """Reads and (with `validate`) checks a prepared directory before anything trains on it.

    Every problem is a `DataError` naming the file and, where there is one, the line, row or
    record (1-based): dataset.json that is not JSON or lacks fields, a vocabulary, feature
    or mask file whose size disagrees with dataset.json, NaN/Inf in a feature row, and, for
    every split, a TFRecord file that is truncated or corrupt, holds an item index outside
    [1, vocab_size) or an example without target, or holds a different number of examples
    than dataset.json declares.
    """
    path = pathlib.Path(path)
    if not path.is_dir():
      raise FileNotFoundError(f"prepared dataset directory not found: {path}")
    meta_file = path / "dataset.json"
    if not meta_file.is_file():
      raise FileNotFoundError(f"missing dataset.json in prepared dataset directory: {meta_file}")
    meta = _read_meta(meta_file)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
      raise ValueError(
        f"{meta_file}: field 'schema_version' is {version!r}, expected {SCHEMA_VERSION}"
      )
    for field in ("vocab_size", "num_items", "splits", "modalities"):
      if field not in meta:
        raise ValueError(f"{meta_file}: missing field '{field}'")
    for field in ("vocab_size", "num_items"):
      if (
        not isinstance(meta[field], int)
        or isinstance(meta[field], bool)
        or meta[field] < (NUM_RESERVED + 1 if field == "vocab_size" else 1)
      ):
        raise DataError(meta_file, f"{meta[field]!r} is not a positive item count", field=field)
    for field in ("splits", "modalities"):
      if not isinstance(meta[field], dict):
        raise DataError(meta_file, "expected an object", field=field)
    vocab_size = int(meta["vocab_size"])
    if vocab_size != int(meta["num_items"]) + NUM_RESERVED:
      raise ValueError(
        f"{meta_file}: field 'vocab_size' ({vocab_size}) != num_items + {NUM_RESERVED}"
      )

    vocab_file = path / meta.get("vocab_file", "item_vocab.txt")
    if not vocab_file.is_file():
      raise FileNotFoundError(f"missing item vocabulary file: {vocab_file}")
    with open(vocab_file, encoding="utf-8") as f:
      vocab = np.array(f.read().splitlines(), dtype=str)
    if vocab.shape[0] != vocab_size:
      raise ValueError(f"{vocab_file}: has {vocab.shape[0]} rows, expected vocab_size {vocab_size}")

    features, present = {}, {}
    for name, info in meta["modalities"].items():
      for key in ("file", "present_file"):
        if key not in info:
          raise ValueError(f"{meta_file}: modality '{name}' lacks field '{key}'")
      table = _load_npy(path / info["file"], f"modality '{name}'")
      mask = _load_npy(path / info["present_file"], f"modality '{name}' present mask")
      if table.ndim != 2 or table.shape[0] != vocab_size:
        raise ValueError(
          f"{path / info['file']}: feature rows {table.shape} != vocab_size {vocab_size}"
        )
      if "dim" in info and table.shape[1] != int(info["dim"]):
        raise ValueError(
          f"{path / info['file']}: feature dim {table.shape[1]} != field "
          f"'dim' {info['dim']} in dataset.json"
        )
      if mask.shape != (vocab_size,):
        raise ValueError(f"{path / info['present_file']}: shape {mask.shape} != ({vocab_size},)")
      if validate:
        _check_finite(path / info["file"], table)
      features[name] = table.astype(np.float32, copy=False)
      present[name] = mask.astype(bool, copy=False)

    ds = cls(
      path=path,
      meta=meta,
      vocab=vocab,
      vocab_size=vocab_size,
      features=features,
      present=present,
      item_counts=np.zeros(vocab_size, np.int64),
      seen_in_train=np.zeros(vocab_size, bool),
    )
    for split in meta["splits"]:
      for file in split_files(path, meta, split):
        if not file.is_file():
          raise FileNotFoundError(f"missing split file for '{split}': {file}")
    if validate:
      for split in meta["splits"]:
        if split != "train":
          scan_split_files(ds, split, int(ds.num_examples(split)))
    if "train" in meta["splits"]:
      ds.item_counts, ds.seen_in_train = _train_counts(
        ds, int(ds.num_examples("train")) if validate else None
      )
    return ds

  @property
  def num_items(self) -> int:
    return self.vocab_size - NUM_RESERVED

  def repeat_rate(self, split: str = "train") -> float:
    """Share of the split's targets already in the example's history (module function
    `repeat_rate`), computed once per split and kept."""
    if split not in self._repeat_rates:
      self._repeat_rates[split] = repeat_rate(self, split)
    return self._repeat_rates[split]

  def history_cut_at(self) -> int | None:
    """`prepare --max-history` when it cut some stored history, else None.

    The stored history of an example is the user's whole earlier sequence unless prepare
    kept only its last `max_history` items; a split whose longest stored history reaches
    that limit may have been cut (dataset.json records both numbers).
    """
    limit = self.meta.get("max_history")
    lengths = (self.meta.get("statistics") or {}).get("max_history_length") or {}
    longest = max([int(v) for v in lengths.values()] or [0])
    return int(limit) if limit and longest >= int(limit) else None

  @property
  def splits(self) -> list:
    return list(self.meta["splits"])

  def num_examples(self, split: str) -> int:
    return int(self._split_info(split)["num_examples"])

  def split_path(self, split: str) -> pathlib.Path:
    """The split's one TFRecord file; a sharded split has several: `split_files`, `records`."""
    files = self.split_files(split)
    if len(files) != 1 or self.compression(split):
      raise ValueError(
        f"split '{split}' of {self.path} is sharded ({len(files)} gzipped files): read it with "
        "PreparedDataset.records(split) or split_files(split)"
      )
    return files[0]

  def split_files(self, split: str) -> list:
    """The split's TFRecord file(s), in order (see `input_pipelines.shards`)."""
    self._split_info(split)
    return split_files(self.path, self.meta, split)

  def compression(self, split: str) -> str:
    """ "" or "GZIP"."""
    return self._split_info(split).get("compression") or ""

  def records(self, split: str) -> tf.data.Dataset:
    """The split's serialized tf.train.Examples in file order (shards read in parallel)."""
    self._split_info(split)
    return split_records(self.path, self.meta, split)

  def _split_info(self, split: str) -> dict:
    try:
      return self.meta["splits"][split]
    except KeyError:
      raise KeyError(
        f"unknown split '{split}' in {self.path / 'dataset.json'}; available: "
        f"{sorted(self.meta['splits'])}"
      ) from None


def _split_entry(path: pathlib.Path, meta: dict, split: str) -> dict:
  info = meta["splits"][split]
  ok = isinstance(info, dict) and "num_examples" in info
  ok = ok and (isinstance(info.get("file"), str) or isinstance(info.get("files"), list))
  if not ok:
    raise DataError(
      path / "dataset.json",
      "expected an object with 'file' (or 'files') and 'num_examples'",
      field=f"splits.{split}",
    )
  return info


def split_files(path, meta: dict, split: str) -> list:
  """[Path] the TFRecord file(s) of a split of the prepared directory `path` (dataset.json
  `meta`): `file`, or the shards `files` in order."""
  info = _split_entry(pathlib.Path(path), meta, split)
  names = info["files"] if "files" in info else [info["file"]]
  return [pathlib.Path(path) / name for name in names]


def split_records(path, meta: dict, split: str) -> tf.data.Dataset:
  """A split's serialized records in file order. The shards of a sharded split are read and
  decompressed in parallel; interleaving whole shards (a block as long as the longest shard)
  keeps the order of the single-file layout."""
  info = _split_entry(pathlib.Path(path), meta, split)
  files = [str(f) for f in split_files(path, meta, split)]
  compression = info.get("compression") or ""
  if len(files) == 1:
    return tf.data.TFRecordDataset(files[0], compression)
  longest = max([int(n) for n in info.get("shard_examples") or []] or [0])
  return tf.data.Dataset.from_tensor_slices(files).interleave(
    lambda f: tf.data.TFRecordDataset(f, compression),
    cycle_length=min(len(files), 8) if longest else 1,
    block_length=max(longest, 1),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )


def _read_meta(meta_file: pathlib.Path) -> dict:
  """dataset.json as a dict; a file that is not JSON (or not an object) names itself."""
  try:
    text = meta_file.read_text(encoding="utf-8")
  except UnicodeDecodeError as err:
    line = meta_file.read_bytes()[: err.start].count(b"\n") + 1
    raise DataError(
      meta_file, f"invalid UTF-8 (byte 0x{err.object[err.start]:02x})", line=line
    ) from None
  try:
    meta = json.loads(text)
  except json.JSONDecodeError as err:
    raise DataError(
      meta_file, f"invalid JSON: {err.msg} (column {err.colno})", line=err.lineno
    ) from None
  if not isinstance(meta, dict):
    raise DataError(meta_file, "invalid JSON: expected an object at the top level", line=1)
  return meta


def _load_npy(file: pathlib.Path, what: str) -> np.ndarray:
  if not file.is_file():
    raise FileNotFoundError(f"missing feature file for {what}: {file}")
  try:
    return np.load(file, allow_pickle=False)
  except (ValueError, OSError, EOFError) as err:
    raise DataError(file, f"not a readable .npy array ({what}): {err}") from None


def _check_finite(file: pathlib.Path, table: np.ndarray) -> None:
  """DataError naming the first feature row with a NaN or infinity."""
  if table.dtype.kind not in "fiub":
    raise DataError(file, f"feature values have dtype {table.dtype}, expected numbers")
  if table.dtype.kind != "f":
    return
  finite = np.isfinite(table).all(axis=1)
  if not finite.all():
    row = int(np.flatnonzero(~finite)[0])
    col = int(np.flatnonzero(~np.isfinite(table[row]))[0])
    raise DataError(
      file,
      f"row {row} (item index {row}), column {col}: {table[row, col]}; "
      "features must be finite (was the file written by "
      "input_pipelines.prepare?)",
    )


SCAN_BATCH = 8192


def _scan_values(serialized):
  parsed = tf.io.parse_example(serialized, _PARSE_SPEC)
  history, target = parsed["history"], parsed["target"]
  target_rows = tf.RaggedTensor.from_sparse(target).row_lengths()
  return (
    history.values,
    history.indices[:, 0],
    target.values,
    target.indices[:, 0],
    tf.shape(serialized)[0],
    target_rows,
  )


def _locate_bad_record(file: pathlib.Path, compression: str = "") -> tuple[int, str]:
  """(1-based number of the first record that cannot be read or parsed, what is wrong)."""
  import re

  n = 0
  records = iter(tf.data.TFRecordDataset(str(file), compression))
  while True:
    try:
      record = next(records)
    except StopIteration:
      return n + 1, "unreadable"
    except tf.errors.OpError as err:
      found = re.search(r"(corrupted|truncated) record at (\d+)", err.message)
      what = (
        f"{found.group(1)} record at byte {found.group(2)}"
        if found
        else "the file ends inside a record"
      )
      return n + 1, what
    n += 1
    try:
      tf.io.parse_example(record[None], _PARSE_SPEC)
    except tf.errors.OpError:
      return n, "not a tf.train.Example with int64 lists 'history' and 'target'"


def scan_split(
  file: pathlib.Path,
  vocab_size: int,
  declared: int | None,
  meta_file: pathlib.Path,
  split: str,
  counts: np.ndarray | None = None,
  seen: np.ndarray | None = None,
  compression: str = "",
) -> int:
  """Reads a whole split file (or one shard) in large parsed batches and checks it (see
  `load`); returns the number of records. With `counts`/`seen`, also accumulates target counts
  and occurrences. `declared`: the number of records dataset.json gives for it."""
  records = tf.data.TFRecordDataset(str(file), compression).batch(SCAN_BATCH).map(_scan_values)
  n = 0
  try:
    for h_vals, h_rows, t_vals, t_rows, size, t_lens in records.as_numpy_iterator():
      for field, vals, rows in (("history", h_vals, h_rows), ("target", t_vals, t_rows)):
        bad = (vals < 1) | (vals >= vocab_size)
        if bad.any():
          i = int(np.flatnonzero(bad)[0])
          raise DataError(
            file,
            f"item index {int(vals[i])} outside [1, {vocab_size}) "
            f"(vocab_size from {meta_file.name})",
            line=n + int(rows[i]) + 1,
            field=field,
            line_label="record",
          )
      empty = np.flatnonzero(t_lens == 0)
      if empty.size:
        raise DataError(
          file,
          "example without a target",
          line=n + int(empty[0]) + 1,
          field="target",
          line_label="record",
        )
      if counts is not None:
        counts += np.bincount(t_vals, minlength=vocab_size)[:vocab_size]
        seen[t_vals] = True
        seen[h_vals] = True
      n += int(size)
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
    record, message = _locate_bad_record(file, compression)
    raise DataError(
      file,
      f"truncated or corrupt TFRecord ({message}); rewrite the split with input_pipelines.prepare",
      line=record,
      line_label="record",
    ) from None
  if declared is not None and n != declared:
    raise _mismatch(meta_file, declared, f"split '{split}'", f"{file.name} holds {n}", split)
  return n


def _mismatch(meta_file, declared, what: str, found: str, split: str, key="num_examples"):
  return DataError(
    meta_file, f"declares {declared} examples for {what} but {found}", field=f"splits.{split}.{key}"
  )


def scan_split_files(
  ds: "PreparedDataset",
  split: str,
  declared: int | None,
  counts: np.ndarray | None = None,
  seen: np.ndarray | None = None,
) -> int:
  """`scan_split` over every file of a split (each shard against its own declared count, then
  the split against `declared`); returns the number of records."""
  meta_file = ds.path / "dataset.json"
  files = ds.split_files(split)
  per_file = ds._split_info(split).get("shard_examples")
  if per_file is not None and len(per_file) != len(files):
    raise DataError(
      meta_file, f"lists {len(files)} files but {len(per_file)} counts", field=f"splits.{split}"
    )
  if len(files) == 1:
    return scan_split(
      files[0], ds.vocab_size, declared, meta_file, split, counts, seen, ds.compression(split)
    )
  n = 0
  for k, file in enumerate(files):
    m = scan_split(file, ds.vocab_size, None, meta_file, split, counts, seen, ds.compression(split))
    if declared is not None and per_file is not None and m != int(per_file[k]):
      what = f"shard {k} of split '{split}'"
      raise _mismatch(
        meta_file, per_file[k], what, f"{file.name} holds {m}", split, "shard_examples"
      )
    n += m
  if declared is not None and n != declared:
    what = f"split '{split}'"
    raise _mismatch(meta_file, declared, what, f"its files hold {n}", split)
  return n


def _train_counts(
  ds: "PreparedDataset", declared: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Target counts and occurrence mask over the train split, read in large parsed batches
  (and checked like every split, see `scan_split`)."""
  counts = np.zeros(ds.vocab_size, np.int64)
  seen = np.zeros(ds.vocab_size, bool)
  scan_split_files(ds, "train", declared, counts, seen)
  seen[:NUM_RESERVED] = False
  return counts, seen


def _repeat_counts(serialized):
  """(history items, their rows, target items, their rows) of a batch of records (rows =
  position of the example in the batch)."""
  parsed = tf.io.parse_example(serialized, _PARSE_SPEC)
  history, target = parsed["history"], parsed["target"]
  return history.values, history.indices[:, 0], target.values, target.indices[:, 0]


def repeat_rate(ds: PreparedDataset, split: str = "train") -> float:
  """Share of a split's targets that already occur in the same example's stored history.

  For the train split of every protocol the stored history of an example is the user's whole
  earlier sequence (unless `prepare --max-history` cut it, see
  `PreparedDataset.history_cut_at`), so this is the share of next items that are repeats of
  something the user did before: the items that excluding the history from the ranking makes
  impossible to recommend. Every listed target counts once (valid/test examples of
  `user_split` list several). Read in large parsed batches (vectorized, no per-example Python).

  Returns: a float in [0, 1].
  """
  records = ds.records(split).batch(SCAN_BATCH).map(_repeat_counts)
  repeats = total = 0
  for h_vals, h_rows, t_vals, t_rows in records.as_numpy_iterator():
    # One key per (example in the batch, item): a target repeats when its key is a history's.
    h_keys = h_rows * ds.vocab_size + h_vals
    t_keys = t_rows * ds.vocab_size + t_vals
    repeats += int(np.isin(t_keys, h_keys).sum())
    total += int(t_vals.size)
  if total == 0:
    raise DataError(ds.split_files(split)[0], f"split '{split}' has no targets")
  return repeats / total


def align_right(ragged: tf.RaggedTensor, max_len: int) -> tf.Tensor:
  """Last `max_len` items of each row, right-aligned, left-padded with 0: int64 [B, max_len]."""
  lengths = tf.minimum(ragged.row_lengths(), max_len)
  starts = ragged.row_starts() + ragged.row_lengths() - lengths  # first kept item per row
  offset = max_len - lengths  # number of padding slots per row
  pos = tf.range(max_len, dtype=tf.int64)[tf.newaxis, :] - offset[:, tf.newaxis]
  valid = pos >= 0
  index = starts[:, tf.newaxis] + tf.maximum(pos, 0)
  values = tf.concat([ragged.values, tf.zeros([1], ragged.values.dtype)], 0)  # safe when empty
  out = tf.gather(values, tf.where(valid, index, tf.zeros_like(index)))
  return tf.where(valid, out, tf.zeros_like(out))


def _parse(serialized: tf.Tensor):
  parsed = tf.io.parse_example(serialized, _PARSE_SPEC)
  history = tf.RaggedTensor.from_sparse(parsed["history"])
  targets = tf.RaggedTensor.from_sparse(parsed["target"])
  return history, targets


def train_dataset(
  ds: PreparedDataset,
  max_len: int,
  batch_size: int,
  num_negatives: int,
  seed: int,
  shuffle: bool = True,
  repeat: bool = False,
  split: str = "train",
  skip_batches: int = 0,
) -> tf.data.Dataset:
  """Training batches from the train split (or another `split`, in the same form: the held-out
  batches of `bivrec_tf.teaching_probe`).

  `skip_batches` drops the stream's first batches before they are parsed: a run resumed after k
  optimizer steps continues with batch k + 1 of the same seed's stream (the same shuffle and
  negatives as the uninterrupted run), not with its first epoch again.

  Yields dicts:
    history: int64 [B, max_len], right-aligned, left-padded with 0.
    target: int64 [B], the first target of each example.
    negatives: int64 [num_negatives], uniform over real items [2, V), one draw per batch
      (stateless, derived from `seed`; different for every batch and every epoch).
  Batches have a static size (`drop_remainder=True`).
  """
  if max_len < 1 or batch_size < 1 or num_negatives < 0 or skip_batches < 0:
    raise ValueError("max_len and batch_size must be >= 1, num_negatives and skip_batches >= 0")
  n = ds.num_examples(split)
  if n < batch_size:
    raise ValueError(
      f"{split} split has {n} examples, fewer than batch_size {batch_size} "
      "(batches drop the remainder)"
    )
  vocab_size = ds.vocab_size
  records = ds.records(split).cache()
  if shuffle:
    records = records.shuffle(n, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    records = records.repeat()
  batches = records.batch(batch_size, drop_remainder=True)
  # One random int64 per batch; re-randomized on every pass over the dataset.
  noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

  def to_features(serialized, key):
    history, targets = _parse(serialized)
    negatives = tf.random.stateless_uniform(
      [num_negatives],
      seed=tf.stack([tf.constant(seed, tf.int64), key]),
      minval=NUM_RESERVED,
      maxval=vocab_size,
      dtype=tf.int64,
    )
    history = tf.ensure_shape(align_right(history, max_len), [batch_size, max_len])
    target = tf.ensure_shape(tf.gather(targets.values, targets.row_starts()), [batch_size])
    return {"history": history, "target": target, "negatives": negatives}

  return (
    tf.data.Dataset.zip((batches, noise))
    .skip(skip_batches)
    .map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    .prefetch(tf.data.AUTOTUNE)
  )


def eval_dataset(
  ds: PreparedDataset, split: str, max_len: int, batch_size: int, max_targets: int | None = None
) -> tf.data.Dataset:
  """Evaluation batches of a split, in file order (deterministic), last batch kept.

  Yields dicts:
    history: int64 [B, max_len], same alignment as `train_dataset` (what the model reads).
    full_history: int64 [B, H], the example's whole stored history, chronological, padded with
      0 on the right; H = the batch's longest history. For `loo` and `given` examples this is
      every earlier interaction of the user, also those older than the last `max_len` (unless
      `prepare --max-history` cut it): what history exclusion masks in the ranking.
    targets: int64 [B, T], padded with 0 on the right. T = `max_targets` when given (longer
      target lists are truncated to their first `max_targets`), else the batch's longest list.
  """
  if max_len < 1 or batch_size < 1:
    raise ValueError("max_len and batch_size must be >= 1")
  if max_targets is not None and max_targets < 1:
    raise ValueError("max_targets must be >= 1")

  def to_features(serialized):
    history, targets = _parse(serialized)
    if max_targets is not None:
      targets = targets[:, :max_targets]
      padded = targets.to_tensor(0, shape=[None, max_targets])
    else:
      padded = targets.to_tensor(0)
    return {
      "history": align_right(history, max_len),
      "full_history": history.to_tensor(0),
      "targets": padded,
    }

  return (
    ds.records(split)
    .batch(batch_size)
    .map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    .prefetch(tf.data.AUTOTUNE)
  )
