"""The split files of a prepared dataset: one TFRecord file per split, or gzipped shards.

dataset.json describes each split (`splits.<name>`) in one of two layouts:

    {"file": "train.tfrecord", "num_examples": N}
    {"files": ["train-00000-of-00004.tfrecord.gz", ...], "compression": "GZIP",
     "shard_examples": [n_0, ..., n_3], "num_examples": N}

Shard k of S holds the split's examples with ordinals [ceil(k N / S), ceil((k + 1) N / S)) of
the single-file order (users in order, each user's examples in order): the shards are that file
cut into S nearly equal runs, so reading them one after the other gives its records exactly,
while `tf.data` can read them in parallel. Both preparation paths (`input_pipelines.prepare` in
one process, `input_pipelines.beam_prepare` on Apache Beam) write every file with
`write_examples` and therefore the same bytes.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Iterable, Sequence

import numpy as np

from input_pipelines import NUM_RESERVED, records

COMPRESSION = "GZIP"


def shard_name(split: str, shard: int, num_shards: int) -> str:
  """`train-00000-of-00004.tfrecord.gz`."""
  return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"


def shard_starts(total: int, num_shards: int) -> np.ndarray:
  """int64 [S + 1]: shard k holds ordinals [starts[k], starts[k + 1]) of `total` examples."""
  if num_shards < 1:
    raise ValueError(f"--shards must be >= 1, got {num_shards}")
  k = np.arange(num_shards + 1, dtype=np.int64)
  return (k * total + num_shards - 1) // num_shards


def auto_num_shards(total_examples: int, per_shard: int = 500_000) -> int:
  """Shards for `--shards auto`: about `per_shard` examples each, at least 1, at most 1024."""
  return int(min(1024, max(1, -(-int(total_examples) // per_shard))))


@dataclasses.dataclass
class SplitStats:
  """Sums over the examples of a split or of one shard (mergeable, exact)."""

  num_examples: int = 0
  total_history: int = 0
  max_history: int = 0
  num_targets: int = 0
  unseen_targets: int | None = None

  def merge(self, other: "SplitStats") -> "SplitStats":
    unseen = None
    if self.unseen_targets is not None or other.unseen_targets is not None:
      unseen = (self.unseen_targets or 0) + (other.unseen_targets or 0)
    return SplitStats(
      self.num_examples + other.num_examples,
      self.total_history + other.total_history,
      max(self.max_history, other.max_history),
      self.num_targets + other.num_targets,
      unseen,
    )

  def summary(self) -> dict:
    """The per-split statistics of dataset.json."""
    n = self.num_examples
    out = {
      "num_examples": n,
      "mean_history_length": self.total_history / n,
      "max_history_length": self.max_history,
      "num_targets": self.num_targets,
    }
    if self.unseen_targets is not None:
      out["share_targets_unseen_in_train"] = self.unseen_targets / self.num_targets
    return out


def _check_batch(split: str, first: int, history, target, vocab_size: int) -> None:
  """ValueError naming the split, example and field of the first example with no target or
  an item index outside [1, vocab_size) (checked in that order within an example)."""
  problems = []  # (example, order within the example, message)
  empty = np.flatnonzero(np.diff(target[1]) == 0)
  if empty.size:
    problems.append((int(empty[0]), 0, "has no target"))
  for order, ((values, offsets), field) in enumerate(((history, "history"), (target, "target"))):
    bad = np.flatnonzero((values < 1) | (values >= vocab_size))
    if bad.size:
      example = int(np.searchsorted(offsets, bad[0], side="right")) - 1
      x = int(values[bad[0]])
      problems.append(
        (example, order + 1, f"field '{field}' has item index {x} outside [1, {vocab_size})")
      )
  if problems:
    example, _, message = min(problems)
    raise ValueError(f"split '{split}': example {first + example} {message}")


BATCH = 4096  # examples encoded at a time


def write_examples(
  path,
  split: str,
  examples: Iterable[tuple[Sequence[int], Sequence[int]]],
  vocab_size: int,
  seen: np.ndarray | None = None,
  compression: str | None = None,
  first_index: int = 0,
  collect_seen: bool = False,
) -> tuple[SplitStats, np.ndarray | None]:
  """Writes (history, targets) examples as `tf.train.Example`s (int64 lists `history` and
  `target`, deterministic bytes: `input_pipelines.records`) to one TFRecord file.

  Args:
    seen: bool [V] items of the train split; counts the targets outside it.
    compression: None or "GZIP".
    first_index: ordinal of the first example in its split (for messages).
    collect_seen: also return bool [V]: the items occurring in these examples.

  Returns:
    (SplitStats, seen items or None).
  """
  import tensorflow as tf

  stats = SplitStats(unseen_targets=0 if seen is not None else None)
  occurs = np.zeros(vocab_size, bool) if collect_seen else None
  options = tf.io.TFRecordOptions(compression_type=compression or "")
  it = iter(examples)
  with tf.io.TFRecordWriter(str(path), options) as writer:
    while True:
      batch = list(itertools.islice(it, BATCH))
      if not batch:
        break
      history = records.ragged([h for h, _ in batch])
      target = records.ragged([t for _, t in batch])
      _check_batch(split, first_index + stats.num_examples, history, target, vocab_size)
      for record in records.encode_batch(history, target):
        writer.write(record)
      lengths = np.diff(history[1])
      stats.num_examples += len(batch)
      stats.total_history += int(history[1][-1])
      stats.max_history = max(stats.max_history, int(lengths.max()))
      stats.num_targets += int(target[1][-1])
      if seen is not None:
        stats.unseen_targets += int((~seen[target[0]]).sum())
      if occurs is not None:
        occurs[history[0]] = True
        occurs[target[0]] = True
  if occurs is not None:
    occurs[:NUM_RESERVED] = False
  return stats, occurs


def write_split(
  directory: pathlib.Path,
  split: str,
  examples: Iterable,
  vocab_size: int,
  seen: np.ndarray | None = None,
  num_shards: int | None = None,
  size: int | None = None,
  collect_seen: bool = False,
) -> tuple[dict, SplitStats, np.ndarray | None]:
  """Writes one split into `directory`: `<split>.tfrecord`, or with `num_shards` the shards
  `<split>-SSSSS-of-NNNNN.tfrecord.gz` of `size` examples (counted here when None).

  Returns:
    (the split's dataset.json entry, SplitStats, items seen (with `collect_seen`) or None).
  """
  directory = pathlib.Path(directory)
  if not num_shards:
    stats, occurs = write_examples(
      directory / f"{split}.tfrecord", split, examples, vocab_size, seen, None, 0, collect_seen
    )
    entry = {"file": f"{split}.tfrecord", "num_examples": stats.num_examples}
  else:
    if size is None:
      examples = list(examples)
      size = len(examples)
    starts = shard_starts(size, num_shards)
    it = iter(examples)
    stats, occurs, files, counts = SplitStats(), None, [], []
    for k in range(num_shards):
      name = shard_name(split, k, num_shards)
      part = _take(it, int(starts[k + 1] - starts[k]))
      s, o = write_examples(
        directory / name, split, part, vocab_size, seen, COMPRESSION, int(starts[k]), collect_seen
      )
      stats = stats.merge(s)
      occurs = o if occurs is None else occurs | o
      files.append(name)
      counts.append(s.num_examples)
    if stats.num_examples != size or next(it, None) is not None:
      raise ValueError(f"split '{split}': the examples do not number {size} as declared")
    entry = sharded_entry(files, counts)
  if stats.num_examples == 0:
    raise ValueError(f"split '{split}' is empty")
  return entry, stats, occurs


def sharded_entry(files: Sequence[str], counts: Sequence[int]) -> dict:
  """dataset.json's entry of a sharded split."""
  return {
    "files": list(files),
    "compression": COMPRESSION,
    "shard_examples": [int(c) for c in counts],
    "num_examples": int(sum(counts)),
  }


def _take(it, n: int):
  for _ in range(n):
    try:
      yield next(it)
    except StopIteration:
      return
