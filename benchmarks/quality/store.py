"""The per-run record store of one (data, tag, mode): a JSON file shared by concurrent benchmark
runs under a file lock, and its name."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List

from bivrec_tf.io_utils import write_text_atomic


class Store:
  """Per-run records of one (data, tag, mode) in a JSON file, written after every run."""

  def __init__(self, path: Path, fresh: bool = False):
    self.path = path
    self.records: List[dict] = []
    if path.exists() and fresh:
      os.replace(path, path.with_suffix(".json.old"))  # the previous store is kept aside
    elif path.exists():
      self.records = json.loads(path.read_text())

  def has(self, model: str, seed: int) -> bool:
    return any(r["model"] == model and r["seed"] == seed for r in self.records)

  def add(self, record: dict) -> None:
    """Adds (or replaces) one record; merges with records other processes wrote meanwhile, so
    several benchmark runs can share one store."""
    import fcntl  # pylint: disable=import-outside-toplevel

    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{self.path}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      on_disk = json.loads(self.path.read_text()) if self.path.exists() else []
      merged = {(r["model"], r["seed"]): r for r in [*on_disk, *self.records]}
      merged[(record["model"], record["seed"])] = record
      self.records = list(merged.values())
      write_text_atomic(self.path, json.dumps(self.records, indent=1, default=float))

  def by_model(self) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for r in sorted(self.records, key=lambda r: r["seed"]):
      out.setdefault(r["model"], []).append(r)
    return out


def store_name(args) -> str:
  return data_name(args.data) + (f"-{args.tag}" if args.tag else "")


def data_name(data: str) -> str:
  if data.startswith("synthetic"):  # synthetic[:variant][?key=value...]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", data).strip("_")
  return Path(data).name
