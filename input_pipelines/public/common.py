"""What every public-dataset script shares: intermediate tables -> `prepare` -> provenance.

A script reads its raw files, writes an interaction table (and item text / features) into a
temporary directory, runs `input_pipelines.prepare` on them, then records where the data came from
under `public_source` in the prepared directory's dataset.json (rewritten atomically).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Callable

from input_pipelines.prepared import _atomic_write


def check_out(out, overwrite: bool) -> pathlib.Path:
  """The output directory, refused if it exists without `overwrite` (before any work)."""
  out = pathlib.Path(out)
  if out.exists() and not overwrite:
    raise FileExistsError(f"output directory already exists: {out} (pass --overwrite)")
  return out


def prepare_from_tables(
  write_tables: Callable[[pathlib.Path], dict],
  prepare_argv: Callable[[dict], list],
  keep_tables,
  prefix: str,
) -> pathlib.Path:
  """`write_tables(dir) -> paths` into `keep_tables` (or a temporary directory removed
  afterwards), then `prepare` with the arguments `prepare_argv(paths)`; returns its output."""
  from input_pipelines import prepare  # pylint: disable=import-outside-toplevel

  tmp = pathlib.Path(keep_tables) if keep_tables else pathlib.Path(tempfile.mkdtemp(prefix=prefix))
  try:
    paths = write_tables(tmp)
    return prepare.run(prepare.build_parser().parse_args(prepare_argv(paths)))
  finally:
    if not keep_tables:
      shutil.rmtree(tmp, ignore_errors=True)


def record_public_source(path: pathlib.Path, source: str, public_source: dict) -> None:
  """Sets `source` and `public_source` in `path`/dataset.json (replaced atomically)."""
  meta_file = pathlib.Path(path) / "dataset.json"
  meta = json.loads(meta_file.read_text(encoding="utf-8"))
  meta["source"] = source
  meta["public_source"] = public_source
  _atomic_write(meta_file, lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
