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


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(codes in order of first appearance, unique values in that order)."""
  uniq, first, inv = np.unique(values.astype(str), return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  return rank[inv.reshape(-1)], uniq[order]


def build_sequences(
  inter: Interactions,
  dedup: str = "exact",
  min_user: int = 0,
  min_item: int = 0,
  min_seq_len: int = 1,
) -> Sequences:
  """Sorts, deduplicates and k-core filters an interaction log into per-user sequences.

  Args:
    dedup: "none"; "exact" drops repeated (user, item, timestamp) rows; "consecutive" drops an
      item repeated right after itself in a user's sequence; "first" keeps only each user's
      first interaction with an item.
    min_user / min_item: iterated k-core thresholds (users with fewer interactions than
      max(min_user, min_seq_len) and items with fewer than min_item are removed until stable).
  """
  if dedup not in DEDUP:
    raise ValueError(f"--dedup must be one of {', '.join(DEDUP)}, got {dedup!r}")
  n0 = len(inter)
  if n0 == 0:
    raise DataError(inter.source, "no interactions (after the rating filter, if any)")
  ucode, user_ids = _codes(inter.users)
  icode, item_ids = _codes(inter.items)
  row = np.arange(n0)
  times = inter.times if inter.times is not None else np.zeros(n0)
  order = np.lexsort((row, times, ucode))
  u, i, t = ucode[order], icode[order], times[order]
  lab = inter.labels[order] if inter.labels is not None else None
  keep = np.ones(n0, bool)
  if dedup == "exact" or dedup == "first":
    key = np.stack([u, i] + ([t.view(np.int64)] if dedup == "exact" else []), axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    keep[:] = False
    keep[first] = True
  elif dedup == "consecutive":
    keep[1:] = ~((u[1:] == u[:-1]) & (i[1:] == i[:-1]))
  stats = {"num_raw_interactions": int(n0), "removed_duplicates": int(n0 - keep.sum())}
  u, i, t = u[keep], i[keep], t[keep]
  lab = lab[keep] if lab is not None else None

  min_u = max(min_user, min_seq_len, 1)
  min_i = max(min_item, 1)
  rounds = 0
  while True:
    uc = np.bincount(u, minlength=len(user_ids))
    ic = np.bincount(i, minlength=len(item_ids))
    ok = (uc[u] >= min_u) & (ic[i] >= min_i)
    if ok.all():
      break
    u, i, t = u[ok], i[ok], t[ok]
    lab = lab[ok] if lab is not None else None
    rounds += 1
  stats["removed_by_filtering"] = int(keep.sum() - u.size)
  stats["filter_rounds"] = rounds
  if u.size == 0:
    raise DataError(
      inter.source,
      f"no interactions left after filtering (dedup={dedup}, "
      f"users need >= {min_u} interactions, items >= {min_i}); lower "
      "--k-core / --min-user-interactions / --min-item-interactions / "
      "--min-seq-len",
    )
  # Re-code items in order of first appearance among the kept rows; users likewise.
  used_items, first = np.unique(i, return_index=True)
  item_order = used_items[np.argsort(first, kind="stable")]
  remap = np.full(len(item_ids), -1, np.int64)
  remap[item_order] = np.arange(item_order.size)
  i = remap[i]
  bounds = np.flatnonzero(np.diff(u)) + 1
  starts = np.concatenate([[0], bounds])
  seqs = np.split(i, bounds)
  labels = np.split(lab, bounds) if lab is not None else None
  stats.update(num_users=len(seqs), num_items=int(item_order.size), num_interactions=int(u.size))
  return Sequences(
    user_ids=[str(x) for x in user_ids[u[starts]]],
    item_ids=[str(x) for x in item_ids[item_order]],
    seqs=seqs,
    labels=labels,
    stats=stats,
  )


def _cut(history: np.ndarray, max_history: int | None) -> list:
  if max_history is not None and history.size > max_history:
    history = history[-max_history:]
  return (history + NUM_RESERVED).tolist()


def _targets(x: np.ndarray) -> list:
  return (np.asarray(x) + NUM_RESERVED).tolist()


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
  if protocol not in PROTOCOLS:
    raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
  if max_history is not None and max_history < 1:
    raise ValueError(f"--max-history must be >= 1, got {max_history}")
  seqs = seq.seqs
  info: dict = {"protocol": protocol}
  if protocol == "loo":
    short = sum(1 for s in seqs if s.size < 3)
    if short:
      raise DataError(
        "interactions",
        f"{short} users have fewer than 3 interactions (loo needs 3: use --min-seq-len 3)",
      )

    def train() -> Iterator:
      for s in seqs:
        for j in range(1, s.size - 2):
          yield _cut(s[:j], max_history), _targets(s[j : j + 1])

    splits = {
      "train": train,
      "valid": lambda: ((_cut(s[:-2], max_history), _targets(s[-2:-1])) for s in seqs),
      "test": lambda: ((_cut(s[:-1], max_history), _targets(s[-1:])) for s in seqs),
    }
    info["num_users"] = {"train": len(seqs), "valid": len(seqs), "test": len(seqs)}
    return splits, info

  if protocol == "user_split":
    if not (0 < valid_share < 1 and 0 < test_share < 1 and valid_share + test_share < 1):
      raise ValueError("valid and test shares must be in (0, 1) and sum to < 1")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(seqs))
    n_valid = max(1, int(round(valid_share * len(seqs))))
    n_test = max(1, int(round(test_share * len(seqs))))
    if len(seqs) - n_valid - n_test < 1:
      raise DataError("interactions", f"only {len(seqs)} users: user_split needs at least 3")
    groups = {
      "valid": np.sort(perm[:n_valid]),
      "test": np.sort(perm[n_valid : n_valid + n_test]),
      "train": np.sort(perm[n_valid + n_test :]),
    }

    def train() -> Iterator:
      for k in groups["train"]:
        s = seqs[k]
        for j in range(1, s.size):
          yield _cut(s[:j], max_history), _targets(s[j : j + 1])

    def held_out(name):
      def gen() -> Iterator:
        for k in groups[name]:
          s = seqs[k]
          cut = min(max(1, int(history_share * s.size)), s.size - 1)
          yield _cut(s[:cut], max_history), _targets(s[cut:])

      return gen

    splits = {"train": train, "valid": held_out("valid"), "test": held_out("test")}
    info["num_users"] = {k: int(v.size) for k, v in groups.items()}
    info["user_split"] = {
      "seed": seed,
      "valid_share": valid_share,
      "test_share": test_share,
      "history_share": history_share,
    }
    return splits, info

  # given
  if seq.labels is None:
    raise DataError(
      "interactions",
      "--protocol given needs a split-label column (--label-column, e.g. MMRec's x_label)",
    )
  labels = seq.labels
  num = {"train": 0, "valid": 0, "test": 0}
  for s, lab in zip(seqs, labels):
    tr = int((lab == 0).sum())
    num["train"] += max(tr - 1, 0)
    num["valid"] += int(tr > 0 and (lab == 1).any())
    num["test"] += int((lab != 2).any() and (lab == 2).any())

  def train() -> Iterator:
    for s, lab in zip(seqs, labels):
      tr = s[lab == 0]
      for j in range(1, tr.size):
        yield _cut(tr[:j], max_history), _targets(tr[j : j + 1])

  def valid() -> Iterator:
    for s, lab in zip(seqs, labels):
      tr, va = s[lab == 0], s[lab == 1]
      if tr.size and va.size:
        yield _cut(tr, max_history), _targets(va)

  def test() -> Iterator:
    for s, lab in zip(seqs, labels):
      hist, te = s[lab != 2], s[lab == 2]
      if hist.size and te.size:
        yield _cut(hist, max_history), _targets(te)

  splits = {"train": train}
  if num["valid"]:
    splits["valid"] = valid
  if num["test"]:
    splits["test"] = test
  if not num["train"]:
    raise DataError(
      "interactions", "no training example: no user has 2 or more train interactions (label 0)"
    )
  info["num_examples_expected"] = num
  return splits, info


def count_examples(seq: Sequences, protocol: str, splits_info: dict) -> int:
  """Number of train examples (for progress bars)."""
  if protocol == "loo":
    return int(sum(max(s.size - 3, 0) for s in seq.seqs))
  if protocol == "given":
    return int(splits_info["num_examples_expected"]["train"])
  return 0
