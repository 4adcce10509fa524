"""BivRec as a TFX Trainer module: `run_fn(fn_args)`, as TFX's GenericExecutor calls it.

In a pipeline (TFX 1.21; `examples/tfx_pipeline.py`)::

    Trainer(
      run_fn="bivrec_tf.tfx.trainer.run_fn",
      examples=example_gen.outputs["examples"],
      schema=schema_gen.outputs["schema"],           # optional: checked, see below
      train_args=trainer_pb2.TrainArgs(num_steps=...),  # optional: default cfg.train.epochs
      eval_args=trainer_pb2.EvalArgs(splits=["eval", "test"]),  # test: optional
      custom_config={"items": "/abs/path/items", "config": {...}},
    )

What the executor passes, mirrored from github.com/tensorflow/tfx at v1.21.0
(`tfx/components/trainer/executor.py`, `GenericExecutor._GetFnArgs`, and
`tfx/components/trainer/fn_args_utils.py`, `get_common_fn_args`):

  train_files        `[<examples uri>/Split-<s>/*]` for each split s of `TrainArgs.splits`
                     (default ["train"]) and each Examples artifact (`io_utils.all_files_pattern`)
  eval_files         the same for `EvalArgs.splits` (default ["eval"])
  train_steps        `TrainArgs.num_steps`, None when 0 / unset
  eval_steps         `EvalArgs.num_steps`, None when 0 / unset
  custom_config      the component's dict, JSON round-tripped (`json_utils.loads`), or None
  serving_model_dir  `<model uri>/Format-Serving` (`path_utils.serving_model_dir`): Pusher and
                     Evaluator read the SavedModel there, `saved_model.pb` directly inside
  model_run_dir      `<model_run uri>` (TensorBoard reads it)
  schema_path        the Schema artifact's only file, or None
  transform_graph_path, base_model, hyperparameters, data_accessor: see below

What `run_fn` does with them (the job is `bivrec_tf.train.run`, the same as
`python -m bivrec_tf.train`; no second trainer):

1. Reads `custom_config` (`CUSTOM_CONFIG_KEYS`): `items` (required), `config` (a Config as a
   JSON object, a subset of config.json's sections and fields, or that JSON as a string),
   `preset` (a `bivrec_tf.presets` name applied before `config`).
2. Makes the tf.distribute strategy from the config (`strategy`, default `auto`: TF_CONFIG
   with several workers -> MultiWorkerMirrored), before anything else touches TensorFlow.
3. Converts the examples (`input_pipelines.tfx_layout.examples_to_prepared`): `train_files`
   -> train split, the first eval split -> valid (per-epoch validation, early stopping, fusion
   tuning), a second eval split (`EvalArgs(splits=["eval", "test"])`) -> test (the held-out
   table). The chief writes the prepared directory into `<model_run_dir>/data` (kept: the run
   directory can be re-exported with `python -m bivrec_tf.export --run`), other workers into a
   temporary directory they remove at the end.
4. Trains, evaluates and exports with `train.run`: run directory = `model_run_dir`
   (config.json, tensorboard/, checkpoints/, metrics.json), `train_steps` optimizer steps in all
   (`train.step_plan`; default `cfg.train.epochs`), `eval_steps` batches of `eval_batch_size`
   users per evaluation, SavedModel (four signatures, `assets.extra/` warmup and metadata)
   written by the chief exactly into `serving_model_dir`, atomically.

Not supported (an error, not silently ignored): `base_model` (warm start) and `hyperparameters`
(Tuner output; put the values into `custom_config["config"]`). `transform_graph_path` is
accepted only as a pass-through: the model reads the raw `history` / `target` features and the
served graph does not contain the transform. `data_accessor` is not used: the executor's
files are read directly (the same gzipped TFRecords its tf_dataset_factory would read). With
`schema_path` the schema must declare `history` and `target` as BYTES features. Paths must be
local (or mounted) file system paths.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)

from bivrec_tf import config as config_lib
from bivrec_tf import train
from bivrec_tf.distribute import is_chief, make_strategy
from bivrec_tf.presets import PRESETS, apply_preset
from input_pipelines import tfx_layout
from input_pipelines.dataset import PreparedDataset

CUSTOM_CONFIG_KEYS = {
  "items": "item side directory: item_vocab.txt, features/, dataset.json (the `items/` of "
  "`python -m input_pipelines.tfx_layout`, or any prepared dataset directory)",
  "config": "Config as a JSON object or string (sections data, model, loss, train, eval, export)",
  "preset": "a bivrec_tf.presets name, applied before `config`",
}
DATA_DIR = "data"  # <model_run_dir>/data: the prepared dataset the run trained on

log = logging.getLogger(__name__)


def parse_custom_config(custom_config: Optional[Dict[str, Any]]) -> tuple:
  """(Config, items directory) from the Trainer's `custom_config`; every problem is a ValueError
  naming the key."""
  custom = dict(custom_config or {})
  unknown = sorted(set(custom) - set(CUSTOM_CONFIG_KEYS))
  if unknown:
    raise ValueError(
      f"custom_config: unknown key {unknown[0]!r}; known keys: {sorted(CUSTOM_CONFIG_KEYS)}"
    )
  if not custom.get("items"):
    raise ValueError(f"custom_config: key 'items' is required ({CUSTOM_CONFIG_KEYS['items']})")
  cfg = config_lib.Config()
  preset = custom.get("preset")
  if preset is not None:
    if preset not in PRESETS:
      raise ValueError(f"custom_config: preset {preset!r} is unknown; known: {sorted(PRESETS)}")
    cfg = apply_preset(cfg, preset)
  raw = custom.get("config") or {}
  if isinstance(raw, str):
    try:
      raw = json.loads(raw)
    except json.JSONDecodeError as err:
      raise ValueError(f"custom_config: 'config' is not JSON: {err}") from None
  if not isinstance(raw, dict):
    raise ValueError("custom_config: 'config' must be a JSON object of config sections")
  try:
    merged = {
      name: {**fields, **dict(raw.get(name) or {})} for name, fields in cfg.to_dict().items()
    }
    unknown = sorted(set(raw) - set(merged))
    if unknown:
      raise ValueError(f"config section `{unknown[0]}` is unknown; known: {sorted(merged)}")
    cfg = config_lib.Config.from_dict(merged)
  except (TypeError, ValueError) as err:
    raise ValueError(f"custom_config: 'config': {err}") from None
  return cfg, str(custom["items"])


def eval_splits(eval_files: List[str]) -> Dict[str, List[str]]:
  """{prepared split: patterns} of `FnArgs.eval_files`: the patterns grouped by the TFX split
  their directory names (`<uri>/Split-eval/*` -> eval), in order; the first split is `valid`,
  a second one `test`."""
  groups: Dict[str, List[str]] = {}
  for pattern in eval_files or []:
    groups.setdefault(tfx_layout.split_of_pattern(pattern), []).append(pattern)
  if not groups:
    raise ValueError("fn_args.eval_files is empty: BivRec validates on the eval split")
  if len(groups) > 2:
    raise ValueError(
      f"EvalArgs names {len(groups)} splits ({', '.join(groups)}); BivRec takes one "
      "(validation) or two (validation, then test)"
    )
  return dict(zip(("valid", "test"), groups.values()))


def _check_unsupported(fn_args) -> None:
  if getattr(fn_args, "base_model", None):
    raise ValueError(
      f"base_model ({fn_args.base_model}): warm-starting from a base model is not supported"
    )
  if getattr(fn_args, "hyperparameters", None):
    raise ValueError(
      "hyperparameters (Tuner output) are not supported: put the values into "
      "custom_config['config']"
    )
  if getattr(fn_args, "transform_graph_path", None):
    log.warning(
      "transform_graph_path %s is not applied: BivRec reads the examples' raw `history` and "
      "`target` features and serves raw item ids",
      fn_args.transform_graph_path,
    )


def check_schema(schema_path: str) -> None:
  """The examples' schema (SchemaGen / ImportSchemaGen output) declares `history` and `target`
  as BYTES features; raises ValueError naming the file otherwise."""
  from tensorflow_metadata.proto.v0 import schema_pb2

  schema = tfx_layout.read_schema(schema_path)
  types = {f.name: f.type for f in schema.feature}
  for name in tfx_layout.FEATURES:
    if types.get(name) != schema_pb2.BYTES:
      found = schema_pb2.FeatureType.Name(types[name]) if name in types else "missing"
      raise ValueError(
        f"{schema_path}: feature '{name}' is {found}, BivRec needs a BYTES list of raw item ids"
      )


def run_fn(fn_args) -> dict:
  """Trains, evaluates and exports BivRec for TFX's GenericExecutor (module docstring).

  Returns the job's summary (what `<model_run_dir>/metrics.json` holds; TFX ignores it).
  """
  _check_unsupported(fn_args)
  if getattr(fn_args, "schema_path", None):
    check_schema(fn_args.schema_path)
  cfg, items = parse_custom_config(fn_args.custom_config)
  if not fn_args.serving_model_dir or not fn_args.model_run_dir:
    raise ValueError("fn_args needs serving_model_dir and model_run_dir")
  strategy = make_strategy(cfg.train.strategy, cfg.train.logical_cpus, cfg.train.local_cluster)
  chief = is_chief(strategy)
  run_dir = Path(fn_args.model_run_dir)
  data_dir = run_dir / DATA_DIR if chief else Path(tempfile.mkdtemp(prefix="bivrec-tfx-data-"))
  splits = {"train": list(fn_args.train_files or []), **eval_splits(fn_args.eval_files)}
  if not splits["train"]:
    raise ValueError("fn_args.train_files is empty")
  path = tfx_layout.examples_to_prepared(data_dir, items, splits, overwrite=True)
  cfg = cfg.replace(
    data={"data": str(path)},
    train={"run_dir": str(run_dir)},
    export={"export": True},
  )
  try:
    summary = train.run(
      cfg,
      verbose=1,
      data=PreparedDataset.load(path),
      strategy=strategy,
      train_steps=fn_args.train_steps,
      eval_steps=fn_args.eval_steps,
      export_dir=os.fspath(fn_args.serving_model_dir),
    )
  finally:
    if not chief:
      shutil.rmtree(data_dir, ignore_errors=True)
  log.info(
    "BivRec trained %s steps (%s epochs); SavedModel in %s",
    summary["train_steps"],
    summary["epochs_run"],
    fn_args.serving_model_dir,
  )
  return summary
