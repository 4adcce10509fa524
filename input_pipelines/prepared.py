"""Writing a prepared dataset directory (DESIGN.md section 4).

Layout written by :func:`write_prepared`::

    <out_dir>/
      dataset.json                    schema_version, sizes, modalities, splits, statistics, meta
      item_vocab.txt                  row = item index: "[PAD]", "[OOV]", then the N raw item ids
      features/<modality>.npy         float32 [V, D], standardized per dimension, rows 0/1 zero
      features/<modality>_present.npy bool [V], rows 0/1 False
      <split>.tfrecord                tf.train.Example: int64 lists `history` and `target`
                                      (or gzipped shards, see `input_pipelines.shards`)

The directory appears atomically: everything is written into a temporary sibling
(``.tmp-<name>-...``) which is renamed to ``out_dir`` at the end; on failure nothing is left.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json
import pathlib
import shutil
import tempfile
from typing import Iterable, Mapping, Sequence

import numpy as np

from input_pipelines import NUM_RESERVED, SCHEMA_VERSION, shards

PAD_TOKEN = "[PAD]"
OOV_TOKEN = "[OOV]"
DATASET_JSON = "dataset.json"
VOCAB_FILE = "item_vocab.txt"
FEATURES_DIR = "features"
KNOWN_SPLITS = ("train", "valid", "test")

Example = tuple[Sequence[int], Sequence[int]]


def standardize(values: np.ndarray, moments: Mapping) -> np.ndarray:
  """Raw feature rows float [n, D] -> float32 [n, D] standardized with `moments` ({"mean": [D],
  "std": [D]}, as recorded per modality in dataset.json under "standardization"). The one formula
  for prepared tables and for items added to a served model later (`bivrec_tf.catalogue`), so
  the same raw row always gives the same bits."""
  mean = np.asarray(moments["mean"], np.float64)
  std = np.asarray(moments["std"], np.float64)
  return ((np.asarray(values, np.float64) - mean) / std).astype(np.float32)


def _standardize(
  name: str, values: np.ndarray, present: np.ndarray, num_items: int
) -> tuple[np.ndarray, dict]:
  """Validates one modality; returns (float32 [V, D] standardized over present rows, moments
  {"mean": [D], "std": [D]} as lists of floats)."""
  values = np.asarray(values)
  present = np.asarray(present, dtype=bool)
  if values.ndim != 2:
    raise ValueError(f"feature '{name}': expected a 2-D array [N, D], got shape {values.shape}")
  if values.shape[0] != num_items:
    raise ValueError(
      f"feature '{name}': has {values.shape[0]} rows but there are {num_items} items"
    )
  if present.shape != (num_items,):
    raise ValueError(
      f"feature '{name}': present mask has shape {present.shape}, expected ({num_items},)"
    )
  values = values.astype(np.float64)
  finite = np.isfinite(values).all(axis=1)
  bad = np.flatnonzero(present & ~finite)
  if bad.size:
    row = int(bad[0])
    raise ValueError(f"feature '{name}': NaN/Inf in row {row} (item index {row + NUM_RESERVED})")
  out = np.zeros((num_items + NUM_RESERVED, values.shape[1]), dtype=np.float32)
  mean, std = np.zeros(values.shape[1]), np.ones(values.shape[1])
  if present.any():
    rows = values[present]
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
  moments = {"mean": mean.tolist(), "std": std.tolist()}
  if present.any():
    out[NUM_RESERVED:][present] = standardize(rows, moments)
  return out, moments


def _check_item_ids(item_ids: Sequence[str]) -> list:
  item_ids = [str(x) for x in item_ids]
  if not item_ids:
    raise ValueError("item_ids is empty")
  if len(set(item_ids)) != len(item_ids):
    raise ValueError("item_ids contains duplicates")
  for x in item_ids:
    if "\n" in x or x in (PAD_TOKEN, OOV_TOKEN, ""):
      raise ValueError(f"invalid item id {x!r}")
  return item_ids


def feature_tables(features: Mapping[str, tuple[np.ndarray, np.ndarray]], num_items: int) -> dict:
  """Validates and standardizes every modality (before anything is written): name ->
  (table float32 [V, D], moments, present bool [N])."""
  tables = {}
  for name, (values, present) in features.items():
    if not name or "/" in name or name.endswith("_present"):
      raise ValueError(f"invalid modality name {name!r}")
    present = np.asarray(present, dtype=bool)
    tables[name] = (*_standardize(name, values, present, num_items), present)
  return tables


def _write_split(directory, split, examples, vocab_size, seen, num_shards=None, size=None):
  """One split's file(s) in `directory` (`shards.write_split`); the train split (seen None)
  also returns the items it holds."""
  return shards.write_split(
    directory, split, examples, vocab_size, seen, num_shards, size, collect_seen=seen is None
  )


def write_prepared(
  out_dir,
  item_ids: Sequence[str],
  features: Mapping[str, tuple[np.ndarray, np.ndarray]],
  splits: Mapping[str, Iterable[Example]],
  meta: Mapping | None = None,
  overwrite: bool = False,
  num_shards: int | Mapping[str, int] | None = None,
  split_sizes: Mapping[str, int] | None = None,
) -> pathlib.Path:
  """Writes a prepared dataset directory atomically.

  Args:
    out_dir: target directory; must not exist unless `overwrite`.
    item_ids: the N raw item ids; `item_ids[i]` gets index `i + 2`.
    features: modality name -> (values float [N, D], present bool [N]). Rows of absent items are
      ignored and stored as zeros. Each dimension is standardized over present rows.
    splits: split name -> iterable of (history, targets): item indices, history chronological
      and unpadded, targets non-empty. "train" is required; every given split must be non-empty.
      Each is read once (train first).
    meta: merged into dataset.json (source, protocol, recommended_max_len, ...). A "statistics"
      entry is merged into the computed statistics (e.g. exact num_users for a protocol).
    overwrite: replace an existing `out_dir`.
    num_shards: write each split as that many gzipped shards (`input_pipelines.shards`)
      instead of one `<split>.tfrecord` (a number for every split, or split -> number).
    split_sizes: split -> number of examples, when known (else sharded splits are counted in
      memory first).

  Returns:
    The path of the written directory.
  """
  out_dir = pathlib.Path(out_dir)
  meta = dict(meta or {})
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"prepared dataset directory already exists: {out_dir}")
  item_ids = _check_item_ids(item_ids)
  vocab_size = len(item_ids) + NUM_RESERVED
  if "train" not in splits:
    raise ValueError("splits must contain 'train'")
  tables = feature_tables(features, len(item_ids))
  tmp, lock = open_tmp_dir(out_dir)
  try:
    written, seen = {}, None
    for split in ["train", *[s for s in splits if s != "train"]]:
      if not split or "/" in split:
        raise ValueError(f"invalid split name {split!r}")
      shards_of = num_shards.get(split) if isinstance(num_shards, Mapping) else num_shards
      entry, stats, occurs = _write_split(
        tmp, split, splits[split], vocab_size, seen, shards_of, (split_sizes or {}).get(split)
      )
      seen = occurs if split == "train" else seen
      written[split] = (entry, stats)
    finish_prepared(tmp, out_dir, item_ids, tables, written, seen, meta)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    release_tmp_lock(lock)
  return out_dir


def open_tmp_dir(out_dir: pathlib.Path):
  """(temporary sibling directory of `out_dir` to write into, its lock): see `make_tmp_dir`.
  Directories that killed runs left behind are removed first."""
  out_dir = pathlib.Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_tmp_dirs(out_dir.parent, out_dir.name)
  return make_tmp_dir(out_dir.parent, out_dir.name)


def finish_prepared(
  tmp: pathlib.Path,
  out_dir: pathlib.Path,
  item_ids: Sequence[str],
  tables: Mapping,
  written: Mapping,
  seen: np.ndarray,
  meta: Mapping,
) -> None:
  """Completes a prepared directory whose split files are in `tmp` and renames it to `out_dir`
  (replacing an existing one: the caller checked `overwrite`).

  Args:
    tables: from `feature_tables`.
    written: split -> (dataset.json entry, shards.SplitStats), train first.
    seen: bool [V] the items of the train split.
    meta: as for `write_prepared`.
  """
  out_dir, meta = pathlib.Path(out_dir), dict(meta)
  item_ids = _check_item_ids(item_ids)
  vocab_size = len(item_ids) + NUM_RESERVED
  with open(tmp / VOCAB_FILE, "w", encoding="utf-8") as f:
    f.write("\n".join([PAD_TOKEN, OOV_TOKEN, *item_ids]) + "\n")

  (tmp / FEATURES_DIR).mkdir()
  modalities = {}
  for name, (table, moments, present) in tables.items():
    present_v = np.zeros(vocab_size, dtype=bool)
    present_v[NUM_RESERVED:] = present
    file = f"{FEATURES_DIR}/{name}.npy"
    present_file = f"{FEATURES_DIR}/{name}_present.npy"
    np.save(tmp / file, table)
    np.save(tmp / present_file, present_v)
    modalities[name] = {
      "dim": int(table.shape[1]),
      "file": file,
      "present_file": present_file,
      "num_present": int(present.sum()),
      # per-dimension mean and std of the raw values: new items' features get the same
      # standardization (python -m bivrec_tf.catalogue add)
      "standardization": moments,
    }

  split_info = {s: entry for s, (entry, _) in written.items()}
  split_stats = {s: stats.summary() for s, (_, stats) in written.items()}
  ref = "test" if "test" in split_stats else ("valid" if "valid" in split_stats else "train")
  statistics = {
    "num_users": split_stats[ref]["num_examples"],
    "num_items_seen_in_train": int(seen.sum()),
    "num_examples": {s: v["num_examples"] for s, v in split_stats.items()},
    "num_targets": {s: v["num_targets"] for s, v in split_stats.items()},
    "mean_history_length": {s: v["mean_history_length"] for s, v in split_stats.items()},
    "max_history_length": {s: v["max_history_length"] for s, v in split_stats.items()},
  }
  for s, v in split_stats.items():
    if "share_targets_unseen_in_train" in v:
      statistics[f"share_{s}_targets_unseen_in_train"] = v["share_targets_unseen_in_train"]
  if meta.get("protocol") == "loo" and "test" in split_stats:
    t = split_stats["test"]  # a loo test example holds the whole user sequence
    statistics["num_interactions"] = (
      int(round(t["mean_history_length"] * t["num_examples"])) + t["num_targets"]
    )
  statistics.update(meta.pop("statistics", {}) or {})
  statistics.setdefault("num_interactions", None)

  doc = {
    **meta,
    "schema_version": SCHEMA_VERSION,
    "num_items": len(item_ids),
    "vocab_size": vocab_size,
    "pad_index": 0,
    "oov_index": 1,
    "vocab_file": VOCAB_FILE,
    "modalities": modalities,
    "splits": split_info,
    "statistics": statistics,
  }
  with open(tmp / DATASET_JSON, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2, sort_keys=True, default=_json_default)
    f.write("\n")

  old = None
  if out_dir.exists():  # overwrite=True (checked by the caller)
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-old-{out_dir.name}-", dir=out_dir.parent))
    os.rename(out_dir, old / "d")
  try:
    os.rename(tmp, out_dir)
  except BaseException:
    if old is not None:
      os.rename(old / "d", out_dir)
      shutil.rmtree(old, ignore_errors=True)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


# --- temporary directories: locked while in use, removed when their writer is gone -------------------

STALE_UNLOCKED_SECONDS = 600  # a .tmp-* directory without lock file (older code) this old is stale


def make_tmp_dir(parent: pathlib.Path, name: str):
  """A fresh `.tmp-<name>-XXXX` directory in `parent` and its lock: `.tmp-<name>-XXXX.lock`,
  held (flock) for as long as this process writes. The kernel drops the lock when the process
  dies, however it dies (kill -9 included), so a later run can tell an abandoned directory from
  one another process is still writing. Returns (directory, (lock path, open lock file))."""
  import fcntl

  fd, lock_path = tempfile.mkstemp(prefix=f".tmp-{name}-", suffix=".lock", dir=parent)
  lock = (lock_path, os.fdopen(fd, "w"))
  fcntl.flock(lock[1], fcntl.LOCK_EX)
  tmp = pathlib.Path(lock_path[: -len(".lock")])
  try:
    tmp.mkdir()
  except BaseException:
    release_tmp_lock(lock)
    raise
  return tmp, lock


def release_tmp_lock(lock) -> None:
  """Removes and releases a lock from `make_tmp_dir` ((path, open file))."""
  try:
    os.unlink(lock[0])
  except OSError:
    pass
  lock[1].close()


def remove_stale_tmp_dirs(parent: pathlib.Path, name: str) -> list:
  """Removes `.tmp-<name>-*` directories left by earlier runs that were killed (their lock is
  free, or they have no lock file and are older than STALE_UNLOCKED_SECONDS). Directories a
  live process is writing are kept. Returns the removed paths."""
  import fcntl
  import time

  removed = []
  import glob

  pattern = f".tmp-{glob.escape(name)}-*"
  for path in pathlib.Path(parent).glob(pattern):
    if path.suffix == ".lock" or not path.is_dir() or path.is_symlink():
      continue
    lock_path = path.with_name(path.name + ".lock")
    try:
      if lock_path.exists():
        with open(lock_path, "a") as lock:
          try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
          except BlockingIOError:
            continue  # its writer is alive
          shutil.rmtree(path, ignore_errors=True)
          os.unlink(lock_path)
      elif time.time() - path.stat().st_mtime > STALE_UNLOCKED_SECONDS:
        shutil.rmtree(path, ignore_errors=True)
      else:
        continue
    except OSError:
      continue
    removed.append(path)
  for lock_path in pathlib.Path(parent).glob(pattern + ".lock"):  # directory already gone
    if not lock_path.with_suffix("").exists():
      try:
        with open(lock_path, "a") as lock:
          fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
          os.unlink(lock_path)
      except (BlockingIOError, OSError):
        pass
  return removed


def add_modality(
  prepared_dir,
  name: str,
  values: np.ndarray,
  present: np.ndarray,
  info: Mapping | None = None,
  overwrite: bool = False,
) -> dict:
  """Adds (or with `overwrite` replaces) one modality of an existing prepared directory.

  Args:
    prepared_dir: a directory written by `write_prepared`.
    name: modality name (`features/<name>.npy`).
    values: float [N, D] aligned to the vocabulary rows 2..N+1 (rows of absent items ignored).
    present: bool [N].
    info: extra fields for the modality's entry in dataset.json (encoder, source, ...).

  The two arrays are written to temporary files and renamed into place, then dataset.json is
  replaced (also by rename): readers see either the old or the new modality list, and the
  arrays are validated and standardized before anything is written.

  Returns:
    The modality's entry in dataset.json.
  """
  prepared_dir = pathlib.Path(prepared_dir)
  meta_file = prepared_dir / DATASET_JSON
  if not meta_file.is_file():
    raise FileNotFoundError(f"not a prepared dataset directory (no {DATASET_JSON}): {prepared_dir}")
  meta = json.loads(meta_file.read_text(encoding="utf-8"))
  if not name or "/" in name or name.endswith("_present"):
    raise ValueError(f"invalid modality name {name!r}")
  if name in meta.get("modalities", {}) and not overwrite:
    raise FileExistsError(
      f"{meta_file}: modality '{name}' already exists (pass --overwrite to replace it)"
    )
  num_items = int(meta["num_items"])
  present = np.asarray(present, dtype=bool)
  table, moments = _standardize(name, values, present, num_items)
  present_v = np.zeros(num_items + NUM_RESERVED, dtype=bool)
  present_v[NUM_RESERVED:] = present
  (prepared_dir / FEATURES_DIR).mkdir(exist_ok=True)
  entry = {
    **dict(info or {}),
    "dim": int(table.shape[1]),
    "file": f"{FEATURES_DIR}/{name}.npy",
    "present_file": f"{FEATURES_DIR}/{name}_present.npy",
    "num_present": int(present.sum()),
    "standardization": moments,
  }
  for rel, array in ((entry["file"], table), (entry["present_file"], present_v)):
    _atomic_write(prepared_dir / rel, lambda f, a=array: np.save(f, a), binary=True)
  meta.setdefault("modalities", {})[name] = entry
  _atomic_write(
    meta_file,
    lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n"),
  )
  return entry


def _atomic_write(path: pathlib.Path, write, binary: bool = False) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
  try:
    with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, pathlib.Path):
    return str(x)
  raise TypeError(f"not JSON serializable: {type(x)}")
