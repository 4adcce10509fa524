"""A function that runs eagerly for its first calls and through one `tf.function` after them.

Tracing a model's forward pass (or its gradients) costs seconds; each later call then saves a
fraction of a second against eager execution. Short runs (a test's one epoch, a small
evaluation) never earn the trace back; a 20-epoch job does. `WarmCompiled(fn, eager_calls=n)`
calls `fn` eagerly n times, then traces it (`reduce_retracing`: a batch of another size traces
at most once more, with a shape that fits every size) and uses the compiled copy from then on.
Both give the same numbers (tested where it is used).
"""

from typing import Callable

import tensorflow as tf


class WarmCompiled:
  """`fn` eagerly for the first `eager_calls` calls, then `tf.function(fn)`.

  Args:
    fn: a function of tensors (a model method).
    eager_calls: calls made eagerly before compiling (0 = compile at once).
  """

  def __init__(self, fn: Callable, eager_calls: int):
    if eager_calls < 0:
      raise ValueError(f"WarmCompiled eager_calls must be >= 0, got {eager_calls}")
    self.fn, self.eager_calls = fn, eager_calls
    self.calls = 0
    self.compiled = None

  def __call__(self, *args, **kwargs):
    self.calls += 1
    if self.calls <= self.eager_calls:
      return self.fn(*args, **kwargs)
    if self.compiled is None:
      self.compiled = tf.function(self.fn, reduce_retracing=True)
    return self.compiled(*args, **kwargs)
