"""Every baseline and ablation is a config of the same model: it builds exactly the weights and
loss terms its switches call for, trains, and differs from BivRec exactly where its name says."""

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.model import BivRecModel
from bivrec_tf.presets import ABLATIONS, DESIGN_ABLATIONS, PRESETS, apply_preset

V, L, D = 30, 8, 8


def _model(name, seed=0, **model_fields):
  tf.keras.utils.set_random_seed(seed)
  cfg = apply_preset(Config().replace(model={"dim": D}, loss={"num_negatives": 4}), name)
  if model_fields:
    cfg = cfg.replace(model=model_fields)
  rng = np.random.default_rng(seed)
  model = BivRecModel(
    cfg,
    V,
    L,
    {"text": rng.normal(size=(V, 3)).astype(np.float32)},
    {"text": np.ones(V, bool)},
    item_counts=np.ones(V),
    seen_in_train=np.ones(V, bool),
  )
  model.build_all()
  return model


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "history": tf.constant(rng.integers(2, V, (4, L))),
    "target": tf.constant(rng.integers(2, V, 4)),
    "negatives": tf.constant(np.arange(2, 6)),
  }


def _weight_names(model, view):
  return [w.name for w in model.views[view].weights]


def _structure(model, view):
  """What the view encoder actually built, read from its weights."""
  names = _weight_names(model, view)
  enc = model.views[view]
  decomposition = enc.interest_decomposition
  return {
    "scales": sorted(
      int(n.split("patch_proj_")[1].split("/")[0])
      for n in names
      if "patch_proj_" in n and n.endswith("kernel:0")
    ),
    "blocks": len({n.split("block_")[1].split("/")[0] for n in names if "/block_" in n}),
    "causal": all(b.causal for b in enc.interest_embedding.blocks),
    "queries": None if decomposition is None else int(decomposition.gaussian.queries.shape[0]),
    "prior": any("centre_logits" in n for n in names),
    "cluster": any("/cluster/" in n for n in names),
    "tower": "id_tower" if any("/id_tower/" in n for n in names) else "mm_tower",
  }


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_builds_exactly_the_weights_and_loss_terms_its_switches_call_for(name):
  model = _model(name)
  m = model.config.model
  assert model.view_names == tuple(v for v in ("id", "mm") if v in m.views)
  for view in model.view_names:
    s = _structure(model, view)
    assert s["tower"] == f"{view}_tower"
    assert s["scales"] == sorted(m.patch_sizes)
    assert s["blocks"] == m.encoder_layers
    assert s["causal"] == (m.causal or m.encoder_layers == 0)
    assert s["queries"] == (None if m.readout == "last" else m.num_interests)
    assert s["prior"] == (m.gaussian_prior and m.readout != "last")
    assert s["cluster"] == (m.cluster_rounds > 0 and m.readout != "last")
  # No weights of a view the preset switched off.
  names = [w.name for w in model.weights]
  for view in {"id", "mm"} - set(m.views):
    assert not any(f"{view}_view" in n for n in names), view
  # The loss: each view's retrieval term, and the cross-view terms whose weight is not 0.
  parts, _ = model.loss_parts(_batch())
  lc = model.config.loss
  expected = {f"rec_{v}" for v in model.view_names}
  if len(model.view_names) == 2:
    expected |= {"sem"} if lc.lambda_sem > 0 else set()
    expected |= {"alloc"} if lc.lambda_alloc > 0 else set()
  assert set(parts) == expected


def test_sasrec_is_two_causal_single_head_blocks_read_at_the_most_recent_item():
  model = _model("sasrec")
  assert model.view_names == ("id",)
  s = _structure(model, "id")
  assert (s["blocks"], s["causal"], s["queries"], s["scales"]) == (2, True, None, [1])
  enc = model.views["id"]
  assert [b.num_heads for b in enc.interest_embedding.blocks] == [1, 1]
  assert enc.interest_embedding.dropout == pytest.approx(0.5)
  assert not any("interest_decomposition" in n for n in _weight_names(model, "id"))
  # mm_seq: the same encoder over the multimodal tower, and nothing of the ID view.
  mm = _model("mm_seq")
  assert mm.view_names == ("mm",)
  assert {k: v for k, v in _structure(mm, "mm").items() if k != "tower"} == {
    k: v for k, v in s.items() if k != "tower"
  }


def test_sasrec_query_is_the_causal_encoding_of_the_most_recent_item():
  """Positions are counted from the most recent item, so with the positional embeddings zeroed
  the encoding of item t inside a longer history is the encoding of the history ending at t,
  if and only if attention is causal. The query must be that encoding at the most recent item
  (a pooled or differently placed read-out, or bidirectional attention, gives another vector)."""
  for preset, expect_equal in (("sasrec", True), ("sasrec_bidirectional", False)):
    fields = {"dropout": 0.0}
    if preset == "sasrec_bidirectional":
      fields["causal"] = False
    model = _model("sasrec", **fields)
    enc = model.views["id"]
    for table in enc.interest_embedding.recency_emb:
      table.assign(tf.zeros_like(table))
    history = np.array([[0, 0, 4, 5, 6, 7, 8, 9]])
    longer = np.array([[0, 4, 5, 6, 7, 8, 9, 12]])  # one more item after the same ones
    query = model.queries(history)["id"][0, 0].numpy()
    h, _, _ = enc.interest_embedding(enc.embed(tf.constant(longer)), tf.constant(longer) >= 2)
    at_item_9 = tf.math.l2_normalize(h[0, -2]).numpy()
    assert np.allclose(query, at_item_9, atol=1e-5) == expect_equal, preset
  # And the read-out is the most recent position: the query changes with the last item.
  model = _model("sasrec", dropout=0.0)
  last_changed = np.array([[0, 0, 4, 5, 6, 7, 8, 21]])
  assert not np.allclose(model.queries(history)["id"], model.queries(last_changed)["id"], atol=1e-3)


def test_single_interest_has_one_query_per_view_and_the_default_has_k():
  for view in ("id", "mm"):
    assert _structure(_model("single_interest"), view)["queries"] == 1
    assert _structure(_model("bivrec"), view)["queries"] == Config().model.num_interests


def test_no_cross_view_sends_no_gradient_from_one_view_into_the_other():
  """Without module 3 the ID encoder's gradient is the one of its own retrieval loss; with it
  (the default), the cross-view terms change that gradient."""
  for name, coupled in (("no_cross_view", False), ("bivrec", True)):
    model = _model(name)
    variables = model.views["id"].trainable_variables
    with tf.GradientTape(persistent=True) as tape:
      parts, _ = model.loss_parts(_batch())
      total = tf.reduce_mean(tf.add_n(list(parts.values())))
      own = tf.reduce_mean(parts["rec_id"])
    g_total = tf.concat(
      [tf.reshape(tf.convert_to_tensor(g), [-1]) for g in tape.gradient(total, variables)], 0
    )
    g_own = tf.concat(
      [tf.reshape(tf.convert_to_tensor(g), [-1]) for g in tape.gradient(own, variables)], 0
    )
    assert np.allclose(g_total, g_own, atol=1e-7) != coupled, name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_weight_of_a_preset_is_trained_and_training_steps_lower_the_loss(name):
  """Switched-off parts build no weights: nothing trainable is left without a gradient (the
  'Gradients do not exist for variables' warning of Keras); two steps of train_step (around
  BivRecModel.compute_loss) lower the loss on their batch and log every term."""
  model = _model(name)
  batch = _batch()
  with tf.GradientTape() as tape:
    before = model.compute_loss(batch, training=True)
  grads = tape.gradient(before, model.trainable_variables)
  missing = [v.name for v, g in zip(model.trainable_variables, grads) if g is None]
  assert not missing, missing
  model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), jit_compile=False)
  before = float(model.compute_loss(batch))
  for _ in range(2):
    logs = model.train_step(batch)
  after = float(model.compute_loss(batch))
  assert after < before, (before, after)
  _, terms = model.loss_parts(batch)
  assert {"loss"} | set(terms) <= set(logs)


def test_unknown_preset_is_rejected():
  with pytest.raises(ValueError, match="unknown model preset"):
    apply_preset(Config(), "gru4rec")


def test_preset_flag_then_flags_override():
  from bivrec_tf.train import parse_config

  cfg = parse_config(["--preset", "comirec_sa", "--num-interests", "6"])
  assert cfg.model.views == ("id",) and cfg.model.encoder_layers == 0
  assert cfg.model.num_interests == 6


def _diff(a: Config, b: Config):
  da, db = a.to_dict(), b.to_dict()
  return {(s, k) for s in da for k in da[s] if da[s][k] != db[s][k]}


@pytest.mark.parametrize("name", ABLATIONS)
def test_each_ablation_changes_only_the_fields_its_preset_names(name):
  changed = _diff(apply_preset(Config(), name), Config())
  named = {(s, k) for s, fields in PRESETS[name].items() for k in fields}
  assert changed and changed <= named
  assert len(changed) == 1 or name == "no_cross_view"  # module 3 = both cross-view losses


@pytest.mark.parametrize("name", DESIGN_ABLATIONS)
def test_each_design_ablation_flips_one_switch_of_the_design_formulation(name):
  design = apply_preset(Config(), "bivrec_design")
  assert len(_diff(apply_preset(Config(), name), design)) == 1


def test_design_formulation_turns_every_module_of_design_md_on():
  m = apply_preset(Config(), "bivrec_design").model
  assert (m.patch_sizes, m.encoder_layers, m.gaussian_prior, m.cluster_rounds) == (
    (1, 2, 4),
    1,
    True,
    2,
  )
  assert m.views == ("id", "mm")


def test_comirec_sa_is_the_default_id_view_trained_alone():
  assert not _diff(apply_preset(Config(), "comirec_sa"), apply_preset(Config(), "id_only"))
