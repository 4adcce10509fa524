"""Atomic file writes: readers (resumed runs, `python -m bivrec_tf.export --run`) never see half a
file."""

import os
from pathlib import Path


def write_text_atomic(path, text: str) -> None:
  """Writes `text` to a temporary sibling, then renames it over `path`."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
