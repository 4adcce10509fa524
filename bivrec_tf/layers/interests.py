"""Module 2 — Intra-View Interest Decomposition: Gaussian attention seeds, Cluster attention
refines.

Gaussian attention (K interests, temporal prior):
    mu_k = sigmoid(a_k),  sigma_k = softplus(b_k) + 0.05   (centres start spread evenly over [0, 1])
    logit[k, t] = (q_k W_Q)·(h_t W_K) / sqrt(d) - (tau_t - mu_k)^2 / (2 sigma_k^2)
    alpha = masked softmax over valid tokens t;   c_k = sum_t alpha[k, t] h_t W_V
  prior_mode "gated" (measured alternative, docs/model.md): tau_t is taken relative to the user's
  own span (tau_t / tau_oldest valid token, so every user's history covers [0, 1]) and the prior
  is scaled by a learned gate g_k = softplus(beta_k), starting at 0.1, so content decides first:
    logit[k, t] = content - g_k (tau_t - mu_k)^2 / (2 sigma_k^2)
  interest_keys "content" (measured alternative): the keys are the tokens without their recency
  term, h_t^c W_K, so the queries pick items by what they are, not by where they sit.
  recent_interest: interest 0 is the most recent item's token itself (alpha[0] one-hot on it,
  c_0 = h_last W_V) and the other K - 1 attend as above.
  Queries q_k start as orthogonal rows of norm sqrt(d) (per-element unit scale, like the
  LayerNorm-ed tokens) with interest_init "orthogonal" (K <= d), else
  N(0, 0.05^2) (near-identical interests at the start: they tend to stay collapsed).

Cluster attention (R rounds, shared weights; interests compete for each token):
    A[t, k] = softmax_k((h_t W_K')·(c_k W_Q') / sqrt(d)),  A[t, :] = 0 on padded tokens
    c_k <- LN(c_k + W_O · sum_t A[t, k] h_t W_V' / (sum_t A[t, k] + eps))
    c_k <- LN(c_k + FFN(c_k))
Outputs interests U = c `[B, K, d]` and the allocation A `[B, T, K]` of the last round. With R = 0
the interests are the seeds and A is the seeding attention itself, shared out over interests per
token: A[t, k] = alpha[k, t] / sum_k' alpha[k', t] (0 on padded tokens), so that L_alloc acts on the
attention that forms the interests. (An allocation computed by untrained cluster-attention weights
would let L_alloc agree trivially: it drifts to uniform, L_alloc ~ 1e-7, docs/results.md.)
"""

import math

import tensorflow as tf

from bivrec_tf.layers.patching import NEG_INF

EPS = 1e-6


def build_under_own_name(dense: tf.keras.layers.Dense, input_dim: int) -> None:
  """Builds a sublayer that is read as a matrix, never called, under its own name scope, as its
  first call would have (`.../w_k/kernel`, not `.../kernel`: unique weight names)."""
  with tf.name_scope(dense.name):
    dense.build((None, input_dim))


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class GaussianAttention(tf.keras.layers.Layer):
  """Seeds K interests from tokens with a learned temporal (recency) prior per interest.

  Args:
    dim: d.  num_interests: K.  gaussian_prior: False drops the prior term (ablation) and builds
    no prior weights.  sigma_init: initial width of every Gaussian.  prior_mode: "fixed" | "gated".
    interest_init: "normal" | "orthogonal".  values: "shared" (one W_V for every interest, DESIGN.md)
    or "per_interest" (interest k reads its tokens through its own W_V^k, `[K, d, d]`: c_k =
    (sum_t alpha[k, t] h_t) W_V^k, so interests that attend to the same items still differ), or
    "shared+per_interest" (W_V + W_V^k: a shared map every example trains plus each interest's own).
    recent_interest: interest 0 is the most recent item's token (the token at tau = 0, which a
    patch size of 1 provides), K - 1 queries attend (module docstring); needs values "shared".
  Call: `h` `[B, T, d]`, `tau` `[T]`, `valid` bool `[B, T]`, optional `keys` `[B, T, d]` (the
    tokens the attention logits read; default `h`) -> seeds `[B, K, d]` (and alpha `[B, K, T]`
    with `return_attention=True`).
  """

  def __init__(
    self,
    dim: int,
    num_interests: int,
    gaussian_prior: bool = True,
    sigma_init: float = 0.25,
    prior_mode: str = "fixed",
    interest_init: str = "normal",
    values: str = "shared",
    recent_interest: bool = False,
    **kwargs,
  ):
    super().__init__(**kwargs)
    if recent_interest and (values != "shared" or num_interests < 2):
      raise ValueError("recent_interest needs values 'shared' and num_interests >= 2")
    self.dim, self.num_interests, self.recent_interest = dim, num_interests, recent_interest
    self.gaussian_prior, self.sigma_init = gaussian_prior, sigma_init
    self.prior_mode, self.interest_init, self.values = prior_mode, interest_init, values
    self.w_q = tf.keras.layers.Dense(dim, use_bias=False, name="w_q")
    self.w_k = tf.keras.layers.Dense(dim, use_bias=False, name="w_k")
    # per_interest: the K value maps are built in `build` (no shared W_V that nothing would train)
    self.w_v = (
      None if values == "per_interest" else tf.keras.layers.Dense(dim, use_bias=False, name="w_v")
    )

  def build(self, input_shape):
    k = self.num_interests - int(self.recent_interest)  # the attending interests
    centres = [(i + 0.5) / k for i in range(k)]
    # Orthogonal rows of norm sqrt(d): per-element unit scale, like the LayerNorm-ed tokens, so
    # the attention logits start O(1) and each interest attends differently from the first step.
    init = (
      tf.keras.initializers.Orthogonal(gain=math.sqrt(self.dim))
      if self.interest_init == "orthogonal"
      else tf.keras.initializers.TruncatedNormal(stddev=0.05)
    )
    self.queries = self.add_weight(name="queries", shape=(k, self.dim), initializer=init)
    if self.values != "shared":
      self.value_kernels = self.add_weight(
        name="value_kernels",
        shape=(k, self.dim, self.dim),
        initializer=tf.keras.initializers.GlorotUniform(),
      )
    if not self.gaussian_prior:  # no prior weights that nothing would train
      self._build_key_map()
      super().build(input_shape)
      return
    if self.prior_mode == "gated":
      self.gate_logits = self.add_weight(
        name="gate_logits",
        shape=(k,),
        initializer=tf.constant_initializer(math.log(math.expm1(0.1))),
      )
    self.centre_logits = self.add_weight(
      name="centre_logits",
      shape=(k,),
      initializer=tf.constant_initializer([math.log(c / (1.0 - c)) for c in centres]),
    )
    width = self.sigma_init - 0.05
    self.width_logits = self.add_weight(
      name="width_logits",
      shape=(k,),
      initializer=tf.constant_initializer(math.log(math.expm1(width))),
    )
    self._build_key_map()
    super().build(input_shape)

  def _build_key_map(self):
    """W_K is read as a matrix in `call` (folded into the queries), never called on the tokens;
    built last, where its first call used to build it, so seeded initial weights are unchanged."""
    build_under_own_name(self.w_k, self.dim)

  @property
  def centres(self):
    """mu `[K]` in (0, 1)."""
    return tf.sigmoid(self.centre_logits)

  @property
  def widths(self):
    """sigma `[K]` >= 0.05."""
    return tf.nn.softplus(self.width_logits) + 0.05

  def call(self, h, tau, valid, return_attention=False, keys=None):
    """Seeds `[B, K, d]`; with `return_attention`, also alpha `[B, K, T]` (softmax over valid
    tokens)."""
    # (q_k W_Q)·(h_t W_K) = (q_k W_Q W_K^T)·h_t: the key map folded into the K queries, so no
    # token is projected (B T d^2 multiply-adds saved; the same logits).
    queries = tf.matmul(self.w_q(self.queries), self.w_k.kernel, transpose_b=True)  # [K, d]
    logits = tf.einsum("kd,btd->bkt", queries, h if keys is None else keys) / math.sqrt(self.dim)
    if self.gaussian_prior:
      mu, sigma = self.centres, self.widths
      if self.prior_mode == "gated":
        fvalid = tf.cast(valid, h.dtype)
        oldest = tf.reduce_max(tau[None, :] * fvalid, axis=1, keepdims=True)  # [B, 1]
        rel = tau[None, :] / tf.maximum(oldest, 1e-6)  # [B, T]
        gate = tf.nn.softplus(self.gate_logits)
        logits -= (
          gate[None, :, None]
          * tf.square(rel[:, None, :] - mu[None, :, None])
          / (2.0 * tf.square(sigma))[None, :, None]
        )
      else:
        logits -= tf.square(tau[None, :] - mu[:, None]) / (2.0 * tf.square(sigma))[:, None]
    logits += (1.0 - tf.cast(valid, h.dtype))[:, None, :] * NEG_INF
    alpha = tf.nn.softmax(logits, axis=-1)  # [B, K, T] (K - 1 with recent_interest)
    if self.recent_interest:  # interest 0 reads the most recent item's token only
      recent = tf.one_hot(tf.argmin(tau), tf.shape(h)[1], dtype=h.dtype)  # [T]
      alpha = tf.concat([tf.tile(recent[None, None, :], [tf.shape(h)[0], 1, 1]), alpha], axis=1)
    # sum_t alpha[k, t] h_t W_V = (sum_t alpha[k, t] h_t) W_V: pool the tokens, then map
    # (B K d^2 multiply-adds, not B T d^2).
    pooled = tf.einsum("bkt,btd->bkd", alpha, h)
    if self.values == "shared":
      seeds = self.w_v(pooled)
    else:
      seeds = tf.einsum("bkd,kde->bke", pooled, self.value_kernels)
      if self.w_v is not None:
        seeds += self.w_v(pooled)
    return (seeds, alpha) if return_attention else seeds

  def get_config(self):
    return {
      **super().get_config(),
      "dim": self.dim,
      "num_interests": self.num_interests,
      "gaussian_prior": self.gaussian_prior,
      "sigma_init": self.sigma_init,
      "prior_mode": self.prior_mode,
      "interest_init": self.interest_init,
      "values": self.values,
      "recent_interest": self.recent_interest,
    }


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class ClusterAttention(tf.keras.layers.Layer):
  """Refines interest seeds into a soft clustering of the tokens, `rounds` rounds, shared weights.

  Call: `h` `[B, T, d]`, `seeds` `[B, K, d]`, `valid` bool `[B, T]`
    -> (interests `[B, K, d]`, allocation `[B, T, K]`).
  """

  def __init__(self, dim: int, rounds: int = 2, **kwargs):
    super().__init__(**kwargs)
    if rounds < 1:  # R = 0 is InterestDecomposition's business: no cluster layer at all
      raise ValueError(f"ClusterAttention needs rounds >= 1, got {rounds}")
    self.dim, self.rounds = dim, rounds
    self.w_k = tf.keras.layers.Dense(dim, use_bias=False, name="w_k")
    self.w_q = tf.keras.layers.Dense(dim, use_bias=False, name="w_q")
    self.w_v = tf.keras.layers.Dense(dim, use_bias=False, name="w_v")
    self.w_o = tf.keras.layers.Dense(dim, name="w_o")
    self.norm1 = tf.keras.layers.LayerNormalization(name="norm1")
    self.ffn_in = tf.keras.layers.Dense(2 * dim, activation="gelu", name="ffn_in")
    self.ffn_out = tf.keras.layers.Dense(dim, name="ffn_out")
    self.norm2 = tf.keras.layers.LayerNormalization(name="norm2")

  def build(self, input_shape):
    # W_K and W_V are read as matrices in `call`, never called on the tokens; built first, where
    # their first calls on the tokens used to build them, so seeded initial weights are unchanged.
    build_under_own_name(self.w_k, self.dim)
    build_under_own_name(self.w_v, self.dim)
    super().build(input_shape)

  def allocate(self, h, interests, valid):
    """A `[B, T, K]`: softmax over interests per token, zero rows on padded tokens. The logits
    (h_t W_K')·(c_k W_Q') are read as h_t·(c_k W_Q' W_K'^T): the key map folded into the K
    interests, so no token is projected (the same logits)."""
    # einsum, not a broadcast matmul: the kernel's gradient is one contraction over (b, k),
    # not B per-example [d, d] products summed afterwards
    queries = tf.einsum("bke,de->bkd", self.w_q(interests), self.w_k.kernel)  # [B, K, d]
    logits = tf.einsum("btd,bkd->btk", h, queries) / math.sqrt(self.dim)
    return tf.nn.softmax(logits, axis=-1) * tf.cast(valid, h.dtype)[..., None]

  def call(self, h, seeds, valid):
    c = seeds
    for _ in range(self.rounds):
      a = self.allocate(h, c, valid)  # [B, T, K]
      # sum_t A[t, k] h_t W_V' = (sum_t A[t, k] h_t) W_V': pool the tokens, then map (B K d^2
      # multiply-adds per round instead of B T d^2).
      pooled = tf.einsum("bkd,de->bke", tf.einsum("btk,btd->bkd", a, h), self.w_v.kernel)
      pooled /= (tf.reduce_sum(a, axis=1) + EPS)[..., None]
      c = self.norm1(c + self.w_o(pooled))
      c = self.norm2(c + self.ffn_out(self.ffn_in(c)))
    return c, a

  def get_config(self):
    return {**super().get_config(), "dim": self.dim, "rounds": self.rounds}


def seed_allocation(alpha, valid):
  """A `[B, T, K]` from the seeding attention alpha `[B, K, T]`: each valid token's attention
  shared out over the interests (rows sum to 1), zero rows on padded tokens."""
  a = tf.transpose(alpha, [0, 2, 1])
  a = tf.math.divide_no_nan(a, tf.reduce_sum(a, axis=-1, keepdims=True))
  return a * tf.cast(valid, a.dtype)[..., None]


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class InterestDecomposition(tf.keras.layers.Layer):
  """Gaussian attention seeds followed by cluster-attention rounds.

  Call: `h` `[B, T, d]`, `tau` `[T]`, `valid` bool `[B, T]`, optional `keys` `[B, T, d]` (what
    the seeding attention's logits read, default `h`) -> (U `[B, K, d]`, A `[B, T, K]`).
  """

  def __init__(
    self,
    dim: int,
    num_interests: int,
    gaussian_prior: bool = True,
    sigma_init: float = 0.25,
    cluster_rounds: int = 2,
    prior_mode: str = "fixed",
    interest_init: str = "normal",
    values: str = "shared",
    recent_interest: bool = False,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.dim, self.num_interests, self.cluster_rounds = dim, num_interests, cluster_rounds
    self.gaussian = GaussianAttention(
      dim,
      num_interests,
      gaussian_prior,
      sigma_init,
      prior_mode,
      interest_init,
      values,
      recent_interest,
      name="gaussian",
    )
    # With R = 0 no cluster-attention weights exist (nothing would train or use them).
    self.cluster = ClusterAttention(dim, cluster_rounds, name="cluster") if cluster_rounds else None

  def call(self, h, tau, valid, keys=None):
    seeds, alpha = self.gaussian(h, tau, valid, return_attention=True, keys=keys)
    if self.cluster is None:
      return seeds, seed_allocation(alpha, valid)
    return self.cluster(h, seeds, valid)

  def get_config(self):
    g = self.gaussian
    return {
      **super().get_config(),
      "dim": self.dim,
      "num_interests": self.num_interests,
      "gaussian_prior": g.gaussian_prior,
      "sigma_init": g.sigma_init,
      "cluster_rounds": self.cluster_rounds,
      "prior_mode": g.prior_mode,
      "interest_init": g.interest_init,
      "values": g.values,
      "recent_interest": g.recent_interest,
    }


def interest_similarity(interests, margin: float = 0.0, active=None):
  """Pairwise cosines of each user's K interests `[B, K, d]` -> (mean cosine `[B]`, mean of
  relu(cos - margin)^2 `[B]`) over the K (K - 1) ordered pairs (0 for K = 1). The first is the
  collapse diagnostic (1 = every interest the same vector), the second the diversity penalty
  (margin 0: the squared cosine of pairs pointing the same way). `active` bool `[B, K]`
  (adaptive interest counts): only pairs of active interests count, and a user with fewer than
  two gets 0 for both (callers that average the cosine leave such users out)."""
  k = interests.shape[-2]
  if k is None or k < 2:
    zero = tf.zeros(tf.shape(interests)[:1], interests.dtype)
    return zero, zero
  u = tf.math.l2_normalize(interests, axis=-1)
  cos = tf.matmul(u, u, transpose_b=True)  # [B, K, K]
  off = (1.0 - tf.eye(k, dtype=interests.dtype))[None]
  if active is not None:
    on = tf.cast(active, interests.dtype)
    off = off * on[:, :, None] * on[:, None, :]
  pairs = tf.maximum(tf.reduce_sum(off, axis=[1, 2]), 1.0)
  return (
    tf.reduce_sum(cos * off, axis=[1, 2]) / pairs,
    tf.reduce_sum(tf.square(tf.nn.relu(cos - margin)) * off, axis=[1, 2]) / pairs,
  )


def paired_users(active):
  """Users with at least two interests of their own (a pairwise cosine to report): `active` bool
  `[B, K]` -> bool `[B]`."""
  return tf.reduce_sum(tf.cast(active, tf.int32), axis=1) >= 2
