"""Per-epoch full-ranking validation, best-weights checkpoint and early stopping in one callback.

Keeping the three together makes them survive preemption: the per-epoch history is persisted in
the run directory, so a run resumed by `BackupAndRestore` continues with the same best score,
best checkpoint and patience counter instead of starting them afresh.
"""

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from bivrec_tf.diagnostics import InterestDiagnostics
from bivrec_tf.ema import averaged_weights
from bivrec_tf.evaluate import Ranker, best_fusion, evaluate
from bivrec_tf.io_utils import write_text_atomic
from bivrec_tf.warm_compiled import WarmCompiled


class ValidationCallback(tf.keras.callbacks.Callback):
  """After each epoch: rank the catalogue for every validation user and log

  `val_ndcg<K>` (the best fused rule, or the single view), `val_ndcg<K>_id`, `val_ndcg<K>_mm`
  and `val_fusion_w`, the interest diagnostics on validation (`val_cos_<view>`: mean pairwise
  cosine of a user's interests, `val_maxwin_<view>`: share of targets won by the most winning
  interest) and, with a `probe` batch on a single-device run, each loss term's share of the
  gradient norm on each view's encoder (`gshare_<term>_<view>`); save the weights to `best_path`
  when `val_ndcg<K>` improves; stop when it has not improved for `patience` epochs (0: never
  stop early). `history_path` (JSON list of epoch logs) is rewritten atomically after every
  epoch and read back when the run resumes.
  """

  def __init__(
    self,
    ranker: Ranker,
    data: tf.data.Dataset,
    ks: Sequence[int],
    monitor_k: int,
    fusion_weights: Sequence[float],
    best_path: Optional[Path] = None,
    patience: int = 3,
    history_path: Optional[Path] = None,
    verbose: int = 1,
    probe: Optional[dict] = None,
    view_paths: Optional[Dict[str, Path]] = None,
  ):
    super().__init__()
    self.view_paths = dict(view_paths or {})
    self.probe = probe
    self.ranker, self.data, self.ks = ranker, data, ks
    self.monitor_k, self.fusion_weights = monitor_k, fusion_weights
    self.monitor = f"val_ndcg{monitor_k}"
    self.best_path, self.patience, self.history_path = best_path, patience, history_path
    self.verbose = verbose
    self.history: List[dict] = []
    if history_path is not None and Path(history_path).exists():
      self.history = json.loads(Path(history_path).read_text())

  def set_model(self, model):
    """Keras hands the callback its model at the start of `fit`: the per-epoch passes that are
    compiled once they pay (`WarmCompiled`) are made here, once per model, not per epoch."""
    super().set_model(model)
    self._diagnostics = InterestDiagnostics(model)
    # one probe batch: ~5 s to trace, ~0.5 s saved per epoch, so it pays after ~10 epochs
    self._gradient_norms = WarmCompiled(model.gradient_norms, eager_calls=10)

  @property
  def best_epoch(self) -> int:
    """1-based epoch with the best monitored score (0 before the first epoch)."""
    return self._best_epoch_of(self.monitor)

  @property
  def view_best_epochs(self) -> Dict[str, int]:
    """{view: 1-based epoch of its best `val_ndcg<K>_<view>`} for the views of `view_paths`."""
    return {v: self._best_epoch_of(f"{self.monitor}_{v}") for v in self.view_paths}

  def _best_epoch_of(self, name: str) -> int:
    scores = [h[name] for h in self.history if name in h]
    return scores.index(max(scores)) + 1 if scores else 0

  def on_epoch_begin(self, epoch, logs=None):
    # A resumed run restarts at `epoch`: forget epochs whose backup never completed.
    del self.history[epoch:]

  def on_epoch_end(self, epoch, logs=None):
    # With `ema_momentum` > 0 the averaged weights are the model: validated, saved, exported.
    with averaged_weights(self.model):
      self._validate(logs if logs is not None else {})

  def _validate(self, logs):
    results = evaluate(self.ranker, self.data, self.ks, self.fusion_weights)
    key = f"ndcg@{self.monitor_k}"
    for rule in ("id", "mm"):
      if rule in results:
        logs[f"{self.monitor}_{rule}"] = results[rule][key]
    quality = getattr(self.model, "view_quality", None)
    if quality is not None:  # sem_mode "val_guided" weighs its distillation by these
      quality.assign([results["id"][key], results["mm"][key]])
    if any(n.startswith("fused@") for n in results):
      w = best_fusion(results, key)
      logs["val_fusion_w"] = w
      logs[self.monitor] = results[f"fused@{w:.2f}"][key]
    else:
      logs[self.monitor] = next(iter(results.values()))[key]
    for name, value in self._diagnostics(self.data).items():
      # per-interest lists (win_, read_) and the token count stay out of the per-epoch logs
      if not isinstance(value, list) and not name.startswith("tokens_"):
        logs[f"val_{name}"] = value
    strategy = self.model.distribute_strategy
    if (
      self.probe is not None
      and strategy.num_replicas_in_sync == 1
      and not isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
    ):
      # Distributed variables cannot be differentiated outside a replica context: the shares
      # are measured on single-device runs only.
      logs.update(self.model.gradient_shares(self.probe, self._gradient_norms))
    self.history.append({k: float(v) for k, v in logs.items()})
    epoch = len(self.history)  # improved = this epoch is the first to reach the best score
    improved = self.best_epoch == epoch
    views_improved = [v for v, best in self.view_best_epochs.items() if best == epoch]
    if improved and self.best_path is not None:
      self.model.save_weights(str(self.best_path))
    for v in views_improved:
      self.model.save_weights(str(self.view_paths[v]))
    if self.history_path is not None:
      write_text_atomic(self.history_path, json.dumps(self.history, indent=1))
    if self.verbose:
      print(
        " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k.startswith(("val_", "gshare_")))
        + (" (best)" if improved else "")
        + "".join(f" (best {v})" for v in views_improved)
      )
    last_gain = max([self.best_epoch, *self.view_best_epochs.values()])
    if self.patience and len(self.history) - last_gain >= self.patience:
      self.model.stop_training = True
