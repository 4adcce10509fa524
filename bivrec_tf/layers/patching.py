"""Module 1 — Multi-scale Interest Embedding.

For each patch size p in P the right-aligned history (most recent item last) is cut into L/p
non-overlapping windows aligned to the most recent end. Window j (counted from the end, j = 0 is the
most recent) becomes one token

    x_{p,j} = LayerNorm(W_p · masked_mean(e_i, i in window) + s_p + r_{p,j})

with a learned scale embedding `s_p` and recency embedding `r_{p,j}`. A token is valid if any item in
its window is, and carries its recency position `tau = (j p + (p - 1) / 2) / max_len` (distance of
the window centre from the end, over the model's history length). The tokens of all scales are
concatenated (T = sum_p L/p) and passed through `encoder_layers` pre-LN Transformer blocks that
attend only to valid tokens,

    h <- h + Dropout(Attention(LN(h))),   h <- h + Dropout(FFN(LN(h))),   output LN(h).

With `causal=True` (one token per item, P = {1}) token t attends only to tokens <= t, as in SASRec
(Kang & McAuley, ICDM 2018): the encoding at position t depends on the items up to t only, and the
recency embeddings r_{1,j} are SASRec's learned positional embeddings, counted from the most
recent end.

With `patch_mode="context"` (a measured alternative, docs/model.md) the tokens are the items
themselves (T = L): each position t sums its own item term and the terms of the windows that contain
it at every other scale, `x_t = LayerNorm(sum_p [W_p · mean(window_p(t)) + s_p + r_{p,j_p(t)}])`,
so the read-out keeps one token per item while each token carries its local context.

Because padding is masked everywhere and positions are counted from the most recent end, extra left
padding changes no output.

With `content=True` the layer also returns each token without its recency term,
`LayerNorm(W_p · mean + s_p)` (then the same final LayerNorm): what the item says, not where it
sits (module 2's `interest_keys="content"`, docs/model.md). It needs `encoder_layers = 0`, since a
Transformer block would mix the positions back in.
"""

from typing import Sequence

import tensorflow as tf

NEG_INF = -1e9


def padded_length(length: int, patch_sizes: Sequence[int]) -> int:
  """Smallest multiple of max(patch_sizes) >= length."""
  step = max(patch_sizes)
  return -(-length // step) * step


def attention_mask(valid, causal: bool = False):
  """Which keys each query may attend to: bool `[B, T, T]` (query, key) from `valid` `[B, T]`.

  Valid keys only; with `causal`, also only keys at or before the query, and every query may see
  itself (a padded query has no valid key before it: it attends to itself instead of to the
  future).
  """
  allowed = tf.broadcast_to(valid[:, None, :], [tf.shape(valid)[0]] + [tf.shape(valid)[1]] * 2)
  if not causal:
    return allowed
  t = tf.shape(valid)[1]
  lower = tf.linalg.band_part(tf.ones([t, t], tf.bool), -1, 0)  # key <= query
  return (allowed & lower[None]) | tf.eye(t, dtype=tf.bool)[None]


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class TransformerBlock(tf.keras.layers.Layer):
  """Pre-LN self-attention block, `h + Dropout(MHA(LN(h)))` then `h + Dropout(FFN(LN(h)))`
  (FFN = Dense_d(GELU(Dense_{ffn_mult d}))), with a key padding mask and an optional causal mask
  (`attention_mask`).

  Call: `h` float `[B, T, d]`, `valid` bool `[B, T]` -> float `[B, T, d]`.
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    dropout: float = 0.0,
    ffn_mult: int = 2,
    causal: bool = False,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.dim, self.num_heads, self.dropout, self.ffn_mult = dim, num_heads, dropout, ffn_mult
    self.causal = causal
    self.norm1 = tf.keras.layers.LayerNormalization(name="norm1")
    self.qkv = tf.keras.layers.Dense(3 * dim, name="qkv")
    self.out = tf.keras.layers.Dense(dim, name="out")
    self.norm2 = tf.keras.layers.LayerNormalization(name="norm2")
    self.ffn_in = tf.keras.layers.Dense(ffn_mult * dim, activation="gelu", name="ffn_in")
    self.ffn_out = tf.keras.layers.Dense(dim, name="ffn_out")
    self.drop = tf.keras.layers.Dropout(dropout)

  def call(self, h, valid, training=False):
    b, t = tf.shape(h)[0], tf.shape(h)[1]
    head_dim = self.dim // self.num_heads
    qkv = tf.reshape(self.qkv(self.norm1(h)), [b, t, 3, self.num_heads, head_dim])
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, dh]
    logits = tf.einsum("bqhc,bkhc->bhqk", q, k) / (head_dim**0.5)
    allowed = attention_mask(valid, self.causal)  # [B, T, T]
    logits += (1.0 - tf.cast(allowed, h.dtype))[:, None] * NEG_INF
    attn = tf.nn.softmax(logits, axis=-1)
    mixed = tf.reshape(tf.einsum("bhqk,bkhc->bqhc", attn, v), [b, t, self.dim])
    h = h + self.drop(self.out(mixed), training=training)
    return h + self.drop(self.ffn_out(self.ffn_in(self.norm2(h))), training=training)

  def get_config(self):
    return {
      **super().get_config(),
      "dim": self.dim,
      "num_heads": self.num_heads,
      "dropout": self.dropout,
      "ffn_mult": self.ffn_mult,
      "causal": self.causal,
    }


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class MultiScaleInterestEmbedding(tf.keras.layers.Layer):
  """Patch tokens at several scales, then a small Transformer encoder.

  Args:
    dim: d.
    patch_sizes: P, e.g. (1, 2, 4).
    max_len: the model's history length L (sets the recency tables and the tau scale).
    encoder_layers, num_heads, dropout: the Transformer encoder (dropout acts in its blocks only).
    patch_mode: "tokens" or "context" (module docstring).
    causal: causal self-attention (SASRec); needs P = {1}, one token per item.
  Call: `item_emb` float `[B, L', d]`, `mask` bool `[B, L']` with L' <= padded max_len and L' a
    multiple of max(P) -> (`h` float `[B, T, d]`, `tau` float `[T]`, `valid` bool `[B, T]`), and
    with `content=True` also the tokens without recency `[B, T, d]` (module docstring).
  """

  def __init__(
    self,
    dim: int,
    patch_sizes: Sequence[int],
    max_len: int,
    encoder_layers: int = 1,
    num_heads: int = 2,
    dropout: float = 0.0,
    patch_mode: str = "tokens",
    causal: bool = False,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.dim = dim
    self.patch_mode = patch_mode
    self.patch_sizes = tuple(sorted(patch_sizes))
    if causal and self.patch_sizes != (1,):
      # A patch token averages items up to p - 1 positions after its first one: no causal order.
      raise ValueError(f"causal attention needs patch_sizes (1,), got {self.patch_sizes}")
    self.causal = causal
    self.max_len = max_len
    self.encoder_layers, self.num_heads, self.dropout = encoder_layers, num_heads, dropout
    self.padded_max_len = padded_length(max_len, self.patch_sizes)
    # Per-scale weights are lists aligned with self.patch_sizes (checkpoints need string keys).
    self.patch_proj = [tf.keras.layers.Dense(dim, name=f"patch_proj_{p}") for p in self.patch_sizes]
    norms = self.patch_sizes if patch_mode == "tokens" else self.patch_sizes[:1]
    self.patch_norm = [tf.keras.layers.LayerNormalization(name=f"patch_norm_{p}") for p in norms]
    self.blocks = [
      TransformerBlock(dim, num_heads, dropout, causal=causal, name=f"block_{i}")
      for i in range(encoder_layers)
    ]
    self.final_norm = tf.keras.layers.LayerNormalization(name="final_norm")

  def build(self, input_shape):
    def init():  # a fresh initializer per weight (a shared one repeats the same values)
      return tf.keras.initializers.TruncatedNormal(stddev=0.02)

    self.scale_emb = [
      self.add_weight(name=f"scale_{p}", shape=(self.dim,), initializer=init())
      for p in self.patch_sizes
    ]
    self.recency_emb = [
      self.add_weight(
        name=f"recency_{p}", shape=(self.padded_max_len // p, self.dim), initializer=init()
      )
      for p in self.patch_sizes
    ]
    super().build(input_shape)

  def _scale_tokens(self, item_emb, mask, s, normalize=True, recency=True):
    """Tokens of scale number s (patch size p): ([B, L'/p, d], [L'/p], [B, L'/p]); without the
    recency term r_{p,j} with `recency=False`."""
    p = self.patch_sizes[s]
    b, length = tf.shape(item_emb)[0], tf.shape(item_emb)[1]
    n = length // p
    m = tf.cast(mask, item_emb.dtype)
    windows = tf.reshape(item_emb * m[..., None], [b, n, p, self.dim])
    counts = tf.reduce_sum(tf.reshape(m, [b, n, p]), axis=2)  # [B, n]
    mean = tf.reduce_sum(windows, axis=2) / tf.maximum(counts, 1.0)[..., None]
    j = tf.range(n - 1, -1, -1)  # recency index
    x = self.patch_proj[s](mean) + self.scale_emb[s]
    if recency:
      x += tf.gather(self.recency_emb[s], j)  # [n, d]
    x = self.patch_norm[s](x) if normalize else x
    tau = (tf.cast(j * p, item_emb.dtype) + (p - 1) / 2.0) / float(self.max_len)
    return x, tau, counts > 0

  def _context_tokens(self, item_emb, mask, recency=True):
    """One token per position, summing the terms of every scale's window that contains it."""
    parts = [
      self._scale_tokens(item_emb, mask, s, normalize=False, recency=recency)
      for s in range(len(self.patch_sizes))
    ]
    h = tf.add_n([tf.repeat(x, p, axis=1) for (x, _, _), p in zip(parts, self.patch_sizes)])
    length = tf.shape(item_emb)[1]
    tau = tf.cast(tf.range(length - 1, -1, -1), item_emb.dtype) / float(self.max_len)
    return self.patch_norm[0](h), tau, mask

  def _tokens(self, item_emb, mask, recency=True):
    if self.patch_mode == "context":
      return self._context_tokens(item_emb, mask, recency)
    parts = [
      self._scale_tokens(item_emb, mask, s, recency=recency) for s in range(len(self.patch_sizes))
    ]
    h = tf.concat([x for x, _, _ in parts], axis=1)
    tau = tf.concat([t for _, t, _ in parts], axis=0)
    valid = tf.concat([v for _, _, v in parts], axis=1)
    return h, tau, valid

  def call(self, item_emb, mask, training=False, content=False):
    h, tau, valid = self._tokens(item_emb, mask)
    for block in self.blocks:
      h = block(h, valid, training=training)
    if not content:
      return self.final_norm(h), tau, valid
    if self.blocks:
      raise ValueError("content tokens need encoder_layers = 0 (a block mixes positions back in)")
    return self.final_norm(h), tau, valid, self.final_norm(self._tokens(item_emb, mask, False)[0])

  def get_config(self):
    return {
      **super().get_config(),
      "dim": self.dim,
      "patch_sizes": self.patch_sizes,
      "max_len": self.max_len,
      "encoder_layers": self.encoder_layers,
      "num_heads": self.num_heads,
      "dropout": self.dropout,
      "patch_mode": self.patch_mode,
      "causal": self.causal,
    }
