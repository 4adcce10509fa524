"""Properties of the cross-view losses (module 3) and the collapse diagnostics."""

import numpy as np
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.layers import AllocationStats, allocation_loss, semantic_loss
from bivrec_tf.model import BivRecModel


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


def _tiny_model():
  cfg = Config().replace(model={"dim": 8, "num_interests": 2, "dropout": 0.0},
                         loss={"num_negatives": 4})
  v = 20
  rng = np.random.default_rng(0)
  return BivRecModel(cfg, v, 8, {"text": rng.normal(size=(v, 3)).astype(np.float32)},
                     {"text": np.ones(v, bool)}, item_counts=np.ones(v),
                     seen_in_train=np.ones(v, bool))


def _batch():
  h = np.zeros((4, 8), np.int64)
  h[:, -4:] = np.arange(2, 18).reshape(4, 4)
  return {"history": h, "target": np.array([3, 4, 5, 6]), "negatives": np.array([7, 8, 9, 10])}


def test_each_cross_view_loss_sends_gradients_into_both_views():
  model = _tiny_model()
  batch = _batch()
  model.compute_losses(batch)  # build
  for term in ("sem", "alloc"):
    with tf.GradientTape(persistent=True) as tape:
      _, terms = model.compute_losses(batch)
      loss = tf.reduce_mean(terms[term])
    for view in ("id", "mm"):
      grads = tape.gradient(loss, model.views[view].trainable_variables)
      norm = sum(float(tf.reduce_sum(tf.square(tf.convert_to_tensor(g)))) for g in grads
                 if g is not None)
      assert norm > 0.0, f"{term} sends no gradient into the {view} view"


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
  shuffled = {"history": batch["history"][perm], "target": batch["target"][perm],
              "negatives": batch["negatives"]}
  a = float(model.compute_loss(batch))
  np.testing.assert_allclose(float(model.compute_loss(shuffled)), a, rtol=1e-5)


def test_allocation_loss_equals_the_explicit_masked_co_allocation_distance():
  from bivrec_tf.layers.cross_view import co_allocation
  a_id, a_mm = _allocation(7, k=3), _allocation(8, k=5)  # K may differ between views
  valid = tf.constant(np.random.default_rng(1).random((4, 7)) > 0.4)
  m = tf.cast(valid, tf.float32)
  pairs = m[:, :, None] * m[:, None, :]
  explicit = tf.reduce_sum(tf.square(co_allocation(a_id) - co_allocation(a_mm)) * pairs,
                           axis=[1, 2]) / tf.maximum(tf.reduce_sum(pairs, axis=[1, 2]), 1.0)
  np.testing.assert_allclose(allocation_loss(a_id, a_mm, valid), explicit, rtol=1e-4, atol=1e-6)
