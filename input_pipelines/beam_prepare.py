"""Data preparation on Apache Beam: `python -m input_pipelines.prepare --runner RUNNER ...`.

The same preparation as the in-process path (same flags, same prepared directory, the same
bytes in every file), for logs too large for one process. It runs as a few Beam jobs; data moves
between them through a work directory inside the output's temporary directory:

1. read: the input is cut into parts (text files into ~`--part-mb` byte ranges at line breaks,
   Parquet files into row groups) that workers parse with `readers`; users are hashed into
   `--buckets` buckets; each bucket is sorted and deduplicated (`protocols.user_rows`).
2. k-core, one job per round (only while something fails the thresholds): item counts are
   summed over the buckets per item shard, every bucket drops the rows of failing users and
   items (`protocols.kcore_keep`).
3. write: the vocabulary (items by first occurrence, `protocols.vocab_order` over the buckets'
   first occurrences), the user order and each user's example ordinals (the plan), then every
   shard `<split>-SSSSS-of-NNNNN.tfrecord.gz` written by a worker with the examples
   `protocols.user_examples` gives (`input_pipelines.shards`).

The driver then aligns the item features (`prepare_steps.build_features`), writes the vocabulary,
features and dataset.json (`prepared.finish_prepared`) and renames the directory into place. A
run that fails, is interrupted or is killed leaves no output directory (the temporary one is
removed, or by the next run when the process was killed).

Bad input gives the in-process path's error: every part reports its first bad row and the
driver raises the one that comes first in the file (header and column errors are found by the
driver before any job). A text part ends at a line break: a quoted CSV field with a line break
across a part boundary is detected (the part before reads past its end) and the file is read
again as one part.

What stays in one place: the driver holds the per-bucket summaries; one worker builds the
vocabulary (N items) and the plan (32 bytes per user), and every worker holds both as side
inputs; the features are aligned in the driver (an [N, D] table). The work directory and the
output must be on a file system every worker sees (local disk for DirectRunner).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import sys
import time

import numpy as np

from input_pipelines import NUM_RESERVED, prepared, protocols, readers, shards
from input_pipelines import beam_steps as steps
from input_pipelines import prepare_steps as prep
from input_pipelines.beam_steps import Job
from input_pipelines.errors import DataError

BYTES_PER_BUCKET = 16 << 20  # about 500k interactions of a typical log


def _beam():
  try:
    import apache_beam as beam
  except ImportError:
    raise ValueError(
      "--runner needs Apache Beam: pip install --no-deps -r requirements-beam.txt "
      "(see the file for why --no-deps)"
    ) from None
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  return beam


def pipeline_options(args):
  """Beam PipelineOptions of --runner, --num-workers and --pipeline-option."""
  from apache_beam.options.pipeline_options import PipelineOptions

  flags = [f"--runner={args.runner}"]
  if args.runner in ("DirectRunner", "direct"):
    n = max(1, int(args.num_workers or 1))
    mode = "multi_processing" if n > 1 else "in_memory"
    flags += [f"--direct_num_workers={n}", f"--direct_running_mode={mode}"]
  flags += ["--default_sdk_harness_log_level=WARNING", *(args.pipeline_option or [])]
  # Workers started by the runner import input_pipelines from where this process found it.
  root = str(pathlib.Path(__file__).resolve().parent.parent)
  path = os.environ.get("PYTHONPATH", "")
  if root not in path.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join([root, path]) if path else root
  return PipelineOptions(flags)


def log_step(args, msg: str) -> None:
  if not args.quiet:
    print(msg, file=sys.stderr)


def _run(options, build, args, what: str) -> None:
  """Runs one Beam job (`build(beam, pipeline)` adds its steps) and logs its wall time."""
  beam = _beam()
  start = time.perf_counter()
  with beam.Pipeline(options=options) as p:
    build(beam, p)
  log_step(args, f"beam job {what}: {time.perf_counter() - start:.1f}s")


def _dump(beam, pcoll, path: str, label: str):
  return (
    pcoll
    | f"{label}List" >> beam.combiners.ToList()
    | f"{label}Dump" >> beam.Map(steps.dump_list, path)
  )


def _first_error(errors):
  """The error a one-process read would raise first (smallest (check, line) order)."""
  errors = [e for e in errors if e is not None]
  if errors:
    raise min(errors, key=lambda e: getattr(e, "order", (0, e.line or 0)))


def prepare(args, out: pathlib.Path) -> tuple[pathlib.Path, list]:
  """Prepares `args` (prepare's flags) into `out` with Beam; returns (out, item ids)."""
  _beam()
  options = pipeline_options(args)
  tmp, lock = prepared.open_tmp_dir(out)
  try:
    work = tmp / ".work"
    work.mkdir()
    if args.format == "unisrec":
      item_ids, known, written, seen, meta, text_src, auto = _unisrec(args, options, tmp, work)
    else:
      item_ids, known, written, seen, meta, text_src, auto = _log_flow(args, options, tmp, work)
    log_step(args, f"{len(item_ids):,} items, protocol {meta['protocol']}")
    needed = bool(args.features or auto or text_src)  # `known` is read only for features
    features, modality_info = prep.build_features(
      args, item_ids, known() if needed else set(), text_src, auto
    )
    tables = prepared.feature_tables(features, len(item_ids))
    meta = prep.complete_meta(args, meta, modality_info)
    shutil.rmtree(work)
    prepared.finish_prepared(tmp, out, item_ids, tables, written, seen, meta)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    prepared.release_tmp_lock(lock)
  return out, item_ids


# --- log formats --------------------------------------------------------------------------------


def _log_parts(args, src_in: prep.LogInput):
  """(steps.LogSource, parts): columns resolved here, with the errors of a one-process read."""
  if src_in.parquet:
    pf, header, plan = readers.open_parquet(src_in.path, src_in.columns, src_in.time_optional)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    parts = [("parquet", g, g, int(offsets[g])) for g in range(len(sizes))]
  else:
    header, rows = readers.iter_rows(src_in.path, src_in.sep, src_in.names)
    rows.close()
    plan = readers.plan_columns(src_in.path, header, src_in.columns, src_in.time_optional)
    parts = _text_parts(src_in.path, _part_mb(args, src_in.path))
  src = steps.LogSource(
    path=str(src_in.path),
    parquet=src_in.parquet,
    sep=src_in.sep,
    header=tuple(header),
    has_header=src_in.names is None,
    plan=plan,
    columns=src_in.columns,
  )
  return src, parts


def _part_mb(args, path) -> float:
  """--part-mb, or 64 MB, less for a small file: 4 parts per worker, none below 1 MB."""
  if args.part_mb is not None:
    return float(args.part_mb)
  size_mb = pathlib.Path(path).stat().st_size / (1 << 20)
  return min(64.0, max(1.0, size_mb / (4 * max(1, args.num_workers or 1))))


def _text_parts(path, part_mb: float) -> list:
  """[("text", k, start, end)] byte ranges of a text file (one part when part_mb <= 0)."""
  size = pathlib.Path(path).stat().st_size
  step = int(float(part_mb) * (1 << 20))
  starts = readers.split_at_lines(path, step) if step > 0 else [0]
  ends = [*starts[1:], None]
  return [("text", k, s, e) for k, (s, e) in enumerate(zip(starts, ends))] if size else []


def _read_part_fn(beam):
  def read(part, src: steps.LogSource, job: Job, line_counts: dict):
    before = sum(n for k, n in line_counts.items() if k < part[1])
    try:
      inter, stopped = steps.read_part(part, src, before)
    except DataError as err:
      yield beam.pvalue.TaggedOutput("errors", err)
      return
    if stopped is not None:
      yield beam.pvalue.TaggedOutput("ends", (part[1], stopped))
    yield from steps.spill(inter, job, part[1])

  return read


def _summaries_and_counts(beam, results, job: Job, work: str, round_: int):
  """Dumps a step's bucket summaries and the items that failed this round's thresholds."""
  summaries, counts = results | f"Kind{round_}" >> beam.Partition(
    lambda e, n: 0 if isinstance(e, dict) else 1, 2
  )
  _dump(beam, summaries, os.path.join(work, f"summary-r{round_:03d}.pkl"), f"Summaries{round_}")
  failing = (
    counts
    | f"ByShard{round_}" >> beam.Map(lambda e: (e[1], e[2]))
    | f"GroupCounts{round_}" >> beam.GroupByKey()
    | f"Failing{round_}" >> beam.Map(steps.failing_items, job, round_)
  )
  _dump(beam, failing, os.path.join(work, f"failing-r{round_:03d}.pkl"), f"NumFailing{round_}")


def _read_job(args, options, job: Job, src: steps.LogSource, parts: list, work: str):
  def build(beam, p):
    # Reshuffle: the parts go to all workers (Create's elements would stay on one)
    pc = p | "Parts" >> beam.Create(parts) | "SpreadParts" >> beam.Reshuffle()
    if src.parquet:
      lines = p | "NoLines" >> beam.Create([])
    else:
      lines = pc | "CountLines" >> beam.Map(steps.part_lines, src)
    read = pc | "Read" >> beam.FlatMap(
      _read_part_fn(beam), src, job, beam.pvalue.AsDict(lines)
    ).with_outputs("errors", "ends", main="rows")
    _dump(beam, read.errors, os.path.join(work, "errors.pkl"), "Errors")
    _dump(beam, read.ends, os.path.join(work, "ends.pkl"), "Ends")
    built = (
      read.rows
      | "GroupUsers" >> beam.GroupByKey()
      | "Build" >> beam.FlatMap(steps.build_bucket, job)
    )
    _summaries_and_counts(beam, built, job, work, 0)

  _run(options, build, args, f"read ({len(parts)} parts)")


def _kcore_job(args, options, job: Job, buckets: list, round_: int, work: str):
  def build(beam, p):
    results = (
      p
      | "Buckets" >> beam.Create(buckets)
      | "Spread" >> beam.Reshuffle()
      | "Round" >> beam.FlatMap(steps.kcore_round, job, round_)
    )
    _summaries_and_counts(beam, results, job, work, round_)

  _run(options, build, args, f"k-core round {round_}")


def _write_stage(beam, units, plan, vocab_size, job: Job, unit_examples, work: str):
  """Groups units by (split, shard), writes train shards, then the others (which need the
  items seen in train); dumps the written shards and the seen items."""
  keys = plan | "ShardKeys" >> beam.FlatMap(lambda pl: [(key, None) for key in pl.shard_keys()])
  grouped = (units, keys) | "AllShards" >> beam.Flatten() | "GroupShards" >> beam.GroupByKey()
  train, other = grouped | "TrainFirst" >> beam.Partition(
    lambda kv, n: 0 if kv[0][0] == "train" else 1, 2
  )
  plan_si, size_si = beam.pvalue.AsSingleton(plan), beam.pvalue.AsSingleton(vocab_size)
  train_out = train | "WriteTrain" >> beam.Map(
    steps.write_shard, job, plan_si, size_si, unit_examples
  )
  seen = (
    train_out
    | "SeenItems" >> beam.Map(lambda r: r[4])
    | "SeenList" >> beam.combiners.ToList()
    | "SeenUnion" >> beam.Map(steps.union_seen, size_si)
  )
  other_out = other | "WriteOther" >> beam.Map(
    steps.write_shard, job, plan_si, size_si, unit_examples, seen=beam.pvalue.AsSingleton(seen)
  )
  written = (train_out, other_out) | "Written" >> beam.Flatten()
  _dump(
    beam, written | "NoSeen" >> beam.Map(lambda r: r[:4]), os.path.join(work, "written.pkl"), "W"
  )
  seen | "SeenDump" >> beam.Map(steps.save_to, os.path.join(work, "seen.pkl"))


def _write_job(args, options, job: Job, buckets: list, round_: int, splits: list, work: str):
  def build(beam, p):
    ids = p | "Buckets" >> beam.Create(buckets) | "Spread" >> beam.Reshuffle()
    vocab = (
      ids
      | "FirstKeys" >> beam.FlatMap(steps.first_key_partials, job, round_)
      | "GroupKeys" >> beam.GroupByKey()
      | "ReduceKeys" >> beam.Map(steps.reduce_first_keys)
      | "KeyList" >> beam.combiners.ToList()
      | "Vocab" >> beam.Map(steps.vocabulary, work)
    )
    plan = (
      ids
      | "UserCounts" >> beam.Map(steps.user_counts, job, round_)
      | "CountList" >> beam.combiners.ToList()
      | "Plan" >> beam.Map(steps.make_plan, job, splits)
    )
    size = vocab | "VocabSize" >> beam.Map(lambda v: len(v) + NUM_RESERVED)
    units = ids | "Route" >> beam.FlatMap(
      steps.route_users,
      job,
      round_,
      beam.pvalue.AsSingleton(vocab),
      beam.pvalue.AsSingleton(plan),
    )
    _write_stage(beam, units, plan, size, job, steps.user_unit_examples, work)

  _run(options, build, args, "vocabulary, plan and shards")


def _load(work, name):
  return steps.load(os.path.join(work, name))


def _written(work: str, splits: list) -> dict:
  """split -> (dataset.json entry, SplitStats) from the written shards, train first; the
  one-process path's error for an empty split."""
  rows = _load(work, "written.pkl")
  out = {}
  for split in splits:
    mine = sorted((r for r in rows if r[0] == split), key=lambda r: r[1])
    stats = shards.SplitStats()
    for r in mine:
      stats = stats.merge(r[3])
    if stats.num_examples == 0:
      raise ValueError(f"split '{split}' is empty")
    out[split] = (
      shards.sharded_entry([r[2] for r in mine], [r[3].num_examples for r in mine]),
      stats,
    )
  return out


def _num_buckets(args, path) -> int:
  if args.buckets:
    return int(args.buckets)
  size = pathlib.Path(path).stat().st_size
  return int(max(4 * max(1, args.num_workers or 1), -(-size // BYTES_PER_BUCKET)))


def _log_flow(args, options, tmp: pathlib.Path, work: pathlib.Path):
  src_in = prep.log_input(args)
  src, parts = _log_parts(args, src_in)
  protocol_error = None
  try:
    protocol = prep.choose_protocol(args, src.plan.label is not None)
  except ValueError as err:  # raised after the read, as the one-process path does
    protocol, protocol_error = "loo", err
  filt = prep.filtering(args, protocol)
  min_u, min_i = protocols.thresholds(filt.min_user, filt.min_item, filt.min_len)
  job = Job(
    work=str(work),
    tmp=str(tmp),
    buckets=_num_buckets(args, src_in.path),
    dedup=filt.dedup,
    min_user=min_u,
    min_item=min_i,
    protocol=protocol,
    seed=args.seed,
    max_history=args.max_history,
    shards=args.shards,
    source=str(src_in.path),
  )
  if filt.dedup not in protocols.DEDUP:
    raise ValueError(f"--dedup must be one of {', '.join(protocols.DEDUP)}, got {filt.dedup!r}")
  _read_job(args, options, job, src, parts, str(work))
  ends = dict(_load(work, "ends.pkl"))
  starts = [p[2] for p in parts[1:]]
  if any(ends.get(k) != s for k, s in enumerate(starts) if k in ends):
    log_step(args, "a quoted field runs across a part boundary: reading the file as one part")
    for f in work.iterdir():
      f.unlink()
    parts = _text_parts(src_in.path, 0)
    _read_job(args, options, job, src, parts, str(work))
  _first_error(_load(work, "errors.pkl"))
  if protocol_error is not None:
    raise protocol_error
  state = _load(work, "summary-r000.pkl")
  raw = sum(s["raw"] for s in state)
  if raw == 0:
    raise DataError(str(src_in.path), "no interactions (after the rating filter, if any)")
  removed_dups = sum(s["removed_duplicates"] for s in state)
  buckets = sorted(s["bucket"] for s in state)
  round_ = 0  # the bucket files of the last job
  # a k-core without item threshold is one round, done by the read job
  rounds = int(any(s["removed_in_read"] for s in state))
  failing = sum(_load(work, "failing-r000.pkl"))
  while failing or sum(s["users_below"] for s in state):
    round_ += 1
    rounds += 1
    _kcore_job(args, options, job, buckets, round_, str(work))
    state = _load(work, f"summary-r{round_:03d}.pkl")
    failing = sum(_load(work, f"failing-r{round_:03d}.pkl"))
    log_step(args, f"k-core round {round_}: {sum(s['removed'] for s in state):,} rows removed")
  left = sum(s["rows"] for s in state)
  if left == 0:
    raise protocols.no_rows_left(str(src_in.path), filt.dedup, min_u, min_i)

  # the checks of protocols.make_splits, in its order
  protocols.check_protocol(protocol, args.max_history)
  if protocol == "loo":
    protocols.check_loo_lengths(sum(s["short_for_loo"] for s in state))
  users = sum(s["users"] for s in state)
  groups = protocols.split_groups(protocol, users, args.seed)
  sizes = None
  names = list(protocols.SPLITS)
  if protocol == "given":
    sizes = {
      s: sum(b["given_counts"][s] for b in state if "given_counts" in b) for s in protocols.SPLITS
    }
    names = protocols.check_given_counts(sizes)

  _write_job(args, options, job, buckets, round_, names, str(work))
  item_ids = _load(work, "vocab.pkl")
  written = _written(str(work), names)
  seen = _load(work, "seen.pkl")
  info = protocols.protocol_info(protocol, groups, sizes, args.seed)
  counts = protocols.merge_counts(s["length_counts"] for s in state)
  seq_stats = {
    "num_raw_interactions": raw,
    "removed_duplicates": removed_dups,
    "removed_by_filtering": raw - removed_dups - left,
    "filter_rounds": rounds,
    "num_users": users,
    "num_items": len(item_ids),
    "num_interactions": left,
  }
  meta = prep.log_meta(args, src_in, protocol, filt, info, seq_stats, counts, len(item_ids))

  def known():
    files = sorted(work.glob("known-b*.pkl"))
    return set(np.unique(np.concatenate([steps.load(f) for f in files])).tolist())

  return item_ids, known, written, seen, meta, src_in.text_src, src_in.auto_features


# --- unisrec: pre-split examples ----------------------------------------------------------------


def _unisrec(args, options, tmp: pathlib.Path, work: pathlib.Path):
  src_in = prep.unisrec_input(args)
  errors, headers, cols, parts = [], {}, {}, []
  for split, file in src_in.files.items():
    try:
      header, rows = readers.iter_rows(file, "\t")
      rows.close()
      cols[split] = readers.unisrec_columns(file, header)
      headers[split] = tuple(header)
    except DataError as err:
      err.order = (steps.SPLIT_INDEX[split], 0)
      errors.append(err)
      continue
    parts += [(split, k, s, e) for _, k, s, e in _text_parts(file, _part_mb(args, file))]
  src = steps.UnisrecSource(
    files={s: str(f) for s, f in src_in.files.items()},
    header=headers,
    cols=cols,
    map_file=str(src_in.map_file) if src_in.map_file is not None else None,
  )
  buckets = 4 * max(1, args.num_workers or 1)  # item shards of the vocabulary
  job = Job(
    work=str(work), tmp=str(tmp), buckets=buckets, max_history=args.max_history, shards=args.shards
  )
  map_order = src_in.map_order

  def build(beam, p):
    # Reshuffle: the parts go to all workers (Create's elements would stay on one)
    pc = p | "Parts" >> beam.Create(parts) | "SpreadParts" >> beam.Reshuffle()
    lines = pc | "CountLines" >> beam.Map(
      lambda part: ((part[0], part[1]), readers.count_lines(src.files[part[0]], part[2], part[3]))
    )
    lines_si = beam.pvalue.AsDict(lines)
    parsed = pc | "Read" >> beam.Map(
      lambda part, counts: steps.read_unisrec_part(
        part, src, sum(n for (s, k), n in counts.items() if s == part[0] and k < part[1])
      ),
      lines_si,
    )
    bad = parsed | "Errors" >> beam.Filter(lambda r: isinstance(r, DataError))
    _dump(beam, bad, os.path.join(str(work), "errors.pkl"), "Errors")
    ok = parsed | "Parsed" >> beam.Filter(lambda r: not isinstance(r, DataError))
    _dump(beam, ok | "Ends" >> beam.Map(lambda r: (r[0], r[1], r[5])), str(work / "ends.pkl"), "E")
    sizes = ok | "PartSizes" >> beam.Map(lambda r: ((r[0], r[1]), len(r[3])))
    _dump(beam, sizes, str(work / "part_sizes.pkl"), "Sizes")
    if map_order is not None:
      index = p | "Map" >> beam.Create([{x: k + NUM_RESERVED for k, x in enumerate(map_order)}])
    else:
      index = (
        ok
        | "FirstKeys"
        >> beam.FlatMap(
          lambda r: steps.item_partials(
            steps.unisrec_first_keys(r)[0], steps.unisrec_first_keys(r)[1:], buckets
          )
        )
        | "GroupKeys" >> beam.GroupByKey()
        | "ReduceKeys" >> beam.Map(steps.reduce_first_keys)
        | "KeyList" >> beam.combiners.ToList()
        | "Vocab" >> beam.Map(steps.vocabulary, str(work), NUM_RESERVED)
      )
    plan = (
      sizes | "SizeList" >> beam.combiners.ToList() | "Plan" >> beam.Map(steps.unisrec_plan, job)
    )
    offsets = (
      sizes | "SizeList2" >> beam.combiners.ToList() | "Offsets" >> beam.Map(steps.part_offsets)
    )
    units = ok | "Route" >> beam.FlatMap(
      steps.route_unisrec,
      job,
      beam.pvalue.AsSingleton(plan),
      beam.pvalue.AsSingleton(offsets),
      beam.pvalue.AsSingleton(index),
    )
    size = index | "VocabSize" >> beam.Map(lambda ix: len(ix) + NUM_RESERVED)
    _write_stage(beam, units, plan, size, job, steps.unisrec_unit_examples, str(work))
    test = ok | "Test" >> beam.Filter(lambda r: r[0] == "test")
    users = (
      test
      | "TestUsers" >> beam.FlatMap(lambda r: r[2])
      | "Distinct" >> beam.Distinct()
      | "NumUsers" >> beam.combiners.Count.Globally()
    )
    users | "UsersDump" >> beam.Map(steps.save_to, str(work / "num_users.pkl"))
    lengths = test | "Lengths" >> beam.Map(
      lambda r: protocols.length_counts([len(h) + len(t) for h, t in r[3]])
    )
    _dump(beam, lengths, str(work / "lengths.pkl"), "Len")

  if parts:
    _run(options, build, args, "read and write")
  else:
    for name in ("errors.pkl", "ends.pkl", "part_sizes.pkl"):
      steps.save(work / name, [])
  part_sizes = dict(_load(work, "part_sizes.pkl"))
  for split, file in src_in.files.items():
    if split in headers and not any(n for (s, _), n in part_sizes.items() if s == split):
      err = DataError(file, "no rows after the header")
      err.order = (steps.SPLIT_INDEX[split], float("inf"))
      errors.append(err)
  _first_error(errors + _load(work, "errors.pkl"))
  for split, k, stopped in _load(work, "ends.pkl"):
    nxt = [p for p in parts if p[0] == split and p[1] == k + 1]
    if nxt and stopped != nxt[0][2]:  # TSV has no quoted line breaks: cannot happen
      raise RuntimeError(f"part {k} of {split} ended at {stopped}, not {nxt[0][2]}")
  item_ids = map_order if map_order is not None else _load(work, "vocab.pkl")
  written = _written(str(work), list(readers.UNISREC_SPLITS))
  seen = _load(work, "seen.pkl")
  counts = protocols.merge_counts(_load(work, "lengths.pkl"))
  meta = prep.unisrec_meta(args, src_in, int(_load(work, "num_users.pkl")), counts, len(item_ids))
  return item_ids, lambda: set(item_ids), written, seen, meta, args.item_text, []
