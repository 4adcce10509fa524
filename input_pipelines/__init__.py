"""Raw data -> prepared dataset directory -> tf.data (DESIGN.md section 4).

Item indexing everywhere: 0 = padding, 1 = out-of-vocabulary, real items are 2..N+1
(vocab size V = N + 2). This package never imports ``bivrec_tf``.
"""

import os as _os

# TFRS needs Keras 2; must be set before TensorFlow is imported anywhere (DESIGN.md section 1).
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

PAD_INDEX = 0
OOV_INDEX = 1
NUM_RESERVED = 2
SCHEMA_VERSION = 1

__all__ = ["PAD_INDEX", "OOV_INDEX", "NUM_RESERVED", "SCHEMA_VERSION"]
