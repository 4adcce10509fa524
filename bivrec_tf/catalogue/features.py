"""New items' raw features -> the standardized rows the MM tower reads.

Inputs are what `python -m input_pipelines.prepare` takes: per modality `NAME=FEATS.npy:IDS.txt`,
`NAME=FEATS.npy` or `NAME=FEATS.parquet`, and item text encoded by the encoder the training data
used (recorded in the export's metadata with its settings). Each modality is standardized with
the mean and std recorded when the data was prepared (`input_pipelines.prepared.standardize`),
so a new item gets exactly the features it would have got had it been in the data then. Bad
input is a `DataError` naming the file, line and field.
"""

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from input_pipelines import features as feats
from input_pipelines import text_encoders
from input_pipelines.errors import DataError
from input_pipelines.prepared import standardize


@dataclasses.dataclass
class NewFeatures:
  """Features of the items named in the inputs.

  Attributes:
    ids: the items, in order of first appearance over the inputs.
    values: modality -> float32 `[n, D_m]` standardized rows (zeros where absent).
    present: modality -> bool `[n]` (only modalities given in the inputs).
    where: id -> (file, 1-based line or row, "line" / "row") of its first row, for messages.
  """

  ids: List[str]
  values: Dict[str, np.ndarray]
  present: Dict[str, np.ndarray]
  where: Dict[str, Tuple[Path, int, str]]


@dataclasses.dataclass(frozen=True)
class TextInput:
  """Item text for one modality (the options of `prepare --item-text`)."""

  file: str
  modality: str = "text"
  id_column: str = "item_id"
  text_columns: Optional[Sequence[str]] = None
  sep: Optional[str] = None
  corpus: Optional[str] = None  # the training texts (hashing encoder idf); default: recorded
  batch_size: int = 64


def modality_info(meta: dict, name: str) -> dict:
  """What the export knows about modality `name`: its dataset.json entry (dim, standardization,
  encoder when `encode_text` added it) merged with prepare's record of its source."""
  dataset = meta.get("dataset") or {}
  return {
    **((dataset.get("modality_sources") or {}).get(name) or {}),
    **((dataset.get("modalities") or {}).get(name) or {}),
  }


def _standardized(meta: dict, name: str, values: np.ndarray, given: bool, file) -> np.ndarray:
  if given:
    return np.asarray(values, np.float32)
  moments = modality_info(meta, name).get("standardization")
  if moments is None:
    raise DataError(
      file,
      "the export records no standardization for this modality (its data was prepared before "
      "the mean and std were recorded): prepare the data again, or pass --standardized with "
      "rows already standardized as in the prepared features/<modality>.npy",
      field=name,
    )
  return standardize(values, moments)


def _check_dim(name: str, dims: Dict[str, int], dim: int, file) -> None:
  if name not in dims:
    raise DataError(
      file, f"the export's MM view has no modality {name!r} (it has {sorted(dims)})", field=name
    )
  if dim != dims[name]:
    raise DataError(
      file,
      f"dimension mismatch: {dim} values per item, the export's modality has {dims[name]}",
      field=name,
    )


def _training_texts(meta: dict, info: dict, text: TextInput, known: Sequence[str]) -> List[str]:
  """The texts whose document frequencies the hashing encoder used at preparation: the
  non-empty texts of the catalogue's items in the recorded text file (or `text.corpus`)."""
  args = (meta.get("dataset") or {}).get("prepare_args") or {}
  path = Path(text.corpus or info.get("text_file") or "")
  if not path.is_file():
    raise DataError(
      path if str(path) != "." else "the export's metadata",
      "the hashing text encoder weighs words by their frequency in the training texts, and "
      "this file of them is not readable: pass --text-corpus FILE (the item text table the "
      "data was prepared from)",
      field=text.modality,
    )
  cols = args.get("text_columns") if not text.corpus else None
  table = feats.read_item_text(
    path,
    args.get("text_id_column", text.id_column) if not text.corpus else text.id_column,
    cols.split(",") if isinstance(cols, str) else (cols or text.text_columns),
    args.get("text_sep") if not text.corpus else text.sep,
  )
  keep = set(known)
  return [t for x, t in zip(table.ids, table.texts) if x in keep and t.strip()]


def _encode_text(meta, dims, text: TextInput, known: Sequence[str]) -> feats.FeatureSource:
  info = modality_info(meta, text.modality)
  encoder = info.get("encoder")
  if encoder not in ("minilm", "hashing"):
    raise DataError(
      text.file,
      f"modality {text.modality!r} was not encoded from item text by this project (no encoder "
      "recorded in the export): give its vectors with --features",
      field=text.modality,
    )
  items = feats.read_item_text(text.file, text.id_column, text.text_columns, text.sep)
  keep = np.array([bool(t.strip()) for t in items.texts])
  if not keep.any():
    raise DataError(items.file, "every item text is empty", field=text.modality)
  corpus = _training_texts(meta, info, text, known) if encoder == "hashing" else None
  fn, _ = text_encoders.get(
    encoder,
    dim=int(info.get("dim", dims.get(text.modality, 256))),
    seed=int(info.get("seed", 0)),
    batch_size=text.batch_size,
    corpus=corpus,
  )
  emb = fn([t for t, k in zip(items.texts, keep) if k], False)
  return feats.text_to_source(text.modality, items, emb, keep)


def read_new_features(
  meta: dict,
  dims: Dict[str, int],
  specs: Sequence[str] = (),
  text: Optional[TextInput] = None,
  standardized: bool = False,
  feature_id_column: str = "item_id",
  known: Sequence[str] = (),
) -> NewFeatures:
  """Reads and standardizes the features of the items in `specs` (`NAME=FILE[:IDS]`) and
  `text`. `dims`: the export's modality -> D_m; `known`: the catalogue's ids (the hashing
  encoder's training corpus is restricted to them). `standardized`: the rows are already
  standardized (no recorded moments applied)."""
  sources = []
  for spec in specs:
    name, file, ids_file = feats.parse_feature_spec(spec)
    src = feats.load_feature_source(name, file, ids_file, feature_id_column)
    _check_dim(name, dims, src.values.shape[1], src.file)
    sources.append((src, _standardized(meta, name, src.values, standardized, src.file)))
  if text is not None:
    _check_dim(text.modality, dims, dims.get(text.modality, -1), text.file)
    src = _encode_text(meta, dims, text, known)
    _check_dim(text.modality, dims, src.values.shape[1], src.file)
    sources.append((src, _standardized(meta, text.modality, src.values, False, src.file)))
  names = [src.name for src, _ in sources]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"modality {twice[0]!r} is given twice (--features / --item-text)")
  if not sources:
    raise ValueError("no features given: pass --features NAME=FILE and/or --item-text FILE")
  ids: List[str] = []
  where: Dict[str, Tuple[Path, int, str]] = {}
  for src, _ in sources:
    for r, x in enumerate(src.ids):
      if x not in where:
        where[x] = src.where(r)
        ids.append(x)
  index = {x: i for i, x in enumerate(ids)}
  values, present = {}, {}
  for src, rows in sources:
    at = np.array([index[x] for x in src.ids], np.int64)
    values[src.name] = np.zeros((len(ids), rows.shape[1]), np.float32)
    values[src.name][at] = rows
    present[src.name] = np.zeros(len(ids), bool)
    present[src.name][at] = True
  return NewFeatures(ids, values, present, where)
