"""Item towers: map item indices to d-dimensional item embeddings, one tower per view.

Index convention (shared with `input_pipelines`): 0 = padding, 1 = out-of-vocabulary, 2.. = items.
"""

from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
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
      name="embeddings",
      shape=(self.vocab_size, self.dim),
      initializer=tf.keras.initializers.TruncatedNormal(stddev=0.05),
    )
    super().build(input_shape)

  def call(self, item_ids):
    # embedding_lookup also reads a ShardedVariable (ParameterServerStrategy partitioner).
    return tf.nn.embedding_lookup(self.embeddings, item_ids)

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim}


class _InitialValues:
  """Initial values of a layer's weights, kept outside Keras's attribute tracking."""

  def __init__(self):
    self.values: Dict[str, np.ndarray] = {}


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class MultimodalTower(tf.keras.layers.Layer):
  """Multimodal view; never reads an item's id, only its feature rows.

  Per modality m: `z_m = LayerNorm(Dense_d(f_m(i)))`, or a learned "missing" vector when item i
  lacks modality m; fused `e_mm(i) = Dense_d(GELU(Dense_2d(concat_m z_m))) + mean_m z_m`
  (`fusion="mlp"`), or `e_mm(i) = mean_m z_m` (`fusion="mean"`: no fusion MLP; the MLP is 0.84
  of the tower's 0.97 GFLOP per training step in docs/performance.md's setting).
  The feature tables `f_m` (`[V, D_m]`, standardized at preparation time) and presence masks
  (`[V]`) are non-trainable weights created in `build`, so a served model needs only item ids and
  the tables travel with the weights (checkpoints, `get_weights`); the config holds their shapes.

  Args:
    vocab_size: V.
    feature_dims: modality name -> D_m.
    dim: d.
    fusion: "mlp" (default) or "mean" (above).
    fusion_hidden: width of the fusion MLP's hidden layer (0 = 2d, DESIGN.md; a narrower one is
      cheaper: the MLP costs about V (M d h + h d) multiply-adds for M modalities, h hidden).
    features / present: optional initial values of the tables, modality -> float `[V, D_m]` /
      bool `[V]` (default zeros / all present); `from_tables` derives the shapes from them.
  Call: `item_ids` int `[...]` -> float `[..., d]`.
  """

  def __init__(
    self,
    vocab_size: int,
    feature_dims: Mapping[str, int],
    dim: int,
    features: Optional[Dict[str, np.ndarray]] = None,
    present: Optional[Dict[str, np.ndarray]] = None,
    fusion: str = "mlp",
    fusion_hidden: int = 0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.modalities = sorted(feature_dims)
    if not self.modalities:
      raise ValueError("MultimodalTower needs at least one modality")
    if fusion not in ("mlp", "mean"):
      raise ValueError(f"MultimodalTower fusion must be 'mlp' or 'mean', got {fusion!r}")
    if fusion_hidden < 0:
      raise ValueError(f"MultimodalTower fusion_hidden must be >= 0, got {fusion_hidden}")
    self.fusion, self.fusion_hidden = fusion, int(fusion_hidden)
    self.vocab_size, self.dim = int(vocab_size), int(dim)
    self.feature_dims = {m: int(feature_dims[m]) for m in self.modalities}
    # Table name -> initial value, dropped once the weights exist; not config (tables are
    # weights). A plain holder: a dict attribute would be tracked (and its mutation break saving).
    self._initial = _InitialValues()
    for m in self.modalities:
      shapes = {
        f"features_{m}": ((self.vocab_size, self.feature_dims[m]), features, np.float32),
        f"present_{m}": ((self.vocab_size,), present, np.float32),
      }
      for name, (shape, given, dtype) in shapes.items():
        if given is None or m not in given:
          continue
        value = np.asarray(given[m]).astype(dtype)
        if value.shape != shape:
          raise ValueError(
            f"MultimodalTower table {name} has shape {value.shape}, expected "
            f"{shape} (vocab_size, feature_dims)"
          )
        self._initial.values[name] = value
    self.projections = {m: tf.keras.layers.Dense(dim, name=f"proj_{m}") for m in self.modalities}
    self.norms = {m: tf.keras.layers.LayerNormalization(name=f"norm_{m}") for m in self.modalities}
    if fusion == "mlp":  # no fusion weights are built for "mean"
      self.fuse_hidden = tf.keras.layers.Dense(
        self.fusion_hidden or 2 * dim, activation="gelu", name="fuse_hidden"
      )
      self.fuse_out = tf.keras.layers.Dense(dim, name="fuse_out")

  @classmethod
  def from_tables(
    cls, features: Dict[str, np.ndarray], present: Dict[str, np.ndarray], dim: int, **kwargs
  ) -> "MultimodalTower":
    """A tower over the given feature tables (modality -> `[V, D_m]`, bool `[V]`)."""
    rows = {m: np.shape(f)[0] for m, f in features.items()}
    if len(set(rows.values())) > 1:
      raise ValueError(f"feature tables disagree on the number of items: {rows}")
    vocab_size = next(iter(rows.values()), 0)
    return cls(
      vocab_size,
      {m: np.shape(f)[1] for m, f in features.items()},
      dim,
      features=features,
      present=present,
      **kwargs,
    )

  def build(self, input_shape):
    def init(name, default):
      value = self._initial.values.pop(name, None)
      return default if value is None else tf.constant_initializer(value)

    self.tables, self.present_masks, self.missing = {}, {}, {}
    for m in self.modalities:
      self.tables[m] = self.add_weight(
        name=f"features_{m}",
        shape=(self.vocab_size, self.feature_dims[m]),
        trainable=False,
        initializer=init(f"features_{m}", "zeros"),
      )
      self.present_masks[m] = self.add_weight(
        name=f"present_{m}",
        shape=(self.vocab_size,),
        trainable=False,
        initializer=init(f"present_{m}", "ones"),
      )
      self.missing[m] = self.add_weight(
        name=f"missing_{m}",
        shape=(self.dim,),
        initializer=tf.keras.initializers.TruncatedNormal(stddev=0.05),
      )
    super().build(input_shape)

  def call(self, item_ids):
    shape = tf.shape(item_ids)
    item_ids = tf.reshape(item_ids, [-1])  # rank-1 inside, so the layers see one input rank
    zs = []
    for m in self.modalities:
      f = tf.nn.embedding_lookup(self.tables[m], item_ids)  # [..., D_m]
      z = self.norms[m](self.projections[m](f))  # [..., d]
      has = tf.nn.embedding_lookup(self.present_masks[m], item_ids)[..., None]  # [..., 1]
      zs.append(has * z + (1.0 - has) * self.missing[m])
    out = tf.add_n(zs) / float(len(zs))  # [n, d]
    if self.fusion == "mlp":
      out += self.fuse_out(self.fuse_hidden(tf.concat(zs, axis=-1)))
    return tf.reshape(out, tf.concat([shape, [self.dim]], axis=0))

  def get_config(self):
    return {
      **super().get_config(),
      "vocab_size": self.vocab_size,
      "feature_dims": dict(self.feature_dims),
      "dim": self.dim,
      "fusion": self.fusion,
      "fusion_hidden": self.fusion_hidden,
    }
