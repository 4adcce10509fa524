"""`python -m bivrec_tf.catalogue {add,retire,update}`: change a served model's catalogue.

Each command reads a version of an export (default: the newest under --model-dir), writes the
next version atomically (temporary directory renamed last, warmup requests included) and prints
one line. A server polling --model-dir loads it and keeps answering from the old version until
the new one is ready.

  add      new items with their raw features (--features NAME=FEATS.npy:IDS.txt, a Parquet file,
           or --item-text FILE encoded by the encoder the training data used); they are scored by
           the MM view (--id-embedding none, the model's cold rule) or with an ID vector imputed
           from their MM vector (--id-embedding imputed)
  retire   items never to be recommended again (histories that contain them still work);
           --undo makes them recommendable again
  update   new features for existing items (a new title, a new image)

Bad input stops with one line naming the file, line and field (exit status 2); nothing is
written then.
"""

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
from bivrec_tf.catalogue import ops
from bivrec_tf.catalogue.features import TextInput, read_new_features
from bivrec_tf.catalogue.version import feature_dims, load_version, write_version
from bivrec_tf.config import Config
from input_pipelines.errors import run_cli
from input_pipelines.features import read_id_list

# The rule measured best on held-out items (docs/serving.md, "Living catalogues").
DEFAULT_ID_EMBEDDING = "none"


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--model-dir",
    required=True,
    help="the model's base directory holding integer versions (saved_models/bivrec)",
  )
  p.add_argument("--version", type=int, help="the version to change (default: the newest)")


def _feature_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--features",
    action="append",
    default=[],
    metavar="NAME=FILE[:IDS]",
    help="a modality's raw vectors: NAME=FEATS.npy:IDS.txt, NAME=FEATS.npy or NAME=FEATS.parquet "
    "(repeatable)",
  )
  p.add_argument("--feature-id-column", default="item_id", help="id column of Parquet files")
  p.add_argument(
    "--standardized",
    action="store_true",
    help="the --features rows are already standardized (as the prepared features/*.npy); "
    "needed for exports of data prepared before standardization was recorded",
  )
  p.add_argument("--item-text", metavar="FILE", help="item text table with a header row")
  p.add_argument("--text-modality", default="text", help="the modality the text encodes")
  p.add_argument("--text-id-column", default="item_id")
  p.add_argument("--text-columns", help="comma-separated (default: all but the id column)")
  p.add_argument("--text-sep", help="field separator (default: from the extension)")
  p.add_argument(
    "--text-corpus",
    metavar="FILE",
    help="the training item texts (hashing encoder; default: the file recorded at preparation)",
  )


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m bivrec_tf.catalogue",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  add = sub.add_parser("add", help="add new items with their features")
  _common(add)
  _feature_args(add)
  add.add_argument(
    "--id-embedding",
    choices=ops.ID_EMBEDDINGS,
    default=DEFAULT_ID_EMBEDDING,
    help="none: new items are scored by the MM view alone (cold rule); imputed: an ID vector "
    f"imputed from the MM vector (default: {DEFAULT_ID_EMBEDDING})",
  )
  retire = sub.add_parser("retire", help="never recommend these items again")
  _common(retire)
  retire.add_argument("items", nargs="*", help="item ids")
  retire.add_argument("--ids", metavar="FILE", help="a file of item ids, one per line")
  retire.add_argument(
    "--undo", action="store_true", help="make retired items recommendable again (back in stock)"
  )
  update = sub.add_parser("update", help="replace items' features")
  _common(update)
  _feature_args(update)
  # --help shows every command's flags, not just the command names
  parser.epilog = "\n".join(p.format_help() for p in (add, retire, update))
  return parser


def _read_features(args, v):
  text = None
  if args.item_text:
    cols = args.text_columns.split(",") if args.text_columns else None
    text = TextInput(
      args.item_text,
      args.text_modality,
      args.text_id_column,
      cols,
      args.text_sep,
      args.text_corpus,
    )
  dims = feature_dims(v.meta, Config.from_dict(v.meta["config"]))
  return read_new_features(
    v.meta,
    dims,
    args.features,
    text,
    args.standardized,
    args.feature_id_column,
    list(v.catalogue.vocab[2:]),
  )


def _retire_ids(args):
  """(ids, where(id) -> (file, line, label))."""
  ids, lines = list(args.items), {}
  if args.ids:
    listed = read_id_list(args.ids)
    lines = {x: i + 1 for i, x in enumerate(listed)}
    ids += listed
  if not ids:
    raise ValueError("retire: name the items (arguments or --ids FILE)")
  twice = [x for x, n in collections.Counter(ids).items() if n > 1]
  if twice:
    raise ValueError(f"retire: item {twice[0]!r} is named twice")

  def where(x):
    return (args.ids, lines[x], "line") if x in lines else ("the command line", None, "line")

  return ids, where


def run(args) -> Path:
  start = time.time()
  v = load_version(args.model_dir, args.version)
  if args.command == "add":
    model, catalogue, op = ops.add_items(v, _read_features(args, v), args.id_embedding)
  elif args.command == "update":
    model, catalogue, op = ops.update_items(v, _read_features(args, v))
  else:
    ids, where = _retire_ids(args)
    model, catalogue, op = ops.retire_items(v, ids, where, args.undo)
  path = write_version(v, model, catalogue, op)
  done = {"add": "added", "retire": "retired", "unretire": "un-retired", "update": "updated"}
  done = done[op["op"]]
  print(
    f"{path}: version {path.name} from {v.version}, {done} {op['items']:,} items; "
    f"{catalogue.num_items:,} in the catalogue, {int(catalogue.servable.sum()):,} servable "
    f"({time.time() - start:.1f} s)"
  )
  return path


def main(argv: Optional[Sequence[str]] = None) -> int:
  run(build_parser().parse_args(argv))
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main))
