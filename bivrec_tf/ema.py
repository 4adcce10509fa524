"""Weight averaging: evaluate and save the optimizer's moving average of the weights.

With `TrainConfig.ema_momentum` > 0, Adam keeps `avg <- m_t avg + (1 - m_t) w` for every
trainable weight after step t (Keras's `use_ema`, distribution-aware), with the momentum warmed up
as `tf.train.ExponentialMovingAverage(num_updates=t)` does, m_t = min(m, (1 + t) / (10 + t)):
the first steps' average follows the weights instead of holding on to the initialisation, so
short runs (a few dozen steps) are not scored on near-initial weights. The model's own variables keep
training on the raw weights; `averaged_weights` swaps the averages in for a block (per-epoch
validation, the best checkpoint) and swaps them back, so training resumes where it was. A
checkpoint saved inside the block holds the averaged weights as the model's weights, which is
what evaluation, the test metrics and the export then restore.
"""

import contextlib

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="bivrec_tf")
class AveragingAdam(tf.keras.optimizers.Adam):
  """Adam with `use_ema` whose momentum warms up: m_t = min(ema_momentum, (1 + t) / (10 + t)) at
  step t (0-based); from t = (10 m - 1) / (1 - m) on (890 steps at m = 0.99) it is Keras's EMA."""

  def _update_model_variables_moving_average(self, var_list):
    if not self.use_ema:
      return
    t = tf.cast(self.iterations, tf.float32)
    momentum = tf.minimum(tf.cast(self.ema_momentum, tf.float32), (1.0 + t) / (10.0 + t))

    def update_average(average, var):
      average.assign(momentum * average + (1.0 - momentum) * var)

    for var in var_list:
      average = self._model_variables_moving_average[self._index_dict[self._var_key(var)]]
      self._distribution_strategy.extended.update(average, update_average, args=(var,), group=False)


def moving_averages(model):
  """[(variable, its moving average)] for the model's trainable variables the optimizer averages
  (those it was built for), or [] when it keeps no averages (EMA off, or before the first step)."""
  opt = getattr(model, "optimizer", None)
  averages = getattr(opt, "_model_variables_moving_average", None)
  if not getattr(opt, "use_ema", False) or not averages:
    return []
  keyed = [(v, opt._var_key(v)) for v in model.trainable_variables]
  return [(v, averages[opt._index_dict[k]]) for v, k in keyed if k in opt._index_dict]


def _swap(pairs):
  for variable, average in pairs:
    value = tf.identity(variable)
    variable.assign(average)
    average.assign(value)


@contextlib.contextmanager
def averaged_weights(model):
  """Inside the block the model's variables hold the moving averages (a no-op without EMA)."""
  pairs = moving_averages(model)
  _swap(pairs)
  try:
    yield
  finally:
    _swap(pairs)
