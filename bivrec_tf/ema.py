"""Weight averaging: evaluate and save the optimizer's moving average of the weights.

With `TrainConfig.ema_momentum` > 0, Adam keeps `avg <- m avg + (1 - m) w` for every trainable
weight after each step (Keras's `use_ema`, distribution-aware). The model's own variables keep
training on the raw weights; `averaged_weights` swaps the averages in for a block (per-epoch
validation, the best checkpoint) and swaps them back, so training resumes where it was. A
checkpoint saved inside the block holds the averaged weights as the model's weights, which is
what evaluation, the test metrics and the export then restore.
"""

import contextlib

import tensorflow as tf


def moving_averages(model):
  """[(variable, its moving average)] for the model's trainable variables, or [] when the
  optimizer keeps no averages (EMA off, or not built before the first step)."""
  opt = model.optimizer
  averages = getattr(opt, "_model_variables_moving_average", None)
  if not getattr(opt, "use_ema", False) or not averages:
    return []
  return [(v, averages[opt._index_dict[opt._var_key(v)]]) for v in model.trainable_variables]


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
