"""BivRecModel: two views (ID, multimodal), each turning a history into K interests, trained jointly.

Per view v: item tower -> Multi-scale Interest Embedding (module 1) -> Intra-View Interest
Decomposition (module 2) -> interests U_v `[B, K, d]`, scored against candidates with
multi-interest ("maxsim") queries and the loss of `tfrs.tasks.Retrieval` (the logits are formed
once per view, as that task forms them, with TFRS's logQ-correction and accidental-hit layers, so
the cross-view terms can reuse them; a test checks the loss equals the task's). Cross-View
Interest Learning (module 3) couples the views:

    L = L_rec_id + L_rec_mm + lambda_sem L_sem + lambda_alloc L_alloc (+ lambda_div L_div)

L_div is the mean of relu(cos - div_margin)^2 over pairs of a user's K interests (keeps them
distinct). Logged per view every step: `cos_<view>` (mean pairwise cosine of a user's interests,
1 = collapsed) and the
allocation diagnostics `entropy_<view>`, `interests_<view>`.

Every term is averaged per example over the *global* batch, so the loss does not depend on the
number of replicas. `compute_loss` is the one loss entry point: it returns the loss and updates
the epoch means logged for the total (`loss`) and for each term; `train_step` differentiates it,
`test_step` evaluates it. (A plain `tf.keras.Model`: the train step of `tfrs.Model` logs only the
last step's loss, and under MultiWorkerMirroredStrategy it reported every other metric summed
over the workers, twice its value.)

Inference: s_v(i) = max_k sim(U_v[k], e_v(i)) / tau_rec and s(i) = w s_id(i) + (1 - w) s_mm(i),
except items never seen in training (cold), scored s_mm(i).
"""

import dataclasses
import math
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from bivrec_tf.config import Config, ModelConfig
from bivrec_tf.layers import (
  AllocationStats,
  IdTower,
  InterestDecomposition,
  MultiScaleInterestEmbedding,
  MultimodalTower,
  SemanticHead,
  allocation_cka_loss,
  allocation_loss,
  interest_similarity,
  paired_users,
  item_alignment_loss,
  ensemble_distillation_loss,
  guided_distillation_loss,
  batch_guided_distillation_loss,
  discounted_teacher_weights,
  judged_teacher_weights,
  weighted_distillation_loss,
  soft_guided_distillation_loss,
  mutual_distillation_loss,
  non_target_distillation_loss,
  semantic_loss,
)
from bivrec_tf.layers.patching import padded_length

FIRST_ITEM = 2  # 0 = padding, 1 = out-of-vocabulary


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class ViewEncoder(tf.keras.layers.Layer):
  """One view: item tower, module 1, then module 2 or the most-recent-item read-out.

  Args:
    tower: the view's item tower (`IdTower` or `MultimodalTower`).
    model_config: the run's ModelConfig (modules 1-2 and the read-out are built from it).
    max_len: history length L.
  Call: `history` int `[B, L']` (right-aligned, 0 = padding; ids < 2 are ignored)
    -> (U `[B, K, d]` (unit-norm for cosine similarity), A `[B, T, K]`, valid bool `[B, T]`).
  With `adaptive_interests` a user's slots beyond their K_u (`active_interests`) hold copies of
  interest 0, which leaves every max over interests what it is over the K_u alone.
  With `global_query` U is u_k + g: the user's (unit-norm) interests plus the query every user
  shares (`personal` recovers the u_k).
  Histories longer than `max_len` keep their most recent `max_len` items. With
  `readout="last"` (one token per item) U is the last token's encoding, the most recent item's
  (K = 1), and A gives every valid token to that one interest.
  """

  def __init__(
    self, tower: tf.keras.layers.Layer, model_config: ModelConfig, max_len: int, **kwargs
  ):
    super().__init__(**kwargs)
    m = model_config
    self.tower = tower
    self.model_config = m
    self.max_len = max_len
    self.patch_sizes = m.patch_sizes
    self.normalize = m.similarity == "cosine"
    self.readout = m.readout
    self.content_keys = m.interest_keys == "content"
    self.adaptive = m.adaptive_interests
    self.num_interests = m.num_interests
    # g `[d]` (config `global_query`): the query every user shares, added to each interest
    self.global_query = (
      self.add_weight(name="global_query", shape=(m.dim,), initializer="zeros")
      if m.global_query
      else None
    )
    self.interest_embedding = MultiScaleInterestEmbedding(
      m.dim,
      m.patch_sizes,
      max_len,
      m.encoder_layers,
      m.num_heads,
      m.dropout,
      m.patch_mode,
      m.causal,
      name="interest_embedding",
    )
    # The "last" read-out replaces module 2: no interest weights that nothing would use.
    self.interest_decomposition = (
      None
      if m.readout == "last"
      else InterestDecomposition(
        m.dim,
        m.num_interests,
        m.gaussian_prior,
        m.sigma_init,
        m.cluster_rounds,
        m.prior_mode,
        m.interest_init,
        m.interest_values,
        m.recent_interest,
        name="interest_decomposition",
      )
    )

  def _align(self, history):
    """Keeps the last max_len items; left-pads to a multiple of max(patch_sizes)."""
    history = history[:, -self.max_len :]
    length = history.shape[1]
    if length is not None:
      target = padded_length(length, self.patch_sizes)
      return tf.pad(history, [[0, 0], [target - length, 0]])
    step = max(self.patch_sizes)
    pad = (-tf.shape(history)[1]) % step
    return tf.pad(history, [[0, 0], [pad, 0]])

  def embed(self, item_ids, table=None):
    """Tower output `[..., d]`; read from `table` `[V, d]` (the tower applied to every item, see
    `BivRecModel.loss_parts`) when given."""
    return self.tower(item_ids) if table is None else tf.gather(table, item_ids)

  def item_vectors(self, item_ids, table=None):
    """Candidate-side embeddings `[..., d]`, unit-norm for cosine similarity."""
    e = self.embed(item_ids, table)
    return tf.math.l2_normalize(e, axis=-1) if self.normalize else e

  def call(self, history, training=False, table=None):
    history = self._align(tf.cast(history, tf.int64))
    mask = history >= FIRST_ITEM
    h, tau, valid, keys = self._tokens(self.embed(history, table), mask, training)
    if self.interest_decomposition is None:  # readout "last": T = L', the most recent item last
      u, a = h[:, -1:], tf.cast(valid, h.dtype)[..., None]
    else:
      u, a = self.interest_decomposition(h, tau, valid, keys=keys)
    if self.normalize:
      u = tf.math.l2_normalize(u, axis=-1)
    if self.adaptive:  # after the normalisation: the copies are exact
      u = tf.where(self._active(mask)[..., None], u, u[:, :1])
    if self.global_query is not None:
      u = u + self.global_query
    return u, a, valid

  def personal(self, u):
    """The user's own interests `[B, K, d]` of the queries `u` this encoder returns: u - g with
    a global query, else u (what the interest diagnostics compare)."""
    return u if self.global_query is None else u - self.global_query

  def _active(self, mask):
    """MIND's K_u = max(1, min(K, floor(log2 n))) of each user's n valid items (`mask` bool
    `[B, L']`) -> bool `[B, K]`, True for the first K_u interests."""
    n = tf.reduce_sum(tf.cast(mask, tf.float32), axis=1)
    k_u = tf.floor(tf.math.log(tf.maximum(n, 1.0)) / math.log(2.0) + 1e-6)
    k_u = tf.clip_by_value(k_u, 1.0, float(self.num_interests))
    return tf.range(self.num_interests, dtype=tf.float32)[None, :] < k_u[:, None]

  def active_interests(self, history):
    """Which of a user's K interests are their own, bool `[B, K]`: the first K_u with
    `adaptive_interests`, else all (history int `[B, L']`, as for `call`)."""
    history = self._align(tf.cast(history, tf.int64))
    if not self.adaptive:
      return tf.ones([tf.shape(history)[0], self.num_interests], tf.bool)
    return self._active(history >= FIRST_ITEM)

  def _tokens(self, item_emb, mask, training=False):
    """Module 1: (h `[B, T, d]`, tau `[T]`, valid `[B, T]`, keys: the tokens module 2's attention
    reads, `[B, T, d]` without recency with interest_keys "content", else None (= h))."""
    if self.content_keys:
      return self.interest_embedding(item_emb, mask, training=training, content=True)
    return (*self.interest_embedding(item_emb, mask, training=training), None)

  def seeding_attention(self, history):
    """Module 2's seeding attention, for diagnostics: (alpha `[B, K, T]`, each interest's softmax
    over the valid tokens; valid bool `[B, T]`), or None with the "last" read-out (inference
    mode)."""
    if self.interest_decomposition is None:
      return None
    history = self._align(tf.cast(history, tf.int64))
    h, tau, valid, keys = self._tokens(self.embed(history), history >= FIRST_ITEM)
    _, alpha = self.interest_decomposition.gaussian(h, tau, valid, return_attention=True, keys=keys)
    return alpha, valid

  def get_config(self):
    return {
      **super().get_config(),
      "tower": tf.keras.layers.serialize(self.tower),
      "model_config": dataclasses.asdict(self.model_config),
      "max_len": self.max_len,
    }

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    tower = tf.keras.layers.deserialize(config.pop("tower"))
    fields = {
      k: tuple(v) if isinstance(v, list) else v for k, v in config.pop("model_config").items()
    }
    return cls(tower, ModelConfig(**fields), **config)


class BivRecModel(tf.keras.Model):
  """The full model. Training batches: {"history" `[B, L]`, "target" `[B]`, "negatives" `[S]`}.

  Args:
    config: the run's Config (model + loss sections are read).
    vocab_size: V (items + 2).
    features / present: modality -> `[V, D_m]` float / `[V]` bool (needed if the MM view is on).
    item_counts: `[V]` train-target counts, for logQ correction of the sampled candidates.
    seen_in_train: `[V]` bool; unseen (cold) items are scored by the MM view alone when fused.
    max_len: history length L.
  """

  def __init__(
    self,
    config: Config,
    vocab_size: int,
    max_len: int,
    features: Optional[Dict[str, np.ndarray]] = None,
    present: Optional[Dict[str, np.ndarray]] = None,
    item_counts: Optional[np.ndarray] = None,
    seen_in_train: Optional[np.ndarray] = None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.config = config
    self.vocab_size = vocab_size
    self.max_len = max_len
    self.view_names = tuple(v for v in ("id", "mm") if v in config.model.views)
    m = config.model
    self.views = {}
    for v in self.view_names:
      tower = (
        IdTower(vocab_size, m.dim, name="id_tower")
        if v == "id"
        else MultimodalTower.from_tables(
          features,
          present,
          m.for_view("mm").dim,
          fusion=m.mm_fusion,
          fusion_hidden=m.mm_fusion_hidden,
          name="mm_tower",
        )
      )
      self.views[v] = ViewEncoder(tower, m.for_view(v), max_len, name=f"{v}_view")
    self.cross_view = len(self.view_names) == 2
    lc = config.loss
    # The contrastive L_sem's heads exist only when that loss trains them.
    self.contrast_heads = (
      self.cross_view and "contrast" in lc.sem_mode.split("+") and lc.lambda_sem > 0
    )
    if self.contrast_heads:
      self.semantic_heads = {v: SemanticHead(m.dim, name=f"semantic_{v}") for v in self.view_names}
    # sem_mode "val_guided": each view's validation NDCG@monitor_k (ID, MM), set by the validation
    # callback after every epoch (equal until then: mutual distillation; 0 with guide_wait, whose
    # judged directions stay silent until then); saved with the weights
    self.view_quality = self._guide("val_guided", 0.0 if lc.guide_wait else 1.0, "view_quality")
    # sem_mode "probe_guided": the moving average of each direction's alignment (to ID, to MM),
    # written by the `TeachingProbe` callback; 1 (teach) until the first probe; saved with the weights
    self.teach_alignment = self._guide("probe_guided", 1.0, "teach_alignment")
    # Optimizer steps per epoch, which `loss.sem_decay_epochs` counts in; `train.run` sets it
    # before `fit` traces the step (None: no decay)
    self.steps_per_epoch: Optional[int] = None
    counts = (
      np.zeros(vocab_size, np.float64)
      if item_counts is None
      else np.asarray(item_counts, np.float64)
    )
    popularity = counts / max(counts.sum(), 1.0)
    self.popularity = tf.constant(popularity, tf.float32)
    seen = np.ones(vocab_size, bool) if seen_in_train is None else np.asarray(seen_in_train, bool)
    self.cold = tf.constant(~seen, tf.bool)
    self.trackers = {name: tf.keras.metrics.Mean(name=name) for name in self._metric_names()}

  def _guide(self, mode: str, initial: float, name: str) -> Optional[tf.Variable]:
    """The `[2]` (ID, MM) non-trainable variable a guided L_sem `mode` reads, when that mode is on
    and trains (a cross-view model, lambda_sem > 0); else None."""
    lc = self.config.loss
    if not (self.cross_view and mode in lc.sem_mode.split("+") and lc.lambda_sem > 0):
      return None
    return tf.Variable([initial, initial], trainable=False, name=name)

  def _metric_names(self):
    names = ["loss"] + [f"rec_{v}" for v in self.view_names]
    if self.cross_view:
      names += ["sem"] if self.contrast_heads or self.config.loss.sem_mode != "contrast" else []
      names += ["alloc"] + (["joint"] if self.config.loss.lambda_joint > 0 else [])
      names += ["mix"] if self.config.loss.lambda_mix > 0 else []
    names += [f"{stat}_{v}" for v in self.view_names for stat in ("cos", "entropy", "interests")]
    return names

  @property
  def metrics(self):
    return list(self.trackers.values())

  def build_all(self):
    """Creates every variable now (with a dummy batch), e.g. inside `strategy.scope()`: variables
    must not first appear inside a distributed step, and BackupAndRestore needs a built model."""
    history = tf.zeros([2, self.max_len], tf.int64)
    ids = tf.constant([FIRST_ITEM, FIRST_ITEM], tf.int64)
    self.compute_losses({"history": history, "target": ids, "negatives": ids})
    self(history)  # through Keras's __call__, which marks the model built

  def call(self, history, training=False):
    """history `[B, L]` -> {view: (U `[B, K, d]`, A `[B, T, K]`, valid `[B, T]`)}."""
    return {v: enc(history, training=training) for v, enc in self.views.items()}

  def _sampling_probability(self, candidate_ids, batch_size, num_sampled):
    """Expected share of candidate slots taken by each item: in-batch positives follow the
    train-target distribution, sampled negatives are uniform over the catalogue."""
    b = tf.cast(batch_size, tf.float32)
    s = tf.cast(num_sampled, tf.float32)
    uniform = 1.0 / float(self.vocab_size - FIRST_ITEM)
    pop = tf.gather(self.popularity, candidate_ids)
    return tf.maximum((b * pop + s * uniform) / (b + s), 1e-12)

  @staticmethod
  def global_candidates(target, negatives):
    """Candidate ids `[B_global + S]`: every replica's positives, this replica's first (so query i
    matches candidate i), then the batch's sampled negatives (split across replicas by tf.data
    and gathered back here). On one device: `concat(target, negatives)`. Returns (ids, B_global).
    Only ids cross replicas; each replica embeds the candidates itself, so the summed gradients
    equal the single-device gradients of the same global batch."""
    positives = gather_replicas(target)
    return tf.concat([positives, gather_replicas(negatives, local_first=False)], axis=0), (
      tf.shape(positives)[0]
    )

  def compute_losses(self, batch, training=False):
    """Per-example loss terms `[B]` and diagnostics. Returns (total `[B]`, {name: `[B]`})."""
    parts, terms = self.loss_parts(batch, training=training)
    return tf.add_n(list(parts.values())), terms

  def _logits(self, scores, candidates, probs):
    """Retrieval logits `[B, C]` from view scores `[B, C]` (max over interests / tau_rec), as the
    Retrieval task forms them: logQ correction, accidental hits removed."""
    scores = tfrs.layers.loss.SamplingProbablityCorrection()(scores, probs)
    labels = tf.eye(tf.shape(scores)[0], tf.shape(scores)[1])
    return tfrs.layers.loss.RemoveAccidentalHits()(labels, scores, candidates)

  @staticmethod
  def _retrieval_loss(logits):
    """Per-example softmax cross-entropy `[B]`; row i's positive is candidate i."""
    labels = tf.eye(tf.shape(logits)[0], tf.shape(logits)[1])
    return tf.nn.softmax_cross_entropy_with_logits(labels, logits)

  def _scores(self, view, u, candidates, table=None):
    vectors = self.views[view].item_vectors(candidates, table)
    return self._route(u, vectors, self.config.model.tau_rec)

  def _route(self, u, vectors, tau, routing=None):
    """Training scores `[B, C]` of queries u `[B, K, d]` against candidate vectors `[C, d]`
    (row i's positive is candidate i). routing "max": max over interests for every candidate;
    "target": the interest closest to the row's target scores every candidate (ComiRec/MIND's
    label-aware read-out; inference keeps the max); "lse": t log sum_k exp(s_k / t), a soft max
    whose gradient reaches every interest by its softmax weight (inference keeps the max)."""
    routing = routing or self.config.model.routing
    if routing in ("max", "max+target"):
      return view_scores(u, vectors, tau, argmax_gradient=True)
    if routing == "lse":  # t log sum_k exp(s_k / t): every interest gets gradient
      t = self.config.model.routing_temperature
      return t * tf.reduce_logsumexp(interest_scores(u, vectors) / tau / t, axis=1)
    target = vectors[: tf.shape(u)[0]]  # [B, d]
    pick = tf.argmax(tf.einsum("bkd,bd->bk", u, target), axis=-1)  # [B]
    chosen = tf.gather(u, pick, axis=1, batch_dims=1)  # [B, d]
    return tf.matmul(chosen, vectors, transpose_b=True) / tau

  def loss_parts(self, batch, training=False, ungated=False, fused_term=False):
    """({term: weighted per-example loss `[B]`}, {name: raw term or diagnostic `[B]`}). The total
    loss is the sum of the first dict; `gradient_shares` differentiates its entries one by one.
    `ungated`: "probe_guided" distils as "mutual" (both directions at 1/2), what
    `teaching_alignment` measures. `fused_term` (two views): also the term "rec_fused", the
    retrieval loss on the views' mean logits (the score-level fusion at w = 1/2)."""
    history = tf.convert_to_tensor(batch["history"])
    target = tf.cast(batch["target"], tf.int64)
    negatives = tf.cast(batch.get("negatives", tf.zeros([0], tf.int64)), tf.int64)
    candidates, num_positives = self.global_candidates(target, negatives)
    probs = self._sampling_probability(
      candidates, num_positives, tf.shape(candidates)[0] - num_positives
    )
    # A tower that is more than a lookup (the MM view) is applied once to the whole catalogue when
    # that is fewer items than the batch's history slots and candidates, then read by index:
    # the same values, a fraction of the work (B L + C tower calls -> V).
    slots = int(history.shape[0] or 0) * int(history.shape[1] or 0)
    tables = {
      v: self.views[v].tower(tf.range(self.vocab_size, dtype=tf.int64))
      if v == "mm" and 0 < self.vocab_size <= slots
      else None
      for v in self.view_names
    }
    histories = self._training_histories(history, training)
    outputs = {
      v: enc(histories[v], training=training, table=tables[v]) for v, enc in self.views.items()
    }
    lc = self.config.loss
    terms, parts = {}, {}
    logits, vectors_of = {}, {}
    for v, (u, a, valid) in outputs.items():
      # Formed once per view; the cross-view terms reuse them (scoring is the step's main cost).
      tau = self.config.model.tau_rec
      vectors = self.views[v].item_vectors(candidates, tables[v])  # [C, d], once per view
      vectors_of[v] = vectors
      logits[v] = self._logits(self._route(u, vectors, tau), candidates, probs)
      terms[f"rec_{v}"] = parts[f"rec_{v}"] = self._retrieval_loss(logits[v])
      if self.config.model.routing == "max+target":  # + the label-aware term (ComiRec/MIND)
        routed = self._route(u, vectors, tau, "target")
        parts[f"route_{v}"] = self._retrieval_loss(self._logits(routed, candidates, probs))
      stats = AllocationStats(a, valid)
      own = self.views[v].personal(u)  # the user's interests without the global query
      terms[f"entropy_{v}"] = stats.token_entropy
      terms[f"interests_{v}"] = stats.effective_interests
      if self.config.model.adaptive_interests:  # the cosine over users with >= 2 interests
        active = self.views[v].active_interests(histories[v])
        cos, cos_sq = interest_similarity(own, lc.div_margin, active)
        paired = tf.cast(paired_users(active), cos.dtype)
        mean = tf.reduce_sum(cos * paired) / tf.maximum(tf.reduce_sum(paired), 1.0)
        terms[f"cos_{v}"] = tf.fill(tf.shape(cos), mean)
      else:
        terms[f"cos_{v}"], cos_sq = interest_similarity(own, lc.div_margin)
      if lc.lambda_div > 0:
        parts[f"div_{v}"] = lc.lambda_div * cos_sq
      if lc.lambda_centre > 0:  # the direction all users' interests share belongs in g_v
        shared = tf.reduce_mean(own, axis=[0, 1])  # [d]
        parts[f"centre_{v}"] = tf.fill(
          tf.shape(target), lc.lambda_centre * tf.reduce_sum(shared**2)
        )
    if fused_term and len(logits) == 2:
      terms["rec_fused"] = self._retrieval_loss((logits["id"] + logits["mm"]) / 2.0)
    if self.cross_view:
      (u_id, a_id, valid), (u_mm, a_mm, _) = outputs["id"], outputs["mm"]
      sem = [
        self._semantic_term(mode, u_id, u_mm, target, candidates, probs, logits, ungated)
        for mode in lc.sem_mode.split("+")
        if mode != "contrast" or self.contrast_heads
      ]  # lambda_sem = 0: no heads, no term
      if sem:
        terms["sem"] = tf.add_n(sem)
      if histories["id"] is not histories["mm"]:  # views read different items: compare the shared
        valid = valid & outputs["mm"][2]
        a_id, a_mm = (a * tf.cast(valid, a.dtype)[..., None] for a in (a_id, a_mm))
      alloc = allocation_cka_loss if lc.alloc_mode == "cka" else allocation_loss
      terms["alloc"] = alloc(a_id, a_mm, valid)
      if lc.lambda_sem > 0 and "sem" in terms:
        parts["sem"] = lc.lambda_sem * self._sem_ramp(training) * terms["sem"]
      if lc.lambda_alloc > 0:
        parts["alloc"] = lc.lambda_alloc * terms["alloc"]
      if lc.lambda_joint > 0:  # interest k of both views predicts the target together
        joint = interest_fused_scores(
          interest_scores(u_id, vectors_of["id"]),
          interest_scores(u_mm, vectors_of["mm"]),
          0.5,
          self.config.model.tau_rec,
          argmax_gradient=True,
        )
        terms["joint"] = self._retrieval_loss(self._logits(joint, candidates, probs))
        parts["joint"] = lc.lambda_joint * terms["joint"]
      if lc.lambda_mix > 0:  # the two views as a mixture of experts for the target
        terms["mix"] = mixture_loss(terms["rec_id"], terms["rec_mm"])
        parts["mix"] = lc.lambda_mix * terms["mix"]
    return parts, terms

  def _training_histories(self, history, training):
    """{view: history `[B, L]`} each view reads: `history` itself, or while training with
    `history_dropout` p > 0 a copy where each item but the most recent (last column) became
    padding with probability p; one draw per view ("independent") or one for both ("shared").
    The draws are stateless, from (seed, view, replica, optimizer step): reproducible, and the
    same on CPU, GPU and under XLA."""
    m = self.config.model
    if not training or m.history_dropout <= 0 or self.optimizer is None:
      return {v: history for v in self.view_names}
    step = tf.cast(self.optimizer.iterations, tf.int64)
    replica = tf.distribute.get_replica_context()
    replica = tf.cast(0 if replica is None else replica.replica_id_in_sync_group, tf.int64)
    draws = 1 if m.history_dropout_views == "shared" else len(self.view_names)
    out = []
    for i in range(draws):
      seed = tf.stack(
        [tf.constant(self.config.train.seed * 16 + i, tf.int64), step * 1024 + replica]
      )
      keep = tf.random.stateless_uniform(tf.shape(history), seed) >= m.history_dropout
      keep = tf.concat([keep[:, :-1], tf.ones_like(keep[:, -1:])], axis=1)  # the most recent stays
      out.append(tf.where(keep, history, tf.zeros_like(history)))
    return {v: out[min(i, draws - 1)] for i, v in enumerate(self.view_names)}

  def _sem_ramp(self, training):
    """The L_sem weight's schedule while training (1 otherwise), from the optimizer's step count:
    min(1, step / sem_warmup_steps) (distilling from a view that has not learned yet is noise, so
    the weight grows over the first steps), times max(0, 1 - step / (sem_decay_epochs *
    steps_per_epoch)) (teach, then let each view specialise); each factor 1 when its setting
    is 0."""
    warmup = self.config.loss.sem_warmup_steps
    decay = self.config.loss.sem_decay_epochs * float(self.steps_per_epoch or 0)
    if not training or (warmup <= 0 and decay <= 0) or self.optimizer is None:
      return 1.0
    step = tf.cast(self.optimizer.iterations, tf.float32)
    ramp = tf.minimum(1.0, step / float(warmup)) if warmup > 0 else 1.0
    if decay > 0:
      ramp *= tf.maximum(0.0, 1.0 - step / decay)
    return ramp

  def _semantic_term(self, mode, u_id, u_mm, target, candidates, probs, logits, ungated=False):
    """One L_sem variant (config `sem_mode`; several joined by '+' are summed), per example.
    `logits`: {view: `[B, C]`} the retrieval logits of each view."""
    lc = self.config.loss
    if mode == "probe_guided":  # a judged direction teaches while its alignment average is
      # above loss.probe_margin (with loss.probe_ramp > 0: by a weight that rises linearly from
      # 0 to 1 over [margin - ramp / 2, margin + ramp / 2], so an average that hovers near the
      # margin does not switch the whole term on and off)
      gate = tf.ones([2])
      if self.teach_alignment is not None and not ungated:
        average = tf.stop_gradient(self.teach_alignment)
        if lc.probe_ramp > 0:
          gate = tf.clip_by_value((average - lc.probe_margin) / lc.probe_ramp + 0.5, 0.0, 1.0)
        else:
          gate = tf.cast(average > lc.probe_margin, tf.float32)
      to_id, to_mm = judged_teacher_weights(gate[0], gate[1], lc.guide_students)
      return weighted_distillation_loss(logits["id"], logits["mm"], to_id, to_mm, lc.tau_kd)
    if mode == "contrast":
      g_id, g_mm = self.semantic_heads["id"](u_id), self.semantic_heads["mm"](u_mm)
      # Contrast against the whole global batch (the gather passes gradients back).
      return semantic_loss(g_id, g_mm, lc.tau_c, gather_replicas(g_id), gather_replicas(g_mm))
    if mode == "mutual":
      return mutual_distillation_loss(logits["id"], logits["mm"], lc.tau_kd, lc.sem_to_mm)
    if mode == "mutual_nt":
      return non_target_distillation_loss(logits["id"], logits["mm"], lc.tau_kd)
    if mode == "ensemble":
      return ensemble_distillation_loss(logits["id"], logits["mm"], lc.tau_kd)
    if mode == "guided":
      return guided_distillation_loss(logits["id"], logits["mm"], lc.tau_kd)
    if mode == "soft_guided":
      return soft_guided_distillation_loss(logits["id"], logits["mm"], lc.tau_kd)
    if mode == "batch_guided":
      return batch_guided_distillation_loss(
        logits["id"], logits["mm"], lc.tau_kd, lc.guide_power, lc.guide_margin, lc.guide_students
      )
    if mode == "val_guided":  # weights from each view's last validation NDCG (the callback's)
      # (lambda_sem = 0 builds no variable: the term is then a diagnostic, at mutual's weights)
      q = tf.ones([2]) if self.view_quality is None else tf.convert_to_tensor(self.view_quality)
      q = tf.stop_gradient(q)
      # guide_wait: the judged directions teach only once both views have been validated
      seen = tf.cast(tf.reduce_all(q > 0), q.dtype) if lc.guide_wait else 1.0
      to_id, to_mm = discounted_teacher_weights(
        q[0], q[1], lc.guide_power, lc.guide_margin, lc.guide_students, seen
      )
      return weighted_distillation_loss(logits["id"], logits["mm"], to_id, to_mm, lc.tau_kd)
    if mode == "item":
      # Per candidate [C]; averaged over the batch's rows so the term is per example [B].
      per_item = item_alignment_loss(
        tf.math.l2_normalize(self.views["id"].tower(candidates), axis=-1),
        tf.math.l2_normalize(self.views["mm"].tower(candidates), axis=-1),
        candidates,
        lc.tau_c,
      )
      return tf.fill(tf.shape(target), tf.reduce_mean(per_item))
    if mode == "fused":  # the fusion rule's scores (w = 1/2) trained end to end
      fused = 0.5 * (self._scores("id", u_id, candidates) + self._scores("mm", u_mm, candidates))
      return self._retrieval_loss(self._logits(fused, candidates, probs))
    # "cross": each view's interests against the other view's item vectors
    tau = self.config.model.tau_rec
    out = 0.0
    for u, other in ((u_id, "mm"), (u_mm, "id")):
      cross = self._logits(
        self._route(u, self.views[other].item_vectors(candidates), tau), candidates, probs
      )
      out += 0.5 * self._retrieval_loss(cross)
    return out

  def gradient_shares(self, batch, norms_fn=None) -> Dict[str, float]:
    """Each loss term's share of the gradient norm on each view's encoder (item tower and
    modules 1-2): {"gshare_<term>_<view>": ||grad lambda_j L_j|| / sum_j ||grad lambda_j L_j||}.
    One batch, inference mode (no dropout), outside any distribution strategy. `norms_fn`:
    `gradient_norms` itself (the default) or a compiled copy of it (the per-epoch callback keeps
    a `WarmCompiled(model.gradient_norms, ...)`)."""
    norms = (norms_fn or self.gradient_norms)(batch)
    out = {}
    for v in self.views:
      per_term = {name: float(n) for name, n in norms[v].items()}
      total = sum(per_term.values()) or 1.0
      out.update({f"gshare_{name}_{v}": n / total for name, n in per_term.items()})
    return out

  def gradient_norms(self, batch) -> Dict[str, Dict[str, tf.Tensor]]:
    """{view: {term: ||grad of the batch mean of lambda_j L_j on the view's encoder||} (0 for a
    term that does not reach the view), inference mode; `gradient_shares` normalises them."""
    with tf.GradientTape(persistent=True) as tape:
      parts, _ = self.loss_parts(batch, training=False)
      losses = {name: tf.reduce_mean(value) for name, value in parts.items()}
    out = {}
    for v, encoder in self.views.items():
      variables = encoder.trainable_variables
      out[v] = {}
      for name, loss in losses.items():
        grads = [g for g in tape.gradient(loss, variables) if g is not None]
        grads = [tf.convert_to_tensor(g) for g in grads]
        out[v][name] = tf.linalg.global_norm(grads) if grads else tf.constant(0.0)
    del tape
    return out

  def teaching_alignment(self, batch, held, fused=False) -> Dict[str, tf.Tensor]:
    """How well each view's teaching agrees with held-out data, first order, inference mode.

    Args: batch: a training batch; held: a batch of the same form from validation examples.
    Returns {"align_<v>": cos(grad L_sem(batch), grad L_rec_v(held)), "align_rec_<v>":
    cos(grad L_rec_v(batch), grad L_rec_v(held)), "align_new_<v>" (below), "gap_<v>":
    L_rec_v(held) - L_rec_v(batch)}, scalars (the gradients on view v's encoder: item tower and
    modules 1-2). With the distillation forms
    L_sem reaches v's encoder only through the direction v learns in (the teacher is
    stop-gradient), so `align_v` > 0 says a step on what the other view teaches also lowers v's
    loss on users it was not trained on; `align_rec_v` is the same for v's own training loss, the
    scale to read it against. Under teaching the two gradients on the training batch settle
    against each other (align_v ~ -align_rec_v while the views distil), so "align_new_<v>" is
    the cosine of the teaching and the held-out gradient after projecting v's training retrieval
    gradient out of both: what the teacher adds beyond pulling v back from its own training loss,
    and whether that agrees with held-out users ("probe_guided" gates on it by default).
    `fused` adds "align_fused_<v>": the same projected cosine with the held-out gradient of the
    *fused* retrieval loss (mean logits, `loss_parts`' "rec_fused") on v's encoder instead of v's
    own: whether the teaching helps the two views' fusion on held-out users, which a student
    made more like its teacher need not (probe_signal "fused"). The
    probe reads "probe_guided" ungated (both directions at mutual's weight). Empty without a
    cross-view L_sem. Called in a replica context (`strategy.run`, batches distributed over the
    replicas) it returns on every replica the values of the whole global batches."""
    with tf.GradientTape(persistent=True) as tape:
      parts, _ = self.loss_parts(batch, training=False, ungated=True)
      held_parts, held_terms = self.loss_parts(held, training=False, fused_term=fused)
      losses = {name: tf.reduce_mean(value) for name, value in parts.items()}
      held_losses = {name: tf.reduce_mean(value) for name, value in held_parts.items()}
      if fused:
        held_losses["rec_fused"] = tf.reduce_mean(held_terms["rec_fused"])
    out = {}
    if "sem" not in losses:
      return out
    # Inside `strategy.run` each replica holds a shard of both batches: its gradients are summed
    # over the replicas (the global batch's, times the number of replicas: cosines do not see the
    # factor) and its mean losses averaged, so every replica computes the one-device values.
    ctx = tf.distribute.get_replica_context()
    replicas = 1 if ctx is None else ctx.num_replicas_in_sync

    def summed(grads, variables):
      if replicas == 1:
        return grads
      dense = [
        tf.zeros_like(var) if g is None else tf.convert_to_tensor(g)
        for g, var in zip(grads, variables)
      ]
      return ctx.all_reduce(tf.distribute.ReduceOp.SUM, dense)

    def mean(x):
      return x if replicas == 1 else ctx.all_reduce(tf.distribute.ReduceOp.MEAN, x)

    for v, encoder in self.views.items():
      variables = encoder.trainable_variables
      names = [("sem", losses), (f"rec_{v}", losses), (f"rec_{v}", held_losses)]
      if fused:
        names.append(("rec_fused", held_losses))
      # 0: the teaching, 1: v's retrieval loss, 2: the same held out, 3: the fused one held out
      gram = gradient_gram(
        *(summed(tape.gradient(src[name], variables), variables) for name, src in names)
      )
      norms = tf.sqrt(tf.linalg.diag_part(gram))
      out[f"align_{v}"] = tf.math.divide_no_nan(gram[0, 2], norms[0] * norms[2])
      out[f"align_rec_{v}"] = tf.math.divide_no_nan(gram[1, 2], norms[1] * norms[2])
      out[f"align_new_{v}"] = partial_cosine(gram, 0, 2, 1)
      if fused:
        out[f"align_fused_{v}"] = partial_cosine(gram, 0, 3, 1)
      out[f"gap_{v}"] = mean(held_losses[f"rec_{v}"] - losses[f"rec_{v}"])
    del tape
    return out

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=False):
    """The training loss of batch `x` ({"history", "target", "negatives"}; the model reads the
    whole batch, so `y`, `y_pred` and `sample_weight` of Keras's signature are unused): the
    per-example total summed over this replica's examples and divided by the *global* batch
    size (the replicas' gradients are summed), so the loss does not change with the number of
    replicas. Updates the metrics: epoch means of the total (`loss`) and of each term and
    diagnostic."""
    del y, y_pred, sample_weight
    total, terms = self.compute_losses(x, training=training)
    self.trackers["loss"].update_state(total)
    for name, value in terms.items():
      self.trackers[name].update_state(value)
    return tf.nn.compute_average_loss(total)

  def train_step(self, data):
    with tf.GradientTape() as tape:
      loss = self.compute_loss(data, training=True)
    grads = tape.gradient(loss, self.trainable_variables)
    grads = [dense_if_small(g, v) for g, v in zip(grads, self.trainable_variables)]
    self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    return {m.name: m.result() for m in self.metrics}

  def test_step(self, data):
    self.compute_loss(data)
    return {m.name: m.result() for m in self.metrics}

  # --- inference -----------------------------------------------------------------------------

  def queries(self, history):
    """{view: U `[B, K, d]`} for ranking (inference mode)."""
    return {v: enc(history, training=False)[0] for v, enc in self.views.items()}

  def item_table(self, view: str, chunk: int = 200_000) -> tf.Tensor:
    """All items' candidate vectors for one view, `[V, d]` (computed in chunks)."""
    encoder = self.views[view]
    parts = [
      encoder.item_vectors(tf.range(start, min(start + chunk, self.vocab_size), dtype=tf.int64))
      for start in range(0, self.vocab_size, chunk)
    ]
    return tf.concat(parts, axis=0)


def gradient_gram(*gradients) -> tf.Tensor:
  """`[n, n]` dot products of n gradients, each a list over the same variables (None = zero;
  sparse gradients are densified)."""
  dense = [[None if g is None else tf.convert_to_tensor(g) for g in grads] for grads in gradients]

  def dot(a, b):
    terms = [tf.reduce_sum(x * y) for x, y in zip(a, b) if x is not None and y is not None]
    return tf.add_n(terms) if terms else tf.constant(0.0)

  return tf.stack([tf.stack([dot(a, b) for b in dense]) for a in dense])


def partial_cosine(gram, i: int, j: int, k: int) -> tf.Tensor:
  """Cosine of gradients i and j of a `gradient_gram` after projecting gradient k out of both:
  how far i and j agree beyond what they share with k (0 when either lies along k)."""
  kk = tf.maximum(gram[k, k], 1e-30)
  ij = gram[i, j] - gram[i, k] * gram[j, k] / kk
  ii = tf.maximum(gram[i, i] - gram[i, k] ** 2 / kk, 0.0)
  jj = tf.maximum(gram[j, j] - gram[j, k] ** 2 / kk, 0.0)
  return tf.math.divide_no_nan(ij, tf.sqrt(ii * jj))


def gather_replicas(x, local_first: bool = True):
  """Concatenates `x` `[b, ...]` over all replicas -> `[b * R, ...]`, identity on one device.

  With `local_first` the result is rotated so this replica's rows come first (row i is still
  local example i). Differentiable: gradients flow back to the replica that owns each row.
  """
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return x
  # all_gather as a padded all_reduce: ReplicaContext.all_gather fails under
  # MultiWorkerMirroredStrategy in TF 2.21 ("destinations can not be empty"); the all_reduce of
  # SUM is differentiable everywhere. Every replica has the same b (drop_remainder batches).
  r, n, b = ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync, tf.shape(x)[0]
  pad = [[r * b, (n - 1 - r) * b]] + [[0, 0]] * (len(x.shape) - 1)
  gathered = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.pad(x, pad))
  if not local_first:
    return gathered
  return tf.roll(gathered, -r * b, axis=0)


def view_scores(queries, table, tau_rec: float, argmax_gradient: bool = False):
  """s_v = max_k <U[k], e(i)> / tau_rec. queries `[B, K, d]`, table `[N, d]` -> `[B, N]`.

  argmax_gradient (training): the max is read out through a stop-gradient one-hot of the argmax,
  so the gradient goes to the winning interest of each (user, item) pair, as tf.reduce_max's
  does away from exact ties (at a tie it goes to the first winner instead of being split; the
  tied interests of one user are then the same function of the weights, e.g. a one-item
  history, and their summed gradient is unchanged). Same values; the backward pass is a
  multiply instead of reduce_max's equality mask, tie count, division and transposes, which
  under XLA on CPU cost more than the score einsum itself (docs/performance.md); and it is
  written out (`winner_scores`) so that no `[B, K, N]` tensor is transposed.
  """
  if argmax_gradient:
    return winner_scores(queries, table) / tau_rec
  return max_over_interests(interest_scores(queries, table), tau_rec)


@tf.custom_gradient
def winner_scores(queries, table):
  """max_k <U[k], e(i)>: queries `[B, K, d]`, table `[N, d]` -> `[B, N]`, the gradient to the
  winning interest of each (user, item) pair (the first at a tie), backward written out.

  The backward spreads the upstream `[B, N]` gradient g over the winners once, G = one-hot * g
  `[B, K, N]`, and takes both gradients as matmuls that read G in its own row-major layout:
  dU = G E, and dE = (U^T G)^T, the transpose of a small `[d, N]` product. Autodiff's
  dE = G^T U instead has XLA on CPU write a transposed copy of G (and a second fusion of
  everything that makes g, e.g. the distillation's softmaxes, to fill it); at batch 2048 that
  copy was most of the distillation's cost (docs/performance.md, session 18)."""
  scores = interest_scores(queries, table)
  winner = tf.one_hot(tf.argmax(scores, axis=1), tf.shape(scores)[1], axis=1, dtype=scores.dtype)

  def grad(upstream):
    with tf.name_scope("winner_scores_grad"):  # benchmarks.step_profile counts it as backward
      spread = winner * upstream[:, None, :]  # [B, K, N]
      d_queries = tf.einsum("bkn,nd->bkd", spread, table)
      d_table = tf.transpose(tf.einsum("bkd,bkn->dn", queries, spread))
    return d_queries, d_table

  return tf.reduce_sum(scores * winner, axis=1), grad


def interest_scores(queries, table):
  """<U[k], e(i)> per interest: queries `[B, K, d]`, table `[N, d]` -> `[B, K, N]`."""
  return tf.einsum("bkd,nd->bkn", queries, table)


def interest_fused_scores(s_id, s_mm, w, tau_rec: float, argmax_gradient=False):
  """Interest-level fusion: s(i) = max_k [w <U_id[k], e_id(i)> + (1 - w) <U_mm[k], e_mm(i)>] /
  tau_rec, interest k of the two views scoring an item together (`ModelConfig.fusion`
  "interest"). s_id, s_mm: the views' `interest_scores` `[B, K, N]`; w a scalar -> `[B, N]`. At
  w = 1 or 0 it is `view_scores` of one view; for 0 < w < 1 it is at most the score-level fusion
  `w s_id + (1 - w) s_mm` and equals it where one interest wins in both views."""
  return max_over_interests(w * s_id + (1.0 - w) * s_mm, tau_rec, argmax_gradient)


def mixture_loss(ce_id, ce_mm):
  """-log(p_id(t) / 2 + p_mm(t) / 2) per example `[B]` from the views' cross-entropies
  -log p_v(t) `[B]`. Its gradient on view v is its own cross-entropy's times the responsibility
  p_v(t) / (p_id(t) + p_mm(t)): each view learns most from the examples it already predicts
  better."""
  log_half = tf.math.log(tf.constant(0.5, ce_id.dtype))
  return -tf.reduce_logsumexp(tf.stack([log_half - ce_id, log_half - ce_mm]), axis=0)


def max_over_interests(scores, tau_rec: float, argmax_gradient: bool = False):
  """`[B, K, N]` per-interest scores -> `[B, N]` max over K / tau_rec (argmax_gradient: the
  one-hot read-out of `view_scores`, for scores that are not one view's einsum, e.g. the
  interest-level fusion)."""
  if not argmax_gradient:
    return tf.reduce_max(scores, axis=1) / tau_rec
  winner = tf.one_hot(tf.argmax(scores, axis=1), tf.shape(scores)[1], axis=1, dtype=scores.dtype)
  return tf.reduce_sum(scores * tf.stop_gradient(winner), axis=1) / tau_rec


def dense_if_small(gradient, variable, factor: int = 4):
  """A sparse (`tf.IndexedSlices`) gradient of `variable` `[V, ...]` as a dense tensor when V is
  at most `factor` x its number of rows; anything else unchanged.

  The optimizer sums a sparse gradient's repeated rows before its update (a tf.unique, a sort
  under XLA) and Adam then updates the whole table anyway (its moments decay everywhere), so a
  dense gradient of a table not much larger than the batch's rows is the same update for less
  work (the unique took a fifth of the one-view step, docs/performance.md). Large tables keep
  the sparse gradient, whose all-reduce across replicas is smaller.
  """
  if not isinstance(gradient, tf.IndexedSlices):
    return gradient
  rows, table_rows = gradient.values.shape[0], variable.shape[0]
  if rows is None or table_rows is None or table_rows > factor * rows:
    return gradient
  return tf.convert_to_tensor(gradient)


def fuse_scores(s_id, s_mm, w, cold):
  """s = w s_id + (1 - w) s_mm; cold items (`cold` bool `[N]`) get s_mm alone. -> `[B, N]`."""
  return tf.where(cold[None, :], s_mm, w * s_id + (1.0 - w) * s_mm)


def fuse_interest_scores(s_id, s_mm, w, cold, tau_rec: float):
  """`interest_fused_scores` of the views' `interest_scores` `[B, K, N]`, with cold items (`cold`
  bool `[N]`) scored by the MM view alone, max_k <U_mm[k], e_mm(i)> / tau_rec, as `fuse_scores`
  does. -> `[B, N]`."""
  fused = interest_fused_scores(s_id, s_mm, w, tau_rec)
  return tf.where(cold[None, :], max_over_interests(s_mm, tau_rec), fused)
