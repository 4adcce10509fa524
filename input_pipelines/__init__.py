"""Raw data -> prepared dataset directory -> tf.data (DESIGN.md section 4).

Modules: `prepare` (CLI: raw formats -> prepared directory), `readers` (interaction logs),
`protocols` (dedup, k-core, loo / user_split / given), `features` (feature files and item text),
`text_encoders` + `encode_text` (CLI: item text -> modality, offline), `describe` (CLI),
`prepared` (atomic writer), `dataset` (reader, tf.data), `synthetic` (the embedded default),
`tfds_builder` (TFDS `bivrec_sequences`), `tfds_movielens` (`--data tfds:movielens/...`),
`errors` (DataError: file, line, field). docs/data.md describes every format and option.

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
