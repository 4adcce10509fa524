"""Every baseline and ablation is a config of the same model: it builds, trains a step, and
differs from BivRec exactly where its name says."""

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.model import BivRecModel
from bivrec_tf.presets import ABLATIONS, DESIGN_ABLATIONS, PRESETS, apply_preset

V, L = 30, 8


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_and_takes_a_training_step(name):
  cfg = apply_preset(Config().replace(model={"dim": 8}, loss={"num_negatives": 4}), name)
  rng = np.random.default_rng(0)
  model = BivRecModel(cfg, V, L, {"text": rng.normal(size=(V, 3)).astype(np.float32)},
                      {"text": np.ones(V, bool)}, item_counts=np.ones(V),
                      seen_in_train=np.ones(V, bool))
  model.build_all()
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), jit_compile=False)
  history = rng.integers(0, V, (4, L))
  batch = {"history": history, "target": rng.integers(2, V, 4), "negatives": np.arange(2, 6)}
  logs = model.train_step({k: tf.constant(v) for k, v in batch.items()})
  assert np.isfinite(float(logs["loss"]))
  u = model.queries(history)
  assert set(u) == set(cfg.model.views)
  for view, interests in u.items():
    assert interests.shape == (4, cfg.model.num_interests, 8)


def test_last_readout_is_the_most_recent_items_encoding():
  cfg = apply_preset(Config().replace(model={"dim": 8}), "sasrec")
  model = BivRecModel(cfg, V, L, item_counts=np.ones(V))
  h = np.array([[0, 0, 0, 4, 5, 6, 7, 9]])
  same_last = np.array([[0, 0, 0, 0, 0, 0, 0, 9]])
  a, b = model.queries(h)["id"], model.queries(same_last)["id"]
  assert not np.allclose(a, b)  # the Transformer mixes in the earlier items
  assert a.shape == (1, 1, 8)


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
      (1, 2, 4), 1, True, 2)
  assert m.views == ("id", "mm")


def test_comirec_sa_is_the_default_id_view_trained_alone():
  assert not _diff(apply_preset(Config(), "comirec_sa"), apply_preset(Config(), "id_only"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_weight_of_a_preset_receives_a_gradient(name):
  """Switched-off parts build no weights: nothing trainable is left without a gradient (the
  'Gradients do not exist for variables' warning of Keras)."""
  cfg = apply_preset(Config().replace(model={"dim": 8}, loss={"num_negatives": 4}), name)
  rng = np.random.default_rng(1)
  model = BivRecModel(cfg, V, L, {"text": rng.normal(size=(V, 3)).astype(np.float32)},
                      {"text": np.ones(V, bool)}, item_counts=np.ones(V),
                      seen_in_train=np.ones(V, bool))
  model.build_all()
  history = rng.integers(2, V, (4, L))
  batch = {"history": history, "target": rng.integers(2, V, 4), "negatives": np.arange(2, 6)}
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch, training=True)
  grads = tape.gradient(loss, model.trainable_variables)
  missing = [v.name for v, g in zip(model.trainable_variables, grads) if g is None]
  assert not missing, missing
