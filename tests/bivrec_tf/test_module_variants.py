"""Properties of the measured module variants (config switches) and of the interest diagnostics."""

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.diagnostics import (
  InterestDiagnostics,
  history_cosine,
  interest_diagnostics,
  tokens_read,
)
from bivrec_tf.late_fusion import LateFusion
from bivrec_tf.layers import (
  GaussianAttention,
  MultiScaleInterestEmbedding,
  allocation_cka_loss,
  interest_similarity,
  mutual_distillation_loss,
)
from bivrec_tf.model import BivRecModel, mixture_loss, view_scores

D, V, L = 8, 30, 8


def _model(views=("id", "mm"), **sections):
  base = {
    "model": {"dim": D, "num_interests": 3, "views": views, "dropout": 0.0},
    "loss": {"num_negatives": 4},
  }
  for name, fields in sections.items():
    base[name] = {**base.get(name, {}), **fields}
  cfg = Config().replace(**base)
  rng = np.random.default_rng(0)
  model = BivRecModel(
    cfg,
    V,
    L,
    {"text": rng.normal(size=(V, 5)).astype(np.float32)},
    {"text": np.ones(V, bool)},
    item_counts=np.ones(V),
    seen_in_train=np.ones(V, bool),
  )
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


def _eval_data():
  h = _batch()["history"]
  return tf.data.Dataset.from_tensor_slices(
    {"history": h, "targets": np.array([[20, 0], [21, 5], [22, 0], [23, 24]])}
  ).batch(2)


def test_interest_similarity_is_one_for_identical_and_zero_for_orthogonal_interests():
  same = tf.tile(tf.constant([[[1.0, 2.0, 0.0]]]), [1, 3, 1])
  ortho = tf.eye(3)[None]
  cos, sq = interest_similarity(same)
  np.testing.assert_allclose([cos[0], sq[0]], [1.0, 1.0], rtol=1e-6)
  cos, sq = interest_similarity(ortho)
  np.testing.assert_allclose([cos[0], sq[0]], [0.0, 0.0], atol=1e-7)


def test_orthogonal_init_starts_with_distinct_queries_at_unit_element_scale():
  h = tf.random.stateless_normal([2, 5, D], seed=[1, 2])
  norms = {}
  for init in ("orthogonal", "normal"):
    layer = GaussianAttention(D, 3, gaussian_prior=False, interest_init=init)
    layer(h, tf.zeros([5]), tf.ones([2, 5], tf.bool))
    q = layer.queries.numpy()
    norms[init] = np.linalg.norm(q, axis=-1)
    if init == "orthogonal":
      unit = q / norms[init][:, None]
      np.testing.assert_allclose(unit @ unit.T, np.eye(3), atol=1e-5)  # distinct from the start
  np.testing.assert_allclose(norms["orthogonal"], np.sqrt(D), rtol=1e-5)
  assert norms["normal"].max() < 0.2 * np.sqrt(D)  # the old init: near-zero queries


def test_no_prior_weights_are_built_when_the_gaussian_prior_is_off():
  layer = GaussianAttention(D, 3, gaussian_prior=False)
  layer(tf.zeros([1, 4, D]), tf.zeros([4]), tf.ones([1, 4], tf.bool))
  names = [w.name for w in layer.weights]
  assert not any("centre" in n or "width" in n or "gate" in n for n in names), names


def test_per_interest_values_pool_then_map_and_differ_over_the_same_tokens():
  """With per-interest values, interest k is (sum_t alpha[k, t] h_t) W_V^k: one history item gives
  K different interests (shared values give K copies), and no shared W_V is built."""
  h = tf.random.stateless_normal([2, 5, D], seed=[5, 6])
  one_item = tf.constant([[False] * 4 + [True]] * 2)
  outs = {}
  for values in ("shared", "per_interest", "shared+per_interest"):
    layer = GaussianAttention(D, 3, gaussian_prior=False, values=values)
    seeds, alpha = layer(h, tf.zeros([5]), one_item, return_attention=True)
    outs[values] = interest_similarity(seeds)[0].numpy()
    if values != "shared":
      assert any("w_v" in w.name for w in layer.weights) == (values == "shared+per_interest")
      pooled = np.einsum("bkt,btd->bkd", alpha.numpy(), h.numpy())
      expected = np.einsum("bkd,kde->bke", pooled, layer.value_kernels.numpy())
      if values == "shared+per_interest":
        expected += pooled @ layer.w_v.kernel.numpy()
      np.testing.assert_allclose(seeds.numpy(), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs["shared"], 1.0, rtol=1e-5)  # one item: K identical interests
  assert outs["per_interest"].max() < 0.9 and outs["shared+per_interest"].max() < 0.95


def test_per_interest_values_train_and_round_trip_through_the_config():
  model = _model(model={"interest_values": "per_interest"})
  with tf.GradientTape() as tape:
    parts, _ = model.loss_parts(_batch())
    loss = tf.add_n([tf.reduce_mean(p) for p in parts.values()])
  kernels = [v for v in model.trainable_variables if "value_kernels" in v.name]
  assert len(kernels) == 2  # one per view
  assert all(float(tf.norm(g)) > 0 for g in tape.gradient(loss, kernels))
  layer = model.views["id"].interest_decomposition
  clone = type(layer).from_config(layer.get_config())
  assert clone.gaussian.values == "per_interest"


def test_gated_prior_uses_each_users_own_span():
  """With no content signal, the gated prior alone sets the attention, on positions relative to
  each user's span: a user with two items has them at relative positions 1 (oldest) and 0."""
  layer = GaussianAttention(D, 3, gaussian_prior=True, prior_mode="gated", sigma_init=0.1)
  tau = tf.range(7, -1, -1, dtype=tf.float32) / 8.0  # fixed positions over max_len = 8
  short = tf.constant([[False] * 6 + [True] * 2])
  h = tf.random.stateless_normal([1, 8, D], seed=[3, 4])
  layer(h, tau, short)
  layer.w_q.kernel.assign(tf.zeros_like(layer.w_q.kernel))  # content logits = 0
  _, alpha = layer(h, tau, short, return_attention=True)
  mu, sigma = layer.centres.numpy(), layer.widths.numpy()
  gate = tf.nn.softplus(layer.gate_logits).numpy()
  np.testing.assert_allclose(gate, 0.1, rtol=1e-5)
  rel = np.array([1.0, 0.0])  # not tau = 1/8 and 0
  logits = -gate[:, None] * (rel[None] - mu[:, None]) ** 2 / (2 * sigma[:, None] ** 2)
  expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(alpha.numpy()[0, :, 6:], expected, rtol=1e-4)
  np.testing.assert_allclose(alpha.numpy()[0, :, :6], 0.0, atol=1e-7)


def test_context_patches_keep_one_token_per_item_and_ignore_left_padding():
  layer = MultiScaleInterestEmbedding(
    D, (1, 2, 4), max_len=8, encoder_layers=0, patch_mode="context"
  )
  emb = tf.random.stateless_normal([2, 8, D], seed=[5, 6])
  mask = tf.constant([[False] * 3 + [True] * 5, [True] * 8])
  h, tau, valid = layer(emb, mask)
  assert h.shape == (2, 8, D) and tau.shape == (8,)
  np.testing.assert_array_equal(valid.numpy(), mask.numpy())
  # Whatever sits in the padding slots, the valid tokens are the same.
  emb_row = tf.concat([tf.zeros([1, 4, D]), emb[:1, 4:]], axis=1)
  h_row, _, _ = layer(emb_row, tf.constant([[False] * 4 + [True] * 4]))
  h_ref, _, _ = layer(emb[:1], tf.constant([[False] * 4 + [True] * 4]))
  np.testing.assert_allclose(h_row[0, 4:], h_ref[0, 4:], atol=1e-5)


def test_cka_allocation_loss_is_zero_for_equal_clusterings_one_for_uniform_and_permutation_free():
  logits = tf.random.stateless_normal([3, 6, 4], seed=[7, 8])
  a = tf.nn.softmax(3.0 * logits, axis=-1)
  b = tf.nn.softmax(3.0 * tf.random.stateless_normal([3, 6, 4], seed=[9, 1]), axis=-1)
  valid = tf.constant([[True] * 6, [True] * 4 + [False] * 2, [True] * 6])
  np.testing.assert_allclose(allocation_cka_loss(a, a, valid), 0.0, atol=1e-5)
  np.testing.assert_allclose(
    allocation_cka_loss(a, tf.gather(a, [3, 1, 0, 2], axis=-1), valid), 0.0, atol=1e-5
  )
  uniform = tf.fill([3, 6, 4], 0.25)
  np.testing.assert_allclose(allocation_cka_loss(a, uniform, valid), 1.0, atol=1e-4)
  assert float(tf.reduce_min(allocation_cka_loss(a, b, valid))) > 0.05


def test_mutual_distillation_pulls_each_view_towards_the_other_and_not_the_teacher():
  logits_id = tf.Variable([[2.0, 0.0, -1.0]])
  logits_mm = tf.Variable([[0.0, 1.0, 0.0]])
  with tf.GradientTape() as tape:
    loss = mutual_distillation_loss(logits_id, logits_mm)
  g_id, g_mm = tape.gradient(loss, [logits_id, logits_mm])
  # The ID view's top logit is pushed down, the MM view's first logit up: toward each other.
  assert g_id.numpy()[0, 0] > 0 and g_mm.numpy()[0, 0] < 0
  # Equal distributions: no gradient.
  with tf.GradientTape() as tape:
    loss = mutual_distillation_loss(logits_id, tf.identity(logits_id) + 0.0)
  np.testing.assert_allclose(tape.gradient(loss, logits_id), 0.0, atol=1e-6)


@pytest.mark.parametrize(
  "sem_mode",
  ["contrast", "mutual", "mutual_nt", "ensemble", "cross", "fused", "item", "mutual+item"],
)
def test_every_sem_mode_trains_both_views(sem_mode):
  model = _model(loss={"sem_mode": sem_mode, "lambda_sem": 1.0})
  batch = _batch()
  with tf.GradientTape(persistent=True) as tape:
    _, terms = model.compute_losses(batch)
    loss = tf.reduce_mean(terms["sem"])
  for view in ("id", "mm"):
    grads = [g for g in tape.gradient(loss, model.views[view].trainable_variables) if g is not None]
    assert float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads])) > 1e-4


def test_gradient_shares_sum_to_one_per_view_and_zero_lambda_terms_are_absent():
  model = _model(loss={"lambda_div": 0.5, "lambda_alloc": 0.0})
  shares = model.gradient_shares(_batch())
  for view in ("id", "mm"):
    total = sum(v for k, v in shares.items() if k.endswith("_" + view))
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    assert shares[f"gshare_rec_{view}_{view}"] > 0 and shares[f"gshare_div_{view}_{view}"] > 0
  assert not any("alloc" in k for k in shares)
  assert shares["gshare_rec_mm_id"] == 0.0  # the MM view's loss never reaches the ID encoder


def test_joint_term_is_the_interest_level_fused_retrieval_loss_and_trains_both_views():
  """lambda_joint: the retrieval loss on max_k (s_id,k + s_mm,k) / 2 (interest k of both views
  scoring the candidates together), weighted, with its gradient in both encoders; off by default."""
  assert "joint" not in _model().compute_losses(_batch())[1]
  model = _model(loss={"lambda_joint": 2.0, "lambda_sem": 0.0, "lambda_alloc": 0.0})
  batch = _batch()
  with tf.GradientTape(persistent=True) as tape:
    parts, terms = model.loss_parts(batch)
    loss = tf.reduce_mean(parts["joint"])
  np.testing.assert_allclose(parts["joint"], 2.0 * terms["joint"], rtol=1e-6)
  # The formula, from the model's own queries and candidate vectors (no accidental hits here:
  # targets and negatives are distinct; the sampling correction as the model applies it).
  candidates, n_pos = model.global_candidates(
    tf.constant(batch["target"], tf.int64), tf.constant(batch["negatives"], tf.int64)
  )
  u = {v: model.views[v](tf.constant(batch["history"]))[0].numpy() for v in ("id", "mm")}
  e = {v: model.views[v].item_vectors(candidates).numpy() for v in ("id", "mm")}
  per_interest = sum(np.einsum("bkd,nd->bkn", u[v], e[v]) for v in ("id", "mm")) / 2
  probs = model._sampling_probability(candidates, n_pos, tf.shape(candidates)[0] - n_pos)
  logits = per_interest.max(axis=1) / model.config.model.tau_rec - np.log(probs.numpy())[None]
  logits -= logits.max(axis=1, keepdims=True)
  want = -np.log(np.exp(np.diag(logits)) / np.exp(logits).sum(axis=1))
  np.testing.assert_allclose(terms["joint"], want, rtol=1e-4, atol=1e-5)
  for view in ("id", "mm"):
    grads = [g for g in tape.gradient(loss, model.views[view].trainable_variables) if g is not None]
    assert float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads])) > 1e-4
  shares = model.gradient_shares(batch)
  assert shares["gshare_joint_id"] > 0 and shares["gshare_joint_mm"] > 0


def test_mixture_term_is_the_target_likelihood_of_the_views_as_equal_experts():
  """lambda_mix: -log(p_id(t) / 2 + p_mm(t) / 2) from the views' own retrieval losses, weighted;
  each view's gradient is its own loss's times its responsibility p_v / (p_id + p_mm)."""
  assert "mix" not in _model().compute_losses(_batch())[1]
  model = _model(loss={"lambda_mix": 3.0, "lambda_sem": 0.0, "lambda_alloc": 0.0})
  parts, terms = model.loss_parts(_batch())
  p_id, p_mm = np.exp(-terms["rec_id"].numpy()), np.exp(-terms["rec_mm"].numpy())
  np.testing.assert_allclose(terms["mix"], -np.log(p_id / 2 + p_mm / 2), rtol=1e-5)
  np.testing.assert_allclose(parts["mix"], 3.0 * terms["mix"], rtol=1e-6)
  ce_id, ce_mm = tf.Variable([0.5, 3.0]), tf.Variable([2.0, 0.1])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(mixture_loss(ce_id, ce_mm))
  g_id, g_mm = tape.gradient(loss, [ce_id, ce_mm])
  r_id = np.exp(-0.5) / (np.exp(-0.5) + np.exp(-2.0)), np.exp(-3.0) / (np.exp(-3.0) + np.exp(-0.1))
  np.testing.assert_allclose(g_id, r_id, rtol=1e-5)
  np.testing.assert_allclose(g_id + g_mm, [1.0, 1.0], rtol=1e-5)
  shares = model.gradient_shares(_batch())
  assert shares["gshare_mix_id"] > 0 and shares["gshare_mix_mm"] > 0


def test_no_semantic_heads_without_the_contrastive_loss():
  assert not hasattr(_model(loss={"sem_mode": "contrast", "lambda_sem": 0.0}), "semantic_heads")
  assert not hasattr(_model(loss={"sem_mode": "mutual"}), "semantic_heads")
  assert hasattr(_model(loss={"sem_mode": "contrast"}), "semantic_heads")


def test_interest_diagnostics_shares_sum_to_one_and_single_interest_wins_everything():
  diag = interest_diagnostics(_model(), _eval_data())
  for view in ("id", "mm"):
    np.testing.assert_allclose(sum(diag[f"win_{view}"]), 1.0, rtol=1e-4)
    assert diag[f"maxwin_{view}"] >= 1.0 / 3 - 1e-6
    assert -1.0 <= diag[f"cos_{view}"] <= 1.0
    # Each of the 3 interests reads between one and all of the 4 valid tokens, sharpest first.
    assert diag[f"tokens_{view}"] == 4.0 and len(diag[f"read_{view}"]) == 3
    assert 1.0 <= diag[f"read_{view}"][0] <= diag[f"read_{view}"][-1] <= 4.0
  single = interest_diagnostics(_model(model={"num_interests": 1}), _eval_data())
  assert single["win_id"] == [1.0] and single["cos_id"] == 0.0


def test_history_cosine_averages_pairs_of_different_valid_items_per_user():
  model = _model()
  history = np.array(
    [
      [0, 0, 5, 6, 7, 5],  # padding ignored; the repeated 5 pairs only with 6 and 7
      [0, 0, 0, 0, 9, 9],  # one item twice: no pair of different items, not counted
      [0, 0, 0, 0, 1, 8],  # id 1 (out of vocabulary) is not a history item: not counted
      [0, 0, 0, 3, 4, 12],
    ],
    np.int64,
  )
  enc = model.views["mm"]
  total, users = history_cosine(enc, tf.constant(history))
  expected = []
  for row in history:
    ids = [i for i in row if i >= 2]
    e = enc.item_vectors(tf.constant(ids, tf.int64)).numpy()
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    cos = [e[a] @ e[b] for a in range(len(ids)) for b in range(len(ids)) if ids[a] != ids[b]]
    if cos:
      expected.append(np.mean(cos))
  assert float(users) == 2.0 == len(expected)
  np.testing.assert_allclose(float(total), np.sum(expected), rtol=1e-5)
  diag = interest_diagnostics(model, _eval_data())
  assert all(-1.0 <= diag[f"histcos_{v}"] <= 1.0 for v in ("id", "mm"))


def test_late_fusion_scores_each_view_with_its_own_model():
  id_model = _model(views=("id",))
  mm_model = _model(views=("mm",))
  fused = LateFusion(id_model, mm_model)
  h = _batch()["history"]
  q = fused.queries(h)
  np.testing.assert_allclose(q["id"], id_model.queries(h)["id"])
  np.testing.assert_allclose(q["mm"], mm_model.queries(h)["mm"])
  np.testing.assert_allclose(fused.item_table("mm"), mm_model.item_table("mm"))
  with pytest.raises(ValueError, match="ID-only and an MM-only"):
    LateFusion(mm_model, id_model)


def test_item_alignment_is_lower_for_matching_views_and_ignores_duplicate_candidates():
  from bivrec_tf.layers import item_alignment_loss

  e = tf.math.l2_normalize(tf.random.stateless_normal([6, 8], seed=[2, 3]), axis=-1)
  ids = tf.constant([2, 3, 4, 5, 6, 7], tf.int64)
  aligned = float(tf.reduce_mean(item_alignment_loss(e, e, ids, 0.1)))
  shuffled = float(tf.reduce_mean(item_alignment_loss(e, tf.roll(e, 2, axis=0), ids, 0.1)))
  assert aligned < shuffled - 1.0
  dup = tf.concat([e, e[:1]], axis=0)
  dup_ids = tf.concat([ids, ids[:1]], axis=0)
  loss = item_alignment_loss(dup, dup, dup_ids, 0.1)
  # The repeated item is not its own copy's negative: its loss is what it is without the copy.
  np.testing.assert_allclose(loss[0], loss[6], rtol=1e-5)
  np.testing.assert_allclose(loss[0], item_alignment_loss(e, e, ids, 0.1)[0], rtol=1e-4)


def test_combined_sem_modes_sum_their_terms():
  batch = _batch()
  terms = {}
  for mode in ("mutual", "item", "mutual+item"):
    tf.keras.utils.set_random_seed(3)
    _, t = _model(loss={"sem_mode": mode, "lambda_sem": 1.0}).compute_losses(batch)
    terms[mode] = t["sem"].numpy()
  np.testing.assert_allclose(terms["mutual+item"], terms["mutual"] + terms["item"], rtol=1e-5)
  with pytest.raises(ValueError, match="sem_mode"):
    Config().replace(loss={"sem_mode": "mutual+mutual"})


def test_retrieval_loss_equals_the_tfrs_retrieval_task_with_multi_interest_queries():
  import tensorflow_recommenders as tfrs

  model = _model(loss={"lambda_sem": 0.0, "lambda_alloc": 0.0})
  batch = _batch()
  _, terms = model.compute_losses(batch)
  candidates, b = model.global_candidates(
    tf.constant(batch["target"], tf.int64), tf.constant(batch["negatives"], tf.int64)
  )
  probs = model._sampling_probability(candidates, b, tf.shape(candidates)[0] - b)
  task = tfrs.tasks.Retrieval(
    loss=tf.keras.losses.CategoricalCrossentropy(
      from_logits=True, reduction=tf.keras.losses.Reduction.NONE
    ),
    temperature=model.config.model.tau_rec,
    remove_accidental_hits=True,
  )
  for view in ("id", "mm"):
    u = model.queries(batch["history"])[view]
    expected = task(
      u,
      model.views[view].item_vectors(candidates),
      candidate_sampling_probability=probs,
      candidate_ids=candidates,
      compute_metrics=False,
      compute_batch_metrics=False,
    )
    np.testing.assert_allclose(terms[f"rec_{view}"], expected, rtol=1e-5)


# --- routing: what each interest is trained on ---


def test_lse_routing_is_a_soft_max_that_trains_every_interest():
  tf.keras.utils.set_random_seed(0)
  model = _model(model={"routing": "lse", "routing_temperature": 0.5})
  u = tf.Variable(tf.math.l2_normalize(tf.random.normal([2, 3, D]), axis=-1))
  vectors = tf.math.l2_normalize(tf.random.normal([5, D]), axis=-1)
  tau = model.config.model.tau_rec
  with tf.GradientTape() as tape:
    soft = model._route(u, vectors, tau)
    total = tf.reduce_sum(soft)
  hard = model._route(u, vectors, tau, "max")
  per_interest = np.einsum("bkd,nd->bkn", u.numpy(), vectors.numpy()) / tau
  want = 0.5 * np.log(np.exp(per_interest / 0.5).sum(axis=1))
  np.testing.assert_allclose(soft, want, rtol=1e-5)
  # Between the max and the max + t log K; every interest gets gradient.
  assert np.all(soft.numpy() >= hard.numpy() - 1e-5)
  assert np.all(soft.numpy() <= hard.numpy() + 0.5 * np.log(3) + 1e-5)
  grad = tape.gradient(total, u).numpy()
  assert np.all(np.linalg.norm(grad, axis=-1) > 0)
  # A colder temperature is closer to the max (what inference uses).
  cold = _model(model={"routing": "lse", "routing_temperature": 0.01})._route(u, vectors, tau)
  np.testing.assert_allclose(cold, hard, atol=0.01 * np.log(3) + 1e-5)
  with pytest.raises(ValueError, match="`routing_temperature`"):
    Config().replace(model={"routing_temperature": 0.5})  # read by "lse" only


def test_target_routing_scores_the_positive_as_max_and_negatives_no_higher():
  tf.keras.utils.set_random_seed(0)
  model = _model(model={"routing": "target"})
  rng = np.random.default_rng(0)
  u = tf.math.l2_normalize(tf.constant(rng.normal(size=(4, 3, D)), tf.float32), axis=-1)
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
  tf.keras.utils.set_random_seed(0)
  parts, _ = _model(views=("id",), model={"routing": "max+target"}).loss_parts(_batch())
  assert set(parts) >= {"rec_id", "route_id"}
  tf.keras.utils.set_random_seed(0)
  parts_max, _ = _model(views=("id",)).loss_parts(_batch())
  assert "route_id" not in parts_max
  np.testing.assert_allclose(parts["rec_id"].numpy(), parts_max["rec_id"].numpy(), rtol=1e-5)


def test_sem_warmup_scales_the_weight_by_the_step_while_training_only():
  model = _model(loss={"lambda_sem": 2.0, "sem_warmup_steps": 10})
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  model.optimizer.iterations.assign(4)
  batch = _batch()
  parts, terms = model.loss_parts(batch, training=True)
  np.testing.assert_allclose(parts["sem"], 2.0 * 0.4 * terms["sem"], rtol=1e-5)
  parts, terms = model.loss_parts(batch, training=False)  # evaluation: the full weight
  np.testing.assert_allclose(parts["sem"], 2.0 * terms["sem"], rtol=1e-5)
  model.optimizer.iterations.assign(25)  # past the warm-up: the full weight
  parts, terms = model.loss_parts(batch, training=True)
  np.testing.assert_allclose(parts["sem"], 2.0 * terms["sem"], rtol=1e-5)


def test_sem_decay_falls_linearly_to_zero_over_its_epochs_while_training_only():
  model = _model(loss={"lambda_sem": 2.0, "sem_decay_epochs": 2.0})
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  batch = _batch()
  model.optimizer.iterations.assign(5)
  parts, terms = model.loss_parts(batch, training=True)  # no steps_per_epoch yet: no decay
  np.testing.assert_allclose(parts["sem"], 2.0 * terms["sem"], rtol=1e-5)
  model.steps_per_epoch = 10  # decay over 20 steps
  parts, terms = model.loss_parts(batch, training=True)
  np.testing.assert_allclose(parts["sem"], 2.0 * 0.75 * terms["sem"], rtol=1e-5)
  parts, terms = model.loss_parts(batch, training=False)  # evaluation: the full weight
  np.testing.assert_allclose(parts["sem"], 2.0 * terms["sem"], rtol=1e-5)
  model.optimizer.iterations.assign(30)  # past the decay: no teaching, not a negative weight
  parts, terms = model.loss_parts(batch, training=True)
  assert np.all(terms["sem"].numpy() > 0) and np.all(parts["sem"].numpy() == 0.0)


def test_sem_decay_refuses_a_negative_or_nan_length():
  for bad in (-1.0, float("nan")):
    with pytest.raises(ValueError, match="sem_decay_epochs"):
      Config().replace(loss={"sem_decay_epochs": bad})


def test_seeding_attention_reads_only_valid_tokens_and_counts_what_each_interest_reads():
  model = _model()
  history = _batch()["history"]
  for view in ("id", "mm"):
    alpha, valid = model.views[view].seeding_attention(history)
    alpha, valid = alpha.numpy(), valid.numpy()
    assert alpha.shape == (4, 3, L) and valid.sum(1).tolist() == [4] * 4
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
    assert np.all(alpha[:, :, ~valid[0]] == 0.0)  # padding gets no attention
  # exp(entropy): a one-hot interest reads 1 token, a uniform one all n valid tokens.
  n = 4
  one_hot = np.eye(1, n)[0]
  uniform = np.full(n, 1.0 / n)
  half = np.array([0.5, 0.5, 0.0, 0.0])
  read, n_valid = tokens_read(np.stack([[uniform, one_hot, half]] * 2), np.ones((2, n), bool))
  np.testing.assert_allclose(read, [[1.0, 2.0, 4.0]] * 2, rtol=1e-6)  # sorted from the sharpest
  assert n_valid.tolist() == [n, n]
  assert (
    _model(model={"num_interests": 1, "readout": "last"}).views["id"].seeding_attention(history)
    is None
  )


def test_content_keys_make_the_attention_blind_to_recency_and_tokens_keys_do_not():
  history = _batch()["history"]

  def attention_after_shuffling_recency(**fields):
    model = _model(model=fields)
    view = model.views["id"]
    before = view.seeding_attention(history)[0].numpy()
    for table in view.interest_embedding.recency_emb:
      table.assign(tf.random.stateless_normal(table.shape, seed=[7, 0]))
    return before, view.seeding_attention(history)[0].numpy()

  before, after = attention_after_shuffling_recency(interest_keys="content")
  np.testing.assert_allclose(after, before, atol=1e-6)
  before, after = attention_after_shuffling_recency(interest_keys="tokens")
  assert np.abs(after - before).max() > 1e-3


def test_recent_interest_is_the_most_recent_items_token():
  model = _model(model={"recent_interest": True})
  history = _batch()["history"]
  for view in ("id", "mm"):
    encoder = model.views[view]
    alpha, valid = encoder.seeding_attention(history)
    np.testing.assert_allclose(alpha[:, 0].numpy(), np.eye(L)[[L - 1] * 4])  # one-hot, last token
    assert encoder.interest_decomposition.gaussian.queries.shape[0] == 2  # K - 1 attend
    aligned = encoder._align(tf.constant(history))  # pylint: disable=protected-access
    h = encoder._tokens(encoder.embed(aligned), aligned >= 2)[0]  # pylint: disable=protected-access
    last = encoder.interest_decomposition.gaussian.w_v(h[:, -1])
    u = model.queries(history)[view][:, 0]
    np.testing.assert_allclose(u, tf.math.l2_normalize(last, axis=-1), atol=1e-5)


@pytest.mark.parametrize(
  "fields",
  [
    {"interest_keys": "content", "encoder_layers": 1},
    {"interest_keys": "recency"},
    {"recent_interest": True, "num_interests": 1},
    {"recent_interest": True, "interest_values": "per_interest"},
  ],
)
def test_interest_key_and_recent_interest_settings_that_cannot_work_are_refused(fields):
  with pytest.raises(ValueError, match="interest_keys|recent_interest"):
    Config().replace(model=fields)


def test_the_mm_view_can_have_its_own_interest_count_and_both_views_train():
  model = _model(model={"mm_num_interests": 2})  # ID view K = 3
  batch = _batch()
  out = model(batch["history"])
  assert out["id"][0].shape[1] == 3 and out["mm"][0].shape[1] == 2
  assert out["mm"][1].shape[-1] == 2  # the MM view's allocation over its own 2 interests
  with tf.GradientTape(persistent=True) as tape:
    parts, terms = model.loss_parts(batch)
    loss = tf.reduce_mean(tf.add_n(list(parts.values())))
  assert np.isfinite(float(loss)) and np.isfinite(float(tf.reduce_mean(terms["alloc"])))
  for view in ("id", "mm"):
    grads = tape.gradient(loss, model.views[view].trainable_variables)
    assert (
      float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads if g is not None])) > 0
    )
  stats = interest_diagnostics(model, _eval_data())
  assert len(stats["win_id"]) == 3 and len(stats["win_mm"]) == 2
  np.testing.assert_allclose(sum(stats["win_mm"]), 1.0, rtol=1e-5)
  # the same K in both views is the plain model: same variables, same shapes
  same = _model(model={"mm_num_interests": 3})
  assert [w.shape for w in same.weights] == [w.shape for w in _model().weights]


def test_the_mm_view_can_have_its_own_dim_and_both_views_train():
  model = _model(model={"mm_dim": 4})  # ID view d = 8
  batch = _batch()
  out = model(batch["history"])
  assert out["id"][0].shape[-1] == D and out["mm"][0].shape[-1] == 4
  assert model.views["mm"].tower.dim == 4 and model.views["id"].tower.dim == D
  assert model.item_table("mm").shape[-1] == 4 and model.item_table("id").shape[-1] == D
  with tf.GradientTape() as tape:
    parts, terms = model.loss_parts(batch)
    loss = tf.reduce_mean(tf.add_n(list(parts.values())))
  assert np.isfinite(float(loss)) and float(tf.reduce_mean(terms["sem"])) > 0
  grads = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None for g in grads)  # every weight of both views is trained
  stats = interest_diagnostics(model, _eval_data())
  assert np.isfinite(stats["cos_mm"]) and len(stats["win_mm"]) == 3
  # the ID view is the d = 8 model's: same shapes as the plain model's ID weights
  plain = _model()
  assert [w.shape for w in model.views["id"].weights] == [
    w.shape for w in plain.views["id"].weights
  ]
  # DESIGN.md's contrastive L_sem: each view's head maps its own d to dim
  contrast = _model(model={"mm_dim": 4}, loss={"sem_mode": "contrast", "lambda_sem": 0.1})
  _, contrast_terms = contrast.loss_parts(batch)
  assert np.isfinite(float(tf.reduce_mean(contrast_terms["sem"])))
  assert contrast.semantic_heads["mm"].out.kernel.shape == (D, D)
  assert contrast.semantic_heads["mm"].hidden.kernel.shape == (4, D)
  # mm_dim = dim is the plain model
  same = _model(model={"mm_dim": D})
  assert [w.shape for w in same.weights] == [w.shape for w in plain.weights]


@pytest.mark.parametrize(
  "sections",
  [
    {"model": {"mm_dim": -1}},
    {"model": {"mm_dim": 5, "num_heads": 2}},
    {"model": {"mm_dim": 32}, "loss": {"sem_mode": "cross"}},
    {"model": {"mm_dim": 32}, "loss": {"sem_mode": "mutual+item", "lambda_sem": 0.0}},
  ],
)
def test_mm_dims_that_cannot_work_are_refused(sections):
  with pytest.raises(ValueError, match="mm_dim"):
    Config().replace(**sections)


def test_global_query_is_added_to_every_interest_trains_and_is_left_out_of_the_cosine():
  tf.keras.utils.set_random_seed(7)
  model = _model(model={"global_query": True})
  batch = _batch()
  for view in ("id", "mm"):
    model.views[view].global_query.assign(np.full(D, 0.5, np.float32))
  queries = model.queries(batch["history"])
  tf.keras.utils.set_random_seed(7)
  plain = _model()  # same seed: the same weights but g
  plain_queries = plain.queries(batch["history"])
  for view in ("id", "mm"):
    np.testing.assert_allclose(queries[view] - 0.5, plain_queries[view], atol=1e-5)
    np.testing.assert_allclose(
      model.views[view].personal(queries[view]), plain_queries[view], atol=1e-5
    )
  with tf.GradientTape() as tape:
    parts, terms = model.loss_parts(batch)
    loss = tf.reduce_mean(tf.add_n(list(parts.values())))
  g = model.views["id"].global_query
  assert float(tf.norm(tape.gradient(loss, g))) > 0
  _, plain_terms = plain.loss_parts(batch)
  np.testing.assert_allclose(terms["cos_id"], plain_terms["cos_id"], atol=1e-5)  # without g
  assert not any("global_query" in w.name for w in plain.weights)
  # the centring penalty: lambda ||mean of the u_k over users and K||^2, one value per example
  centred = _model(model={"global_query": True}, loss={"lambda_centre": 2.0})
  parts, _ = centred.loss_parts(batch)
  u = centred.views["mm"].personal(centred.queries(batch["history"])["mm"]).numpy()
  expected = 2.0 * np.sum(u.mean(axis=(0, 1)) ** 2)
  np.testing.assert_allclose(parts["centre_mm"], np.full(4, expected), rtol=1e-5)
  with pytest.raises(ValueError, match="lambda_centre"):
    Config().replace(loss={"lambda_centre": 1.0})


@pytest.mark.parametrize(
  "sections",
  [
    {"model": {"mm_num_interests": -1}},
    {"model": {"mm_num_interests": 2, "fusion": "interest"}},
    {"model": {"mm_num_interests": 2}, "loss": {"lambda_joint": 1.0}},
    {"model": {"mm_num_interests": 1, "num_interests": 1, "readout": "last", "patch_sizes": (1,)}},
    {"model": {"mm_num_interests": 1, "recent_interest": True}},
  ],
)
def test_mm_interest_counts_that_cannot_work_are_refused(sections):
  with pytest.raises(ValueError, match="mm_num_interests|recent_interest"):
    Config().replace(**sections)


def _dropout_histories(views="independent", rate=0.5, step=3, training=True):
  model = _model(model={"history_dropout": rate, "history_dropout_views": views})
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  model.optimizer.iterations.assign(step)
  history = tf.constant(np.arange(2, 2 + 64 * L).reshape(64, L))
  return history, model._training_histories(history, training)


def test_history_dropout_drops_items_but_the_most_recent_at_its_rate_per_view():
  history, out = _dropout_histories()
  for v in ("id", "mm"):
    h = out[v].numpy()
    np.testing.assert_array_equal(h[:, -1], history[:, -1])  # the most recent item stays
    kept = h[:, :-1] != 0
    np.testing.assert_array_equal(h[:, :-1][kept], history.numpy()[:, :-1][kept])  # not moved
    assert 0.4 < 1.0 - kept.mean() < 0.6  # rate 0.5 over 448 items
  assert (out["id"].numpy() != out["mm"].numpy()).mean() > 0.2  # independent draws
  again = _dropout_histories()[1]
  np.testing.assert_array_equal(again["id"], out["id"])  # reproducible from (seed, step)
  later = _dropout_histories(step=4)[1]
  assert (later["id"].numpy() != out["id"].numpy()).any()  # a new draw each step


def test_shared_history_dropout_gives_both_views_one_draw_and_inference_never_drops():
  history, out = _dropout_histories("shared")
  np.testing.assert_array_equal(out["id"], out["mm"])
  assert (out["id"].numpy() == 0).any()
  history, out = _dropout_histories(training=False)
  assert out["id"] is history and out["mm"] is history


def test_history_dropout_trains_and_l_alloc_compares_only_the_items_both_views_read():
  model = _model(model={"history_dropout": 0.5}, loss={"lambda_alloc": 1.0})
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  batch = _batch()
  _, terms = model.loss_parts(batch, training=True)
  assert np.isfinite(terms["alloc"]).all()
  before = [w.numpy() for w in model.trainable_weights]
  model.train_step(batch)
  changed = {
    w.name for w, b in zip(model.trainable_weights, before) if np.abs(w.numpy() - b).max() > 0
  }
  assert any("id_view" in n for n in changed) and any("mm_view" in n for n in changed)
  assert all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)
  with pytest.raises(ValueError, match="history_dropout"):
    Config().replace(model={"history_dropout": 1.0})
  with pytest.raises(ValueError, match="history_dropout_views"):
    Config().replace(model={"history_dropout_views": "both"})


def test_compiled_diagnostics_and_gradient_shares_equal_the_eager_ones():
  # The validation callback keeps compiled copies (a tf.function each), made once per model.
  model = _model()
  compiled = InterestDiagnostics(model, eager_batches=0)
  eager = InterestDiagnostics(model, eager_batches=100)  # the same per-batch work, op by op
  got, want = compiled(_eval_data()), eager(_eval_data())
  assert compiled._batch.compiled is not None and eager._batch.compiled is None
  assert got.keys() == want.keys() and {"cos_id", "win_mm", "read_id"} <= set(got)
  for name in got:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
  batch = _batch()
  shares = model.gradient_shares(batch, tf.function(model.gradient_norms))
  expected = model.gradient_shares(batch)
  assert shares.keys() == expected.keys() and "gshare_sem_mm" in shares
  for name in shares:
    np.testing.assert_allclose(shares[name], expected[name], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sum(v for k, v in shares.items() if k.endswith("_id")), 1.0, 1e-5)


def test_warm_compiled_runs_eagerly_first_then_traces_once():
  from bivrec_tf.warm_compiled import WarmCompiled

  eager_flags = []

  def double(x):
    eager_flags.append(tf.executing_eagerly())  # Python runs eagerly, or once per trace
    return 2 * x

  f = WarmCompiled(double, eager_calls=2)
  for n in (3, 3, 3, 4, 3, 5):  # batch sizes, as an evaluation's last batch is smaller
    np.testing.assert_array_equal(f(tf.ones([n])), 2 * np.ones(n))
  assert eager_flags[:2] == [True, True] and f.compiled is not None
  assert 1 <= eager_flags.count(False) <= 2  # traced once, or once more with a relaxed shape
  with pytest.raises(ValueError, match="eager_calls"):
    WarmCompiled(double, eager_calls=-1)


def test_averaged_weights_swaps_in_the_warmed_up_moving_average_and_back():
  from bivrec_tf.ema import AveragingAdam, averaged_weights, moving_averages

  model = _model()
  momentum = 0.5
  model.compile(optimizer=AveragingAdam(1e-2, use_ema=True, ema_momentum=momentum))
  assert moving_averages(model) == []  # no averages before the first step: the block is a no-op
  with averaged_weights(model):
    pass
  batch = _batch()
  start = [w.numpy() for w in model.trainable_variables]
  model.train_step(batch)
  after_one = [w.numpy() for w in model.trainable_variables]
  model.train_step(batch)
  raw = [w.numpy() for w in model.trainable_variables]
  # avg starts at the initial weights; m_t = min(m, (1 + t) / (10 + t)): 0.1 at t = 0, 2/11 at 1
  m0, m1 = min(momentum, 1 / 10), min(momentum, 2 / 11)
  expected = [
    m1 * (m0 * w0 + (1 - m0) * w1) + (1 - m1) * w2 for w0, w1, w2 in zip(start, after_one, raw)
  ]
  assert any(np.abs(e - r).max() > 1e-6 for e, r in zip(expected, raw))
  with averaged_weights(model):
    for w, e in zip(model.trainable_variables, expected):
      np.testing.assert_allclose(w.numpy(), e, rtol=1e-5, atol=1e-6)
  for w, r in zip(model.trainable_variables, raw):  # training goes on from the raw weights
    np.testing.assert_array_equal(w.numpy(), r)
  with pytest.raises(ValueError, match="ema_momentum"):
    Config().replace(train={"ema_momentum": 1.0})


def test_adaptive_interests_follow_mind_rule_and_score_as_the_users_own_interests():
  """MIND's K_u = max(1, min(K, floor(log2 n))): slots beyond K_u repeat interest 0, so every
  max over interests equals the max over the user's own K_u, and the diagnostics count only
  them (a user with one interest adds no cosine and wins with interest 0)."""
  h = np.zeros((4, L), np.int64)
  for row, n in enumerate([1, 3, 4, 8]):  # K_u = 1, 1, 2, 3 (K = 3)
    h[row, L - n :] = np.arange(2, 2 + n)
  fixed, adaptive = _model(), _model(model={"adaptive_interests": True})
  adaptive.set_weights(fixed.get_weights())  # the same weights: only the count differs
  active = adaptive.views["id"].active_interests(h).numpy()
  np.testing.assert_array_equal(active.sum(axis=1), [1, 1, 2, 3])
  np.testing.assert_array_equal(fixed.views["id"].active_interests(h).numpy().sum(axis=1), 3)
  table = adaptive.item_table("id")
  for v in ("id", "mm"):
    u_all, u_own = fixed.queries(h)[v].numpy(), adaptive.queries(h)[v].numpy()
    for row, k_u in enumerate(active.sum(axis=1)):
      np.testing.assert_allclose(u_own[row, :k_u], u_all[row, :k_u], rtol=1e-6, atol=1e-7)
      np.testing.assert_array_equal(u_own[row, k_u:], np.repeat(u_own[row, :1], 3 - k_u, 0))
  own = view_scores(adaptive.queries(h)["id"], table, 0.07).numpy()
  u_all = fixed.queries(h)["id"].numpy()
  want = [np.max(u_all[r, :k] @ table.numpy().T, axis=0) / 0.07 for r, k in enumerate([1, 1, 2, 3])]
  np.testing.assert_allclose(own, np.stack(want), rtol=1e-5, atol=1e-5)
  data = tf.data.Dataset.from_tensor_slices(
    {"history": h, "targets": np.array([[20, 0], [21, 0], [22, 0], [23, 0]])}
  ).batch(4)
  diag = interest_diagnostics(adaptive, data)
  for v in ("id", "mm"):
    u_all = fixed.queries(h)[v].numpy()
    cos = [interest_similarity(u_all[None, r, :k])[0].numpy()[0] for r, k in ((2, 2), (3, 3))]
    assert diag[f"cos_{v}"] == pytest.approx(np.mean(cos), rel=1e-5)  # rows 0, 1 add nothing
  # rows 0 and 1 have one interest: interest 0 wins their targets
  assert max(diag["win_id"]) >= 0.5 and sum(diag["win_id"]) == pytest.approx(1.0)
  _, terms = adaptive.loss_parts(_batch(), training=True)
  assert np.all(np.isfinite(terms["cos_id"].numpy()))


@pytest.mark.parametrize("mode", ["guided", "soft_guided", "batch_guided"])
def test_guided_distillation_modes_train_both_encoders(mode):
  # seeded: with 4 examples, "guided" can draw an init where one view wins every example and
  # then (correctly) sends the other view no gradient
  tf.keras.utils.set_random_seed(0)
  model = _model(loss={"sem_mode": mode, "lambda_alloc": 0.0})
  with tf.GradientTape(persistent=True) as tape:
    parts, _ = model.loss_parts(_batch(), training=True)
    sem = tf.reduce_mean(parts["sem"])
  assert np.isfinite(float(sem)) and float(sem) > 0
  for view in ("id", "mm"):
    grads = tape.gradient(sem, model.views[view].trainable_variables)
    assert any(
      g is not None and float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) > 0 for g in grads
    ), view


def _val_guided(**loss):
  """A model with sem_mode "val_guided" (no L_alloc, so the sem term is alone), `loss` on top."""
  return _model(loss={"sem_mode": "val_guided", "lambda_alloc": 0.0, **loss})


def _sem_at(model, quality):
  """The per-example sem term after the callback wrote (ID, MM) validation NDCG `quality`."""
  model.view_quality.assign(quality)
  return model.loss_parts(_batch(), training=False)[1]["sem"].numpy()


def test_val_guided_distillation_discounts_the_view_weaker_on_validation():
  model = _val_guided(guide_power=2.0)
  assert _model(loss={"sem_mode": "mutual"}).view_quality is None  # built only for this mode
  # with lambda_sem = 0 nothing is built and the term stays a (mutual-weighted) diagnostic
  off = _model(loss={"sem_mode": "val_guided", "lambda_sem": 0.0})
  assert off.view_quality is None
  parts, terms = off.loss_parts(_batch(), training=True)
  assert "sem" not in parts and np.all(np.isfinite(terms["sem"].numpy()))
  assert [float(q) for q in model.view_quality.numpy()] == [1.0, 1.0]  # mutual until validated

  equal = _sem_at(model, [0.3, 0.3])  # 1/2 ce_id + 1/2 ce_mm (mutual)
  mm_weaker = _sem_at(model, [0.3, 0.15])  # (1/2) (1/2)^2 ce_id + 1/2 ce_mm
  id_weaker = _sem_at(model, [0.15, 0.3])  # 1/2 ce_id + (1/2) (1/2)^2 ce_mm
  assert np.all(equal > 0) and not np.allclose(mm_weaker, id_weaker)
  np.testing.assert_allclose(mm_weaker + id_weaker, 1.25 * equal, rtol=1e-5)
  assert np.all(mm_weaker < equal) and np.all(id_weaker < equal)


def test_val_guided_margin_leaves_close_views_on_mutual_distillation():
  from bivrec_tf.layers import cross_view  # pylint: disable=import-outside-toplevel

  model = _val_guided(guide_power=2.0, guide_margin=0.8)
  equal = _sem_at(model, [0.3, 0.3])
  # 0.25 >= 0.8 * 0.3: mutual
  np.testing.assert_allclose(_sem_at(model, [0.3, 0.25]), equal, rtol=1e-6)
  np.testing.assert_allclose(_sem_at(model, [0.25, 0.3]), equal, rtol=1e-6)
  # below the margin: MM -> ID weighted 1/2 (0.12 / (0.8 * 0.3))^2 = 1/8, ID -> MM keeps 1/2
  to_id, to_mm = cross_view.discounted_teacher_weights(0.3, 0.12, 2.0, 0.8)
  assert float(to_id) == pytest.approx(0.125) and float(to_mm) == pytest.approx(0.5)
  assert np.all(_sem_at(model, [0.3, 0.12]) < equal)
  # guide_students "id": only the ID view's teacher is judged; the MM view learns in full
  to_id, to_mm = cross_view.discounted_teacher_weights(0.12, 0.3, 2.0, 0.8, "id")
  assert float(to_id) == pytest.approx(0.5) and float(to_mm) == pytest.approx(0.5)
  to_id, to_mm = cross_view.discounted_teacher_weights(0.3, 0.12, 2.0, 0.8, "id")
  assert float(to_id) == pytest.approx(0.125) and float(to_mm) == pytest.approx(0.5)
  to_id, to_mm = cross_view.discounted_teacher_weights(0.3, 0.12, 2.0, 0.8, "mm")
  assert float(to_id) == pytest.approx(0.5) and float(to_mm) == pytest.approx(0.5)
  to_id, to_mm = cross_view.discounted_teacher_weights(0.12, 0.3, 2.0, 0.8, "mm")
  assert float(to_id) == pytest.approx(0.5) and float(to_mm) == pytest.approx(0.125)
  # `judged` scales the judged directions only
  to_id, to_mm = cross_view.discounted_teacher_weights(0.3, 0.3, 2.0, 0.8, "id", 0.0)
  assert float(to_id) == 0.0 and float(to_mm) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="guide_margin"):
    _model(loss={"sem_mode": "mutual", "guide_margin": 0.8})  # read by the guided forms only
  with pytest.raises(ValueError, match="guide_margin"):
    _model(loss={"sem_mode": "val_guided", "guide_margin": 1.5})
  with pytest.raises(ValueError, match="guide_students"):
    _model(loss={"sem_mode": "val_guided", "guide_students": "ID"})


# session 15's screened form: the MM view teaches the ID view only above 3/4 of its validation
GUIDED = {
  "sem_mode": "val_guided",
  "guide_margin": 0.75,
  "guide_power": 20.0,
  "guide_students": "id",
}


def test_guide_wait_keeps_the_judged_direction_silent_until_the_first_validation():
  model = _val_guided(**GUIDED, guide_wait=True)
  assert [float(q) for q in model.view_quality.numpy()] == [0.0, 0.0]
  # MM -> ID silent until both views are validated; ID -> MM at 1/2
  before = _sem_at(model, [0.0, 0.0])
  after = _sem_at(model, [0.3, 0.3])  # both directions at 1/2
  assert np.all(before > 0) and np.all(after > before)
  # MM below 3/4 of ID: x (0.1 / 0.225)^20 ~ 1e-7
  np.testing.assert_allclose(_sem_at(model, [0.3, 0.1]), before, rtol=1e-4)
  with pytest.raises(ValueError, match="guide_wait"):
    _model(loss={"sem_mode": "batch_guided", "guide_wait": True})


def test_view_quality_travels_with_the_checkpoint(tmp_path):
  """val_guided's guide (each view's last validation NDCG@20) is a model variable, so a run
  resumed from its backup keeps weighting the distillation as before the interruption."""
  model = _model(loss=GUIDED)
  model.view_quality.assign([0.3, 0.1])
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  fresh = _model(loss=GUIDED)
  assert [float(q) for q in fresh.view_quality.numpy()] == [1.0, 1.0]
  tf.train.Checkpoint(model=fresh).restore(path).expect_partial()
  np.testing.assert_allclose(fresh.view_quality.numpy(), [0.3, 0.1])
