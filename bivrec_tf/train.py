"""`python -m bivrec_tf.train`: data -> strategy -> fit -> evaluate -> export.

With no arguments it trains on the embedded default dataset (generated once and cached), stops
early on validation NDCG@20, restores the best weights, tunes the fusion weight on validation,
prints the test table (Popularity, ID view, MM view, BivRec) and exports a SavedModel to
`saved_models/bivrec/<next version>/`. Every Config field is a flag; `--help` lists them.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np
import tensorflow as tf

from bivrec_tf import config as config_lib
from bivrec_tf.builders import build_model
from bivrec_tf.distribute import is_chief, make_strategy
from bivrec_tf.callbacks import ValidationCallback
from bivrec_tf.diagnostics import interest_diagnostics
from bivrec_tf.evaluate import (
  Ranker,
  best_fusion,
  describe_history_exclusion,
  evaluate,
  popularity_metrics,
  resolve_history_exclusion,
)
from bivrec_tf.export import export_model
from bivrec_tf.io_utils import write_text_atomic
from bivrec_tf.presets import PRESETS, apply_preset
from bivrec_tf.resume import completed_steps
from bivrec_tf.teaching_probe import TeachingProbe, can_probe, probe_interval, warn_unprobed
from bivrec_tf.view_selection import assemble_views
from input_pipelines.dataset import PreparedDataset, eval_dataset, train_dataset
from input_pipelines.synthetic import ensure_synthetic, is_synthetic_spec, parse_synthetic_spec

DEFAULT_MAX_LEN = 50


def load_data(cfg: config_lib.Config) -> PreparedDataset:
  """`synthetic[:variant][?key=value...]` (input_pipelines.synthetic), `tfds:<name>` (converted
  once into data_cache/) or a prepared directory."""
  if is_synthetic_spec(cfg.data.data):
    path = ensure_synthetic(
      root=cfg.data.data_cache, seed=cfg.data.data_seed, **parse_synthetic_spec(cfg.data.data)
    )
  elif cfg.data.data.startswith("tfds:"):
    from input_pipelines.tfds_movielens import prepare_tfds

    path = prepare_tfds(cfg.data.data[len("tfds:") :], root=cfg.data.data_cache)
  else:
    path = cfg.data.data
  return PreparedDataset.load(path)


class NonFiniteLossError(ValueError):
  """Training produced a NaN or infinite loss (main() prints it as one line, exit status 2)."""


class NonFiniteLossStop(tf.keras.callbacks.Callback):
  """Stops training at a NaN / infinite epoch loss by raising NonFiniteLossError out of `fit`, so
  nothing after it runs: no further evaluation of a broken model, no export."""

  def __init__(self):
    super().__init__()
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def _check(self, logs, where: str) -> None:
    try:
      loss = float((logs or {}).get("loss"))
    except (TypeError, ValueError):
      return  # no loss in these logs
    if not np.isfinite(loss):
      raise NonFiniteLossError(
        f"training stopped: loss is {loss} at epoch {self.epoch + 1}{where}; nothing was "
        "exported (check the data, e.g. with python -m input_pipelines.describe, and lower "
        "--learning-rate)"
      )

  def on_epoch_end(self, epoch, logs=None):
    self._check(logs, "")


class NonFiniteBatchLossStop(NonFiniteLossStop):
  """The same, checked after every step (ParameterServerStrategy allows no batch callbacks)."""

  def on_train_batch_end(self, batch, logs=None):
    self._check(logs, f", step {batch + 1}")


def non_finite_loss_stop(strategy: tf.distribute.Strategy) -> NonFiniteLossStop:
  ps = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
  return NonFiniteLossStop() if ps else NonFiniteBatchLossStop()


def format_table(rows: Dict[str, Dict[str, float]], ks: Sequence[int]) -> str:
  """Markdown table: one row per model, Recall/NDCG/HitRate at each K."""
  cols = [f"{m}@{k}" for m in ("recall", "ndcg", "hitrate") for k in ks]
  head = (
    "| model | "
    + " | ".join(
      c.replace("recall", "Recall").replace("ndcg", "NDCG").replace("hitrate", "HitRate")
      for c in cols
    )
    + " |"
  )
  lines = [head, "|---" * (len(cols) + 1) + "|"]
  for name, metrics in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.4f}" for c in cols) + " |")
  return "\n".join(lines)


def format_diagnostics(diag: dict, views: Sequence[str]) -> str:
  """Interest diagnostics on test and gradient shares at the best epoch, one line per view."""
  lines = [
    "Interests on test (mean pairwise cosine of a user's K interests, and of the user's history "
    "items; share of test targets won by each interest; tokens each interest reads, of the "
    "user's valid tokens, medians) and each loss term's share of the gradient on the view's "
    "encoder at the best epoch:"
  ]
  for v in views:
    shares = ", ".join(
      f"{k[len('gshare_') : -len(v) - 1]} {val:.1%}"
      for k, val in diag.items()
      if k.startswith("gshare_") and k.endswith("_" + v) and val > 0
    )
    wins = " / ".join(f"{w:.0%}" for w in diag[f"win_{v}"])
    shares = shares or "(measured on single-device runs only)"
    read = (
      f"; reads {' / '.join(f'{x:.1f}' for x in diag[f'read_{v}'])} of {diag[f'tokens_{v}']:.0f}"
      if f"read_{v}" in diag
      else ""
    )
    items = f" (history items {diag[f'histcos_{v}']:.2f})" if f"histcos_{v}" in diag else ""
    lines.append(
      f"  {v}: cosine {diag[f'cos_{v}']:.3f}{items}; wins {wins}{read}; gradient {shares}"
    )
  return "\n".join(lines)


class StepBudget(tf.keras.callbacks.Callback):
  """Stops training once the optimizer has taken `steps` steps (checked at every batch end, i.e.
  every `steps_per_execution` steps; a resumed run counts the restored steps)."""

  def __init__(self, steps: int):
    super().__init__()
    self.steps = steps

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) >= self.steps:
      self.model.stop_training = True


def teaching_probe(cfg: config_lib.Config, ds: PreparedDataset, max_len: int) -> TeachingProbe:
  """The `TeachingProbe` of `cfg.loss.probe_every`: batches of `probe_batch` training examples
  (their own shuffle) against as many validation examples (all of them if the split is smaller;
  the training side then matches)."""
  if "valid" not in ds.splits or ds.num_examples("valid") == 0:
    raise ValueError("loss.probe_every > 0 needs a non-empty valid split (its held-out batches)")
  batch = min(cfg.loss.probe_batch, ds.num_examples("valid"), ds.num_examples("train"))
  negatives, seed = cfg.loss.num_negatives, cfg.train.seed
  return TeachingProbe(
    train_dataset(ds, max_len, batch, negatives, seed=seed + 2, repeat=True),
    train_dataset(ds, max_len, batch, negatives, seed=seed + 3, repeat=True, split="valid"),
    cfg.loss.probe_every,
    cfg.loss.probe_momentum,
    cfg.loss.probe_signal,
  )


def step_plan(epochs: int, steps_per_epoch: int, train_steps: Optional[int], ps: bool):
  """(epochs, steps per epoch, extra callbacks) of `fit`.

  Without `train_steps`: `epochs` passes over the train split. With it (TFX's
  `TrainArgs.num_steps`): `train_steps` optimizer steps in all, in passes over the data, the
  last one cut short by `StepBudget` (rounded up to a multiple of `steps_per_execution`); early
  stopping may end sooner. ParameterServerStrategy allows no batch callbacks: there the steps
  are split into equal epochs, `ceil(train_steps / epochs)` each (at most `epochs - 1` steps
  more than asked).
  """
  if not train_steps:
    return epochs, steps_per_epoch, []
  if train_steps < 1:
    raise ValueError(f"train_steps = {train_steps} must be >= 1")
  epochs = -(-train_steps // steps_per_epoch)
  if ps:
    return epochs, -(-train_steps // epochs), []
  return epochs, min(steps_per_epoch, train_steps), [StepBudget(train_steps)]


def run(
  cfg: config_lib.Config,
  verbose: int = 1,
  data: Optional[PreparedDataset] = None,
  strategy: Optional[tf.distribute.Strategy] = None,
  train_steps: Optional[int] = None,
  eval_steps: Optional[int] = None,
  export_dir: Optional[str] = None,
) -> dict:
  """The whole job. Returns a summary dict (also written to <run_dir>/metrics.json).

  The TFX Trainer (`bivrec_tf.tfx.trainer.run_fn`) runs the same job with `data` (a dataset it
  converted from ExampleGen's files; default: `cfg.data.data`), `strategy` (made before that
  conversion touched TensorFlow; default: `make_strategy` from the config), `train_steps` (total
  optimizer steps instead of `cfg.train.epochs`, see `step_plan`), `eval_steps` (batches of
  `eval_batch_size` users per evaluation) and `export_dir` (the SavedModel goes exactly there,
  not to `<export_base>/<model_name>/<version>`). Without a test split the table is computed on
  the valid split (`table_split` in the summary says which).
  """
  start = time.time()
  if strategy is None:
    strategy = make_strategy(cfg.train.strategy, cfg.train.logical_cpus, cfg.train.local_cluster)
  chief = is_chief(strategy)
  tf.keras.utils.set_random_seed(cfg.train.seed)
  ds = data if data is not None else load_data(cfg)
  max_len = cfg.data.max_len or int(ds.meta.get("recommended_max_len", DEFAULT_MAX_LEN))
  # One history-exclusion setting for validation, fusion tuning, test metrics and the export.
  exclusion = resolve_history_exclusion(cfg.eval, ds)
  exclude = exclusion["exclude_history"]
  if verbose and chief:
    print(describe_history_exclusion(exclusion))
  run_dir = Path(cfg.train.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
  # Every worker restores from the chief's backup (BackupAndRestore reads <dir>/chief and gives
  # the other workers their own temporary write directories): the shared --run-dir's.
  backup_dir = run_dir / "backup"
  if not chief:
    run_dir = Path(tempfile.mkdtemp(prefix="bivrec-worker-"))
  run_dir.mkdir(parents=True, exist_ok=True)
  write_text_atomic(run_dir / "config.json", cfg.to_json())

  with strategy.scope():
    model = build_model(cfg, ds, max_len, strategy)
  ev = cfg.eval
  grid = [float(w) for w in np.linspace(0.0, 1.0, ev.fusion_grid)]
  ranker = Ranker(model, max(ev.ks), ev.item_chunk, exclude)
  valid = eval_dataset(ds, "valid", max_len, ev.eval_batch_size)
  table_split = "test" if "test" in ds.splits else "valid"
  test = eval_dataset(ds, table_split, max_len, ev.eval_batch_size)
  if eval_steps:
    valid, test = valid.take(eval_steps), test.take(eval_steps)
  # A killed run restarted with the same --run-dir: BackupAndRestore restores its state in `fit`;
  # the input stream continues where that state left it.
  resumed_at = completed_steps(backup_dir)
  if resumed_at and verbose and chief:
    print(f"Resuming from {backup_dir} after optimizer step {resumed_at}")
  train = train_dataset(
    ds,
    max_len,
    cfg.train.batch_size,
    cfg.loss.num_negatives,
    seed=cfg.train.seed,
    repeat=True,
    skip_batches=resumed_at,
  )
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  train = train.with_options(options)
  steps_per_epoch = ds.num_examples("train") // cfg.train.batch_size
  ps = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
  epochs, steps_per_epoch, budget = step_plan(cfg.train.epochs, steps_per_epoch, train_steps, ps)
  model.steps_per_epoch = steps_per_epoch  # sem_decay_epochs counts in these
  best_path = run_dir / "checkpoints" / "best"
  per_view = cfg.train.view_selection == "per_view" and len(model.view_names) == 2
  view_paths = (
    {v: run_dir / "checkpoints" / f"best_{v}" for v in model.view_names} if per_view else None
  )
  # One fixed training batch for the per-epoch gradient shares of the loss terms.
  probe = next(
    iter(
      train_dataset(
        ds,
        max_len,
        cfg.train.batch_size,
        cfg.loss.num_negatives,
        seed=cfg.train.seed + 1,
        repeat=False,
      )
    )
  )
  validation = ValidationCallback(
    ranker,
    valid,
    ev.ks,
    ev.monitor_k,
    grid,
    best_path,
    cfg.train.patience,
    run_dir / "epoch_logs.json",
    verbose,
    probe=probe,
    view_paths=view_paths,
  )
  probes = []
  if probe_interval(model) and can_probe(strategy):
    probes.append(teaching_probe(cfg, ds, max_len))
  elif model.teach_alignment is not None:  # probe_guided where no probe can run: mutual
    warn_unprobed(strategy)
  callbacks = [
    *probes,  # before the validation: its epoch means go into the per-epoch history
    validation,  # first of the rest: the callbacks after it see the val_* logs
    tf.keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
    # Preemption: a killed run restarted with the same --run-dir resumes after its last epoch.
    tf.keras.callbacks.BackupAndRestore(str(backup_dir)),
    non_finite_loss_stop(strategy),  # raises out of fit: no export, exit status 2
    *budget,
  ]
  fit_start = time.time()
  model.fit(
    train,
    epochs=epochs,
    steps_per_epoch=steps_per_epoch,
    callbacks=callbacks,
    # One line per epoch when the output is not a terminal (a log file) or under PS.
    verbose=(2 if verbose else 0) if ps or not sys.stdout.isatty() else verbose,
  )
  fit_seconds = time.time() - fit_start
  steps_run = int(model.optimizer.iterations.numpy())  # (the best checkpoint restores its own)
  model.load_weights(str(best_path)).expect_partial()
  best_epoch = validation.best_epoch

  valid_results = evaluate(ranker, valid, ev.ks, grid)
  key = f"ndcg@{ev.monitor_k}"
  fused = len(model.view_names) == 2
  w = best_fusion(valid_results, key) if fused else (1.0 if model.view_names == ("id",) else 0.0)
  selection = None
  if per_view:
    selection = {
      "epochs": validation.view_best_epochs,
      "joint_valid": valid_results[f"fused@{w:.2f}"][key],
    }
    assemble_views(model, view_paths)
    composite = evaluate(ranker, valid, ev.ks, grid)
    w_composite = best_fusion(composite, key)
    selection["per_view_valid"] = composite[f"fused@{w_composite:.2f}"][key]
    selection["kept"] = (
      "per_view" if selection["per_view_valid"] > selection["joint_valid"] else "joint"
    )
    if selection["kept"] == "per_view":  # checkpoints/best is what was evaluated and exported
      valid_results, w = composite, w_composite
      model.save_weights(str(best_path))
    else:
      model.load_weights(str(best_path)).expect_partial()
  test_results = evaluate(ranker, test, ev.ks, [w])
  rows = {"Popularity": popularity_metrics(ds.item_counts, test, ev.ks, exclude)}
  names = {"id": "ID view", "mm": "MM view"}
  for rule, metrics in test_results.items():
    rows[names.get(rule, f"BivRec (w={w:.2f})")] = metrics
  table = format_table(rows, ev.ks)
  diagnostics = interest_diagnostics(model, test)
  last = validation.history[best_epoch - 1] if validation.history else {}
  diagnostics.update({k: v for k, v in last.items() if k.startswith("gshare_")})

  summary = {
    "data": str(ds.path),
    "max_len": max_len,
    "fusion_weight": w,
    "best_epoch": best_epoch,
    "view_selection": selection,
    "epochs_run": len(validation.history),
    "fit_seconds": fit_seconds,
    "train_steps": steps_run,
    "table_split": table_split,
    "valid": valid_results,
    "test": rows,
    "exclude_history": exclude,
    "history_exclusion": exclusion,
    "diagnostics": diagnostics,
    "epoch_logs": validation.history,
    "run_dir": str(run_dir),
    "strategy": type(strategy).__name__,
    "replicas": strategy.num_replicas_in_sync,
  }
  if "id" in model.views:  # > 1 when a parameter-server partitioner sharded the table
    id_table = model.views["id"].tower.embeddings
    summary["id_embedding_shards"] = len(getattr(id_table, "variables", [id_table]))
  export_path = None
  if chief and cfg.export.export:
    export_path = export_model(
      model,
      ds.vocab,
      w,
      cfg.export.export_base,
      cfg.export.model_name,
      cfg.export.top_k,
      metadata={
        "config": cfg.to_dict(),
        "test_metrics": rows if table_split == "test" else None,
        "valid_metrics": valid_results,
        "dataset": ds.meta,
        "history_exclusion": exclusion,
      },
      exclude_history=exclude,
      table_dtype=cfg.export.table_dtype,
      target_dir=export_dir,
    )
    summary["export_path"] = str(export_path)
  summary["wall_seconds"] = time.time() - start
  if chief:
    write_text_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2, default=str))
  if verbose:
    hist = "history items excluded" if exclude else "history items not excluded"
    print(
      f"\n{table_split.capitalize()}, full ranking over {ds.vocab_size - 2} items ({hist}); "
      f"fusion weight w={w:.2f} tuned on validation; best epoch {best_epoch}"
      + describe_selection(selection)
      + ".\n"
    )
    print(table)
    print("\n" + format_diagnostics(diagnostics, model.view_names))
    print(f"\nrun directory: {run_dir}")
    if export_path:
      print(f"exported SavedModel: {export_path}")
    print(f"wall time: {summary['wall_seconds']:.1f} s")
  return summary


def describe_selection(selection: Optional[dict]) -> str:
  """The printout's note on per-view selection ('' for a joint run)."""
  if not selection:
    return ""
  epochs = ", ".join(f"{v} {e}" for v, e in selection["epochs"].items())
  scores = f"validation {selection['per_view_valid']:.4f} vs {selection['joint_valid']:.4f}"
  if selection["kept"] == "per_view":
    return f"; views from their own best epochs ({epochs}), {scores} at the best epoch"
  return f"; views' own best epochs ({epochs}) not kept: {scores}"


def parse_config(argv: Optional[Sequence[str]] = None) -> config_lib.Config:
  parser = argparse.ArgumentParser(
    prog="python -m bivrec_tf.train",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--config", metavar="JSON", help="start from this config file; flags override"
  )
  parser.add_argument(
    "--preset",
    choices=sorted(PRESETS),
    help="a baseline or ablation of bivrec_tf/presets.py; flags override",
  )
  config_lib.add_flags(parser)
  args = parser.parse_args(argv)
  try:
    base = (
      config_lib.Config.from_json(Path(args.config).read_text())
      if args.config
      else (config_lib.Config())
    )
    if args.preset:
      base = apply_preset(base, args.preset)
    return config_lib.from_flags(args, base)
  except (ValueError, OSError) as err:
    parser.error(str(err))
  raise AssertionError("unreachable")


def main(argv: Optional[Sequence[str]] = None) -> int:
  cfg = parse_config(argv)
  try:
    run(cfg)
  except (ValueError, FileNotFoundError, FileExistsError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
