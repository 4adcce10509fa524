"""The pieces of `python -m input_pipelines.prepare` that both paths use: the in-process path
(`prepare.py`) and the Apache Beam path (`beam_prepare.py`, `beam_steps.py`) read their input,
filter, protocol, features and metadata through these functions, so each step has one definition.
The CLI and the in-process driver stay in `prepare.py`; this module imports neither path.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Sequence

import numpy as np

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from input_pipelines import NUM_RESERVED
from input_pipelines import features as feats
from input_pipelines import protocols, readers
from input_pipelines.errors import DataError


FORMATS = ("csv", "parquet", "recbole", "unisrec", "mmrec")

# Column candidates per format when the flag is not given (the first present is used).
DEFAULT_COLUMNS = {
  "csv": dict(
    user=("user_id", "user", "userId", "userID"),
    item=("item_id", "item", "itemId", "itemID", "movieId", "movie_id"),
    time=("timestamp", "time", "ts"),
  ),
  "recbole": dict(user=("user_id",), item=("item_id",), time=("timestamp",)),
  "mmrec": dict(
    user=("user", "userID", "user_id"),
    item=("item", "itemID", "item_id"),
    time=("timestamp",),
    label=("x_label",),
  ),
}
DEFAULT_COLUMNS["parquet"] = DEFAULT_COLUMNS["csv"]


def log_step(args, msg: str) -> None:
  if not args.quiet:
    print(msg, file=sys.stderr)


def progress(args, iterable, total=None, desc=None):
  """`iterable` with a progress bar that appears when iteration starts (not at creation)."""
  if args.quiet:
    return iterable

  def gen():
    from tqdm.auto import tqdm

    with tqdm(
      iterable,
      total=total or None,
      desc=desc,
      unit="ex",
      leave=False,
      file=sys.stderr,
      mininterval=0.5,
    ) as bar:
      yield from bar

  return gen()


def _columns(args) -> readers.Columns:
  d = DEFAULT_COLUMNS[args.format]
  time_col = args.time_column if args.time_column is not None else d["time"]
  if isinstance(time_col, str) and time_col.lower() == "none":
    time_col = None
  label = args.label_column if args.label_column is not None else d.get("label")
  if isinstance(label, str) and label.lower() == "none":
    label = None
  return readers.Columns(
    user=args.user_column or d["user"],
    item=args.item_column or d["item"],
    time=time_col,
    rating=args.rating_column,
    label=label,
    min_rating=args.min_rating,
    time_format=args.time_format,
  )


def _single(directory: pathlib.Path, patterns: Sequence[str], what: str) -> pathlib.Path:
  found = sorted({p for pat in patterns for p in directory.glob(pat)})
  if not found:
    raise FileNotFoundError(f"no {what} ({' / '.join(patterns)}) in {directory}")
  if len(found) > 1:
    raise DataError(
      directory,
      f"several {what} files ({', '.join(p.name for p in found)}); pass one with --interactions",
    )
  return found[0]


def _interaction_file(args) -> pathlib.Path:
  if args.interactions:
    return pathlib.Path(args.interactions)
  if not args.input:
    raise ValueError(f"--format {args.format} needs --interactions FILE (or --input DIR)")
  d = pathlib.Path(args.input)
  if not d.is_dir():
    raise NotADirectoryError(f"--input is not a directory: {d}")
  if args.format == "recbole":
    if args.name:
      return d / f"{args.name}.inter"
    return _single(d, ["*.inter"], "RecBole .inter")
  if args.format == "mmrec":
    return _single(d, ["*.inter", "*.csv"], "MMRec interaction table")
  return _single(
    d, ["*.csv", "*.tsv"] if args.format == "csv" else ["*.parquet"], "interaction table"
  )


# --- log formats (csv, parquet, recbole, mmrec): the pieces both preparation paths share ---------


@dataclasses.dataclass
class LogInput:
  """The interaction table to read and what comes with it.

  Attributes:
    path: the table; parquet: read as Parquet (else delimited text with `sep` and, for a file
      without header, column `names`); columns: the column roles; time_optional: a missing time
      column means file order (RecBole).
    text_src: item text to encode as modality "text" (--item-text, or RecBole's .item file).
    auto_features: MMRec's (name, image_feat.npy / text_feat.npy, None) beside the table.
    item_file: RecBole's .item file (listed in dataset.json's source_files), or None.
  """

  path: pathlib.Path
  columns: readers.Columns
  parquet: bool
  sep: str | None
  names: list | None
  time_optional: bool
  text_src: object
  auto_features: list
  item_file: pathlib.Path | None


def log_input(args) -> LogInput:
  fmt = args.format
  path = _interaction_file(args)
  text_src, item_file = args.item_text, None
  if fmt == "recbole":
    item_file = pathlib.Path(args.items) if args.items else None
    if item_file is None and args.input:
      cand = path.with_suffix(".item")
      item_file = cand if cand.is_file() else None
    if item_file is not None:
      text_src = text_src or item_file
  auto_features = []
  if fmt == "mmrec":
    for name in ("image", "text"):
      f = path.parent / f"{name}_feat.npy"
      if f.is_file():
        auto_features.append((name, f, None))
  return LogInput(
    path=path,
    columns=_columns(args),
    parquet=fmt == "parquet" or (fmt == "csv" and path.suffix.lower() == ".parquet"),
    sep=args.sep,
    names=args.columns.split(",") if args.columns else None,
    time_optional=fmt == "recbole",
    text_src=text_src,
    auto_features=auto_features,
    item_file=item_file,
  )


def choose_protocol(args, has_labels: bool) -> str:
  protocol = args.protocol or ("given" if has_labels else "loo")
  if protocol == "given" and not has_labels:
    raise ValueError("--protocol given needs a split-label column (--label-column)")
  return protocol


@dataclasses.dataclass(frozen=True)
class Filtering:
  """Deduplication and k-core thresholds (`protocols.build_sequences`)."""

  dedup: str
  min_user: int
  min_item: int
  min_len: int


def filtering(args, protocol: str) -> Filtering:
  k = args.k_core or 0
  return Filtering(
    dedup=args.dedup or "exact",
    min_user=args.min_user_interactions if args.min_user_interactions is not None else k,
    min_item=args.min_item_interactions if args.min_item_interactions is not None else k,
    min_len=args.min_seq_len if args.min_seq_len is not None else protocols.MIN_LEN[protocol],
  )


def log_meta(
  args,
  src: LogInput,
  protocol: str,
  filt: Filtering,
  info: dict,
  seq_stats: dict,
  length_counts: dict,
  num_items: int,
) -> dict:
  """dataset.json's description of a prepared log (before the modalities).

  Args:
    info: `protocols.protocol_info`; seq_stats: the counts of `protocols.build_sequences`;
    length_counts: {sequence length: users}.
  """
  users = sum(length_counts.values())
  total = sum(k * v for k, v in length_counts.items())
  stats = dict(seq_stats)
  stats.update(num_users=users, num_interactions=total, density=total / (users * num_items))
  stats.update(protocols.sequence_length_stats(length_counts))
  min_u, min_i = protocols.thresholds(filt.min_user, filt.min_item, filt.min_len)
  return {
    "protocol": protocol,
    "dedup": filt.dedup,
    "k_core": {"min_user_interactions": min_u, "min_item_interactions": min_i},
    "protocol_info": info,
    "statistics": stats,
    "source_files": [str(src.path)] + ([str(src.item_file)] if src.item_file else []),
    "recommended_max_len": protocols.recommended_max_len(length_counts, args.max_history),
  }


def from_log(args):
  src = log_input(args)
  if src.parquet:
    inter = readers.read_parquet(src.path, src.columns, time_optional=src.time_optional)
  else:
    inter = readers.read_delimited(
      src.path,
      src.columns,
      sep=src.sep,
      names=src.names,
      progress=not args.quiet,
      time_optional=src.time_optional,
    )
  log_step(args, f"read {len(inter):,} interactions from {src.path}")
  protocol = choose_protocol(args, inter.labels is not None)
  filt = filtering(args, protocol)
  seq = protocols.build_sequences(
    inter, filt.dedup, min_user=filt.min_user, min_item=filt.min_item, min_seq_len=filt.min_len
  )
  splits, info = protocols.make_splits(seq, protocol, args.max_history, args.seed)
  sizes = protocols.split_sizes(
    seq, protocol, protocols.split_groups(protocol, len(seq.seqs), args.seed)
  )
  counts = protocols.length_counts([s.size for s in seq.seqs])
  meta = log_meta(args, src, protocol, filt, info, seq.stats, counts, len(seq.item_ids))
  known = set(np.unique(inter.items.astype(str)).tolist())
  return seq.item_ids, known, splits, sizes, meta, src.text_src, src.auto_features


# --- unisrec: pre-split sequences ---------------------------------------------------------------


@dataclasses.dataclass
class UnisrecInput:
  """`name`: the dataset; `files`: split -> .inter file; `id_map` {integer: raw id} and
  `map_order` (raw ids in integer order) from `map_file`, or None."""

  name: str
  files: dict
  id_map: dict | None
  map_order: list | None
  map_file: pathlib.Path | None


def unisrec_input(args) -> UnisrecInput:
  for flag in ("dedup", "k_core", "min_user_interactions", "min_item_interactions", "min_seq_len"):
    if getattr(args, flag) is not None:
      raise ValueError(
        f"--{flag.replace('_', '-')} is not supported for --format unisrec: "
        "its pre-split sequences are kept as given"
      )
  if args.protocol not in (None, "given"):
    raise ValueError("--format unisrec keeps its given split: use --protocol given (default)")
  if not args.input:
    raise ValueError("--format unisrec needs --input DIR")
  name, files = readers.find_unisrec_files(args.input, args.name)
  id_map, map_order = None, None
  map_file = (
    pathlib.Path(args.item_map)
    if args.item_map
    else pathlib.Path(args.input) / f"{name}.item2index"
  )
  if args.item_map or (map_file.is_file() and not args.no_item_map):
    id_map, map_order = readers.read_id_map(map_file)
  return UnisrecInput(name, files, id_map, map_order, map_file if id_map is not None else None)


def unisrec_first_keys(split: str, ordinals, examples) -> tuple:
  """`protocols.first_keys` for UniSRec examples (raw ids): items are ordered by first
  occurrence over the train, valid and test files, each example's history then target."""
  items, key, pos = [], [], []
  base = readers.UNISREC_SPLITS.index(split) << 40
  for o, (history, targets) in zip(ordinals, examples):
    ids = (*history, *targets)
    items += ids
    key += [base + int(o)] * len(ids)
    pos += range(len(ids))
  return np.asarray(items, dtype=object), np.asarray(key, np.int64), np.asarray(pos, np.int64)


def unisrec_example(history, targets, index: dict, cut: int | None) -> tuple[list, list]:
  """One UniSRec example as vocab indices, the history cut to its last `cut` items."""
  h = [index[x] for x in history]
  if cut is not None and len(h) > cut:
    h = h[-cut:]
  return h, [index[x] for x in targets]


def unisrec_meta(
  args, src: UnisrecInput, num_users: int, length_counts: dict, num_items: int
) -> dict:
  """dataset.json's description of prepared UniSRec data; `length_counts`: {history + targets
  length: test examples}, `num_users`: distinct users of the test file."""
  n = sum(length_counts.values())
  total = sum(k * v for k, v in length_counts.items())
  stats = {"num_users": num_users, "num_interactions": total, "density": total / (n * num_items)}
  stats.update(protocols.sequence_length_stats(length_counts))
  return {
    "protocol": "given",
    "protocol_info": {"protocol": "given", "layout": "unisrec", "name": src.name},
    "statistics": stats,
    "source_files": [str(f) for f in src.files.values()]
    + ([str(src.map_file)] if src.map_file is not None else []),
    "recommended_max_len": protocols.recommended_max_len(length_counts, args.max_history),
  }


def from_unisrec(args):
  src = unisrec_input(args)
  data = {
    s: readers.read_unisrec_split(f, src.id_map, progress=not args.quiet)
    for s, f in src.files.items()
  }
  if src.map_order is not None:
    item_ids = src.map_order
  else:
    keys = [unisrec_first_keys(s, range(len(data[s][1])), data[s][1]) for s in data]
    item_ids = protocols.vocab_order(*(np.concatenate(k) for k in zip(*keys)))
  index = {x: k + NUM_RESERVED for k, x in enumerate(item_ids)}

  def conv(examples):
    def gen():
      for history, targets in examples:
        yield unisrec_example(history, targets, index, args.max_history)

    return gen

  splits = {s: conv(data[s][1]) for s in readers.UNISREC_SPLITS}
  counts = protocols.length_counts([len(h) + len(t) for h, t in data["test"][1]])
  meta = unisrec_meta(args, src, len(set(data["test"][0])), counts, len(item_ids))
  split_total = {s: len(data[s][1]) for s in readers.UNISREC_SPLITS}
  return item_ids, set(item_ids), splits, split_total, meta, args.item_text, []


def encode_text_modality(
  text: feats.ItemText, encoder: str, dim: int, seed: int, batch_size: int, progress: bool
):
  """(FeatureSource over the items with non-empty text, encoder description)."""
  from input_pipelines.encode_text import encode

  emb, keep, info = encode(text, encoder, dim, seed, batch_size, progress)
  info = {
    **info,
    "dim": int(emb.shape[1]),
    "text_file": str(text.file),
    "items_with_text": int(keep.sum()),
    "items_without_text": int((~keep).sum()),
  }
  return feats.text_to_source("text", text, emb, keep), info


def build_features(args, item_ids, known, text_src, auto_features) -> tuple[dict, dict]:
  """(modality -> (values [N, D], present [N]), modality -> dataset.json description) of the
  --features files, MMRec's feature files and the item text, aligned to `item_ids`.

  Args:
    known: every raw item id of the input (ids outside it are errors unless
      --ignore-unknown-items).
  """
  sources = [feats.parse_feature_spec(spec) for spec in args.features or []]
  explicit = [s[0] for s in sources]
  # MMRec's image_feat.npy / text_feat.npy unless a --features of the same name replaces them.
  sources += [a for a in auto_features if a[0] not in explicit]
  names = [s[0] for s in sources] + (["text"] if text_src else [])
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"modality {dupes[0]!r} is given twice (--features / --item-text)")
  features, modality_info = {}, {}
  for name, file, ids_file in sources:
    src = feats.load_feature_source(name, file, ids_file, args.feature_id_column)
    values, present, counts = feats.align(src, item_ids, known, args.ignore_unknown_items)
    features[name] = (values, present)
    modality_info[name] = {"source": str(file), **counts}
    log_step(
      args,
      f"modality {name}: dim {values.shape[1]}, {present.sum():,}/{len(item_ids):,} items present",
    )
  if text_src:
    text_cols = args.text_columns.split(",") if args.text_columns else None
    text = feats.read_item_text(text_src, args.text_id_column, text_cols, args.text_sep)
    text = feats.restrict_text(
      text, item_ids, known, args.ignore_unknown_items, args.text_id_column
    )
    src, info = encode_text_modality(
      text, args.text_encoder, args.text_dim, args.seed, args.batch_size, not args.quiet
    )
    values, present, counts = feats.align(src, item_ids, known, args.ignore_unknown_items)
    features["text"] = (values, present)
    modality_info["text"] = {**info, **counts}
    log_step(
      args,
      f"modality text ({info['encoder']}): dim {values.shape[1]}, "
      f"{present.sum():,}/{len(item_ids):,} items have text",
    )
  return features, modality_info


# Options that say how to run, not what to prepare: dataset.json leaves them out, so that both
# paths (and any number of workers) describe the same data the same way.
RUN_OPTIONS = ("func", "runner", "num_workers", "pipeline_option", "part_mb", "buckets")


def complete_meta(args, meta: dict, modality_info: dict) -> dict:
  """`meta` with the command's description and the modalities' sources added."""
  return {
    **meta,
    "source": f"input_pipelines.prepare --format {args.format}",
    "format": args.format,
    "max_history": args.max_history,
    "seed": args.seed,
    "modality_sources": modality_info,
    "prepare_args": {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS},
  }


def num_shards(option, sizes: dict) -> dict | None:
  """split -> shards for `--shards N|auto` (None: one uncompressed file per split)."""
  from input_pipelines.shards import auto_num_shards

  if option is None:
    return None
  if str(option) == "auto":
    return {s: auto_num_shards(n) for s, n in sizes.items()}
  try:
    n = int(option)
  except ValueError:
    raise ValueError(f"--shards takes a number or 'auto', got {option!r}") from None
  if n < 1:
    raise ValueError(f"--shards must be >= 1, got {n}")
  return {s: n for s in sizes}
