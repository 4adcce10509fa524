"""`python -m input_pipelines.prepare`: raw data -> prepared dataset directory.

Formats (`--format`):

  csv       an interaction table (CSV/TSV; `--sep`; header row or `--columns`)
  parquet   the same as a Parquet file
  recbole   RecBole atomic files: `--interactions X.inter` (optional `--items X.item` as item
            text), or `--input DIR [--name X]`
  unisrec   UniSRec-style pre-split `<name>.{train,valid,test}.inter` (`item_id_list`) in
            `--input DIR`, kept as given; `<name>.item2index` (if present) maps the integer ids
            back to the raw ids
  mmrec     MMRec / BivRec-prototype table (`user,item,rating,timestamp,x_label`, or MMRec's
            `userID,itemID,...`) with `image_feat.npy` / `text_feat.npy` beside it (row = item id)

Examples:

  python -m input_pipelines.prepare --format csv --interactions ratings.csv \\
      --user-column userId --item-column movieId --time-column timestamp \\
      --k-core 5 --item-text movies.csv --text-id-column movieId --text-columns title,genres \\
      --out data/my_data
  python -m input_pipelines.prepare --format unisrec --input ../shared/data/amazon-scientific \\
      --out data/scientific

The output directory appears atomically (a failed run leaves nothing behind). Bad input stops
with one line naming the file, line and field, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time


import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from input_pipelines import protocols, text_encoders, tfx_layout
from input_pipelines.errors import run_cli
from input_pipelines.prepare_steps import (  # the steps both paths share
  FORMATS,
  from_log,
  from_unisrec,
  log_step,
  progress,
  build_features,
  complete_meta,
  num_shards,
)


def _prepare_in_process(args, out: pathlib.Path) -> tuple[pathlib.Path, list]:
  if args.format == "unisrec":
    item_ids, known, splits, totals, meta, text_src, auto = from_unisrec(args)
  else:
    item_ids, known, splits, totals, meta, text_src, auto = from_log(args)
  log_step(args, f"{len(item_ids):,} items, protocol {meta['protocol']}")
  features, modality_info = build_features(args, item_ids, known, text_src, auto)
  meta = complete_meta(args, meta, modality_info)
  import tensorflow  # noqa: F401  (import before the progress bars start)

  written = {
    name: progress(args, gen(), totals.get(name), f"writing {name}") for name, gen in splits.items()
  }
  from input_pipelines.prepared import write_prepared  # imports TensorFlow lazily

  path = write_prepared(
    out,
    item_ids,
    features,
    written,
    meta,
    overwrite=args.overwrite,
    num_shards=num_shards(args.shards, totals),
    split_sizes=totals,
  )
  return path, item_ids


def run(args) -> pathlib.Path:
  start = time.time()
  out = pathlib.Path(args.out)
  if out.exists() and not args.overwrite:
    raise FileExistsError(f"output directory already exists: {out} (pass --overwrite)")
  if args.tfx_out:
    tfx_layout.check_target(args.tfx_out, args.overwrite)
  if args.runner:
    from input_pipelines import beam_prepare  # needs apache-beam (requirements-beam.txt)

    path, item_ids = beam_prepare.prepare(args, out)
  else:
    path, item_ids = _prepare_in_process(args, out)
  log_step(args, f"wrote {path} in {time.time() - start:.1f}s")
  if args.tfx_out:
    log_step(args, f"wrote {tfx_layout.write_tfx_layout(path, args.tfx_out, args.overwrite)}")
  stats = json.loads((path / "dataset.json").read_text())["statistics"]
  if True:  # the one-line summary is printed even with --quiet
    ex = stats["num_examples"]
    print(
      f"{path}: {stats['num_users']:,} users, {len(item_ids):,} items, "
      f"{stats.get('num_interactions') or 0:,} interactions; examples "
      + ", ".join(f"{k} {v:,}" for k, v in ex.items())
    )
  return path


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m input_pipelines.prepare",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--out", required=True, help="prepared dataset directory to write")
  p.add_argument(
    "--tfx-out", metavar="DIR", help="also write the ExampleGen-ready layout (tfx_layout.py)"
  )
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
  g = p.add_argument_group("input")
  g.add_argument(
    "--interactions", metavar="FILE", help="interaction table (csv/parquet/recbole .inter/mmrec)"
  )
  g.add_argument("--input", metavar="DIR", help="directory (unisrec; or recbole/mmrec)")
  g.add_argument("--name", help="dataset name inside --input (unisrec/recbole)")
  g.add_argument("--items", metavar="FILE", help="RecBole .item file (used as item text)")
  g.add_argument(
    "--item-map",
    metavar="FILE",
    help="unisrec: raw id -> integer map (default <name>.item2index if present)",
  )
  g.add_argument(
    "--no-item-map",
    action="store_true",
    help="unisrec: keep the integer ids even if <name>.item2index exists",
  )
  g = p.add_argument_group("columns (defaults depend on --format)")
  g.add_argument("--user-column")
  g.add_argument("--item-column")
  g.add_argument("--time-column", help="'none' = the file order is the chronological order")
  g.add_argument("--time-format", help="timestamps are dates: 'iso' or a strptime format")
  g.add_argument("--rating-column")
  g.add_argument("--min-rating", type=float, help="keep rows with rating >= this")
  g.add_argument("--label-column", help="split label column (mmrec: x_label); 'none' to ignore")
  g.add_argument("--sep", help="field separator (default: from the extension; '\\t' for tab)")
  g.add_argument("--columns", help="comma-separated column names of a file without header")
  g = p.add_argument_group("filtering and protocol")
  g.add_argument("--dedup", choices=protocols.DEDUP, help="(default exact)")
  g.add_argument("--k-core", type=int, help="min interactions per user and per item")
  g.add_argument("--min-user-interactions", type=int)
  g.add_argument("--min-item-interactions", type=int)
  g.add_argument(
    "--min-seq-len",
    type=int,
    help="min sequence length per user (default: 3 loo, 2 user_split, 1 given)",
  )
  g.add_argument(
    "--protocol",
    choices=protocols.PROTOCOLS,
    help="(default: given if the input has split labels, else loo)",
  )
  g.add_argument(
    "--max-history",
    type=int,
    default=200,
    help="keep the last N history items per example (default 200)",
  )
  g.add_argument("--seed", type=int, default=0)
  g = p.add_argument_group("item features")
  g.add_argument(
    "--features",
    action="append",
    metavar="NAME=FEATS.npy[:IDS.txt]",
    help="a modality: .npy (+ id list, else row = integer id) or .parquet; repeat for several",
  )
  g.add_argument(
    "--feature-id-column", default="item_id", help="id column of Parquet feature files"
  )
  g.add_argument(
    "--ignore-unknown-items",
    action="store_true",
    help="skip feature/text rows whose id never occurs in the interactions",
  )
  g.add_argument(
    "--item-text",
    metavar="FILE",
    help="item text table (CSV/TSV/.text/.item/Parquet) encoded as modality 'text'",
  )
  g.add_argument("--text-id-column", default="item_id")
  g.add_argument("--text-columns", help="comma-separated (default: all but the id column)")
  g.add_argument("--text-sep", help="separator of --item-text")
  g.add_argument("--text-encoder", default="auto", choices=text_encoders.ENCODERS)
  g.add_argument("--text-dim", type=int, default=256, help="hashing encoder dimension")
  g.add_argument("--batch-size", type=int, default=64, help="sentence encoder batch size")
  g = p.add_argument_group("output layout and Apache Beam (input_pipelines/beam_prepare.py)")
  g.add_argument(
    "--shards",
    metavar="N|auto",
    help="write each split as N gzipped shards (auto: ~500k examples each); default one "
    "<split>.tfrecord in process, auto with --runner",
  )
  g.add_argument(
    "--runner",
    help="prepare with Apache Beam on this runner (DirectRunner, FlinkRunner, SparkRunner, "
    "DataflowRunner, ...) instead of in this process; same output",
  )
  g.add_argument(
    "--num-workers",
    type=int,
    default=1,
    help="DirectRunner: worker processes (more than 1: multi-process mode)",
  )
  g.add_argument(
    "--pipeline-option",
    action="append",
    metavar="--KEY=VALUE",
    help="passed to Beam's PipelineOptions (repeat; e.g. --pipeline-option=--flink_master=...)",
  )
  g.add_argument(
    "--part-mb",
    type=float,
    help="Beam: text files are read in parts of this size, split at line breaks (default 64, "
    "smaller for small files: at least 4 parts per worker, parts of at least 1 MB)",
  )
  g.add_argument(
    "--buckets",
    type=int,
    default=0,
    help="Beam: users are hashed into this many buckets, each processed in memory at once "
    "(default: about one per 500k interactions, at least 4 per worker)",
  )
  return p


def exit_on_sigterm():
  """SIGTERM (docker stop, kill, a job scheduler) unwinds like Ctrl-C: the temporary output
  directory is removed on the way out (prepared.write_prepared) and the exit status is 143.
  kill -9 cannot be caught: the next run removes what such a run left (its lock is free).
  Returns the previous handler (None when not on the main thread)."""
  import signal

  def handler(signum, frame):
    print("terminated; no output written", file=sys.stderr)
    raise SystemExit(128 + signum)

  try:
    return signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread
    return None


def main(argv=None) -> int:
  import signal

  args = build_parser().parse_args(argv)
  previous = exit_on_sigterm()
  try:
    if args.max_history is not None and args.max_history <= 0:
      args.max_history = None
    run(args)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is only used for writing
  sys.exit(run_cli(main))
