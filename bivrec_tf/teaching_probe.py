"""Does a view's teaching help its student on held-out users? A probe every few steps.

`BivRecModel.teaching_alignment` compares, on each view's encoder, the gradient of what the other
view teaches it (L_sem on a training batch) with the gradient of its own retrieval loss on a batch
of validation examples. `TeachingProbe` runs it every `probe_every` optimizer steps, logs the epoch
means (`align_<v>`, `align_rec_<v>`, `align_new_<v>`, `gap_<v>`; `probe_share`: its share of the
epoch's training time) and, for sem_mode "probe_guided", keeps the moving average of each
direction's alignment in `model.teach_alignment`: a direction teaches while it is >
`loss.probe_margin` (or by a ramp around it, `loss.probe_ramp`).
"""

import functools
import time
import warnings
from typing import Dict, List

import numpy as np
import tensorflow as tf

from bivrec_tf.warm_compiled import WarmCompiled


def probe_interval(model) -> int:
  """Optimizer steps between the job's teaching probes, 0 when it runs none: one view, no
  cross-view term to probe (lambda_sem 0) or `loss.probe_every` 0."""
  lc = model.config.loss
  return lc.probe_every if model.cross_view and lc.lambda_sem > 0 else 0


def can_probe(strategy: tf.distribute.Strategy) -> bool:
  """Every strategy but ParameterServerStrategy, which allows no batch-level callbacks. Under
  several replicas the probe runs inside `strategy.run` on distributed batches
  (`TeachingProbe`)."""
  return not isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


def warn_unprobed(strategy: tf.distribute.Strategy) -> None:
  """The warning of a "probe_guided" run whose strategy allows no probe."""
  warnings.warn(
    f"sem_mode 'probe_guided': {type(strategy).__name__} allows no batch-level callbacks, so "
    "the teaching probe does not run and both directions distil as 'mutual'",
    stacklevel=3,
  )


class TeachingProbe(tf.keras.callbacks.Callback):
  """Every `every` optimizer steps: `model.teaching_alignment(next(batches), next(held))`.

  Args:
    batches: repeating training batches ({"history", "target", "negatives"}).
    held: repeating batches of the same form from validation examples.
    every: optimizer steps between probes (>= 1).
    momentum: m of the moving average s <- m s + (1 - m) align kept in `model.teach_alignment`
      (if the model has one); the first probe of a run sets s to its value (a run resumed by
      BackupAndRestore continues its average, `resume`).
    signal: the alignment averaged: "new" (`align_new_<v>`), "raw" (`align_<v>`) or "fused"
      (`align_fused_<v>`, the fusion's held-out gradient; the probe then computes it).
  Under a strategy with several replicas (Mirrored, MultiWorkerMirrored) both batches are
  distributed like the training batches and the probe runs in `strategy.run`: every replica
  computes the alignments of the whole global batches (`BivRecModel.teaching_alignment`), the
  values of one device. Under ParameterServerStrategy (no batch-level callbacks) it does nothing
  and "probe_guided" distils as "mutual".
  """

  def __init__(
    self,
    batches: tf.data.Dataset,
    held: tf.data.Dataset,
    every: int,
    momentum: float,
    signal: str = "new",
  ):
    super().__init__()
    if every < 1:
      raise ValueError(f"TeachingProbe every must be >= 1, got {every}")
    self._datasets = (batches, held)
    self.batches, self.held = iter(batches), iter(held)  # distributed in `set_model` if need be
    self.every, self.momentum = every, momentum
    self.key = {"new": "align_new", "raw": "align", "fused": "align_fused"}[signal]
    self.fused = signal == "fused"  # the probe then also takes the fused held-out gradient
    self._seen: List[Dict[str, float]] = []  # this epoch's probes
    self.trace: List[Dict[str, float]] = []  # every probe of the fit, with its optimizer step
    self._probes = 0
    self._first_epoch = True  # the next epoch is the first of a fit (`on_train_begin`)
    self._probed_at = 0  # the optimizer step of the last probe

  def set_model(self, model):
    super().set_model(model)
    strategy = model.distribute_strategy
    self.active = can_probe(strategy)
    if not self.active:
      if getattr(model, "teach_alignment", None) is not None:
        warn_unprobed(strategy)
      return
    align_fn = functools.partial(model.teaching_alignment, fused=self.fused)
    if strategy.num_replicas_in_sync == 1:
      self._align = WarmCompiled(align_fn, eager_calls=0)
      return
    # Several replicas: the batches split over them as `fit`'s are (sharded by data across
    # workers), the gradients summed inside `strategy.run`; every replica returns the same values.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    self.batches, self.held = (
      iter(strategy.experimental_distribute_dataset(d.with_options(options)))
      for d in self._datasets
    )

    @tf.function
    def align(batch, held):
      out = strategy.run(align_fn, args=(batch, held))
      return {k: strategy.experimental_local_results(v)[0] for k, v in out.items()}

    self._align = align

  def measure(self) -> Dict[str, float]:
    """One probe on the next training and held-out batches: {name: value} (empty without a
    cross-view L_sem)."""
    return {k: float(v) for k, v in self._align(next(self.batches), next(self.held)).items()}

  def on_train_begin(self, logs=None):
    self._first_epoch = True

  def on_epoch_begin(self, epoch, logs=None):
    self._seen = []
    self._epoch_start, self._probe_seconds = time.perf_counter(), 0.0
    if self.active:  # one read per epoch: a read per batch would wait for every step to finish
      self._epoch_first_step = int(self.model.optimizer.iterations.numpy())
      if self._first_epoch and not self._probes and self._epoch_first_step:
        self.resume(self._epoch_first_step)
    self._first_epoch = False

  def resume(self, step: int) -> None:
    """Continues the probes of a run restored at optimizer step `step` (BackupAndRestore, whose
    `on_train_begin` runs before the first epoch): the moving average restored with the weights
    keeps its momentum (the next probe does not reset it), the next probe comes at the next
    multiple of `every`, and both batch streams skip the batches the earlier probes took."""
    done = step // self.every
    self._probes, self._probed_at = done, step
    for _ in range(done):
      next(self.batches), next(self.held)

  def on_train_batch_end(self, batch, logs=None):
    if not self.active:
      return
    step = self._epoch_first_step + batch + 1  # Keras passes the epoch's last step run
    if step < (self._probed_at // self.every + 1) * self.every:
      return
    self._probed_at = step
    start = time.perf_counter()
    align = self.measure()
    self._probe_seconds += time.perf_counter() - start
    if not align:
      return
    self._seen.append(align)
    self.trace.append({"step": step, **align})
    state = getattr(self.model, "teach_alignment", None)
    if state is not None:
      now = np.array([align[f"{self.key}_id"], align[f"{self.key}_mm"]], np.float32)
      m = self.momentum if self._probes else 0.0
      state.assign(m * state.numpy() + (1.0 - m) * now)
    self._probes += 1

  def on_epoch_end(self, epoch, logs=None):
    if logs is None or not self._seen:
      return
    for name in self._seen[0]:
      logs[name] = float(np.mean([a[name] for a in self._seen]))
    # the probe's share of the epoch's training time (its first call includes the trace)
    logs["probe_share"] = self._probe_seconds / max(time.perf_counter() - self._epoch_start, 1e-9)
    state = getattr(self.model, "teach_alignment", None)
    if state is not None:
      logs["teach_avg_id"], logs["teach_avg_mm"] = (float(x) for x in state.numpy())
