"""The per-element steps of the Beam preparation (`input_pipelines.beam_prepare`).

Every function here runs on a Beam worker and calls the same code as the in-process path:
`readers` parse each part of the input, `protocols` sort, deduplicate, filter and split whole
users (a bucket of users at a time), `shards.write_examples` writes every file. What only the
Beam path does is move data: users are hashed into buckets (all rows of a user land in one
bucket), item counts and first occurrences are hashed into item shards and combined, and a
bucket's rows live in a file of the work directory between the jobs.

Elements are numpy arrays of a part, a bucket or a shard, never single rows: a job has a few
hundred elements however large the log.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import pathlib
import pickle
import zlib

import numpy as np

from input_pipelines import NUM_RESERVED, protocols, readers, records, shards
from input_pipelines.errors import DataError

SPLIT_INDEX = {s: k for k, s in enumerate(protocols.SPLITS)}


@dataclasses.dataclass(frozen=True)
class Job:
  """What every step of one preparation needs to know (pickled with the pipeline).

  Attributes:
    work: the work directory (bucket files, shuffled results); tmp: the output directory being
      written (shards go there directly).
    buckets: user buckets (and item shards) of the log path.
    dedup, min_user, min_item: `protocols.user_rows` / k-core thresholds (min_user includes
      the protocol's minimum sequence length).
    protocol, seed, max_history: the protocol (`protocols.user_examples`).
    shards: --shards (None = auto).
    source: the input, for messages.
  """

  work: str
  tmp: str
  buckets: int = 1
  dedup: str = "exact"
  min_user: int = 1
  min_item: int = 1
  protocol: str = "loo"
  seed: int = 0
  max_history: int | None = None
  shards: str | None = None
  source: str = ""


# --- small helpers ------------------------------------------------------------------------------


def _hash(values: np.ndarray, n: int) -> np.ndarray:
  """int64 [len(values)]: a stable hash of each string modulo n (crc32 of its UTF-8 bytes;
  Python's hash() differs between processes)."""
  uniq, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
  h = np.fromiter((zlib.crc32(x.encode("utf-8")) for x in uniq), np.int64, uniq.size)
  return (h % n)[inv.reshape(-1)]


def save(path, obj) -> None:
  """Pickles `obj` to `path` (via a temporary name: a retried task never leaves half a file)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.replace(tmp, path)


def load(path):
  with open(path, "rb") as f:
    return pickle.load(f)


def dump_list(items, path) -> None:
  """The end of a `beam.combiners.ToList()`: the driver reads the list from `path`."""
  save(path, list(items))


def save_to(obj, path) -> None:
  """`save` with the arguments of a `beam.Map` over a singleton."""
  save(path, obj)


def rows_file(job: Job, round_: int, bucket: int) -> str:
  return os.path.join(job.work, f"rows-r{round_:03d}-b{bucket:05d}.pkl")


def known_file(job: Job, bucket: int) -> str:
  return os.path.join(job.work, f"known-b{bucket:05d}.pkl")


# --- reading: one part of the input -> (bucket, interactions) -----------------------------------


@dataclasses.dataclass(frozen=True)
class LogSource:
  """The interaction table as the driver resolved it (header and columns checked there)."""

  path: str
  parquet: bool
  sep: str | None
  header: tuple
  has_header: bool
  plan: readers.ColumnPlan
  columns: readers.Columns


def read_part(part: tuple, src: LogSource, lines_before: int) -> tuple:
  """(Interactions, offset where reading stopped or None) of one part: ("text", k, start, end)
  or ("parquet", k, row group, first row)."""
  if src.parquet:
    import pyarrow.parquet as pq

    _, _, group, offset = part
    pf = pq.ParquetFile(src.path)
    table = pf.read_row_group(group, columns=readers.parquet_column_names(src.header, src.plan))
    inter = readers.parse_parquet_table(
      src.path, table, list(src.header), src.plan, src.columns, offset
    )
    return inter, None
  _, k, start, end = part
  rng = readers.ByteRange(start, end, lines_before)
  names = None if (k == 0 and src.has_header) else list(src.header)
  _, rows = readers.iter_rows(src.path, src.sep, names, part=rng)
  inter = readers.parse_rows(src.path, rows, src.plan, src.columns)
  return inter, rng.stopped_at


def part_lines(part: tuple, src: LogSource) -> tuple:
  """(k, number of lines in a text part)."""
  _, k, start, end = part
  return k, readers.count_lines(src.path, start, end)


def split_interactions(inter: readers.Interactions, buckets: int):
  """[(bucket, Interactions)] of the rows of each user bucket (users hashed)."""
  b = _hash(inter.users, buckets)
  for k in np.unique(b):
    m = b == k
    yield (
      int(k),
      readers.Interactions(
        users=inter.users[m],
        items=inter.items[m],
        times=inter.times[m] if inter.times is not None else None,
        labels=inter.labels[m] if inter.labels is not None else None,
        source=inter.source,
        rows=inter.rows[m],
      ),
    )


def spill(inter: readers.Interactions, job: Job, part: int):
  """[(bucket, file)]: the part's rows of each user bucket, saved in the work directory (the
  shuffle then moves file names, not rows)."""
  for bucket, chunk in split_interactions(inter, job.buckets):
    path = os.path.join(job.work, f"chunk-p{part:05d}-b{bucket:05d}.pkl")
    save(path, chunk)
    yield bucket, path


def concat_interactions(chunks) -> readers.Interactions:
  chunks = list(chunks)
  first = chunks[0]

  def cat(name):
    if getattr(first, name) is None:
      return None
    return np.concatenate([getattr(c, name) for c in chunks])

  return readers.Interactions(
    users=cat("users"),
    items=cat("items"),
    times=cat("times"),
    labels=cat("labels"),
    source=first.source,
    rows=cat("rows"),
  )


# --- buckets of users: build, filter, summarize -----------------------------------------------


def bucket_summary(job: Job, bucket: int, rows: protocols.UserRows) -> dict:
  """What the driver needs of a bucket after a step: sizes, users below the k-core threshold,
  the length histogram and (protocol `given`) the examples each split would get."""
  lengths = rows.lengths()
  out = {
    "bucket": bucket,
    "rows": len(rows),
    "users": int(lengths.size),
    "users_below": int((lengths < job.min_user).sum()),
    "short_for_loo": int((lengths < 3).sum()),
    "length_counts": protocols.length_counts(lengths),
  }
  if rows.label is not None:
    b = rows.bounds()
    out["given_counts"] = {
      s: sum(
        protocols.count_user_examples("given", s, int(n), rows.label[b[k] : b[k + 1]])
        for k, n in enumerate(lengths)
      )
      for s in protocols.SPLITS
    }
  return out


def item_partials(items: np.ndarray, values: tuple, shards_n: int):
  """[(item shard, (items, *values))]: per-item values of one bucket, hashed by item."""
  s = _hash(items, shards_n)
  for k in np.unique(s):
    m = s == k
    yield int(k), (items[m], *(v[m] for v in values))


def _count_partials(rows: protocols.UserRows, job: Job):
  counts = protocols.item_counts(rows)
  present = counts > 0
  yield from item_partials(rows.items[present], (counts[present],), job.buckets)


def build_bucket(kv, job: Job):
  """GroupByKey output (bucket, [files of `spill`]) -> sorted and deduplicated UserRows saved as
  round 0; yields its summary, then ("counts", item shard, partial counts) for the k-core.

  Without an item threshold (min_item 1) the k-core is one round that needs no item counts
  (users below min_user go, and no item can fail): it is done here, and the summary says how
  many rows it removed (`removed_in_read`), so the driver runs no k-core job."""
  bucket, files = kv
  inter = concat_interactions(load(f) for f in sorted(files))
  rows, removed = protocols.user_rows(inter, job.dedup)
  save(known_file(job, bucket), rows.items)
  local = None
  if job.min_item <= 1:
    kept = rows.subset(protocols.kcore_keep(rows, np.ones(rows.items.size, bool), job.min_user))
    local, rows = len(rows) - len(kept), kept
  save(rows_file(job, 0, bucket), rows)
  yield {
    **bucket_summary(job, bucket, rows),
    "raw": len(inter),
    "removed_duplicates": removed,
    "removed_in_read": local,
  }
  if local is None:
    for shard, part in _count_partials(rows, job):
      yield ("counts", shard, part)


def failing_items(kv, job: Job, round_: int) -> int:
  """(item shard, [(items, counts)]) -> saves the items of the shard with fewer than
  `min_item` interactions over all buckets (for round `round_` + 1); returns how many."""
  shard, parts = kv
  parts = list(parts)
  items = np.concatenate([p[0] for p in parts])
  counts = np.concatenate([p[1] for p in parts])
  uniq, inv = np.unique(items, return_inverse=True)
  total = np.bincount(inv.reshape(-1), weights=counts, minlength=uniq.size)
  failing = uniq[total < job.min_item]
  save(os.path.join(job.work, f"failing-r{round_:03d}-s{shard:05d}.pkl"), failing)
  return int(failing.size)


@functools.lru_cache(maxsize=2)
def _failing_set(work: str, round_: int) -> np.ndarray:
  files = sorted(glob.glob(os.path.join(work, f"failing-r{round_:03d}-s*.pkl")))
  parts = [load(f) for f in files]
  return np.concatenate(parts) if parts else np.zeros(0, str)


def kcore_round(bucket: int, job: Job, round_: int):
  """One k-core round of one bucket (`protocols.kcore_keep` with the items that failed over
  all buckets in the previous round); saves round `round_`, yields its summary (with the rows
  removed) and ("counts", ...) for the next round."""
  rows = load(rows_file(job, round_ - 1, bucket))
  failing = _failing_set(job.work, round_ - 1)
  item_ok = ~np.isin(rows.items, failing) if failing.size else np.ones(rows.items.size, bool)
  kept = rows.subset(protocols.kcore_keep(rows, item_ok, job.min_user))
  save(rows_file(job, round_, bucket), kept)
  yield {**bucket_summary(job, bucket, kept), "removed": len(rows) - len(kept)}
  for shard, part in _count_partials(kept, job):
    yield ("counts", shard, part)


# --- the vocabulary and the plan of the split files ---------------------------------------------


def first_key_partials(bucket: int, job: Job, round_: int):
  rows = load(rows_file(job, round_, bucket))
  items, ukey, pos = protocols.first_keys(rows)
  yield from item_partials(items, (ukey, pos), job.buckets)


def reduce_first_keys(kv) -> tuple:
  """(item shard, [(items, user key, position)]) -> each item's earliest (user, position)."""
  _, parts = kv
  items, ukey, pos = (np.concatenate(x) for x in zip(*parts))
  order = np.lexsort((pos, ukey))
  items, ukey, pos = items[order], ukey[order], pos[order]
  _, first = np.unique(items, return_index=True)
  return items[first], ukey[first], pos[first]


def vocabulary(parts, work: str, offset: int = 0) -> dict:
  """The reduced first keys of all item shards -> {raw id: item code + `offset`}; the
  vocabulary (raw ids by code) is saved to `work`/vocab.pkl for the driver."""
  parts = list(parts)
  item_ids = protocols.vocab_order(*(np.concatenate(x) for x in zip(*parts)))
  save(os.path.join(work, "vocab.pkl"), item_ids)
  return {x: k + offset for k, x in enumerate(item_ids)}


def user_counts(bucket: int, job: Job, round_: int) -> tuple:
  """(user keys int64 [U_b], examples per user and split int64 [U_b, 3]) of a bucket."""
  rows = load(rows_file(job, round_, bucket))
  b, lengths = rows.bounds(), rows.lengths()
  counts = np.zeros((lengths.size, len(protocols.SPLITS)), np.int64)
  if rows.label is None:  # the counts depend on the length only: once per distinct length
    uniq, inv = np.unique(lengths, return_inverse=True)
    for s, split in enumerate(protocols.SPLITS):
      per = [protocols.count_user_examples(job.protocol, split, int(n), None) for n in uniq]
      counts[:, s] = np.asarray(per, np.int64)[inv.reshape(-1)]
    return rows.user_keys(), counts
  for k, n in enumerate(lengths):
    lab = rows.label[b[k] : b[k + 1]]
    for s, split in enumerate(protocols.SPLITS):
      counts[k, s] = protocols.count_user_examples(job.protocol, split, int(n), lab)
  return rows.user_keys(), counts


@dataclasses.dataclass
class Plan:
  """Which examples go to which shard (the same rule as `shards.write_split` in one process).

  Attributes:
    keys: int64 [U] user keys in user order (sorted).
    starts: split -> int64 [U] ordinal of the user's first example in the split (-1: the user
      is not in the split).
    sizes: split -> examples; num_shards: split -> shards; group_sizes: split -> users.
    splits: the splits written, train first.
  """

  keys: np.ndarray
  starts: dict
  sizes: dict
  num_shards: dict
  group_sizes: dict
  splits: list

  def shard_starts(self, split: str) -> np.ndarray:
    return shards.shard_starts(self.sizes[split], self.num_shards[split])

  def shard_keys(self) -> list:
    return [(s, k) for s in self.splits for k in range(self.num_shards[s])]


def make_plan(infos, job: Job, splits: list) -> Plan:
  """The user order, each user's example ordinals per split and the shard counts, from every
  bucket's `user_counts`."""
  from input_pipelines.prepare_steps import num_shards

  infos = list(infos)
  keys = np.concatenate([k for k, _ in infos])
  counts = np.concatenate([c for _, c in infos])
  order = np.argsort(keys, kind="stable")
  keys, counts = keys[order], counts[order]
  groups = protocols.split_groups(job.protocol, keys.size, job.seed)
  starts, sizes = {}, {}
  for split in splits:
    c = counts[groups[split], SPLIT_INDEX[split]]
    starts[split] = np.full(keys.size, -1, np.int64)
    starts[split][groups[split]] = np.cumsum(c) - c
    sizes[split] = int(c.sum())
  return Plan(
    keys=keys,
    starts=starts,
    sizes=sizes,
    num_shards=num_shards(job.shards or "auto", sizes),
    group_sizes={s: int(g.size) for s, g in groups.items()},
    splits=list(splits),
  )


def _route(ordinal: int, count: int, starts: np.ndarray, payload: tuple):
  """[(shard, (ordinal, lo, hi, *payload))]: a unit of `count` examples starting at `ordinal`
  goes to every shard its examples fall in; [lo, hi) are its examples in that shard."""
  if count <= 0:
    return
  first = int(np.searchsorted(starts, ordinal, side="right")) - 1
  k = first
  while k < starts.size - 1 and starts[k] < ordinal + count:
    lo = max(ordinal, int(starts[k])) - ordinal
    hi = min(ordinal + count, int(starts[k + 1])) - ordinal
    if hi > lo:
      yield k, (ordinal, lo, hi, *payload)
    k += 1


def _batched(routed, job: Job, source: str):
  """[((split, shard), unit)] -> [((split, shard), file)]: the units of each shard, packed
  into a few arrays (`_pack`) and saved in the work directory; the shuffle then moves a few
  hundred file names, not the sequences (`source` names the bucket or part they come from)."""
  out: dict = {}
  for key, unit in routed:
    out.setdefault(key, []).append(unit)
  files = []
  for (split, k), units in out.items():
    path = os.path.join(job.work, f"units-{source}-{split}-{k:05d}.pkl")
    save(path, _pack(units))
    files.append(((split, k), path))
  return files


def _pack(units: list) -> tuple:
  """Units (ordinal, lo, hi, a, b) with int arrays (or None) a, b -> (ordinals, los, his,
  ragged a or None, ragged b or None)."""
  head = [np.asarray([u[j] for u in units], np.int64) for j in range(3)]
  tail = []
  for j in (3, 4):
    column = [u[j] for u in units]
    tail.append(None if column[0] is None else records.ragged(column))
  return (*head, *tail)


def _unpack(packed: tuple) -> list:
  o, lo, hi, a, b = packed

  def row(field, k):
    return None if field is None else field[0][field[1][k] : field[1][k + 1]]

  return [(int(o[k]), int(lo[k]), int(hi[k]), row(a, k), row(b, k)) for k in range(o.size)]


def route_users(bucket: int, job: Job, round_: int, vocab: dict, plan: Plan):
  """A bucket's users -> ((split, shard), file of its units (first ordinal, lo, hi, item
  codes, labels)) (`_batched`)."""
  rows = load(rows_file(job, round_, bucket))
  code = np.asarray([vocab.get(x, -1) for x in rows.items.tolist()], np.int64)
  keys, seqs, labels = protocols.user_sequences(rows, code)
  rank = np.searchsorted(plan.keys, keys)

  def routed():
    for split in plan.splits:
      starts = plan.shard_starts(split)
      for u, s in enumerate(seqs):
        o = int(plan.starts[split][rank[u]])
        if o < 0:
          continue
        lab = labels[u] if labels is not None else None
        n = protocols.count_user_examples(job.protocol, split, s.size, lab)
        for k, unit in _route(o, n, starts, (s, lab)):
          yield (split, k), unit

  return _batched(routed(), job, f"b{bucket:05d}")


def user_unit_examples(job: Job, split: str, unit: tuple):
  _, lo, hi, s, lab = unit
  examples = protocols.user_examples(job.protocol, split, s, lab, job.max_history)
  for i, ex in enumerate(examples):
    if i >= hi:
      return
    if i >= lo:
      yield ex


def write_shard(kv, job: Job, plan: Plan, vocab_size: int, unit_examples, seen=None):
  """((split, shard), unit files) -> the shard file in the output directory; returns (split,
  shard, file name, SplitStats, items seen (train) or None). Units are sorted by ordinal, so
  the shard holds its examples in single-file order."""
  (split, k), files = kv
  units = [u for f in sorted(f for f in files if f is not None) for u in _unpack(load(f))]
  units.sort(key=lambda u: (u[0], u[1]))
  name = shards.shard_name(split, k, plan.num_shards[split])

  def examples():
    for unit in units:
      yield from unit_examples(job, split, unit)

  stats, occurs = shards.write_examples(
    pathlib.Path(job.tmp) / name,
    split,
    examples(),
    vocab_size,
    seen if split != "train" else None,
    shards.COMPRESSION,
    int(plan.shard_starts(split)[k]),
    collect_seen=split == "train",
  )
  return split, k, name, stats, None if occurs is None else np.flatnonzero(occurs)


def union_seen(parts, vocab_size: int) -> np.ndarray:
  seen = np.zeros(vocab_size, bool)
  for idx in parts:
    seen[idx] = True
  seen[:NUM_RESERVED] = False
  return seen


# --- UniSRec: pre-split examples ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UnisrecSource:
  files: dict  # split -> path
  header: dict  # split -> header
  cols: dict  # split -> (user, history, target) indices
  map_file: str | None


@functools.lru_cache(maxsize=2)
def _id_map(map_file: str | None):
  return None if map_file is None else readers.read_id_map(map_file)[0]


def read_unisrec_part(part: tuple, src: UnisrecSource, lines_before: int):
  """(split, k, users, raw examples, lines, stopped at) of one part of a split file; a
  DataError is returned (not raised) with `order` = (split index, line)."""
  split, k, start, end = part
  rng = readers.ByteRange(start, end, lines_before)
  names = None if k == 0 else list(src.header[split])
  try:
    _, rows = readers.iter_rows(src.files[split], "\t", names, part=rng)
    users, examples, lines = readers.parse_unisrec_rows(
      src.files[split], rows, src.cols[split], _id_map(src.map_file)
    )
  except DataError as err:
    err.order = (SPLIT_INDEX[split], err.line or 0)
    return err
  return split, k, users, examples, lines, rng.stopped_at


def unisrec_first_keys(parsed) -> tuple:
  from input_pipelines.prepare_steps import unisrec_first_keys

  split, _, _, examples, lines, _ = parsed
  return unisrec_first_keys(split, lines, examples)


def unisrec_plan(part_sizes, job: Job) -> Plan:
  """The plan of UniSRec splits from [((split, part), rows)]: examples keep the files' order."""
  from input_pipelines.prepare_steps import num_shards

  sizes = {s: 0 for s in readers.UNISREC_SPLITS}
  for (split, _), n in part_sizes:
    sizes[split] += int(n)
  return Plan(
    keys=np.zeros(0, np.int64),
    starts={},
    sizes=sizes,
    num_shards=num_shards(job.shards or "auto", sizes),
    group_sizes={},
    splits=list(readers.UNISREC_SPLITS),
  )


def part_offsets(part_sizes) -> dict:
  """{(split, part): ordinal of the part's first row in its split} from [((split, part), rows)]."""
  out, total = {}, {}
  for (split, k), n in sorted(part_sizes):
    out[(split, k)] = total.get(split, 0)
    total[split] = total.get(split, 0) + int(n)
  return out


def route_unisrec(parsed, job: Job, plan: Plan, part_offsets: dict, index: dict):
  """A parsed part -> ((split, shard), file of its units (ordinal, 0, 1, history, targets))
  (vocab indices; `_batched`)."""
  from input_pipelines.prepare_steps import unisrec_example

  split, k, _, examples, _, _ = parsed
  starts = plan.shard_starts(split)
  first = part_offsets[(split, k)]

  def routed():
    for i, (history, targets) in enumerate(examples):
      h, t = unisrec_example(history, targets, index, job.max_history)
      for shard, unit in _route(first + i, 1, starts, (h, t)):
        yield (split, shard), unit

  return _batched(routed(), job, f"{split}-p{k:05d}")


def unisrec_unit_examples(job: Job, split: str, unit: tuple):
  _, _, _, h, t = unit
  yield h.tolist(), t.tolist()
