"""Restoring a run's checkpoint either restores every trainable weight or says which it missed."""

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.builders import restore_trained
from bivrec_tf.config import Config
from bivrec_tf.model import BivRecModel
from bivrec_tf.resume import completed_steps

V, L = 20, 6


def _model(views):
  cfg = Config().replace(
    model={"dim": 8, "num_interests": 2, "views": views}, loss={"num_negatives": 2}
  )
  rng = np.random.default_rng(0)
  model = BivRecModel(
    cfg,
    V,
    L,
    {"text": rng.normal(size=(V, 4)).astype(np.float32)},
    {"text": np.ones(V, bool)},
    item_counts=np.ones(V),
    seen_in_train=np.ones(V, bool),
  )
  model.build_all()
  return model


def _trained_checkpoint(tmp_path, views):
  model = _model(views)
  for v in model.trainable_weights:  # "training": every weight moves
    v.assign(v + 0.1)
  path = str(tmp_path / "best")
  model.save_weights(path)
  return model, path


def test_restore_accepts_weights_training_never_moved(tmp_path):
  """An untrained checkpoint (zero biases, unit LayerNorm gains) restores: the check is about
  which weights the checkpoint names, not whether they changed."""
  model = _model(("id", "mm"))
  path = str(tmp_path / "untrained")
  model.save_weights(path)
  restore_trained(_model(("id", "mm")), path)


def test_restore_brings_back_every_trained_weight(tmp_path):
  trained, path = _trained_checkpoint(tmp_path, ("id", "mm"))
  fresh = _model(("id", "mm"))
  restore_trained(fresh, path)
  for a, b in zip(trained.trainable_weights, fresh.trainable_weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_restore_names_the_weights_a_checkpoint_of_other_code_lacks(tmp_path):
  _, path = _trained_checkpoint(tmp_path, ("id",))
  with pytest.raises(ValueError, match=r"mm_view.*another version"):
    restore_trained(_model(("id", "mm")), path)


def test_build_all_marks_the_model_built_for_backup_and_restore():
  """BackupAndRestore warns and skips its checks on an unbuilt model; build_all must leave the
  model built (its variables exist and Keras knows it)."""
  model = _model(("id", "mm"))
  assert model.built
  assert model.trainable_weights


class _Killed(Exception):
  pass


def test_completed_steps_reads_the_optimizer_steps_of_the_newest_backup(tmp_path):
  """What a resumed run's input stream skips: the steps of the last epoch BackupAndRestore kept
  (0 before any backup)."""
  backup = tmp_path / "backup"
  assert completed_steps(backup) == 0

  class KillAfterTwoEpochs(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      if epoch == 1:
        raise _Killed

  model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
  model.compile(tf.keras.optimizers.Adam(1e-2), "mse")
  x, y = np.ones((10, 3), np.float32), np.zeros((10, 1), np.float32)
  callbacks = [tf.keras.callbacks.BackupAndRestore(str(backup)), KillAfterTwoEpochs()]
  with pytest.raises(_Killed):
    model.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=callbacks)
  assert completed_steps(backup) == 6  # 2 epochs of 3 batches (10 rows, batch 4)
