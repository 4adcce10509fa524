"""Per-view selection (`view_selection="per_view"`): a checkpoint per view, early stopping that
waits for every view, and the composite built from each view's own checkpoint. A whole per-view
run is checked in tests/bivrec_tf/test_end_to_end.py (its fixture trains with it)."""

from pathlib import Path

import numpy as np
import tensorflow as tf

from bivrec_tf import callbacks as callbacks_lib
from bivrec_tf.view_selection import assemble_views
from tests.bivrec_tf.test_restore import _model


# Validation NDCG@20 per epoch: (fused, ID view, MM view). The fused score and the ID view peak
# at epoch 2, the MM view at epoch 3.
SCRIPT = [(0.10, 0.08, 0.09), (0.12, 0.09, 0.08), (0.11, 0.07, 0.10), (0.11, 0.07, 0.09)] + [
  (0.11, 0.07, 0.09)
] * 4


class _FakeModel:
  """What the callback touches: weights saving, the stop flag, the strategy."""

  def __init__(self):
    self.optimizer = None  # (no weight averaging: `averaged_weights` is a no-op)
    self.saved = []
    self.stop_training = False
    self.distribute_strategy = tf.distribute.get_strategy()

  def save_weights(self, path):
    self.saved.append(Path(path).name)

  def gradient_norms(self, batch):  # never called: the callback gets no probe batch
    raise AssertionError("no probe batch was given")


def _run_callback(monkeypatch, tmp_path, view_paths):
  epoch = {"i": 0}

  def scripted_evaluate(ranker, data, ks, weights):
    fused, id_, mm = SCRIPT[epoch["i"]]
    return {"id": {"ndcg@20": id_}, "mm": {"ndcg@20": mm}, "fused@0.50": {"ndcg@20": fused}}

  monkeypatch.setattr(callbacks_lib, "evaluate", scripted_evaluate)
  monkeypatch.setattr(callbacks_lib, "InterestDiagnostics", lambda model: lambda data: {})
  cb = callbacks_lib.ValidationCallback(
    None, None, [20], 20, [0.5], tmp_path / "best", 2, None, 0, view_paths=view_paths
  )
  model = _FakeModel()
  cb.set_model(model)
  saved_per_epoch = []
  while not model.stop_training:
    before = len(model.saved)
    cb.on_epoch_begin(epoch["i"])
    cb.on_epoch_end(epoch["i"], {})
    saved_per_epoch.append(model.saved[before:])
    epoch["i"] += 1
  return cb, saved_per_epoch


def test_per_view_callback_keeps_a_checkpoint_per_view_and_waits_for_every_view(
  monkeypatch, tmp_path
):
  paths = {"id": tmp_path / "best_id", "mm": tmp_path / "best_mm"}
  cb, saved = _run_callback(monkeypatch, tmp_path, paths)
  assert saved[:3] == [["best", "best_id", "best_mm"], ["best", "best_id"], ["best_mm"]]
  assert all(not s for s in saved[3:])
  assert cb.best_epoch == 2
  assert cb.view_best_epochs == {"id": 2, "mm": 3}
  # patience 2 counted from the MM view's gain at epoch 3
  assert len(saved) == 5


def test_joint_callback_stops_on_the_fused_score_alone(monkeypatch, tmp_path):
  cb, saved = _run_callback(monkeypatch, tmp_path, None)
  assert saved[:3] == [["best"], ["best"], []]
  assert cb.view_best_epochs == {}
  assert len(saved) == 4  # patience 2 counted from the fused score's gain at epoch 2


def test_assemble_views_takes_each_view_from_its_own_checkpoint(tmp_path):
  model = _model(("id", "mm"))  # (V = 20 items, L = 6)
  snapshots = {}
  for name, shift in (("a", 0.1), ("b", 0.2)):
    for v in model.variables:
      v.assign(v + shift)
    model.save_weights(str(tmp_path / name))
    snapshots[name] = {v: [x.numpy() for x in model.views[v].variables] for v in model.views}
  assert not np.allclose(snapshots["a"]["id"][0], snapshots["b"]["id"][0])
  assemble_views(model, {"id": tmp_path / "a", "mm": tmp_path / "b"})
  for view, source in (("id", "a"), ("mm", "b")):
    for variable, expected in zip(model.views[view].variables, snapshots[source][view]):
      np.testing.assert_array_equal(variable.numpy(), expected)
  # the queries really come from the two checkpoints
  history = tf.constant([[0, 0, 3, 4, 5, 6]], tf.int64)
  assembled = model.queries(history)
  model.load_weights(str(tmp_path / "a")).expect_partial()
  np.testing.assert_allclose(model.queries(history)["id"], assembled["id"], rtol=1e-6)
  assert not np.allclose(model.queries(history)["mm"], assembled["mm"])


def test_callback_writes_each_views_validation_score_for_val_guided(monkeypatch, tmp_path):
  """sem_mode "val_guided" reads (ID, MM) validation NDCG@20 from `model.view_quality`, which the
  callback sets after every epoch."""
  quality = tf.Variable([1.0, 1.0], trainable=False)
  written = []
  real_set_model = callbacks_lib.ValidationCallback.set_model

  def set_model(self, model):
    model.view_quality = quality
    real_set_model(self, model)

  monkeypatch.setattr(callbacks_lib.ValidationCallback, "set_model", set_model)
  real_save = _FakeModel.save_weights
  monkeypatch.setattr(
    _FakeModel,
    "save_weights",
    lambda self, path: (written.append(tuple(quality.numpy().round(4))), real_save(self, path)),
  )
  cb, _ = _run_callback(monkeypatch, tmp_path, None)
  # after epochs 1 and 2 (each saved "best"): that epoch's ID and MM scores of SCRIPT
  assert written[:2] == [(0.08, 0.09), (0.09, 0.08)]
  np.testing.assert_allclose(quality.numpy(), SCRIPT[len(cb.history) - 1][1:], rtol=1e-6)
