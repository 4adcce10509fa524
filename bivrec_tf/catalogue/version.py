"""An exported version read back for a catalogue change, and the next version written.

A version's `variables/` is a TF object-graph checkpoint of `ServingModule`: its `encoders` (the
two view encoders, item towers included) and the catalogue's variables (`served.Catalogue`).
`load_version` rebuilds the encoders from the metadata's config and restores them from that
checkpoint, so a change needs nothing but the export directory: no run directory, no dataset.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from bivrec_tf.catalogue.served import Catalogue
from bivrec_tf.config import Config
from bivrec_tf.export import METADATA_FILE, export_model
from bivrec_tf.model import BivRecModel

VARIABLES = Path("variables") / "variables"


@dataclasses.dataclass
class ExportedVersion:
  """One exported version.

  Attributes:
    path: `<base>/<model_name>/<version>`.
    meta: its `assets.extra/bivrec_metadata.json`.
    model: a BivRecModel whose view encoders hold the version's weights (item towers sized to
      the catalogue's vocabulary; nothing of training but the encoders is restored).
    catalogue: what the version ranks.
  """

  path: Path
  meta: dict
  model: BivRecModel
  catalogue: Catalogue

  @property
  def version(self) -> int:
    return int(self.path.name)


def find_version(model_dir, version: Optional[int] = None) -> Path:
  """`<model_dir>/<version>` (default: the newest integer version); errors name what is missing."""
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"model directory not found: {model_dir}")
  # plain ASCII integers only, as for export.next_version and the servers
  versions = sorted(
    int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()
  )
  if version is None:
    if not versions:
      raise FileNotFoundError(f"no version (integer directory) under {model_dir}")
    version = versions[-1]
  path = model_dir / str(version)
  if version not in versions:
    raise FileNotFoundError(f"version {version} not found under {model_dir} (has {versions})")
  for need in (Path("assets.extra") / METADATA_FILE, Path(str(VARIABLES) + ".index")):
    if not (path / need).is_file():
      raise FileNotFoundError(f"{path / need} not found: {path} is not a complete export")
  return path


def feature_dims(meta: dict, cfg: Config) -> Dict[str, int]:
  """Modality -> D_m of the MM tower: recorded by the export, else (older exports) the dataset's
  dims of the config's modalities."""
  if "mm" not in cfg.model.views:
    return {}
  if meta.get("feature_dims"):
    return {m: int(d) for m, d in meta["feature_dims"].items()}
  modalities = (meta.get("dataset") or {}).get("modalities") or {}
  wanted = cfg.data.modalities or sorted(modalities)
  missing = [m for m in wanted if m not in modalities]
  if not wanted or missing:
    raise ValueError(
      f"the export's metadata names no feature dims for modalities {missing or wanted}"
    )
  return {m: int(modalities[m]["dim"]) for m in wanted}


def build_encoders(
  cfg: Config,
  vocab_size: int,
  max_len: int,
  dims: Dict[str, int],
  features: Optional[Dict[str, np.ndarray]] = None,
  present: Optional[Dict[str, np.ndarray]] = None,
) -> BivRecModel:
  """A BivRecModel with every variable created; feature tables `[V, D_m]` default to zeros."""
  if dims:
    features = features or {m: np.zeros((vocab_size, d), np.float32) for m, d in dims.items()}
    present = present or {m: np.ones(vocab_size, bool) for m in dims}
  model = BivRecModel(cfg, vocab_size, max_len, features or None, present or None)
  model.queries(tf.zeros([1, max_len], tf.int64))
  return model


def load_version(model_dir, version: Optional[int] = None) -> ExportedVersion:
  """Reads `<model_dir>/<version>` (default: newest): metadata, encoders, catalogue."""
  path = find_version(model_dir, version)
  meta_file = path / "assets.extra" / METADATA_FILE
  meta = json.loads(meta_file.read_text())
  if "config" not in meta:
    raise ValueError(
      f"{meta_file} has no config: export the run again with "
      "python -m bivrec_tf.export --run RUN_DIR, then change that version"
    )
  cfg = Config.from_dict(meta["config"])
  vocab_size, max_len = int(meta["vocab_size"]), int(meta["max_len"])
  model = build_encoders(cfg, vocab_size, max_len, feature_dims(meta, cfg))
  encoders = [model.views[v] for v in model.view_names]
  status = tf.train.Checkpoint(encoders=encoders).read(str(path / VARIABLES))
  status.expect_partial()  # the catalogue's variables are read by Catalogue.read
  status.assert_existing_objects_matched()
  catalogue = Catalogue.read(path / VARIABLES, model.view_names)
  if len(catalogue.vocab) != vocab_size:
    raise ValueError(
      f"{path}: the catalogue has {len(catalogue.vocab)} vocabulary rows, the metadata says "
      f"vocab_size {vocab_size}"
    )
  return ExportedVersion(path, meta, model, catalogue)


def write_version(
  base: ExportedVersion, model: BivRecModel, catalogue: Catalogue, op: dict
) -> Path:
  """Writes the next version of `base`'s model (atomically, through `export_model`, with its
  warmup records) with `base`'s serving settings, the new `model` and `catalogue`, and `op`
  appended to the metadata's `catalogue_ops` (the versions' change log)."""
  meta = dict(base.meta)
  record = {"from_version": base.version, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **op}
  meta["catalogue_ops"] = list(meta.get("catalogue_ops", [])) + [record]
  settings = {"table_dtype": meta["table_dtype"]} if "table_dtype" in meta else {}
  return export_model(
    model,
    catalogue.vocab,
    float(meta["fusion_weight"]),
    str(base.path.parent.parent),
    base.path.parent.name,
    int(meta["top_k"]),
    metadata=meta,
    item_chunk=int(meta["item_chunk"]),
    jit_compile=bool(meta.get("jit_compile", False)),
    exclude_history=bool(meta["exclude_history"]),
    catalogue=catalogue,
    **settings,
  )
