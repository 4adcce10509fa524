"""Properties of the cross-view losses (module 3) and the collapse diagnostics."""

import numpy as np
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.layers import (
  AllocationStats,
  allocation_loss,
  mutual_distillation_loss,
  semantic_loss,
)
from bivrec_tf.model import BivRecModel, view_scores


def _allocation(seed, b=4, t=7, k=3):
  logits = tf.random.stateless_normal([b, t, k], seed=[seed, 0])
  return tf.nn.softmax(logits * 3.0, axis=-1)


def test_allocation_loss_is_unchanged_when_one_views_interests_are_permuted():
  a_id, a_mm = _allocation(1), _allocation(2)
  valid = tf.constant(np.random.default_rng(0).random((4, 7)) > 0.3)
  base = allocation_loss(a_id, a_mm, valid)
  permuted = tf.gather(a_mm, [2, 0, 1], axis=-1)
  np.testing.assert_allclose(allocation_loss(a_id, permuted, valid), base, rtol=1e-6)
  assert float(tf.reduce_max(base)) > 1e-3  # a non-trivial difference to begin with


def test_allocation_loss_is_zero_for_identical_clusterings_and_ignores_padding():
  a = _allocation(3)
  valid = tf.constant([[True] * 5 + [False] * 2] * 4)
  np.testing.assert_allclose(allocation_loss(a, a, valid), 0.0, atol=1e-7)
  noisy = tf.concat([a[:, :5], _allocation(4)[:, 5:]], axis=1)  # differs only on padding
  np.testing.assert_allclose(allocation_loss(a, noisy, valid), 0.0, atol=1e-7)


def test_semantic_loss_is_symmetric_and_lower_for_aligned_views_than_shuffled():
  g = tf.math.l2_normalize(tf.random.stateless_normal([8, 16], seed=[5, 0]), axis=-1)
  noise = tf.random.stateless_normal([8, 16], seed=[6, 0]) * 0.3
  g2 = tf.math.l2_normalize(g + noise, axis=-1)
  np.testing.assert_allclose(semantic_loss(g, g2, 0.1), semantic_loss(g2, g, 0.1), rtol=1e-5)
  aligned = float(tf.reduce_mean(semantic_loss(g, g2, 0.1)))
  shuffled = float(tf.reduce_mean(semantic_loss(g, tf.roll(g2, 3, axis=0), 0.1)))
  assert aligned < shuffled - 1.0


def _tiny_model(seed=0, **model):
  tf.keras.utils.set_random_seed(seed)
  cfg = Config().replace(model={"dim": 8, "num_interests": 2, **model}, loss={"num_negatives": 4})
  v = 20
  rng = np.random.default_rng(0)
  return BivRecModel(
    cfg,
    v,
    8,
    {"text": rng.normal(size=(v, 3)).astype(np.float32)},
    {"text": np.ones(v, bool)},
    item_counts=np.ones(v),
    seen_in_train=np.ones(v, bool),
  )


def _batch():
  h = np.zeros((4, 8), np.int64)
  h[:, -4:] = np.arange(2, 18).reshape(4, 4)
  return {"history": h, "target": np.array([3, 4, 5, 6]), "negatives": np.array([7, 8, 9, 10])}


def _logits(seed, shape=(6, 9)):
  return tf.random.stateless_normal(shape, seed=[seed, 1]) * 2.0


def _symmetric_kl(logits_a, logits_b):
  """Mean over rows of KL(p_a || p_b) + KL(p_b || p_a): how much two views disagree."""
  log_a, log_b = tf.nn.log_softmax(logits_a), tf.nn.log_softmax(logits_b)
  return float(
    tf.reduce_mean(tf.reduce_sum((tf.exp(log_a) - tf.exp(log_b)) * (log_a - log_b), axis=-1))
  )


def test_mutual_distillation_gradient_pulls_each_view_toward_the_others_distribution():
  # d/dz_v of T^2/2 CE(sg p_other, softmax(z_v / T)) = T/2 (p_v - p_other): each view is pulled
  # toward the other (its teacher), and the teacher's side receives nothing through its labels.
  z_id, z_mm, t = _logits(1), _logits(2), 2.0
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([z_id, z_mm])
    loss = tf.reduce_sum(mutual_distillation_loss(z_id, z_mm, t))
  p_id, p_mm = tf.nn.softmax(z_id / t), tf.nn.softmax(z_mm / t)
  np.testing.assert_allclose(tape.gradient(loss, z_id), 0.5 * t * (p_id - p_mm), atol=1e-6)
  np.testing.assert_allclose(tape.gradient(loss, z_mm), 0.5 * t * (p_mm - p_id), atol=1e-6)


def test_mutual_distillation_to_mm_scales_only_the_mm_views_side():
  # to_mm weights the ID -> MM direction: the MM view's gradient scales with it, the ID view's
  # does not change, and 0 leaves the MM view untaught.
  z_id, z_mm, t = _logits(1), _logits(2), 2.0
  p_id, p_mm = tf.nn.softmax(z_id / t), tf.nn.softmax(z_mm / t)
  for to_mm in (0.0, 0.3):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([z_id, z_mm])
      loss = tf.reduce_sum(mutual_distillation_loss(z_id, z_mm, t, to_mm))
    np.testing.assert_allclose(tape.gradient(loss, z_id), 0.5 * t * (p_id - p_mm), atol=1e-6)
    want = 0.5 * t * to_mm * (p_mm - p_id)
    np.testing.assert_allclose(tape.gradient(loss, z_mm), want, atol=1e-6)


def test_mutual_distillation_gradient_vanishes_exactly_when_the_views_agree():
  z = _logits(3)
  shifted = z + tf.random.stateless_normal([6, 1], seed=[4, 1])  # same softmax per row
  for other, agree in ((shifted, True), (_logits(5), False)):
    with tf.GradientTape() as tape:
      tape.watch(z)
      loss = tf.reduce_sum(mutual_distillation_loss(z, other))
    norm = float(tf.norm(tape.gradient(loss, z)))
    assert (norm < 1e-6) if agree else (norm > 0.1), (agree, norm)


def test_one_sgd_step_on_mutual_distillation_lowers_the_views_disagreement():
  z_id, z_mm = tf.Variable(_logits(6)), tf.Variable(_logits(7))
  before = _symmetric_kl(z_id, z_mm)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(mutual_distillation_loss(z_id, z_mm))
  tf.keras.optimizers.SGD(2.0).apply_gradients(zip(tape.gradient(loss, [z_id, z_mm]), [z_id, z_mm]))
  after = _symmetric_kl(z_id, z_mm)
  assert after < 0.7 * before, (before, after)  # measured: 3.26 -> 1.88


def test_allocation_loss_grows_as_one_view_moves_away_from_the_other():
  a, other = _allocation(1), _allocation(2)
  valid = tf.constant(np.random.default_rng(0).random((4, 7)) > 0.3)
  losses = [
    allocation_loss(a, (1 - s) * a + s * other, valid).numpy() for s in (0.0, 0.25, 0.5, 0.75, 1.0)
  ]
  np.testing.assert_allclose(losses[0], 0.0, atol=1e-7)
  assert np.all(np.diff(losses, axis=0) > 0), losses


def test_each_cross_view_term_carries_a_stated_share_of_each_encoders_gradient():
  """Floors on ||grad lambda L_term|| / sum_j ||grad lambda_j L_j|| per view encoder, one fixed
  batch, freshly built model. Measured (seeds 0-2): L_sem (mutual, the default) 20-39 % of each
  view's gradient; L_alloc 0.09-0.69 % with orthogonal interest queries. A term cut off from a
  view (a stop-gradient, a missing weight, a term built but not added) has share 0.

  (With the default "normal" init, nearly identical queries, the allocation is near-uniform at
  the start and L_alloc's share is ~1e-7: it starts to act only once the interests separate.)"""
  model = _tiny_model()
  model.build_all()
  shares = model.gradient_shares(_batch())
  for view in ("id", "mm"):
    assert shares[f"gshare_sem_{view}"] >= 0.10, shares
  model = _tiny_model(interest_init="orthogonal")
  model.build_all()
  shares = model.gradient_shares(_batch())
  for view in ("id", "mm"):
    assert shares[f"gshare_alloc_{view}"] >= 5e-4, shares


def _sgd_step_on_term(model, batch, term, learning_rate):
  """One SGD step of both views' encoders along the gradient of one loss term alone."""
  variables = [w for v in ("id", "mm") for w in model.views[v].trainable_variables]
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(model.loss_parts(batch)[0][term])
  grads = tape.gradient(loss, variables)
  tf.keras.optimizers.SGD(learning_rate).apply_gradients(
    [(g, w) for g, w in zip(grads, variables) if g is not None]
  )


def _view_disagreement(model, batch):
  """Symmetric KL between the two views' next-item distributions over the batch's candidates.
  (The tiny model's popularity is uniform and the candidates distinct, so logQ correction and
  accidental-hit removal leave these distributions as the training logits give them.)"""
  candidates = tf.concat([batch["target"], batch["negatives"]], axis=0)
  queries = model.queries(batch["history"])
  logits = [
    view_scores(queries[v], tf.gather(model.item_table(v), candidates), model.config.model.tau_rec)
    for v in ("id", "mm")
  ]
  return _symmetric_kl(*logits)


def test_one_sgd_step_on_the_semantic_loss_alone_brings_the_views_predictions_together():
  model, batch = _tiny_model(), _batch()
  model.build_all()
  before = _view_disagreement(model, batch)
  _sgd_step_on_term(model, batch, "sem", 1e-3)
  after = _view_disagreement(model, batch)
  assert after < 0.95 * before, (before, after)  # measured: 12.97 -> 11.68


def test_one_sgd_step_on_the_allocation_loss_alone_brings_the_views_allocations_together():
  model, batch = _tiny_model(interest_init="orthogonal"), _batch()
  model.build_all()
  before = float(tf.reduce_mean(model.loss_parts(batch)[1]["alloc"]))
  _sgd_step_on_term(model, batch, "alloc", 1e-2)
  after = float(tf.reduce_mean(model.loss_parts(batch)[1]["alloc"]))
  assert after < 0.99 * before, (before, after)  # measured: 0.0327 -> 0.0313


def test_allocation_stats_detect_collapse():
  valid = tf.ones([1, 4], tf.bool)
  collapsed = tf.constant([[[1.0, 0.0, 0.0]] * 4])
  spread = tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
  uniform = tf.fill([1, 4, 3], 1.0 / 3)
  assert float(AllocationStats(collapsed, valid).effective_interests[0]) == 1.0
  assert float(AllocationStats(spread, valid).effective_interests[0]) > 2.5
  np.testing.assert_allclose(AllocationStats(uniform, valid).token_entropy, np.log(3), rtol=1e-5)
  np.testing.assert_allclose(AllocationStats(collapsed, valid).token_entropy, 0.0, atol=1e-6)


def test_training_loss_does_not_depend_on_batch_order():
  model = _tiny_model()
  batch = _batch()
  perm = [2, 0, 3, 1]
  shuffled = {
    "history": batch["history"][perm],
    "target": batch["target"][perm],
    "negatives": batch["negatives"],
  }
  a = float(model.compute_loss(batch))
  np.testing.assert_allclose(float(model.compute_loss(shuffled)), a, rtol=1e-5)


def test_allocation_loss_equals_the_explicit_masked_co_allocation_distance():
  from bivrec_tf.layers.cross_view import co_allocation

  a_id, a_mm = _allocation(7, k=3), _allocation(8, k=5)  # K may differ between views
  valid = tf.constant(np.random.default_rng(1).random((4, 7)) > 0.4)
  m = tf.cast(valid, tf.float32)
  pairs = m[:, :, None] * m[:, None, :]
  explicit = tf.reduce_sum(
    tf.square(co_allocation(a_id) - co_allocation(a_mm)) * pairs, axis=[1, 2]
  ) / tf.maximum(tf.reduce_sum(pairs, axis=[1, 2]), 1.0)
  np.testing.assert_allclose(allocation_loss(a_id, a_mm, valid), explicit, rtol=1e-4, atol=1e-6)


def _logits_and_gradients(loss_fn, seed, shape, *args):
  """Random `[B, C]` logits for both views and the gradient of sum(loss_fn) on each (numpy)."""
  rng = np.random.default_rng(seed)
  logits_id = tf.constant(rng.normal(size=shape), tf.float32)
  logits_mm = tf.constant(rng.normal(size=shape), tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([logits_id, logits_mm])
    loss = tf.reduce_sum(loss_fn(logits_id, logits_mm, *args))
  return (
    logits_id,
    logits_mm,
    tape.gradient(loss, logits_id).numpy(),
    tape.gradient(loss, logits_mm).numpy(),
  )


def test_guided_distillation_teaches_only_from_the_view_that_ranks_the_target_higher():
  from bivrec_tf.layers import guided_distillation_loss  # pylint: disable=import-outside-toplevel

  logits_id, logits_mm, g_id, g_mm = _logits_and_gradients(guided_distillation_loss, 3, (4, 6))
  p_id = tf.nn.softmax(logits_id).numpy()
  p_mm = tf.nn.softmax(logits_mm).numpy()
  mm_better = np.array([p_mm[i, i] > p_id[i, i] for i in range(4)])
  assert mm_better.any() and (~mm_better).any()  # both cases occur in this batch
  # The better view of a row gets no gradient from it; the worse view is pulled toward it.
  assert np.all(np.abs(g_mm[mm_better]).sum(axis=1) == 0)
  assert np.all(np.abs(g_id[~mm_better]).sum(axis=1) == 0)
  np.testing.assert_allclose(g_id[mm_better], (p_id - p_mm)[mm_better], atol=1e-6)
  np.testing.assert_allclose(g_mm[~mm_better], (p_mm - p_id)[~mm_better], atol=1e-6)


def test_soft_guided_distillation_weights_each_direction_by_the_teachers_responsibility():
  from bivrec_tf.layers import (  # pylint: disable=import-outside-toplevel
    mutual_distillation_loss,
    soft_guided_distillation_loss,
  )

  t = 2.0
  logits_id, logits_mm, g_id, g_mm = _logits_and_gradients(
    soft_guided_distillation_loss, 5, (4, 6), t
  )
  q_id = tf.nn.softmax(logits_id / t).numpy()
  q_mm = tf.nn.softmax(logits_mm / t).numpy()
  r_mm = np.diagonal(q_mm) / (np.diagonal(q_mm) + np.diagonal(q_id))  # [B]
  assert r_mm.min() < 0.5 < r_mm.max()  # each view is the main teacher somewhere in this batch
  # d/dlogits of t^2 r CE(sg q_T, softmax(logits / t)) = t r (q_S - q_T); r is stop-gradient.
  np.testing.assert_allclose(g_id, t * r_mm[:, None] * (q_id - q_mm), atol=1e-5)
  np.testing.assert_allclose(g_mm, t * (1 - r_mm)[:, None] * (q_mm - q_id), atol=1e-5)
  # Where both views give the target the same probability (the MM row is the ID row with its
  # non-target logits permuted: same target logit, same normaliser) it is the mutual distillation.
  base = np.random.default_rng(6).normal(size=(4, 6)).astype(np.float32)
  perm = base.copy()
  for i in range(4):
    others = [j for j in range(6) if j != i]
    perm[i, others] = base[i, others[::-1]]
  a, b = tf.constant(base), tf.constant(perm)
  assert not np.allclose(base, perm)
  np.testing.assert_allclose(
    soft_guided_distillation_loss(a, b, t).numpy(),
    mutual_distillation_loss(a, b, t).numpy(),
    rtol=1e-5,
  )


def test_batch_guided_distillation_discounts_the_teacher_that_is_weaker_on_the_batch():
  from bivrec_tf.layers import (  # pylint: disable=import-outside-toplevel
    batch_guided_distillation_loss,
    mutual_distillation_loss,
  )

  t, g = 2.0, 3.0
  logits_id, logits_mm, g_id, g_mm = _logits_and_gradients(
    batch_guided_distillation_loss, 7, (4, 6), t, g
  )
  q_id = tf.nn.softmax(logits_id / t).numpy()
  q_mm = tf.nn.softmax(logits_mm / t).numpy()
  big_id, big_mm = np.diagonal(q_id).mean(), np.diagonal(q_mm).mean()
  w_mm = 0.5 * min(1.0, (big_mm / big_id) ** g)  # one weight per batch and direction
  w_id = 0.5 * min(1.0, (big_id / big_mm) ** g)
  assert min(w_mm, w_id) < 0.45 and max(w_mm, w_id) == 0.5
  # d/dlogits of t^2 w CE(sg q_T, softmax(logits / t)) = t w (q_S - q_T)
  np.testing.assert_allclose(g_id, t * w_mm * (q_id - q_mm), atol=1e-5)
  np.testing.assert_allclose(g_mm, t * w_id * (q_mm - q_id), atol=1e-5)
  # Views equally right on the batch distil exactly as the mutual loss does.
  # (the MM rows are the ID rows with their non-target logits reversed: same target probability)
  base = logits_id.numpy()
  perm = base.copy()
  for i in range(4):
    others = [j for j in range(6) if j != i]
    perm[i, others] = base[i, others[::-1]]
  np.testing.assert_allclose(
    batch_guided_distillation_loss(logits_id, tf.constant(perm), t, g).numpy(),
    mutual_distillation_loss(logits_id, tf.constant(perm), t).numpy(),
    rtol=1e-5,
  )
  # A much better ID view on the batch hardly learns from the MM view, and teaches it in full.
  sharp_id = tf.constant(np.eye(4, 6, dtype=np.float32) * 8.0)
  flat_mm = tf.zeros([4, 6])
  weighted = batch_guided_distillation_loss(sharp_id, flat_mm, 1.0, 3.0).numpy()
  ce_mm = tf.nn.softmax_cross_entropy_with_logits(tf.nn.softmax(sharp_id), flat_mm).numpy()
  ce_id = tf.nn.softmax_cross_entropy_with_logits(tf.nn.softmax(flat_mm), sharp_id).numpy()
  p_id, p_mm = np.exp(8.0) / (np.exp(8.0) + 5.0), 1.0 / 6.0
  w = 0.5 * (p_mm / p_id) ** 3
  assert w < 0.005
  np.testing.assert_allclose(weighted, w * ce_id + 0.5 * ce_mm, rtol=1e-5)


def test_non_target_distillation_leaves_the_target_alone_and_matches_the_negatives():
  from bivrec_tf.layers import non_target_distillation_loss  # pylint: disable=import-outside-toplevel

  t = 2.0
  logits_id, logits_mm, g_id, g_mm = _logits_and_gradients(
    non_target_distillation_loss, 4, (3, 5), t
  )
  # The target column (row i's candidate i) gets no gradient in either view.
  np.testing.assert_allclose(np.diagonal(g_id), 0.0, atol=1e-7)
  np.testing.assert_allclose(np.diagonal(g_mm), 0.0, atol=1e-7)
  # Elsewhere: t/2 (q_id - q_mm), q = the softmax over the row's non-target candidates at t.
  off = ~np.eye(3, 5, dtype=bool)

  def q(z):
    z = z.numpy() / t
    e = np.where(off, np.exp(z - z.max(axis=1, keepdims=True)), 0.0)
    return e / e.sum(axis=1, keepdims=True)

  np.testing.assert_allclose(g_id[off], (0.5 * t * (q(logits_id) - q(logits_mm)))[off], atol=1e-6)
  assert np.abs(g_id[off]).max() > 1e-3
  # Views that differ only in the target's logit agree on the negatives: the loss is that of
  # identical views (the cross-entropy's floor, the entropy), unlike full mutual distillation.
  bumped = logits_id + 3.0 * tf.eye(3, 5)
  np.testing.assert_allclose(
    non_target_distillation_loss(logits_id, bumped, t),
    non_target_distillation_loss(logits_id, logits_id, t),
    rtol=1e-5,
  )
  gap = mutual_distillation_loss(logits_id, bumped, t) - mutual_distillation_loss(
    logits_id, logits_id, t
  )
  assert float(tf.reduce_min(gap)) > 1e-3


def test_ensemble_distillation_pulls_each_view_toward_the_fused_distribution():
  from bivrec_tf.layers import ensemble_distillation_loss  # pylint: disable=import-outside-toplevel

  t = 2.0
  logits_id, logits_mm, g_id, g_mm = _logits_and_gradients(ensemble_distillation_loss, 5, (3, 5), t)

  def p(z):
    z = z / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

  # The teacher is the softmax of the mean logits (stop-gradient): d/dz_v = t/2 (p_v - p_ens).
  p_ens = p(0.5 * (logits_id.numpy() + logits_mm.numpy()))
  np.testing.assert_allclose(g_id, 0.5 * t * (p(logits_id.numpy()) - p_ens), atol=1e-6)
  np.testing.assert_allclose(g_mm, 0.5 * t * (p(logits_mm.numpy()) - p_ens), atol=1e-6)
  assert np.abs(g_id).max() > 1e-3
  # Identical views are their own ensemble: nothing to teach.
  with tf.GradientTape() as tape:
    tape.watch(logits_id)
    same = tf.reduce_sum(ensemble_distillation_loss(logits_id, logits_id, t))
  np.testing.assert_allclose(tape.gradient(same, logits_id), 0.0, atol=1e-6)
