"""Shared test setup: bivrec_tf selects Keras 2 before anything imports TensorFlow."""

import bivrec_tf  # noqa: F401  (must precede tensorflow)
