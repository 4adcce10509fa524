"""The label-aware training read-out (`routing`): what each interest is scored on."""

import numpy as np
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.model import BivRecModel, view_scores

D, V, L, K = 8, 30, 8, 3


def _model(routing):
  tf.keras.utils.set_random_seed(0)  # the same weights for every routing
  cfg = Config().replace(
    model={
      "dim": D,
      "num_interests": K,
      "views": ("id",),
      "routing": routing,
      "interest_init": "orthogonal",
    },
    loss={"num_negatives": 4},
  )
  model = BivRecModel(cfg, V, L, item_counts=np.ones(V), seen_in_train=np.ones(V, bool))
  model.build_all()
  return model


def _batch():
  h = np.zeros((4, L), np.int64)
  h[:, -4:] = np.arange(2, 18).reshape(4, 4)
  return {
    "history": h,
    "target": np.array([20, 21, 22, 23]),
    "negatives": np.array([24, 25, 26, 27]),
  }


def test_target_routing_scores_the_positive_as_max_and_negatives_no_higher():
  model = _model("target")
  rng = np.random.default_rng(0)
  u = tf.math.l2_normalize(tf.constant(rng.normal(size=(4, K, D)), tf.float32), axis=-1)
  vectors = tf.math.l2_normalize(tf.constant(rng.normal(size=(9, D)), tf.float32), axis=-1)
  routed = model._route(u, vectors, 0.1).numpy()
  maxed = view_scores(u, vectors, 0.1).numpy()
  # Row i's positive is candidate i: the interest picked for it is the one that scores it highest.
  np.testing.assert_allclose(np.diag(routed[:, :4]), np.diag(maxed[:, :4]), rtol=1e-5)
  assert np.all(routed <= maxed + 1e-5)
  # One interest scores the whole row: its scores are a single interest's, not a max of several.
  picked = np.argmax(np.einsum("bkd,bd->bk", u.numpy(), vectors.numpy()[:4]), axis=1)
  expected = np.einsum("bd,nd->bn", u.numpy()[np.arange(4), picked], vectors.numpy()) / 0.1
  np.testing.assert_allclose(routed, expected, rtol=1e-5, atol=1e-6)
  assert np.any(routed < maxed - 1e-3)  # on random data some candidate prefers another interest


def test_max_plus_target_adds_one_label_aware_term_per_view():
  parts, _ = _model("max+target").loss_parts(_batch())
  assert set(parts) >= {"rec_id", "route_id"}
  parts_max, _ = _model("max").loss_parts(_batch())
  assert "route_id" not in parts_max
  np.testing.assert_allclose(parts["rec_id"].numpy(), parts_max["rec_id"].numpy(), rtol=1e-5)
