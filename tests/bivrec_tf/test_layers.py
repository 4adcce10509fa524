"""Properties of the three BivRec modules and the item towers (DESIGN.md section 3), and the Keras
contract of every layer (config round trip)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.layers import (
  ClusterAttention,
  GaussianAttention,
  IdTower,
  InterestDecomposition,
  MultiScaleInterestEmbedding,
  MultimodalTower,
  SemanticHead,
  TransformerBlock,
)
from bivrec_tf.model import BivRecModel, ViewEncoder
from bivrec_tf.presets import apply_preset

B, D, K, V = 3, 16, 4, 40


def _model(views=("id", "mm"), preset="bivrec_design", **model_fields):
  """A small model; by default DESIGN.md's formulation, every module on."""
  cfg = apply_preset(Config(), preset).replace(
    model={"dim": D, "num_interests": K, "views": views, "dropout": 0.0, **model_fields}
  )
  rng = np.random.default_rng(0)
  feats = {
    "text": rng.normal(size=(V, 6)).astype(np.float32),
    "image": rng.normal(size=(V, 5)).astype(np.float32),
  }
  present = {"text": np.ones(V, bool), "image": rng.random(V) > 0.2}
  return BivRecModel(
    cfg,
    V,
    max_len=12,
    features=feats,
    present=present,
    item_counts=np.arange(V),
    seen_in_train=np.ones(V, bool),
  )


def _histories():
  h = np.zeros((B, 12), np.int64)
  h[0, -5:] = [3, 7, 9, 2, 30]
  h[1, -12:] = np.arange(10, 22)
  h[2, -1:] = [5]
  return h


def test_view_outputs_have_documented_shapes():
  model = _model()
  out = model(_histories())
  tokens = 12 + 6 + 3  # sum_p L/p for P = (1, 2, 4)
  for v in ("id", "mm"):
    u, a, valid = out[v]
    assert u.shape == (B, K, D)
    assert a.shape == (B, tokens, K)
    assert valid.shape == (B, tokens)


@pytest.mark.parametrize("preset", ["bivrec_design", "bivrec"])
def test_left_padding_does_not_change_any_output(preset):
  model = _model(preset=preset)
  h = _histories()
  short = h[:, -8:]  # rows 0 and 2 fit in 8 positions: same histories, 4 fewer padding slots
  out_full, out_short = model(h), model(short)
  for v in ("id", "mm"):
    u_full, a_full, valid_full = (x.numpy() for x in out_full[v])
    u_short, a_short, valid_short = (x.numpy() for x in out_short[v])
    for row in (0, 2):
      np.testing.assert_allclose(u_full[row], u_short[row], atol=1e-5)
      # Valid tokens of the short input are the most recent tokens of each scale.
      assert valid_full[row].sum() == valid_short[row].sum()
      np.testing.assert_allclose(
        np.sort(a_full[row][valid_full[row]].ravel()),
        np.sort(a_short[row][valid_short[row]].ravel()),
        atol=1e-5,
      )


def test_padding_item_embedding_does_not_leak_into_interests():
  model = _model(views=("id",))
  h = _histories()
  before = model(h)["id"][0].numpy()
  table = model.views["id"].tower.embeddings
  table.assign(tf.tensor_scatter_nd_update(table, [[0]], [tf.fill([D], 100.0)]))
  np.testing.assert_allclose(model(h)["id"][0].numpy(), before, atol=1e-5)


def test_gaussian_centres_start_spread_over_unit_interval():
  layer = GaussianAttention(D, 5)
  layer(tf.zeros([1, 4, D]), tf.zeros([4]), tf.ones([1, 4], tf.bool))
  centres = layer.centres.numpy()
  np.testing.assert_allclose(centres, [0.1, 0.3, 0.5, 0.7, 0.9], atol=1e-5)
  assert np.all(layer.widths.numpy() >= 0.05)


def test_gaussian_prior_pulls_interests_towards_their_time_window():
  layer = GaussianAttention(D, 2, sigma_init=0.06)
  h = tf.constant(np.eye(4, D, dtype=np.float32)[None] * 3.0)
  tau = tf.constant([0.25, 0.75, 0.0, 1.0])
  seeds = layer(h, tau, tf.ones([1, 4], tf.bool)).numpy()[0]
  values = layer.w_v(h).numpy()[0]
  # Interest 0 (centre 0.25) is dominated by token 0, interest 1 (centre 0.75) by token 1.
  np.testing.assert_allclose(seeds[0], values[0], atol=1e-2)
  np.testing.assert_allclose(seeds[1], values[1], atol=1e-2)


@pytest.mark.parametrize("prior", [False, True])
def test_gaussian_attention_is_the_formula_with_every_token_projected(prior):
  # The layer folds W_K into the queries and applies W_V after pooling; both are the same
  # numbers as projecting every token first (module 2's formula in its docstring).
  rng = np.random.default_rng(0)
  layer = GaussianAttention(D, K, gaussian_prior=prior, sigma_init=0.3)
  h = tf.constant(rng.normal(size=(B, 6, D)), tf.float32)
  tau = tf.constant(np.linspace(0.9, 0.0, 6), tf.float32)
  valid = tf.constant([[True] * 6, [False, False] + [True] * 4, [False] * 5 + [True]])
  seeds, alpha = layer(h, tau, valid, return_attention=True)
  q = layer.queries.numpy() @ layer.w_q.kernel.numpy()  # [K, d]
  keys = h.numpy() @ layer.w_k.kernel.numpy()  # [B, T, d]: every token projected
  logits = np.einsum("kd,btd->bkt", q, keys) / np.sqrt(D)
  if prior:
    mu, sigma = layer.centres.numpy(), layer.widths.numpy()
    logits -= (tau.numpy()[None, :] - mu[:, None]) ** 2 / (2 * sigma[:, None] ** 2)
  logits = np.where(valid.numpy()[:, None, :], logits, -np.inf)
  expected_alpha = np.exp(logits - logits.max(axis=-1, keepdims=True))
  expected_alpha /= expected_alpha.sum(axis=-1, keepdims=True)
  np.testing.assert_allclose(alpha.numpy(), expected_alpha, rtol=1e-4, atol=1e-6)
  values = h.numpy() @ layer.w_v.kernel.numpy()  # [B, T, d]: every token projected
  np.testing.assert_allclose(
    seeds.numpy(), np.einsum("bkt,btd->bkd", expected_alpha, values), rtol=1e-4, atol=1e-5
  )
  assert not np.allclose(expected_alpha[0, 0], expected_alpha[0, 1])  # the queries differ


def test_cluster_attention_is_the_formula_with_every_token_projected():
  # The layer folds W_K' into the interests' queries and applies W_V' after pooling; both are the
  # same numbers as projecting every token first (the formula in the module docstring).
  rng = np.random.default_rng(1)
  layer = ClusterAttention(D, rounds=2)
  h = tf.constant(rng.normal(size=(B, 6, D)), tf.float32)
  seeds = tf.constant(rng.normal(size=(B, K, D)), tf.float32)
  valid = tf.constant([[True] * 6, [False, False] + [True] * 4, [False] * 5 + [True]])
  interests, allocation = layer(h, seeds, valid)
  keys = h.numpy() @ layer.w_k.kernel.numpy()  # [B, T, d]: every token projected
  values = h.numpy() @ layer.w_v.kernel.numpy()
  c = seeds
  for _ in range(2):
    logits = np.einsum("btd,bkd->btk", keys, layer.w_q(c).numpy()) / np.sqrt(D)
    a = np.exp(logits - logits.max(axis=-1, keepdims=True))
    a = a / a.sum(axis=-1, keepdims=True) * valid.numpy()[..., None]
    pooled = np.einsum("btk,btd->bkd", a, values) / (a.sum(axis=1) + 1e-6)[..., None]
    c = layer.norm1(c + layer.w_o(tf.constant(pooled, tf.float32)))
    c = layer.norm2(c + layer.ffn_out(layer.ffn_in(c)))
  np.testing.assert_allclose(allocation.numpy(), a, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(interests.numpy(), c.numpy(), rtol=1e-4, atol=1e-4)
  assert not np.allclose(a[0, :, 0], a[0, :, 1])  # the interests compete


@pytest.mark.parametrize("preset", ["bivrec", "bivrec_design"])
def test_weight_names_are_unique_and_maps_read_as_matrices_keep_their_own_names(preset):
  model = _model(preset=preset)
  model.build_all()
  trackers = {id(v) for m in model.metrics for v in m.variables}  # Keras metrics: total, count
  names = [w.name for w in model.weights if id(w) not in trackers]
  assert len(set(names)) == len(names)
  assert any("gaussian/w_k/kernel" in n for n in names)
  if preset == "bivrec_design":
    assert any("cluster/w_k/kernel" in n for n in names)
    assert any("cluster/w_v/kernel" in n for n in names)


def test_allocation_rows_sum_to_one_on_valid_tokens_and_zero_on_padding():
  for rounds in (0, 2):
    model = _model(cluster_rounds=rounds)
    for v, (_, a, valid) in model(_histories()).items():
      sums = a.numpy().sum(axis=-1)
      np.testing.assert_allclose(sums[valid.numpy()], 1.0, atol=1e-5)
      np.testing.assert_allclose(sums[~valid.numpy()], 0.0, atol=1e-7)


def test_token_is_valid_iff_any_item_in_its_window_is():
  layer = MultiScaleInterestEmbedding(D, (1, 2, 4), max_len=8)
  mask = tf.constant([[False, False, False, True, True, False, True, True]])
  _, tau, valid = layer(tf.ones([1, 8, D]), mask)
  # p=1: per item; p=2: windows (0,1)(2,3)(4,5)(6,7); p=4: (0..3)(4..7)
  expected = [0, 0, 0, 1, 1, 0, 1, 1] + [0, 1, 1, 1] + [1, 1]
  assert valid.numpy()[0].tolist() == [bool(x) for x in expected]
  # Most recent window has the smallest tau; tau in [0, 1).
  assert tau.numpy()[7] == 0.0 and tau.numpy()[0] == pytest.approx(7 / 8)
  assert np.all((tau.numpy() >= 0) & (tau.numpy() < 1))


def test_zero_cluster_rounds_return_the_seeds_and_build_no_cluster_layer():
  layer = InterestDecomposition(D, K, cluster_rounds=0)
  h, tau, valid = tf.random.normal([2, 5, D]), tf.linspace(1.0, 0.0, 5), tf.ones([2, 5], tf.bool)
  u, a = layer(h, tau, valid)
  np.testing.assert_allclose(u.numpy(), layer.gaussian(h, tau, valid).numpy(), atol=1e-6)
  assert a.shape == (2, 5, K)
  assert layer.cluster is None
  with pytest.raises(ValueError, match="rounds >= 1"):
    ClusterAttention(D, rounds=0)


def test_no_gaussian_prior_switch_removes_the_temporal_term():
  h = tf.random.normal([2, 6, D], seed=1)
  valid = tf.ones([2, 6], tf.bool)
  with_prior = InterestDecomposition(D, K, gaussian_prior=True, sigma_init=0.1)
  without = InterestDecomposition(D, K, gaussian_prior=False, sigma_init=0.1)
  tau_a, tau_b = tf.linspace(0.0, 1.0, 6), tf.linspace(1.0, 0.0, 6)
  with_prior(h, tau_a, valid)
  without(h, tau_a, valid)
  # Without the prior, tau is ignored; with it, tau changes the seeds.
  assert np.allclose(without.gaussian(h, tau_a, valid), without.gaussian(h, tau_b, valid))
  assert not np.allclose(with_prior.gaussian(h, tau_a, valid), with_prior.gaussian(h, tau_b, valid))


def test_mm_tower_output_does_not_depend_on_item_ids():
  feats = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
  feats[5] = feats[3]  # two different ids with the same features
  present = np.ones(6, bool)
  tower = MultimodalTower.from_tables({"text": feats}, {"text": present}, D)
  out = tower(tf.constant([3, 5])).numpy()
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)
  # ...while the ID tower tells them apart.
  id_tower = IdTower(6, D)
  ids = id_tower(tf.constant([3, 5])).numpy()
  assert not np.allclose(ids[0], ids[1])


def test_mm_tower_uses_learned_missing_vector_for_absent_modality():
  feats = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
  present = np.array([False, False, True, False, True])
  tower = MultimodalTower.from_tables({"image": feats}, {"image": present}, D)
  tower(tf.constant([2]))
  tower.missing["image"].assign(tf.fill([D], 7.0))
  # Items lacking the modality (1 and 3, different feature rows) share the missing vector's output.
  out = tower(tf.constant([1, 3, 4])).numpy()
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)
  assert not np.allclose(out[0], out[2])


def test_zero_round_allocation_is_each_tokens_seed_attention_shared_over_interests():
  layer = InterestDecomposition(D, K, gaussian_prior=False, cluster_rounds=0)
  h = tf.random.normal([2, 5, D], seed=3)
  valid = tf.constant([[True] * 5, [False, False, True, True, True]])
  tau = tf.linspace(0.8, 0.0, 5)
  u, a = layer(h, tau, valid)
  seeds, alpha = layer.gaussian(h, tau, valid, return_attention=True)
  np.testing.assert_allclose(u.numpy(), seeds.numpy(), atol=1e-6)
  expected = np.transpose(alpha.numpy(), [0, 2, 1])
  with np.errstate(invalid="ignore"):  # padded tokens: 0 / 0, expected to be 0
    expected = np.nan_to_num(expected / expected.sum(-1, keepdims=True)) * valid.numpy()[..., None]
  np.testing.assert_allclose(a.numpy(), expected, atol=1e-6)


def test_allocation_loss_trains_the_attention_that_forms_the_interests_when_rounds_is_zero():
  from bivrec_tf.layers import allocation_loss

  views = [InterestDecomposition(D, K, gaussian_prior=False, cluster_rounds=0) for _ in range(2)]
  h = [tf.random.normal([3, 6, D], seed=s) for s in (4, 5)]
  valid, tau = tf.ones([3, 6], tf.bool), tf.linspace(1.0, 0.0, 6)
  with tf.GradientTape() as tape:
    (_, a_id), (_, a_mm) = views[0](h[0], tau, valid), views[1](h[1], tau, valid)
    loss = tf.reduce_mean(allocation_loss(a_id, a_mm, valid))
  grads = tape.gradient(loss, [views[0].gaussian.queries, views[1].gaussian.queries])
  assert float(loss) > 0
  assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_causal_encoding_at_a_position_ignores_every_later_item():
  layer = MultiScaleInterestEmbedding(D, (1,), max_len=8, encoder_layers=2, causal=True)
  bidirectional = MultiScaleInterestEmbedding(D, (1,), max_len=8, encoder_layers=2)
  emb = tf.random.stateless_normal([2, 8, D], seed=[1, 1])
  later = tf.concat([emb[:, :5], tf.random.stateless_normal([2, 3, D], seed=[2, 2])], axis=1)
  mask = tf.constant([[False, False] + [True] * 6, [True] * 8])
  h, _, _ = layer(emb, mask)
  h_later, _, _ = layer(later, mask)
  # Positions 0..4 (padding included) are unchanged; the changed positions 5..7 are not.
  np.testing.assert_allclose(h[:, :5], h_later[:, :5], atol=1e-5)
  assert not np.allclose(h[:, 5:], h_later[:, 5:], atol=1e-3)
  # The same change reaches every position of the bidirectional encoder: the test can fail.
  h, _, _ = bidirectional(emb, mask)
  h_later, _, _ = bidirectional(later, mask)
  assert not np.allclose(h[:, 2:5], h_later[:, 2:5], atol=1e-3)


def test_causal_attention_is_refused_over_multi_item_patches():
  with pytest.raises(ValueError, match="patch_sizes"):
    MultiScaleInterestEmbedding(D, (1, 2), max_len=8, encoder_layers=1, causal=True)


def _config_cases():
  """(name, layer factory, call inputs) for every layer of bivrec_tf/layers and ViewEncoder, with
  their non-default switches on."""
  rng = np.random.default_rng(7)
  feats = {
    "text": rng.normal(size=(V, 6)).astype(np.float32),
    "image": rng.normal(size=(V, 5)).astype(np.float32),
  }
  present = {"text": np.ones(V, bool), "image": rng.random(V) > 0.3}
  ids = tf.constant([[0, 3, 7, 9], [2, 2, 30, 39]], tf.int64)
  h = tf.random.stateless_normal([2, 8, D], seed=[3, 3])
  valid = tf.constant([[False] * 3 + [True] * 5, [True] * 8])
  tau = tf.linspace(7.0 / 8.0, 0.0, 8)
  seeds = tf.random.stateless_normal([2, K, D], seed=[4, 4])
  design = apply_preset(
    Config().replace(model={"dim": D, "num_interests": K}), "bivrec_design"
  ).model
  sasrec = apply_preset(Config().replace(model={"dim": D}), "sasrec").model
  history = np.zeros((2, 12), np.int64)
  history[0, -5:] = [3, 7, 9, 2, 30]
  history[1] = np.arange(10, 22)
  return [
    ("IdTower", lambda: IdTower(V, D), (ids,)),
    ("MultimodalTower", lambda: MultimodalTower.from_tables(feats, present, D), (ids,)),
    (
      "TransformerBlock",
      lambda: TransformerBlock(D, 2, dropout=0.1, ffn_mult=3, causal=True),
      (h, valid),
    ),
    (
      "MultiScaleInterestEmbedding",
      lambda: MultiScaleInterestEmbedding(
        D, (1, 2, 4), max_len=8, encoder_layers=1, num_heads=4, dropout=0.1, patch_mode="context"
      ),
      (h, valid),
    ),
    (
      "MultiScaleInterestEmbedding-causal",
      lambda: MultiScaleInterestEmbedding(D, (1,), max_len=8, encoder_layers=2, causal=True),
      (h, valid),
    ),
    (
      "GaussianAttention",
      lambda: GaussianAttention(
        D, K, sigma_init=0.3, prior_mode="gated", interest_init="orthogonal"
      ),
      (h, tau, valid),
    ),
    ("ClusterAttention", lambda: ClusterAttention(D, rounds=3), (h, seeds, valid)),
    (
      "InterestDecomposition",
      lambda: InterestDecomposition(D, K, True, 0.3, 2, "gated", "orthogonal"),
      (h, tau, valid),
    ),
    (
      "InterestDecomposition-R0",
      lambda: InterestDecomposition(D, K, False, cluster_rounds=0),
      (h, tau, valid),
    ),
    ("SemanticHead", lambda: SemanticHead(D), (seeds,)),
    ("ViewEncoder-id", lambda: ViewEncoder(IdTower(V, D), design, 12), (history,)),
    (
      "ViewEncoder-mm",
      lambda: ViewEncoder(MultimodalTower.from_tables(feats, present, D), design, 12),
      (history,),
    ),
    ("ViewEncoder-sasrec", lambda: ViewEncoder(IdTower(V, D), sasrec, 12), (history,)),
  ]


@pytest.mark.parametrize("case", range(len(_config_cases())), ids=[c[0] for c in _config_cases()])
def test_every_layer_config_round_trips_through_json_to_an_identical_layer(case):
  _, make, inputs = _config_cases()[case]
  layer = make()
  out = layer(*inputs)
  config = layer.get_config()
  clone = type(layer).from_config(json.loads(json.dumps(config)))  # JSON: what Keras stores
  assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
  clone(*inputs)
  assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]
  assert len(layer.weights) > 0
  clone.set_weights(layer.get_weights())
  for a, b in zip(tf.nest.flatten(out), tf.nest.flatten(clone(*inputs))):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mm_tower_tables_are_weights_so_a_clone_scores_items_only_after_copying_them():
  feats = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
  tower = MultimodalTower.from_tables({"text": feats}, {"text": np.ones(6, bool)}, D)
  ids = tf.constant([2, 3, 4])
  out = tower(ids).numpy()
  clone = MultimodalTower.from_config(tower.get_config())
  clone(ids)
  names = [w.name.split("/")[-1].split(":")[0] for w in clone.non_trainable_weights]
  assert {"features_text", "present_text"} <= set(names)
  # A clone from the config has zero tables: every item looks alike until the weights arrive.
  before = clone(ids).numpy()
  np.testing.assert_allclose(before[0], before[1], atol=1e-6)
  clone.set_weights(tower.get_weights())
  np.testing.assert_allclose(clone(ids).numpy(), out, atol=1e-6)
  with pytest.raises(ValueError, match="features_text"):
    MultimodalTower(6, {"text": 5}, D, features={"text": feats})


def test_mm_tower_mean_fusion_is_the_mean_of_the_modality_vectors_and_builds_no_mlp():
  rng = np.random.default_rng(3)
  feats = {"text": rng.normal(size=(5, 4)), "image": rng.normal(size=(5, 3))}
  feats = {m: f.astype(np.float32) for m, f in feats.items()}
  present = {m: np.ones(5, bool) for m in feats}
  mean = MultimodalTower.from_tables(feats, present, D, fusion="mean")
  mlp = MultimodalTower.from_tables(feats, present, D)
  ids = tf.constant([1, 4])
  out = mean(ids).numpy()
  z = [
    mean.norms[m](mean.projections[m](tf.gather(feats[m], ids))).numpy() for m in ("image", "text")
  ]
  np.testing.assert_allclose(out, (z[0] + z[1]) / 2, atol=1e-5)
  mlp(ids)

  def layer_names(tower):  # "mm_tower/fuse_hidden/kernel:0" -> "fuse_hidden"
    return {w.name.split("/")[-2] for w in tower.trainable_weights}

  assert "fuse_hidden" in layer_names(mlp)
  assert not any(n.startswith("fuse") for n in layer_names(mean))
  assert len(mean.trainable_weights) < len(mlp.trainable_weights)
  with pytest.raises(ValueError, match="fusion"):
    MultimodalTower.from_tables(feats, present, D, fusion="sum")


def test_mm_tower_fusion_hidden_sets_the_mlp_width_and_survives_the_config():
  rng = np.random.default_rng(4)
  feats = {"text": rng.normal(size=(5, 4)).astype(np.float32)}
  present = {"text": np.ones(5, bool)}
  narrow = MultimodalTower.from_tables(feats, present, D, fusion_hidden=3)
  default = MultimodalTower.from_tables(feats, present, D)
  ids = tf.constant([1, 4])
  narrow(ids), default(ids)
  assert narrow.fuse_hidden.kernel.shape == (D, 3)  # one modality: concat z is [d]
  assert default.fuse_hidden.kernel.shape == (D, 2 * D)  # DESIGN.md's 2d
  assert MultimodalTower.from_config(narrow.get_config()).fusion_hidden == 3
  with pytest.raises(ValueError, match="fusion_hidden"):
    MultimodalTower.from_tables(feats, present, D, fusion_hidden=-1)
