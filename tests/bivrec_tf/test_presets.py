"""Every baseline and ablation is a config of the same model: it builds, trains a step, and
differs from BivRec exactly where its name says."""

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.model import BivRecModel
from bivrec_tf.presets import PRESETS, apply_preset

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
