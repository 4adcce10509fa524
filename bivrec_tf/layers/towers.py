"""Item towers: map item indices to d-dimensional item embeddings, one tower per view.

Index convention (shared with `input_pipelines`): 0 = padding, 1 = out-of-vocabulary, 2.. = items.
"""

from typing import Dict

import numpy as np
import tensorflow as tf


class IdTower(tf.keras.layers.Layer):
  """ID view: `e_id(i) = E[i]`, `E` of shape `[V, d]` with `V = N + 2`.

  Args:
    vocab_size: V, including the padding and out-of-vocabulary rows.
    dim: d.
  Call: `item_ids` int `[...]` -> float `[..., d]`.
  """

  def __init__(self, vocab_size: int, dim: int, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.dim = dim

  def build(self, input_shape):
    self.embeddings = self.add_weight(
        name="embeddings", shape=(self.vocab_size, self.dim),
        initializer=tf.keras.initializers.TruncatedNormal(stddev=0.05))
    super().build(input_shape)

  def call(self, item_ids):
    # embedding_lookup also reads a ShardedVariable (ParameterServerStrategy partitioner).
    return tf.nn.embedding_lookup(self.embeddings, item_ids)

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim}


class MultimodalTower(tf.keras.layers.Layer):
  """Multimodal view; never reads an item's id, only its feature rows.

  Per modality m: `z_m = LayerNorm(Dense_d(f_m(i)))`, or a learned "missing" vector when item i
  lacks modality m; fused `e_mm(i) = Dense_d(GELU(Dense_2d(concat_m z_m))) + mean_m z_m`.
  The feature tables `f_m` (`[V, D_m]`, standardized at preparation time) are non-trainable
  variables, so a served model needs only item ids.

  Args:
    features: modality name -> float `[V, D_m]`.
    present: modality name -> bool `[V]` (False where the item lacks the modality).
    dim: d.
  Call: `item_ids` int `[...]` -> float `[..., d]`.
  """

  def __init__(self, features: Dict[str, np.ndarray], present: Dict[str, np.ndarray], dim: int,
               **kwargs):
    super().__init__(**kwargs)
    self.modalities = sorted(features)
    if not self.modalities:
      raise ValueError("MultimodalTower needs at least one modality")
    self.dim = dim
    self._init_features = {m: np.asarray(features[m], np.float32) for m in self.modalities}
    self._init_present = {m: np.asarray(present[m], bool) for m in self.modalities}
    rows = {m: f.shape[0] for m, f in self._init_features.items()}
    if len(set(rows.values())) != 1:
      raise ValueError(f"feature tables disagree on the number of items: {rows}")
    self.vocab_size = next(iter(rows.values()))
    self.projections = {m: tf.keras.layers.Dense(dim, name=f"proj_{m}") for m in self.modalities}
    self.norms = {m: tf.keras.layers.LayerNormalization(name=f"norm_{m}") for m in self.modalities}
    self.fuse_hidden = tf.keras.layers.Dense(2 * dim, activation="gelu", name="fuse_hidden")
    self.fuse_out = tf.keras.layers.Dense(dim, name="fuse_out")

  def build(self, input_shape):
    self.tables, self.present_masks, self.missing = {}, {}, {}
    for m in self.modalities:
      self.tables[m] = self.add_weight(
          name=f"features_{m}", shape=self._init_features[m].shape, trainable=False,
          initializer=tf.constant_initializer(self._init_features[m]))
      self.present_masks[m] = self.add_weight(
          name=f"present_{m}", shape=(self.vocab_size,), trainable=False,
          initializer=tf.constant_initializer(self._init_present[m].astype(np.float32)))
      self.missing[m] = self.add_weight(
          name=f"missing_{m}", shape=(self.dim,),
          initializer=tf.keras.initializers.TruncatedNormal(stddev=0.05))
    super().build(input_shape)

  def call(self, item_ids):
    shape = tf.shape(item_ids)
    item_ids = tf.reshape(item_ids, [-1])  # rank-1 inside, so the layers see one input rank
    zs = []
    for m in self.modalities:
      f = tf.nn.embedding_lookup(self.tables[m], item_ids)        # [..., D_m]
      z = self.norms[m](self.projections[m](f))                   # [..., d]
      has = tf.nn.embedding_lookup(self.present_masks[m], item_ids)[..., None]  # [..., 1]
      zs.append(has * z + (1.0 - has) * self.missing[m])
    fused = self.fuse_out(self.fuse_hidden(tf.concat(zs, axis=-1)))
    out = fused + tf.add_n(zs) / float(len(zs))                          # [n, d]
    return tf.reshape(out, tf.concat([shape, [self.dim]], axis=0))

  def get_config(self):
    # Feature tables are data, not hyperparameters: they are restored from checkpoints.
    return {**super().get_config(), "dim": self.dim, "modalities": self.modalities}
