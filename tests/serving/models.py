"""Tiny randomly initialized BivRec models and their exports, for serving tests (no training:
the export and the REST contract do not depend on the weights being trained)."""

from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.export import export_model
from bivrec_tf.model import FIRST_ITEM, BivRecModel

NUM_ITEMS = 40
MAX_LEN = 8
TOP_K = 5
DIM = 16
NUM_INTERESTS = 2
MODEL_FIELDS = dict(
  dim=DIM, num_interests=NUM_INTERESTS, num_heads=2, patch_sizes=(1, 2), dropout=0.0
)


def vocab(num_items: int = NUM_ITEMS) -> np.ndarray:
  return np.array(["[PAD]", "[OOV]"] + [f"item-{i}" for i in range(num_items)])


def tiny_model(
  seed: int = 0, num_items: int = NUM_ITEMS, views=("id", "mm"), **model_fields
) -> BivRecModel:
  """A BivRecModel with random weights; items 0..4 are cold, item-0 is the most popular.
  `model_fields` override ModelConfig fields (e.g. a switch under test)."""
  tf.keras.utils.set_random_seed(seed)
  cfg = Config().replace(model={**MODEL_FIELDS, "views": tuple(views), **model_fields})
  v = num_items + FIRST_ITEM
  rng = np.random.default_rng(seed)
  feats = {
    "text": rng.normal(size=(v, 6)).astype(np.float32),
    "image": rng.normal(size=(v, 4)).astype(np.float32),
  }
  present = {"text": np.ones(v, bool), "image": rng.random(v) > 0.2}
  counts = np.zeros(v)
  counts[FIRST_ITEM:] = np.arange(num_items, 0, -1)
  seen = np.ones(v, bool)
  seen[FIRST_ITEM : FIRST_ITEM + 5] = False
  model = BivRecModel(
    cfg,
    v,
    MAX_LEN,
    feats if "mm" in views else None,
    present if "mm" in views else None,
    item_counts=counts,
    seen_in_train=seen,
  )
  model.queries(tf.zeros([1, MAX_LEN], tf.int64))
  return model


def export_tiny(
  base: Path,
  name: str = "bivrec",
  seed: int = 0,
  fusion_weight: float = 0.6,
  model_fields: Optional[dict] = None,
  **kwargs,
) -> Path:
  """`tiny_model(seed, **model_fields)` exported under `base/name`; kwargs go to export_model."""
  model = tiny_model(seed, **(model_fields or {}))
  return export_model(model, vocab(), fusion_weight, str(base), name, TOP_K, **kwargs)
