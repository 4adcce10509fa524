"""The teaching probe (held-out gradient alignment of each view's distillation) and the
"probe_guided" L_sem that it gates."""

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf.model import gradient_gram, partial_cosine
from bivrec_tf.teaching_probe import TeachingProbe
from tests.bivrec_tf.test_module_variants import _batch, _model

PROBED = {"sem_mode": "probe_guided", "probe_every": 1, "lambda_alloc": 0.0}


def _held():
  """A batch of the training form with other users and targets (the probe's held-out side)."""
  b = _batch()
  return {**b, "history": np.roll(b["history"], 1, axis=0), "target": b["target"][::-1] + 4}


def _sem_gradient_sum(model, view):
  """sum |d sem / d theta_view| of the training batch (0 when the direction into view is off)."""
  with tf.GradientTape() as tape:
    sem = tf.reduce_mean(model.loss_parts(_batch(), training=True)[0]["sem"])
  grads = tape.gradient(sem, model.views[view].trainable_variables)
  return sum(float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) for g in grads if g is not None)


def test_gradient_gram_handles_sparse_and_missing_gradients():
  a = [tf.constant([1.0, 0.0]), None, tf.IndexedSlices(tf.constant([[2.0]]), [1], [3, 1])]
  b = [tf.constant([1.0, 0.0]), tf.constant([5.0]), tf.constant([[0.0], [2.0], [0.0]])]
  gram = gradient_gram(a, b, [None, None, None]).numpy()
  # a.b = 1 + 4; |a|^2 = 5; |b|^2 = 1 + 25 + 4; the missing gradient is zero
  np.testing.assert_allclose(gram, [[5, 5, 0], [5, 30, 0], [0, 0, 0]], rtol=1e-6)


def test_partial_cosine_is_the_agreement_left_after_projecting_out_the_third_gradient():
  r = np.array([1.0, 0.0, 0.0])
  k = np.array([-1.0, 1.0, 0.0])  # a teacher that pulls back along r and adds e2
  h = np.array([1.0, 0.5, 0.0])  # held out: along r, and along e2
  gram = gradient_gram(*[[tf.constant(x)] for x in (k, r, h)])
  assert float(gram[0, 2]) < 0  # the raw cosine says "harmful"
  assert float(partial_cosine(gram, 0, 2, 1)) == pytest.approx(1.0)  # what it adds agrees
  against = gradient_gram(*[[tf.constant(x)] for x in (k, r, np.array([1.0, -0.5, 0.0]))])
  assert float(partial_cosine(against, 0, 2, 1)) == pytest.approx(-1.0)
  along = gradient_gram(*[[tf.constant(x)] for x in (-r, r, h)])  # nothing beyond r: 0
  assert float(partial_cosine(along, 0, 2, 1)) == 0.0


def test_alignment_is_a_cosine_per_view_and_absent_without_a_cross_view_term():
  tf.keras.utils.set_random_seed(0)
  model = _model(loss={"sem_mode": "mutual", "lambda_alloc": 0.0})
  align = {k: float(v) for k, v in model.teaching_alignment(_batch(), _held()).items()}
  gaps = {k: align.pop(k) for k in ("gap_id", "gap_mm")}
  assert set(align) == {f"align{s}_{v}" for s in ("", "_rec", "_new") for v in ("id", "mm")}
  assert all(-1.0 <= a <= 1.0 and a != 0.0 for a in align.values()), align
  parts = {b: model.loss_parts(data)[0] for b, data in (("train", _batch()), ("held", _held()))}
  for v in ("id", "mm"):
    expected = np.mean(parts["held"][f"rec_{v}"]) - np.mean(parts["train"][f"rec_{v}"])
    assert gaps[f"gap_{v}"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
  # the held-out batch given as the training batch: the retrieval gradients coincide
  same = model.teaching_alignment(_held(), _held())
  assert float(same["align_rec_id"]) == pytest.approx(1.0, abs=1e-5)
  assert float(same["align_rec_mm"]) == pytest.approx(1.0, abs=1e-5)
  off = _model(loss={"sem_mode": "mutual", "lambda_sem": 0.0})
  assert off.teaching_alignment(_batch(), _held()) == {}


def test_fused_alignment_compares_the_teaching_with_the_fusions_held_out_gradient():
  tf.keras.utils.set_random_seed(0)
  model = _model(loss={"sem_mode": "mutual", "lambda_alloc": 0.0})
  align = {k: float(v) for k, v in model.teaching_alignment(_batch(), _held(), fused=True).items()}
  assert {"align_fused_id", "align_fused_mm"} <= set(align)
  assert "align_fused_id" not in model.teaching_alignment(_batch(), _held())  # only when asked
  held = model.loss_parts(_held(), fused_term=True)[1]
  assert "rec_fused" not in model.loss_parts(_held())[1]
  # the fused loss is the cross-entropy of the mean logits: convex, so at most the views' mean
  assert np.all(held["rec_fused"].numpy() <= (held["rec_id"] + held["rec_mm"]).numpy() / 2 + 1e-5)
  seen = []  # the logits each retrieval loss reads: the views', then the fused term's
  real = model._retrieval_loss  # pylint: disable=protected-access
  model._retrieval_loss = lambda logits: seen.append(logits) or real(logits)
  model.loss_parts(_held(), fused_term=True)
  del model._retrieval_loss  # the staticmethod again
  assert len(seen) == 3  # rec_id, rec_mm, rec_fused
  np.testing.assert_allclose(seen[2], (seen[0] + seen[1]) / 2, rtol=1e-6)
  for v in ("id", "mm"):
    variables = model.views[v].trainable_variables
    with tf.GradientTape(persistent=True) as tape:
      train = model.loss_parts(_batch(), ungated=True)[0]
      fused = model.loss_parts(_held(), fused_term=True)[1]["rec_fused"]
      losses = [tf.reduce_mean(x) for x in (train["sem"], train[f"rec_{v}"], fused)]
    gram = gradient_gram(*(tape.gradient(x, variables) for x in losses))
    expected = float(partial_cosine(gram, 0, 2, 1))
    assert align[f"align_fused_{v}"] == pytest.approx(expected, abs=1e-5)
    assert align[f"align_fused_{v}"] != pytest.approx(align[f"align_new_{v}"], abs=1e-4)


def test_probe_guided_silences_a_direction_whose_alignment_average_is_not_positive():
  assert _model(loss={"sem_mode": "mutual"}).teach_alignment is None  # built for this mode only
  tf.keras.utils.set_random_seed(0)
  mutual = _model(loss={"sem_mode": "mutual", "lambda_alloc": 0.0})
  tf.keras.utils.set_random_seed(0)  # the same initial weights
  model = _model(loss=PROBED)
  assert [float(x) for x in model.teach_alignment.numpy()] == [1.0, 1.0]  # mutual until probed
  np.testing.assert_allclose(
    model.loss_parts(_batch())[1]["sem"], mutual.loss_parts(_batch())[1]["sem"], rtol=1e-6
  )
  assert _sem_gradient_sum(model, "id") > 0 and _sem_gradient_sum(model, "mm") > 0
  model.teach_alignment.assign([-0.1, 0.2])  # MM -> ID off, ID -> MM on
  assert _sem_gradient_sum(model, "id") == 0.0 and _sem_gradient_sum(model, "mm") > 0
  # the probe reads the term ungated
  assert float(model.teaching_alignment(_batch(), _held())["align_id"]) != 0.0
  # guide_students "mm": only the ID -> MM direction is judged; MM -> ID keeps 1/2
  judged_mm = _model(loss={**PROBED, "guide_students": "mm"})
  judged_mm.teach_alignment.assign([-0.1, -0.2])
  assert _sem_gradient_sum(judged_mm, "id") > 0 and _sem_gradient_sum(judged_mm, "mm") == 0.0


def test_probe_margin_keeps_a_direction_shut_until_its_average_clears_the_margin():
  model = _model(loss={**PROBED, "probe_margin": 0.05})
  model.teach_alignment.assign([0.03, 0.2])  # agrees, but not clearly: MM -> ID stays shut
  assert _sem_gradient_sum(model, "id") == 0.0 and _sem_gradient_sum(model, "mm") > 0
  model.teach_alignment.assign([0.06, 0.05])  # at the margin is not above it
  assert _sem_gradient_sum(model, "id") > 0 and _sem_gradient_sum(model, "mm") == 0.0


def test_probe_ramp_weighs_a_direction_linearly_around_the_margin():
  """With probe_ramp r the weight of a direction is clip((s - margin) / r + 1/2, 0, 1): half its
  teaching at the margin, none r / 2 below it, all of it r / 2 above (the step is 0 or 1)."""
  model = _model(loss={**PROBED, "probe_margin": 0.02, "probe_ramp": 0.04})
  model.teach_alignment.assign([0.04, 0.04])  # margin + r / 2: fully open
  full = _sem_gradient_sum(model, "id")
  model.teach_alignment.assign([0.02, -0.01])  # at the margin: half; below the ramp: shut
  assert _sem_gradient_sum(model, "id") == pytest.approx(0.5 * full, rel=1e-4)
  model.teach_alignment.assign([0.03, 0.0])  # three quarters; the ramp's foot: shut
  assert _sem_gradient_sum(model, "id") == pytest.approx(0.75 * full, rel=1e-4)
  assert _sem_gradient_sum(model, "mm") == 0.0


@pytest.mark.parametrize(
  "loss, field",
  [
    ({"sem_mode": "probe_guided", "probe_every": 0}, "probe_every"),  # a gate needs a probe
    ({"probe_every": 5, "probe_margin": 1.0}, "probe_margin"),
    ({"probe_every": 5, "probe_margin": float("nan")}, "probe_margin"),
    ({"probe_every": -1}, "probe_every"),
    ({"probe_every": 5, "probe_momentum": 1.0}, "probe_momentum"),
    ({"probe_every": 5, "probe_signal": "cosine"}, "probe_signal"),
    ({"probe_every": 5, "probe_batch": 0}, "probe_batch"),
    ({"sem_mode": "probe_guided", "probe_ramp": -0.01}, "probe_ramp"),
    ({"sem_mode": "mutual", "probe_ramp": 0.03}, "probe_ramp"),  # no gate to ramp
    ({"sem_mode": "mutual", "guide_students": "id"}, "guide_students"),
  ],
)
def test_probe_settings_that_cannot_work_are_refused(loss, field):
  with pytest.raises(ValueError, match=field):
    _model(loss=loss)


def test_probe_callback_logs_epoch_means_and_keeps_the_moving_average():
  tf.keras.utils.set_random_seed(0)
  model = _model(loss={**PROBED, "probe_momentum": 0.5})
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  batches = tf.data.Dataset.from_tensors(_batch()).repeat()
  held = tf.data.Dataset.from_tensors(_held()).repeat()
  probe = TeachingProbe(batches, held, every=2, momentum=0.5)
  history = model.fit(batches, epochs=2, steps_per_epoch=3, callbacks=[probe], verbose=0)
  assert [p["step"] for p in probe.trace] == [2, 4, 6]
  seen = [[p["align_new_id"], p["align_new_mm"]] for p in probe.trace]  # the default signal
  expected = np.array(seen[0])  # the first probe sets the average, then s <- s / 2 + align / 2
  for a in seen[1:]:
    expected = 0.5 * expected + 0.5 * np.array(a)
  np.testing.assert_allclose(model.teach_alignment.numpy(), expected, rtol=1e-5)
  assert history.history["align_new_id"][0] == pytest.approx(seen[0][0])  # epoch 1: step 2
  assert history.history["align_new_id"][1] == pytest.approx(np.mean([s[0] for s in seen[1:]]))
  raw = TeachingProbe(batches, held, every=2, momentum=0.0, signal="raw")
  model.fit(batches, epochs=1, steps_per_epoch=2, callbacks=[raw], verbose=0)
  last = raw.trace[-1]
  np.testing.assert_allclose(model.teach_alignment.numpy(), [last["align_id"], last["align_mm"]])
  assert history.history["teach_avg_mm"][1] == pytest.approx(expected[1], rel=1e-5)
  fused = TeachingProbe(batches, held, every=2, momentum=0.0, signal="fused")
  model.fit(batches, epochs=1, steps_per_epoch=2, callbacks=[fused], verbose=0)
  last = fused.trace[-1]
  np.testing.assert_allclose(
    model.teach_alignment.numpy(), [last["align_fused_id"], last["align_fused_mm"]]
  )
  assert all(0 < share < 1 for share in history.history["probe_share"])
  with pytest.raises(ValueError, match="every"):
    TeachingProbe(batches, held, every=0, momentum=0.5)


def test_a_restored_run_continues_the_moving_average_instead_of_resetting_it():
  """A fit that starts at a restored optimizer step (BackupAndRestore after a kill) keeps the
  average the weights brought back: its first probe moves it by (1 - m), and the next probe
  comes at the next multiple of `every`, as in the uninterrupted run."""
  tf.keras.utils.set_random_seed(0)
  model = _model(loss={**PROBED, "probe_momentum": 0.5})
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  batches = tf.data.Dataset.from_tensors(_batch()).repeat()
  held = tf.data.Dataset.from_tensors(_held()).repeat()
  model.fit(
    batches,
    epochs=1,
    steps_per_epoch=3,
    verbose=0,
    callbacks=[TeachingProbe(batches, held, every=2, momentum=0.5)],
  )
  before = model.teach_alignment.numpy()
  resumed = TeachingProbe(batches, held, every=2, momentum=0.5)  # a new process's callback
  model.fit(batches, epochs=1, steps_per_epoch=3, verbose=0, callbacks=[resumed])
  assert [p["step"] for p in resumed.trace] == [4, 6]
  first = np.array([resumed.trace[0]["align_new_id"], resumed.trace[0]["align_new_mm"]])
  second = np.array([resumed.trace[1]["align_new_id"], resumed.trace[1]["align_new_mm"]])
  expected = 0.5 * (0.5 * before + 0.5 * first) + 0.5 * second
  np.testing.assert_allclose(model.teach_alignment.numpy(), expected, rtol=1e-5)
  assert not np.allclose(expected, 0.5 * first + 0.5 * second)  # what a reset would give


def test_probe_stays_off_with_a_warning_under_parameter_servers():
  class _ParameterServers(tf.distribute.experimental.ParameterServerStrategy):
    def __init__(self):  # what the callback reads of the strategy: its type
      pass

  class _Model:
    distribute_strategy = _ParameterServers()
    teach_alignment = tf.Variable([1.0, 1.0])

    def teaching_alignment(self, batch, held):
      raise AssertionError("the probe must not run under parameter servers")

  batches = tf.data.Dataset.from_tensors(_batch()).repeat()
  probe = TeachingProbe(batches, batches, every=1, momentum=0.5)
  with pytest.warns(UserWarning, match="allows no batch-level callbacks"):
    probe.set_model(_Model())
  assert not probe.active
  probe.on_train_batch_end(0)  # nothing probed, the gate stays open (mutual)
  assert probe.trace == [] and list(_Model.teach_alignment.numpy()) == [1.0, 1.0]


def test_the_jobs_probe_reads_held_out_batches_from_the_valid_split(tmp_path):
  from bivrec_tf import train  # pylint: disable=import-outside-toplevel
  from bivrec_tf.config import Config  # pylint: disable=import-outside-toplevel
  from input_pipelines.dataset import PreparedDataset, eval_dataset  # pylint: disable=C0415
  from input_pipelines.synthetic import generate  # pylint: disable=import-outside-toplevel

  ds = PreparedDataset.load(generate(tmp_path / "data", seed=1, num_items=80, num_users=60))
  # the probe's batches have probe_batch examples, whatever the training batch
  loss = {"num_negatives": 8, "probe_every": 5, "probe_batch": 16}
  cfg = Config().replace(train={"batch_size": 32}, loss=loss)
  probe = train.teaching_probe(cfg, ds, 10)
  assert probe.every == 5
  held = next(probe.held)
  assert held["history"].shape == (16, 10) and held["negatives"].shape == (8,)
  # whole examples (history, target): every held-out row is a row of the valid split, and the
  # training side is not
  valid_rows = set()
  for b in eval_dataset(ds, "valid", 10, 64):
    for h, t in zip(b["history"].numpy(), b["targets"][:, 0].numpy()):
      valid_rows.add((tuple(int(x) for x in h), int(t)))

  def rows(batch):
    return {
      (tuple(int(x) for x in h), int(t))
      for h, t in zip(batch["history"].numpy(), batch["target"].numpy())
    }

  assert rows(held) <= valid_rows and len(rows(held)) == 16
  train_batch = next(probe.batches)
  assert train_batch["history"].shape == (16, 10) and not rows(train_batch) <= valid_rows


def test_the_job_probes_only_a_cross_view_term_that_trains():
  from bivrec_tf.teaching_probe import probe_interval  # pylint: disable=import-outside-toplevel

  assert probe_interval(_model(loss={"sem_mode": "mutual", "probe_every": 7})) == 7  # diagnostic
  assert probe_interval(_model(loss={"sem_mode": "mutual", "lambda_sem": 0.0})) == 0
  assert probe_interval(_model(views=("id",))) == 0  # one view: nothing teaches it
  assert probe_interval(_model(loss={"sem_mode": "mutual", "probe_every": 0})) == 0
