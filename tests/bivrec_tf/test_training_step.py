"""The training step's two shortcuts give the same training: the max over interests read through
an argmax one-hot (its backward written out, `winner_scores`), and small tables' sparse gradients
made dense before the optimizer."""

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.model import BivRecModel, dense_if_small, view_scores

B, K, N, D = 5, 3, 11, 8


def _scores_and_gradients(queries, table, argmax_gradient, weights, jit=False):
  def run(q, t):
    with tf.GradientTape() as tape:
      tape.watch([q, t])
      scores = view_scores(q, t, 0.1, argmax_gradient=argmax_gradient)
      loss = tf.reduce_sum(scores * weights)
    return (scores, *tape.gradient(loss, [q, t]))

  if jit:  # the training step's setting: XLA rewrites the written-out backward's transpose
    run = tf.function(run, jit_compile=True)
  return tuple(x.numpy() for x in run(tf.constant(queries), tf.constant(table)))


@pytest.mark.parametrize("jit", [False, True])
def test_argmax_gradient_has_the_values_and_gradients_of_reduce_max(jit):
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(B, K, D)).astype(np.float32)
  table = rng.normal(size=(N, D)).astype(np.float32)
  weights = tf.constant(rng.normal(size=(B, N)), tf.float32)
  plain = _scores_and_gradients(queries, table, False, weights)
  onehot = _scores_and_gradients(queries, table, True, weights, jit)
  for a, b in zip(plain, onehot):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # Every interest wins some (user, item) pair here, so the test covers the routing itself.
  winners = np.argmax(np.einsum("bkd,nd->bkn", queries, table), axis=1)
  assert set(np.unique(winners)) == set(range(K))
  assert np.all(np.abs(onehot[1]).sum(axis=2) > 0)


def test_argmax_gradient_at_a_tie_gives_the_same_gradient_to_what_the_tied_interests_share():
  # A one-item history: every interest is the same vector (one token, shared value map), so all K
  # tie on every item. reduce_max splits the gradient K ways, the one-hot gives it to one
  # interest; the vector they all come from gets the same total either way.
  rng = np.random.default_rng(1)
  base = tf.constant(rng.normal(size=(B, 1, D)), tf.float32)
  table = tf.constant(rng.normal(size=(N, D)), tf.float32)
  weights = tf.constant(rng.normal(size=(B, N)), tf.float32)
  grads = []
  for argmax_gradient in (False, True):
    with tf.GradientTape() as tape:
      tape.watch(base)
      queries = tf.tile(base, [1, K, 1])
      loss = tf.reduce_sum(view_scores(queries, table, 0.1, argmax_gradient) * weights)
    grads.append(tape.gradient(loss, base).numpy())
  np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)
  assert np.abs(grads[0]).max() > 1e-3


def _sparse_gradient(table_rows, rows, seed=0):
  rng = np.random.default_rng(seed)
  indices = rng.integers(0, table_rows, rows)
  indices[1] = indices[0]  # a repeated row: the optimizer must sum the two
  values = rng.normal(size=(rows, D)).astype(np.float32)
  return tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([table_rows, D]))


def test_dense_if_small_densifies_small_tables_only():
  small = tf.Variable(tf.zeros([20, D]))
  large = tf.Variable(tf.zeros([200, D]))
  grad = _sparse_gradient(20, 6)
  dense = dense_if_small(grad, small)
  assert not isinstance(dense, tf.IndexedSlices)
  np.testing.assert_allclose(dense.numpy(), tf.convert_to_tensor(grad).numpy())
  # 200 rows > 4 x 6: the sparse gradient stays (a smaller all-reduce across replicas).
  assert isinstance(dense_if_small(_sparse_gradient(200, 6), large), tf.IndexedSlices)
  assert dense_if_small(None, small) is None
  plain = tf.ones([20, D])
  assert dense_if_small(plain, small) is plain


def test_adam_makes_the_same_update_from_the_dense_and_the_sparse_gradient():
  start = np.random.default_rng(2).normal(size=(20, D)).astype(np.float32)
  results = []
  for densify in (False, True):
    variable = tf.Variable(start)
    optimizer = tf.keras.optimizers.Adam(0.01)
    for step in range(3):
      grad = _sparse_gradient(20, 6, seed=step)
      if densify:
        grad = dense_if_small(grad, variable)
        assert not isinstance(grad, tf.IndexedSlices)  # the dense path really is taken
      optimizer.apply_gradients([(grad, variable)])
    results.append(variable.numpy())
  np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)
  assert np.abs(results[0] - start).max() > 1e-3


def test_train_step_gives_the_id_table_a_dense_gradient_when_the_table_is_small(monkeypatch):
  cfg = Config().replace(
    model={"dim": D, "num_interests": 2, "views": ("id",)}, loss={"num_negatives": 4}
  )
  model = BivRecModel(cfg, 30, 6)
  model.build_all()
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  seen = []
  original = model.optimizer.apply_gradients

  def record(grads_and_vars, *args, **kwargs):
    grads_and_vars = list(grads_and_vars)
    seen.extend(type(g).__name__ for g, _ in grads_and_vars)
    return original(grads_and_vars, *args, **kwargs)

  monkeypatch.setattr(model.optimizer, "apply_gradients", record)
  rng = np.random.default_rng(0)
  batch = {
    "history": tf.constant(rng.integers(2, 30, (8, 6))),
    "target": tf.constant(rng.integers(2, 30, 8)),
    "negatives": tf.constant(rng.integers(2, 30, 4)),
  }
  before = model.views["id"].tower.embeddings.numpy()
  model.train_step(batch)
  assert seen and "IndexedSlices" not in seen  # 30 rows <= 4 x (48 history + 12 candidates)
  assert np.abs(model.views["id"].tower.embeddings.numpy() - before).max() > 0
