"""Interaction log -> per-user sequences -> train/valid/test examples (DESIGN.md section 4).

Steps (in this order): sort each user's interactions chronologically (ties keep file order),
deduplicate, iterated k-core filtering, then one evaluation protocol:

- `loo` (default): chronological leave-one-out. For a sequence s_0..s_{n-1} (n >= 3): train
  examples (s_0..s_{j-1}) -> s_j for 1 <= j <= n-3, valid (s_0..s_{n-3}) -> s_{n-2}, test
  (s_0..s_{n-2}) -> s_{n-1}.
- `user_split` (ComiRec / BivRec prototype): users are shuffled (seeded) and split 8:1:1. Train
  users give every prefix -> next item; a valid/test user's first 80 % (at least one item) is the
  history and the rest are the targets.
- `given`: the split labels of the input (MMRec `x_label`: 0 train, 1 valid, 2 test). Train
  examples are prefixes of the train interactions; valid: train interactions -> the valid ones;
  test: train + valid interactions -> the test ones.

Histories longer than `max_history` keep their most recent `max_history` items.

Every step is a function of whole users, so the same code serves one process (`build_sequences`,
`make_splits`: all users at once) and the Apache Beam pipeline (`input_pipelines.beam_prepare`:
one bucket of users at a time, with the item counts of the k-core rounds and the item order
combined over the buckets). Users are keyed by the file line (or Parquet row) of their first
interaction, which orders them by first appearance; the vocabulary orders items by their first
occurrence in (user, time, file order).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from input_pipelines import NUM_RESERVED
from input_pipelines.errors import DataError
from input_pipelines.readers import Interactions

DEDUP = ("none", "exact", "consecutive", "first")
PROTOCOLS = ("loo", "user_split", "given")
MIN_LEN = {"loo": 3, "user_split": 2, "given": 1}
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class Sequences:
  """Filtered per-user sequences.

  Attributes:
    user_ids: raw user ids [U] (order of first appearance).
    item_ids: raw item ids [N]; item code c has vocab index c + 2.
    seqs: U arrays of item codes, chronological.
    labels: U arrays of split labels (protocol `given`), or None.
    stats: counts of what each step removed.
  """

  user_ids: list
  item_ids: list
  seqs: list
  labels: list | None
  stats: dict


@dataclasses.dataclass
class UserRows:
  """The interactions of a set of whole users (all users, or one bucket of the Beam path),
  sorted by (user, time, file row).

  Attributes:
    user: int64 [n] user key: the file line/row of the user's first interaction in the log.
    item: int64 [n] index into `items`.
    items: str [m] raw item ids (sorted; some may no longer occur after filtering).
    time: float64 [n] timestamps (0 when the log has none: file order).
    row: int64 [n] file line/row of the interaction.
    label: int64 [n] split labels, or None.
  """

  user: np.ndarray
  item: np.ndarray
  items: np.ndarray
  time: np.ndarray
  row: np.ndarray
  label: np.ndarray | None

  def __len__(self) -> int:
    return int(self.user.size)

  def subset(self, keep: np.ndarray) -> "UserRows":
    lab = self.label[keep] if self.label is not None else None
    return UserRows(
      self.user[keep], self.item[keep], self.items, self.time[keep], self.row[keep], lab
    )

  def bounds(self) -> np.ndarray:
    """int64 [U + 1]: rows of user k are [bounds[k], bounds[k + 1])."""
    if self.user.size == 0:
      return np.zeros(1, np.int64)
    cut = np.flatnonzero(np.diff(self.user)) + 1
    return np.concatenate([[0], cut, [self.user.size]]).astype(np.int64)

  def user_keys(self) -> np.ndarray:
    """int64 [U] the users' keys, increasing."""
    return self.user[self.bounds()[:-1]]

  def lengths(self) -> np.ndarray:
    """int64 [U] interactions per user."""
    return np.diff(self.bounds())


def user_rows(inter: Interactions, dedup: str = "exact") -> tuple[UserRows, int]:
  """(sorted UserRows, number of rows removed as duplicates) of an interaction log.

  Args:
    inter: all interactions of some whole users (a bucket holds every row of its users).
    dedup: "none"; "exact" drops repeated (user, item, timestamp) rows; "consecutive" drops an
      item repeated right after itself in a user's sequence; "first" keeps only each user's
      first interaction with an item.
  """
  if dedup not in DEDUP:
    raise ValueError(f"--dedup must be one of {', '.join(DEDUP)}, got {dedup!r}")
  n0 = len(inter)
  rows = inter.row_numbers()
  users, ucode = np.unique(inter.users.astype(str), return_inverse=True)
  ucode = ucode.reshape(-1)
  first_row = np.full(users.size, np.iinfo(np.int64).max, np.int64)
  np.minimum.at(first_row, ucode, rows)  # rows need not come in file order (a Beam bucket)
  ukey = first_row[ucode]
  items, icode = np.unique(inter.items.astype(str), return_inverse=True)
  icode = icode.reshape(-1).astype(np.int64)
  times = inter.times if inter.times is not None else np.zeros(n0)
  order = np.lexsort((rows, times, ukey))
  u, i, t, r = ukey[order], icode[order], np.asarray(times, np.float64)[order], rows[order]
  lab = inter.labels[order] if inter.labels is not None else None
  keep = np.ones(n0, bool)
  if dedup == "exact" or dedup == "first":
    key = np.stack([u, i] + ([t.view(np.int64)] if dedup == "exact" else []), axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    keep[:] = False
    keep[first] = True
  elif dedup == "consecutive":
    keep[1:] = ~((u[1:] == u[:-1]) & (i[1:] == i[:-1]))
  out = UserRows(u, i, items, t, r, lab).subset(keep)
  return out, int(n0 - keep.sum())


def item_counts(rows: UserRows) -> np.ndarray:
  """int64 [m] interactions per entry of `rows.items`."""
  return np.bincount(rows.item, minlength=rows.items.size)


def kcore_keep(rows: UserRows, item_ok: np.ndarray, min_user: int) -> np.ndarray:
  """bool [n] the rows one k-core round keeps: the user has >= `min_user` rows and the item is
  ok (`item_ok` bool [m], from the item's count over all users)."""
  _, inv, counts = np.unique(rows.user, return_inverse=True, return_counts=True)
  return (counts[inv.reshape(-1)] >= min_user) & item_ok[rows.item]


def first_keys(rows: UserRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(items str [k], user key int64 [k], position int64 [k]) of each item's first occurrence:
  the user and the position in that user's sequence. `vocab_order` sorts them."""
  pos = np.arange(len(rows)) - np.repeat(rows.bounds()[:-1], rows.lengths())
  codes, first = np.unique(rows.item, return_index=True)
  return rows.items[codes], rows.user[first], pos[first]


def vocab_order(items: np.ndarray, user_key: np.ndarray, position: np.ndarray) -> list:
  """Raw item ids ordered by first occurrence in (user, position): the item vocabulary. The
  arguments may list an item several times (partial results of several buckets)."""
  order = np.lexsort((position, user_key))
  ranked = np.asarray(items)[order]
  _, first = np.unique(ranked, return_index=True)
  return [str(x) for x in ranked[np.sort(first)]]


def user_sequences(rows: UserRows, code_of_item: np.ndarray) -> tuple[np.ndarray, list, list]:
  """(user keys int64 [U], U item-code arrays (chronological), U label arrays or None): the
  sequences of `rows` with items mapped through `code_of_item` (int64 [m], -1 = unused)."""
  b = rows.bounds()
  if len(rows) == 0:
    return b[:0], [], [] if rows.label is not None else None
  codes = code_of_item[rows.item]
  seqs = np.split(codes, b[1:-1])
  labels = np.split(rows.label, b[1:-1]) if rows.label is not None else None
  return rows.user[b[:-1]], seqs, labels


def no_rows_left(source: str, dedup: str, min_u: int, min_i: int) -> DataError:
  return DataError(
    source,
    f"no interactions left after filtering (dedup={dedup}, "
    f"users need >= {min_u} interactions, items >= {min_i}); lower "
    "--k-core / --min-user-interactions / --min-item-interactions / "
    "--min-seq-len",
  )


def thresholds(min_user: int, min_item: int, min_seq_len: int) -> tuple[int, int]:
  """(rows a user needs, rows an item needs) in the k-core rounds."""
  return max(min_user, min_seq_len, 1), max(min_item, 1)


def build_sequences(
  inter: Interactions,
  dedup: str = "exact",
  min_user: int = 0,
  min_item: int = 0,
  min_seq_len: int = 1,
) -> Sequences:
  """Sorts, deduplicates and k-core filters an interaction log into per-user sequences.

  Args:
    dedup: see `user_rows`.
    min_user / min_item: iterated k-core thresholds (users with fewer interactions than
      max(min_user, min_seq_len) and items with fewer than min_item are removed until stable).
  """
  if dedup not in DEDUP:
    raise ValueError(f"--dedup must be one of {', '.join(DEDUP)}, got {dedup!r}")
  n0 = len(inter)
  if n0 == 0:
    raise DataError(inter.source, "no interactions (after the rating filter, if any)")
  rows, removed = user_rows(inter, dedup)
  stats = {"num_raw_interactions": int(n0), "removed_duplicates": removed}
  min_u, min_i = thresholds(min_user, min_item, min_seq_len)
  rounds = 0
  while True:
    keep = kcore_keep(rows, item_counts(rows) >= min_i, min_u)
    if keep.all():
      break
    rows = rows.subset(keep)
    rounds += 1
  stats["removed_by_filtering"] = int(n0 - removed - len(rows))
  stats["filter_rounds"] = rounds
  if len(rows) == 0:
    raise no_rows_left(inter.source, dedup, min_u, min_i)
  item_ids = vocab_order(*first_keys(rows))
  code = np.full(rows.items.size, -1, np.int64)
  code[np.searchsorted(rows.items, item_ids)] = np.arange(len(item_ids))
  keys, seqs, labels = user_sequences(rows, code)
  at = np.searchsorted(inter.row_numbers(), keys)  # a whole log's rows come in file order
  stats.update(num_users=len(seqs), num_items=len(item_ids), num_interactions=len(rows))
  return Sequences(
    user_ids=[str(x) for x in inter.users[at]],
    item_ids=item_ids,
    seqs=seqs,
    labels=labels,
    stats=stats,
  )


# --- protocols: which users a split holds, and one user's examples in it ------------------------


def _cut(history: np.ndarray, max_history: int | None) -> np.ndarray:
  if max_history is not None and history.size > max_history:
    history = history[-max_history:]
  return history + NUM_RESERVED


def _targets(x: np.ndarray) -> np.ndarray:
  return np.asarray(x) + NUM_RESERVED


def check_protocol(protocol: str, max_history: int | None) -> None:
  if protocol not in PROTOCOLS:
    raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
  if max_history is not None and max_history < 1:
    raise ValueError(f"--max-history must be >= 1, got {max_history}")


def check_loo_lengths(num_short: int) -> None:
  """`num_short`: users with fewer than 3 interactions."""
  if num_short:
    raise DataError(
      "interactions",
      f"{num_short} users have fewer than 3 interactions (loo needs 3: use --min-seq-len 3)",
    )


def split_groups(
  protocol: str,
  num_users: int,
  seed: int = 0,
  valid_share: float = 0.1,
  test_share: float = 0.1,
) -> dict:
  """split -> int64 [k] increasing user positions (in user order) whose examples it holds:
  every user for `loo` and `given`, a seeded 8:1:1 partition for `user_split`."""
  if protocol != "user_split":
    everyone = np.arange(num_users)
    return {s: everyone for s in SPLITS}
  if not (0 < valid_share < 1 and 0 < test_share < 1 and valid_share + test_share < 1):
    raise ValueError("valid and test shares must be in (0, 1) and sum to < 1")
  perm = np.random.default_rng(seed).permutation(num_users)
  n_valid = max(1, int(round(valid_share * num_users)))
  n_test = max(1, int(round(test_share * num_users)))
  if num_users - n_valid - n_test < 1:
    raise DataError("interactions", f"only {num_users} users: user_split needs at least 3")
  return {
    "valid": np.sort(perm[:n_valid]),
    "test": np.sort(perm[n_valid : n_valid + n_test]),
    "train": np.sort(perm[n_valid + n_test :]),
  }


def user_examples(
  protocol: str,
  split: str,
  s: np.ndarray,
  lab: np.ndarray | None,
  max_history: int | None,
  history_share: float = 0.8,
) -> Iterator[tuple[list, list]]:
  """One user's examples in one split: (history, targets) as vocab indices (item code + 2),
  int64 arrays.

  Args:
    s: int64 [n] the user's item codes, chronological.
    lab: int64 [n] split labels (`given`), else None.
  """
  if protocol == "loo":
    if split == "train":
      for j in range(1, s.size - 2):
        yield _cut(s[:j], max_history), _targets(s[j : j + 1])
    elif split == "valid":
      yield _cut(s[:-2], max_history), _targets(s[-2:-1])
    else:
      yield _cut(s[:-1], max_history), _targets(s[-1:])
  elif protocol == "user_split":
    if split == "train":
      for j in range(1, s.size):
        yield _cut(s[:j], max_history), _targets(s[j : j + 1])
    else:
      cut = min(max(1, int(history_share * s.size)), s.size - 1)
      yield _cut(s[:cut], max_history), _targets(s[cut:])
  elif split == "train":
    tr = s[lab == 0]
    for j in range(1, tr.size):
      yield _cut(tr[:j], max_history), _targets(tr[j : j + 1])
  elif split == "valid":
    tr, va = s[lab == 0], s[lab == 1]
    if tr.size and va.size:
      yield _cut(tr, max_history), _targets(va)
  else:
    hist, te = s[lab != 2], s[lab == 2]
    if hist.size and te.size:
      yield _cut(hist, max_history), _targets(te)


def count_user_examples(protocol: str, split: str, n: int, lab: np.ndarray | None) -> int:
  """len(list(user_examples(...))) without building them (tested against it)."""
  if protocol == "loo":
    return max(n - 3, 0) if split == "train" else 1
  if protocol == "user_split":
    return max(n - 1, 0) if split == "train" else 1
  if split == "train":
    return max(int((lab == 0).sum()) - 1, 0)
  if split == "valid":
    return int((lab == 0).any() and (lab == 1).any())
  return int((lab != 2).any() and (lab == 2).any())


def check_given_counts(num: dict) -> list:
  """The splits of the `given` protocol that hold examples (train must)."""
  if not num["train"]:
    raise DataError(
      "interactions", "no training example: no user has 2 or more train interactions (label 0)"
    )
  return [s for s in SPLITS if num[s]]


def make_splits(
  seq: Sequences,
  protocol: str,
  max_history: int | None = None,
  seed: int = 0,
  valid_share: float = 0.1,
  test_share: float = 0.1,
  history_share: float = 0.8,
) -> tuple[dict, dict]:
  """(splits: name -> (callable returning an iterator of (history, targets)), info).

  Histories and targets are vocab indices (item code + 2). Splits are callables so that the
  writer can stream them (the train split of a long-sequence dataset is large).
  """
  check_protocol(protocol, max_history)
  seqs = seq.seqs
  info: dict = {"protocol": protocol}
  if protocol == "loo":
    check_loo_lengths(sum(1 for s in seqs if s.size < 3))
  if protocol == "given" and seq.labels is None:
    raise DataError(
      "interactions",
      "--protocol given needs a split-label column (--label-column, e.g. MMRec's x_label)",
    )
  groups = split_groups(protocol, len(seqs), seed, valid_share, test_share)
  labels = seq.labels if seq.labels is not None else [None] * len(seqs)

  def split(name):
    def gen() -> Iterator:
      for k in groups[name]:
        yield from user_examples(protocol, name, seqs[k], labels[k], max_history, history_share)

    return gen

  sizes = split_sizes(seq, protocol, groups)
  names = check_given_counts(sizes) if protocol == "given" else list(SPLITS)
  info.update(
    protocol_info(
      protocol, groups, sizes, seed, valid_share, test_share, history_share, with_protocol=False
    )
  )
  return {s: split(s) for s in names}, info


def split_sizes(seq: Sequences, protocol: str, groups: dict) -> dict:
  """split -> number of examples (`count_user_examples` over the split's users)."""
  labels = seq.labels if seq.labels is not None else [None] * len(seq.seqs)
  return {
    s: sum(count_user_examples(protocol, s, seq.seqs[k].size, labels[k]) for k in groups[s])
    for s in SPLITS
  }


def protocol_info(
  protocol: str,
  groups: dict,
  sizes: dict,
  seed: int = 0,
  valid_share: float = 0.1,
  test_share: float = 0.1,
  history_share: float = 0.8,
  with_protocol: bool = True,
) -> dict:
  """dataset.json's `protocol_info`: users per split (`loo`, `user_split`, with the split's
  parameters) or examples per split (`given`), from `split_groups` and `split_sizes`."""
  info: dict = {"protocol": protocol} if with_protocol else {}
  if protocol == "given":
    info["num_examples_expected"] = {s: int(sizes[s]) for s in SPLITS}
  else:
    info["num_users"] = {s: len(groups[s]) for s in SPLITS}
  if protocol == "user_split":
    info["user_split"] = {
      "seed": seed,
      "valid_share": valid_share,
      "test_share": test_share,
      "history_share": history_share,
    }
  return info


def count_examples(seq: Sequences, protocol: str, splits_info: dict) -> int:
  """Number of train examples (for progress bars)."""
  if protocol == "loo":
    return int(sum(max(s.size - 3, 0) for s in seq.seqs))
  if protocol == "given":
    return int(splits_info["num_examples_expected"]["train"])
  return 0


# --- statistics of sequence lengths -----------------------------------------------------------


def length_counts(lengths) -> dict:
  """{length: number of sequences} of an int array (merge several with `merge_counts`)."""
  uniq, cnt = np.unique(np.asarray(lengths, np.int64), return_counts=True)
  return {int(k): int(v) for k, v in zip(uniq, cnt)}


def merge_counts(parts) -> dict:
  out: dict = {}
  for part in parts:
    for k, v in part.items():
      out[int(k)] = out.get(int(k), 0) + int(v)
  return out


def _expand(counts: dict) -> np.ndarray:
  keys = sorted(counts)
  return np.repeat(np.asarray(keys, np.int64), [counts[k] for k in keys])


def sequence_length_stats(counts: dict) -> dict:
  """dataset.json's `sequence_length` summary and `sequence_length_counts` of a length
  histogram ({length: number of sequences})."""
  lengths = _expand(counts)
  return {
    "sequence_length": {
      "min": int(lengths.min()),
      "mean": float(lengths.mean()),
      "median": float(np.median(lengths)),
      "p90": float(np.percentile(lengths, 90)),
      "p95": float(np.percentile(lengths, 95)),
      "max": int(lengths.max()),
    },
    "sequence_length_counts": {str(k): int(counts[k]) for k in sorted(counts)},
  }


def recommended_max_len(counts: dict, max_history: int | None) -> int:
  """The history length training should use: the 95th percentile of the sequence lengths,
  rounded up to a multiple of 4, in [8, 50] (and at most `max_history`)."""
  p95 = float(np.percentile(_expand(counts), 95))
  rec = int(min(50, max(8, 4 * np.ceil(p95 / 4))))
  return min(rec, max_history) if max_history else rec
