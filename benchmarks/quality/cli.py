"""`python -m benchmarks.quality`: flags, the record store of the run, the mode, the section."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import tensorflow as tf

from bivrec_tf import config as config_lib
from bivrec_tf.presets import DESIGN_ABLATIONS, PRESETS, apply_preset

import benchmarks.quality
from benchmarks.quality import runs
from benchmarks.quality.modes import run_cold, run_cost, run_noise, run_standard
from benchmarks.quality.noise import NOISE_SIGMAS
from benchmarks.quality.report import write_section
from benchmarks.quality.roster import ALL_MODELS, DEFAULT_MODELS, LATE_FUSION
from benchmarks.quality.store import Store, store_name

MODES = ("standard", "cold", "noise", "cost")
BASE_SEED = 42


def parse_args(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.quality",
    description=benchmarks.quality.__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    allow_abbrev=False,
  )  # `--seed` is a train flag, not --seeds
  parser.add_argument("--data", default="synthetic", help="'synthetic' or a prepared directory")
  parser.add_argument(
    "--models",
    default=None,
    help="'all', 'design' (the DESIGN.md formulation and its ablations) or "
    "comma-separated presets (default depends on --mode; "
    f"known: {', '.join(ALL_MODELS)})",
  )
  parser.add_argument(
    "--seeds",
    type=int,
    default=None,
    help="training seeds per model (42, 43, ...); default 3, 1 with --quick",
  )
  parser.add_argument("--quick", action="store_true", help="one seed (unless --seeds is given)")
  parser.add_argument("--mode", choices=MODES, default="standard")
  parser.add_argument("--out", default="docs/results.md", help="markdown file to update")
  parser.add_argument(
    "--work-dir",
    type=Path,
    default=Path("runs/quality"),
    help="run directories, derived datasets and the per-run record store",
  )
  parser.add_argument("--tag", default="", help="names a separate store and section (variants)")
  parser.add_argument(
    "--fresh",
    action="store_true",
    help="start a new record store (the old one is kept as <store>.json.old)",
  )
  parser.add_argument("--cold-share", type=float, default=0.1)
  parser.add_argument(
    "--threads",
    type=int,
    default=0,
    help="TensorFlow intra- and inter-op threads (0 = TensorFlow's default)",
  )
  parser.add_argument("--noise-sigmas", default=",".join(f"{s:g}" for s in NOISE_SIGMAS))
  args, rest = parser.parse_known_args(argv)
  train_parser = argparse.ArgumentParser(prog="train flags", add_help=False)
  config_lib.add_flags(train_parser)
  overrides = train_parser.parse_args(rest)
  models = args.models
  if models in (None, ""):
    models = DEFAULT_MODELS[args.mode]
  elif models == "all":
    models = ALL_MODELS
  elif models == "design":
    models = ("bivrec_design",) + DESIGN_ABLATIONS
  else:
    models = tuple(m.strip() for m in models.split(",") if m.strip())
  unknown = [m for m in models if m not in PRESETS and m != LATE_FUSION]
  if unknown:
    parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(PRESETS)}")
  if args.mode == "noise" and any(
    "mm" not in apply_preset(config_lib.Config(), m).model.views for m in models
  ):
    parser.error("--mode noise needs models with the MM view")
  if args.seeds is None:
    args.seeds = 1 if args.quick else 3
  return args, models, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args, models, overrides = parse_args(argv)
  command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in argv)
  runs.COMMAND[0] = command
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  name = store_name(args)
  store_mode = "standard" if args.mode == "cost" else args.mode  # cost reuses standard runs
  store = Store(args.work_dir / f"{name}-{store_mode}.json", fresh=args.fresh)
  seeds = [BASE_SEED + i for i in range(args.seeds)]
  runner = {"standard": run_standard, "cold": run_cold, "noise": run_noise, "cost": run_cost}[
    args.mode
  ]
  t0 = time.time()
  body = runner(args, store, models, seeds, overrides, command)
  write_section(Path(args.out), f"{args.mode}:{name}", body)
  print(body)
  print(
    f"\n[quality] wrote section quality:{args.mode}:{name} of {args.out} ({time.time() - t0:.0f} s)"
  )
  return 0
