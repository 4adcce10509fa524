"""Module 3 — Cross-View Interest Learning: the two alignment losses between the ID and MM views.

Neither loss stops gradients, so each view teaches the other ("bidirectional").

Coarse, overall semantic similarity:
    g_v = normalize(MLP_v(mean_k U_v[k])),  S = g_id g_mm^T / tau_c,
    L_sem = (CE(S, I) + CE(S^T, I)) / 2 over the batch.
Fine, interest allocation similarity (interest indices are not aligned across views, so compare the
permutation-invariant co-allocation C_v = A_v A_v^T `[B, T, T]`, the probability that two tokens
share an interest):
    L_alloc = sum M (C_id - C_mm)^2 / sum M,   M = pairs of valid tokens.

Measured alternatives (config `sem_mode`, `alloc_mode`; docs/model.md has the numbers):
- `sem_mode="mutual"`: the views' next-item distributions over the batch's candidates teach each
  other (mutual distillation): L_sem = T^2 / 2 [CE(sg p_mm^T, p_id^T) + CE(sg p_id^T, p_mm^T)],
  p_v^T = softmax(logits_v / T), sg = stop-gradient (each view is the other's teacher).
- `sem_mode="val_guided"` (e.g. with `guide_margin` m = 0.75, `guide_power` g = 20 and
  `guide_students="id"`): mutual distillation with per-direction weights from each view's
  validation NDCG@20 q of the last epoch (`discounted_teacher_weights`): the MM -> ID direction
  keeps 1/2 while q_mm >= m q_id and gets 1/2 (q_mm / (m q_id))^g below; ID -> MM keeps 1/2.
- `sem_mode="mutual_nt"`: mutual distillation over the *non-target* candidates only (the
  non-target part of decoupled knowledge distillation, Zhao et al. 2022): the target column is
  masked out of both distributions, so each view passes on which negatives look plausible without
  pulling the other's confidence in the target toward its own.
- `sem_mode="ensemble"`: both views distil into the (stop-gradient) distribution of their ensemble,
  p_ens^T = softmax((logits_id + logits_mm) / 2T) (online ensemble distillation): no view is pulled
  toward a teacher weaker than itself, since the teacher is the fused score both are judged by.
- `sem_mode="cross"`: each view's interests predict the target in the other view's item space
  (U_id against e_mm(candidates), U_mm against e_id(candidates)), the retrieval loss itself.
- `sem_mode="fused"`: the retrieval loss on the fused score 1/2 (s_id + s_mm) (the inference rule
  at w = 1/2), so each view is trained on what the other one misses.
- `sem_mode="item"`: the views' item embeddings of the batch's candidates are contrasted, item i's
  ID vector against its MM vector (symmetric InfoNCE, tau_c; duplicates of a candidate are not
  negatives): rare items' ID embeddings borrow the content's geometry, and the MM tower learns
  the collaborative one, which it carries to items it never saw.
- `alloc_mode="cka"`: L_alloc = 1 - CKA(C_id, C_mm) with the co-allocations centred over the valid
  tokens: scale-free, and uniform allocations (centred A = 0) score 1, not 0.

Both losses are returned per example (`[B]`) so the caller can average over the global batch.
"""

import math

import tensorflow as tf

EPS = 1e-9


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class SemanticHead(tf.keras.layers.Layer):
  """`g_v = normalize(MLP_v(mean_k U_v[k]))`. Call: U `[B, K, d]` -> g `[B, d]`."""

  def __init__(self, dim: int, **kwargs):
    super().__init__(**kwargs)
    self.dim = dim
    self.hidden = tf.keras.layers.Dense(dim, activation="gelu", name="hidden")
    self.out = tf.keras.layers.Dense(dim, name="out")

  def call(self, interests):
    return tf.math.l2_normalize(self.out(self.hidden(tf.reduce_mean(interests, axis=1))), axis=-1)

  def get_config(self):
    return {**super().get_config(), "dim": self.dim}


def semantic_loss(g_id, g_mm, tau_c: float, all_id=None, all_mm=None):
  """Symmetric InfoNCE between the views: rows i of CE(S, I) and CE(S^T, I).

  Args:
    g_id, g_mm: `[b, d]` unit vectors of this device's examples.
    tau_c: temperature.
    all_id, all_mm: `[B, d]` the whole batch's vectors with this device's b rows first (under
      data parallelism); default: the local ones.
  Returns: per-example loss `[b]`.
  """
  all_id = g_id if all_id is None else all_id
  all_mm = g_mm if all_mm is None else all_mm
  labels = tf.range(tf.shape(g_id)[0])
  id_to_mm = tf.nn.sparse_softmax_cross_entropy_with_logits(
    labels, tf.matmul(g_id, all_mm, transpose_b=True) / tau_c
  )  # rows of S
  mm_to_id = tf.nn.sparse_softmax_cross_entropy_with_logits(
    labels, tf.matmul(g_mm, all_id, transpose_b=True) / tau_c
  )  # rows of S^T
  return 0.5 * (id_to_mm + mm_to_id)


def co_allocation(allocation):
  """C = A A^T: A `[B, T, K]` -> `[B, T, T]`."""
  return tf.matmul(allocation, allocation, transpose_b=True)


def allocation_loss(alloc_id, alloc_mm, valid):
  """Masked squared distance of co-allocations.

  Args: alloc_id, alloc_mm `[B, T, K_id]`, `[B, T, K_mm]`, zero rows on padded tokens (as
    ClusterAttention returns them); valid bool `[B, T]`.
  Returns: per-example `sum_{t,t'} M (C_id - C_mm)^2 / sum M`, `[B]`.

  Computed without the `[B, T, T]` matrices: with padded rows of A zero, the masked sum equals
  ||C_id - C_mm||_F^2 = ||A_id^T A_id||^2 - 2 ||A_id^T A_mm||^2 + ||A_mm^T A_mm||^2
  (tr(A A^T B B^T) = ||A^T B||_F^2), which costs O(T K^2) per user instead of O(T^2 K).
  """
  m = tf.cast(valid, alloc_id.dtype)
  alloc_id = alloc_id * m[..., None]
  alloc_mm = alloc_mm * m[..., None]

  def gram_sq(a, b):  # ||a^T b||_F^2 per example
    return tf.reduce_sum(tf.square(tf.matmul(a, b, transpose_a=True)), axis=[1, 2])

  diff = (
    gram_sq(alloc_id, alloc_id) - 2.0 * gram_sq(alloc_id, alloc_mm) + gram_sq(alloc_mm, alloc_mm)
  )
  pairs = tf.square(tf.reduce_sum(m, axis=1))
  return tf.maximum(diff, 0.0) / tf.maximum(pairs, 1.0)


class AllocationStats:
  """Collapse diagnostics of one view's allocation A `[B, T, K]` with valid `[B, T]`.

  - `token_entropy` `[B]`: mean over valid tokens of -sum_k A log A (0 = hard assignment,
    log K = uniform allocation).
  - `effective_interests` `[B]`: exp(entropy of the user's mean allocation over tokens), in [1, K];
    1 means every token went to one interest.
  """

  def __init__(self, allocation, valid):
    m = tf.cast(valid, allocation.dtype)
    count = tf.maximum(tf.reduce_sum(m, axis=1), 1.0)  # [B]
    ent = -tf.reduce_sum(allocation * tf.math.log(allocation + EPS), axis=-1)  # [B, T]
    self.token_entropy = tf.reduce_sum(ent * m, axis=1) / count
    usage = tf.reduce_sum(allocation, axis=1) / count[:, None]  # [B, K]
    usage_entropy = -tf.reduce_sum(usage * tf.math.log(usage + EPS), axis=-1)
    self.effective_interests = tf.exp(usage_entropy)


def mutual_distillation_loss(logits_id, logits_mm, temperature: float = 1.0, to_mm: float = 1.0):
  """Each view learns the other's (stop-gradient) distribution over the same candidates.

  Args: logits_id, logits_mm `[B, C]` (after logQ correction and accidental-hit removal);
    to_mm: the weight of the ID -> MM direction (the MM view as the student) relative to the
    MM -> ID one (1 = symmetric; 0 = the ID view learns from the MM view only).
  Returns: per-example `T^2 / 2 (CE(sg p_mm, p_id) + to_mm CE(sg p_id, p_mm))`, `[B]`.
  """
  t = temperature
  p_id = tf.stop_gradient(tf.nn.softmax(logits_id / t, axis=-1))
  p_mm = tf.stop_gradient(tf.nn.softmax(logits_mm / t, axis=-1))
  ce_id = tf.nn.softmax_cross_entropy_with_logits(labels=p_mm, logits=logits_id / t)
  ce_mm = tf.nn.softmax_cross_entropy_with_logits(labels=p_id, logits=logits_mm / t)
  return 0.5 * t * t * (ce_id + to_mm * ce_mm)


def non_target_distillation_loss(logits_id, logits_mm, temperature: float = 1.0):
  """Mutual distillation over the non-target candidates (row i's target is candidate i).

  The target column is masked out of teacher and student before the softmax, so the loss only
  matches how each view ranks the negatives among themselves; the target's probability gets no
  gradient from it.
  Args: logits_id, logits_mm `[B, C]`. Returns: per-example loss `[B]`, as
  `mutual_distillation_loss` over the renormalised non-target distributions.
  """
  mask = -1e9 * tf.eye(tf.shape(logits_id)[0], tf.shape(logits_id)[1], dtype=logits_id.dtype)
  return mutual_distillation_loss(logits_id + mask, logits_mm + mask, temperature)


def ensemble_distillation_loss(logits_id, logits_mm, temperature: float = 1.0):
  """Each view learns the (stop-gradient) distribution of the two views' ensemble.

  Args: logits_id, logits_mm `[B, C]` (after logQ correction and accidental-hit removal).
  Returns: per-example `T^2 / 2 (CE(sg p_ens, p_id) + CE(sg p_ens, p_mm))`, `[B]`, with
  `p_ens = softmax((logits_id + logits_mm) / 2T)` (the fusion rule's scores at w = 1/2).
  """
  t = temperature
  p_ens = tf.stop_gradient(tf.nn.softmax(0.5 * (logits_id + logits_mm) / t, axis=-1))
  ce_id = tf.nn.softmax_cross_entropy_with_logits(labels=p_ens, logits=logits_id / t)
  ce_mm = tf.nn.softmax_cross_entropy_with_logits(labels=p_ens, logits=logits_mm / t)
  return 0.5 * t * t * (ce_id + ce_mm)


def guided_distillation_loss(logits_id, logits_mm, temperature: float = 1.0):
  """Mutual distillation where each view is a teacher only on the examples it gets more right.

  Row i's positive is candidate i. View a distils into view b on example i only when a gives
  the target a higher probability than b does (gate 1[p_a(i) > p_b(i)], stop-gradient), so the
  better view of an example is not pulled toward the worse one.
  Args: logits_id, logits_mm `[B, C]`. Returns: per-example loss `[B]` (0 where the views give
  the target the same probability).
  """
  target_id, target_mm = _target_probabilities(logits_id, logits_mm, temperature)
  gate_id = tf.cast(target_mm > target_id, logits_id.dtype)  # MM teaches ID
  gate_mm = tf.cast(target_id > target_mm, logits_mm.dtype)  # ID teaches MM
  return weighted_distillation_loss(logits_id, logits_mm, gate_id, gate_mm, temperature)


def soft_guided_distillation_loss(logits_id, logits_mm, temperature: float = 1.0):
  """Mutual distillation where each view teaches in proportion to how right it is on the example.

  Row i's positive is candidate i. The MM -> ID direction of example i is weighted by the MM
  view's responsibility for the target, r_mm = p_mm(i) / (p_mm(i) + p_id(i)) (stop-gradient), the
  ID -> MM direction by r_id = 1 - r_mm: where the views are equally right this is
  `mutual_distillation_loss` (r = 1/2 each), and a view that is much weaker on an example hardly
  teaches on it (the soft form of `guided_distillation_loss`'s 0/1 gate).
  Args: logits_id, logits_mm `[B, C]`. Returns: per-example `T^2 (r_mm CE(sg p_mm, p_id) +
  r_id CE(sg p_id, p_mm))`, `[B]`.
  """
  target_id, target_mm = _target_probabilities(logits_id, logits_mm, temperature)
  r_mm = tf.math.divide_no_nan(target_mm, target_mm + target_id)
  return weighted_distillation_loss(logits_id, logits_mm, r_mm, 1.0 - r_mm, temperature)


def _target_probabilities(logits_id, logits_mm, temperature: float):
  """Each view's stop-gradient probability of row i's target (candidate i) at `temperature`,
  `[B]` each."""
  rows = tf.shape(logits_id)[0]
  return [
    tf.linalg.diag_part(tf.stop_gradient(tf.nn.softmax(x / temperature, axis=-1))[:, :rows])
    for x in (logits_id, logits_mm)
  ]


def weighted_distillation_loss(logits_id, logits_mm, to_id, to_mm, temperature: float = 1.0):
  """Mutual distillation with a weight per direction: `T^2 (to_id CE(sg p_mm, p_id) + to_mm
  CE(sg p_id, p_mm))` per example `[B]` (to_id = to_mm = 1/2 is `mutual_distillation_loss`).
  Args: logits_id, logits_mm `[B, C]`; to_id, to_mm: the MM -> ID and ID -> MM weights, scalars
  or per example `[B]` (stop-gradient). (`mutual_distillation_loss`, the default's term, keeps
  its own expression of the same value, so the default trains bit for bit as it did.)"""
  t = temperature
  p_id = tf.stop_gradient(tf.nn.softmax(logits_id / t, axis=-1))
  p_mm = tf.stop_gradient(tf.nn.softmax(logits_mm / t, axis=-1))
  ce_id = tf.nn.softmax_cross_entropy_with_logits(labels=p_mm, logits=logits_id / t)
  ce_mm = tf.nn.softmax_cross_entropy_with_logits(labels=p_id, logits=logits_mm / t)
  return t * t * (to_id * ce_id + to_mm * ce_mm)


def discounted_teacher_weights(
  quality_id, quality_mm, power: float, margin: float = 1.0, students: str = "both", judged=1.0
):
  """(to_id, to_mm): each direction keeps mutual's weight 1/2 while its teacher's `quality`
  (positive scalars) is at least `margin` times its student's, else 1/2 (q_T / (m q_S))^power.
  With margin m < 1 views that are close (q_T >= m q_S either way) distil exactly as "mutual";
  only a teacher clearly weaker than its student is discounted. `students`: the views whose
  teacher may be discounted ("both", "id" or "mm"); the other direction keeps 1/2 always.
  `judged`: a factor on the judged directions only (0 = silent, e.g. before any validation)."""
  shift = math.log(margin)
  log_id = tf.math.log(tf.maximum(quality_id, 1e-12))
  log_mm = tf.math.log(tf.maximum(quality_mm, 1e-12))
  keep_id = tf.exp(tf.minimum(0.0, power * (log_mm - log_id - shift)))  # MM teaches ID
  keep_mm = tf.exp(tf.minimum(0.0, power * (log_id - log_mm - shift)))  # ID teaches MM
  return judged_teacher_weights(keep_id * judged, keep_mm * judged, students)


def judged_teacher_weights(keep_id, keep_mm, students: str):
  """(to_id, to_mm): mutual's 1/2 times `keep` (scalar factors) for the directions `students`
  judges ("both", "id": the MM -> ID direction, "mm": the ID -> MM one), 1/2 for the others."""
  keep_id, keep_mm = tf.convert_to_tensor(keep_id), tf.convert_to_tensor(keep_mm)
  to_id = 0.5 * keep_id if students in ("both", "id") else tf.constant(0.5, keep_id.dtype)
  to_mm = 0.5 * keep_mm if students in ("both", "mm") else tf.constant(0.5, keep_mm.dtype)
  return to_id, to_mm


def batch_guided_distillation_loss(
  logits_id,
  logits_mm,
  temperature: float = 1.0,
  power: float = 1.0,
  margin: float = 1.0,
  students: str = "both",
):
  """Mutual distillation in which a teacher weaker than its student on the batch is discounted.

  Row i's positive is candidate i. P_v is view v's mean probability of the target over the
  batch's rows (stop-gradient). The direction with teacher T and student S keeps the weight 1/2
  of `mutual_distillation_loss` when P_T >= m P_S and gets 1/2 (P_T / (m P_S))^g (g = `power`,
  m = `margin`; only for the `students` views) when the teacher is the weaker view: views that
  predict equally well distil exactly as "mutual", and a view much weaker on the batch hardly
  teaches, while the better view teaches it in full.
  Args: logits_id, logits_mm `[B, C]`. Returns: per-example loss `[B]`
  (`weighted_distillation_loss` with those weights).
  """
  mean_id, mean_mm = (
    tf.reduce_mean(p) for p in _target_probabilities(logits_id, logits_mm, temperature)
  )
  to_id, to_mm = discounted_teacher_weights(mean_id, mean_mm, power, margin, students)
  return weighted_distillation_loss(logits_id, logits_mm, to_id, to_mm, temperature)


def allocation_cka_loss(alloc_id, alloc_mm, valid):
  """1 - CKA of the co-allocations, computed through K x K Gram matrices.

  With the allocations centred over each user's valid tokens (A~ = H A), the centred
  co-allocation is A~ A~^T, and <C~_id, C~_mm>_F = ||A~_id^T A~_mm||_F^2.
  Args: as `allocation_loss`. Returns `[B]` in [0, 1] (1 when either view is uniform).
  """
  m = tf.cast(valid, alloc_id.dtype)[..., None]  # [B, T, 1]
  count = tf.maximum(tf.reduce_sum(m, axis=1, keepdims=True), 1.0)  # [B, 1, 1]

  def centre(a):
    a = a * m
    return (a - tf.reduce_sum(a, axis=1, keepdims=True) / count) * m

  a_id, a_mm = centre(alloc_id), centre(alloc_mm)

  def gram_sq(a, b):
    return tf.reduce_sum(tf.square(tf.matmul(a, b, transpose_a=True)), axis=[1, 2])

  cross = gram_sq(a_id, a_mm)
  norms = tf.sqrt(gram_sq(a_id, a_id) * gram_sq(a_mm, a_mm) + EPS)
  return 1.0 - cross / (norms + EPS)


def item_alignment_loss(e_id, e_mm, item_ids, tau_c: float):
  """Symmetric InfoNCE between the two views' vectors of the same items.

  Args: e_id, e_mm `[C, d]` unit vectors of C candidate items; item_ids `[C]` (repeated ids are
    masked as negatives of each other); tau_c: temperature.
  Returns: per-candidate loss `[C]`.
  """
  logits = tf.matmul(e_id, e_mm, transpose_b=True) / tau_c  # [C, C]
  same = tf.equal(item_ids[:, None], item_ids[None, :])
  eye = tf.eye(tf.shape(logits)[0], dtype=tf.bool)
  logits = tf.where(same & ~eye, tf.constant(-1e9, logits.dtype), logits)
  labels = tf.range(tf.shape(logits)[0])
  return 0.5 * (
    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    + tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits))
  )
