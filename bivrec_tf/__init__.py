"""BivRec-TF: bidirectional view-based multimodal sequential recommendation in TensorFlow.

Importing this package selects Keras 2 (``tf_keras``) for ``tf.keras``: TensorFlow Recommenders needs
it. ``TF_USE_LEGACY_KERAS=1`` only takes effect if it is set before TensorFlow is first imported, so
this module sets it and refuses to continue if TensorFlow was already imported with Keras 3.
"""

import os
import sys

__version__ = "0.1.0"

_ALREADY_IMPORTED = "tensorflow" in sys.modules
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ INFO/WARNING noise out of the CLI


def _check_keras_version() -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  # tf.keras is resolved lazily on first access: it is still Keras 2 unless something touched it
  # (or imported keras 3 into it) before the environment variable was set.
  if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
      "bivrec_tf needs Keras 2 (tf_keras) behind tf.keras, but TensorFlow was already imported "
      f"with {tf.keras.__name__} (Keras 3). Import bivrec_tf before tensorflow, or set the "
      "environment variable TF_USE_LEGACY_KERAS=1 before starting Python."
    )


if _ALREADY_IMPORTED:
  _check_keras_version()
