"""Where a killed run resumes: the optimizer steps of its newest `BackupAndRestore` backup.

`tf.keras.callbacks.BackupAndRestore` restores the weights, the optimizer and the epoch, not the
position of the input stream. `train.run` reads the step count here before `fit` and skips that
many batches of the training stream (`train_dataset(skip_batches=...)`), so the resumed epochs
see the batches the uninterrupted run would have seen.
"""

import warnings
from pathlib import Path

import tensorflow as tf

# The optimizer's step counter inside a backup (the model is tracked as "model").
ITERATIONS_KEY = "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def completed_steps(backup_dir: Path) -> int:
  """Optimizer steps held by the newest backup `BackupAndRestore(backup_dir)` wrote (it keeps
  them in `<backup_dir>/chief`), 0 without one. A backup without the counter (another
  optimizer) gives 0 and a warning: the run then resumes with a restarted input stream."""
  latest = tf.train.latest_checkpoint(str(Path(backup_dir) / "chief"))
  if latest is None:
    return 0
  try:
    return int(tf.train.load_variable(latest, ITERATIONS_KEY))
  except (tf.errors.NotFoundError, ValueError) as err:
    warnings.warn(
      f"{latest}: no optimizer step count ({err}); the resumed run restarts its input stream",
      stacklevel=2,
    )
    return 0
