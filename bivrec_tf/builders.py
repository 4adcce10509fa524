"""Builders shared by the training job and the re-export: the compiled model from a Config and a
prepared dataset.

`train.py` (fit, evaluate, export) and `export.py` (re-export a run's checkpoint) both build the
model here, so neither imports the other.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from bivrec_tf import config as config_lib
from bivrec_tf.ema import AveragingAdam
from bivrec_tf.model import BivRecModel
from input_pipelines.dataset import PreparedDataset


def select_modalities(
  cfg: config_lib.Config, ds: PreparedDataset
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """The MM view's feature tables: ({modality: float `[V, D_m]`}, {modality: bool `[V]`}), the
  config's `modalities` (default: all of the dataset's)."""
  available = sorted(ds.features)
  wanted = list(cfg.data.modalities or available)
  unknown = [m for m in wanted if m not in available]
  if unknown:
    raise ValueError(
      f"config field `modalities` = {tuple(wanted)!r}: unknown modality "
      f"{unknown[0]!r}; the dataset at {ds.path} has {available}"
    )
  if "mm" in cfg.model.views and not wanted:
    raise ValueError(f"the MM view needs item features, but {ds.path} has no modality")
  return ({m: ds.features[m] for m in wanted}, {m: ds.present[m] for m in wanted})


def use_xla(cfg: config_lib.Config, strategy: Optional[tf.distribute.Strategy] = None) -> bool:
  """XLA unless the step's variables live on another device than its computation (replicas on
  one split CPU, parameter servers): XLA cannot compile that
  (https://www.tensorflow.org/xla/known_issues#tfvariable_on_a_different_device)."""
  strategy = strategy or tf.distribute.get_strategy()
  split_cpu = strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU")
  ps = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
  return cfg.train.jit_compile and not (split_cpu or ps)


def build_model(
  cfg: config_lib.Config,
  ds: PreparedDataset,
  max_len: int,
  strategy: Optional[tf.distribute.Strategy] = None,
) -> BivRecModel:
  """The compiled model with every variable created (call inside `strategy.scope()`)."""
  features, present = select_modalities(cfg, ds) if "mm" in cfg.model.views else ({}, {})
  model = BivRecModel(
    cfg,
    ds.vocab_size,
    max_len,
    features,
    present,
    item_counts=ds.item_counts,
    seen_in_train=ds.seen_in_train,
  )
  model.build_all()
  model.compile(
    optimizer=AveragingAdam(
      cfg.train.learning_rate,
      use_ema=cfg.train.ema_momentum > 0,
      ema_momentum=cfg.train.ema_momentum or 0.99,  # (Keras's default; unused when off)
    ),
    jit_compile=use_xla(cfg, strategy),
    steps_per_execution=cfg.train.steps_per_execution,
  )
  return model


def restore_trained(model: tf.keras.Model, path: str) -> None:
  """Loads a training run's checkpoint into `model` (variables already built) and checks that
  every weight of the model got a value from it.

  `load_weights(...).expect_partial()` alone silently keeps the initial value of a weight the
  checkpoint does not name (a layer renamed since the run): the model would evaluate or export
  untrained parts. Values the model does not use (optimizer slots) are fine. Raises ValueError
  naming the missed weights and `path`.
  """
  status = model.load_weights(path)
  status.expect_partial()  # optimizer slots and metrics of the run need not be restored
  # The load status knows which Python objects it bound to checkpoint values (TF's own
  # assert_existing_objects_matched reads the same map, but also counts metric variables).
  restored = getattr(getattr(status, "_checkpoint", None), "object_by_proto_id", None)
  if restored is None:  # another TF version: nothing to check against
    return
  bound = {id(obj) for obj in restored.values()}
  missed = [v.name for v in model.weights if id(v) not in bound]
  if missed:
    raise ValueError(
      f"checkpoint {path} has no value for {len(missed)} of the model's {len(model.weights)} "
      f"weights ({', '.join(missed[:4])}{', ...' if len(missed) > 4 else ''}): it was written "
      "by another version of the model code (renamed or added layers); retrain, or restore with "
      "that version"
    )
