"""Item feature files and item text: reading, checking, aligning to the item vocabulary.

A modality is given as one of:

- `FEATS.npy` + `IDS.txt`: a float array [M, D] and a text file with M item ids, one per line
  (row r of the array belongs to the id on line r + 1);
- `FEATS.npy` alone: row r belongs to the item whose id is the integer r (the MMRec convention
  for `image_feat.npy` / `text_feat.npy`);
- `FEATS.parquet`: an id column (default `item_id`) and either one list-of-floats column or
  several numeric columns (one per dimension).

Items of the dataset without a row are marked absent for that modality (the model uses a learned
"missing" vector for them). Rows for ids that never occur in the interactions are an error unless
`ignore_unknown` (they usually mean a wrong id column or id mapping); rows for items that occur
but were removed by filtering are skipped. NaN/Inf values, duplicate ids, row-count mismatches
and ragged rows are errors naming the file, line/row and field.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Collection, Mapping, Sequence

import numpy as np

from input_pipelines.errors import DataError
from input_pipelines.readers import iter_rows, strip_type


@dataclasses.dataclass
class FeatureSource:
  """A loaded feature file: `values[r]` belongs to item `ids[r]`; `where(r)` locates row r."""

  name: str
  ids: list
  values: np.ndarray
  file: pathlib.Path
  ids_file: pathlib.Path | None = None

  def where(self, r: int) -> tuple[pathlib.Path, int, str]:
    """(file, 1-based line/row, label) for messages about row r."""
    if self.ids_file is not None:
      return self.ids_file, r + 1, "line"
    return self.file, r + 1, "row"


def parse_feature_spec(spec: str) -> tuple[str, pathlib.Path, pathlib.Path | None]:
  """`NAME=FEATS.npy[:IDS.txt]` or `NAME=FEATS.parquet` -> (name, file, ids file)."""
  name, sep, rest = spec.partition("=")
  name = name.strip()
  if not sep or not name or not rest:
    raise ValueError(
      f"--features {spec!r}: expected NAME=FEATS.npy[:IDS.txt] or NAME=FEATS.parquet"
    )
  if "/" in name or name.endswith("_present"):
    raise ValueError(f"--features {spec!r}: invalid modality name {name!r}")
  file, _, ids = rest.partition(":") if not pathlib.Path(rest).exists() else (rest, "", "")
  return name, pathlib.Path(file), pathlib.Path(ids) if ids else None


def read_id_list(path) -> list:
  """One item id per line; blank lines and duplicates are errors."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"item id list not found: {path}")
  ids, seen = [], {}
  with open(path, encoding="utf-8") as f:
    for line, raw in enumerate(f, 1):
      x = raw.rstrip("\r\n").strip()
      if not x:
        raise DataError(path, "empty item id", line=line, field="item id")
      if x in seen:
        raise DataError(
          path, f"item id {x!r} already on line {seen[x]}", line=line, field="item id"
        )
      seen[x] = line
      ids.append(x)
  return ids


def _check_values(src: FeatureSource) -> None:
  v = src.values
  if v.ndim != 2:
    raise DataError(
      src.file, f"expected a 2-D array [items, dim], got shape {v.shape}", field=src.name
    )
  if v.shape[1] == 0:
    raise DataError(src.file, "feature dimension is 0", field=src.name)
  if v.shape[0] != len(src.ids):
    what = (
      f"{src.ids_file} lists {len(src.ids)} ids"
      if src.ids_file
      else f"there are {len(src.ids)} ids"
    )
    raise DataError(src.file, f"row count mismatch: {v.shape[0]} rows but {what}", field=src.name)
  finite = np.isfinite(v)
  if not finite.all():
    r, c = (int(x) for x in np.argwhere(~finite)[0])
    file, line, label = src.where(r)
    raise DataError(
      file,
      f"NaN/Inf in dimension {c} of item {src.ids[r]!r}",
      line=line,
      field=src.name,
      line_label=label,
    )


def load_npy(name: str, file, ids_file=None) -> FeatureSource:
  file = pathlib.Path(file)
  if not file.is_file():
    raise FileNotFoundError(f"feature file not found: {file}")
  try:
    values = np.load(file, allow_pickle=False)
  except Exception as err:  # ValueError / OSError / UnpicklingError on corrupt files
    raise DataError(file, f"not a readable .npy array: {err}", field=name) from None
  if values.dtype.kind not in "fiub":
    raise DataError(file, f"expected a numeric array, got dtype {values.dtype}", field=name)
  values = np.asarray(values, np.float32) if values.ndim == 2 else values
  if ids_file is not None:
    ids = read_id_list(ids_file)
  else:
    ids = [str(r) for r in range(values.shape[0] if values.ndim else 0)]
  src = FeatureSource(name, ids, values, file, pathlib.Path(ids_file) if ids_file else None)
  _check_values(src)
  return src


def load_parquet(name: str, file, id_column: str = "item_id") -> FeatureSource:
  import pyarrow as pa
  import pyarrow.parquet as pq

  file = pathlib.Path(file)
  if not file.is_file():
    raise FileNotFoundError(f"feature file not found: {file}")
  try:
    table = pq.read_table(file)
  except Exception as err:
    raise DataError(file, f"not a readable Parquet file: {err}", field=name) from None
  names = [strip_type(n) for n in table.column_names]
  if id_column not in names:
    raise DataError(
      file,
      f"missing id column (the file has columns: {', '.join(names)}); "
      "choose it with --feature-id-column",
      field=id_column,
    )
  id_col = table.column(names.index(id_column))
  if id_col.null_count:
    row = next(r for r, x in enumerate(id_col.to_pylist()) if x is None)
    raise DataError(file, "missing item id", line=row + 1, field=id_column, line_label="row")
  ids = [str(x) for x in id_col.to_pylist()]
  others = [i for i, n in enumerate(names) if n != id_column]
  if not others:
    raise DataError(file, "no feature columns besides the id column", field=name)
  lists = [
    i
    for i in others
    if pa.types.is_list(table.schema.field(i).type)
    or pa.types.is_large_list(table.schema.field(i).type)
    or pa.types.is_fixed_size_list(table.schema.field(i).type)
  ]
  if lists:
    if len(others) != 1:
      raise DataError(
        file,
        "expected one list column or only numeric columns, got "
        f"{', '.join(names[i] for i in others)}",
        field=names[lists[0]],
      )
    col = names[lists[0]]
    rows = table.column(lists[0]).to_pylist()
    dim = None
    values = []
    for r, row in enumerate(rows):
      if row is None:
        raise DataError(file, "missing feature vector", line=r + 1, field=col, line_label="row")
      if dim is None:
        dim = len(row)
      if len(row) != dim:
        raise DataError(
          file,
          f"dimension mismatch: {len(row)} values, row 1 has {dim}",
          line=r + 1,
          field=col,
          line_label="row",
        )
      if any(x is None for x in row):
        raise DataError(
          file, "missing value in feature vector", line=r + 1, field=col, line_label="row"
        )
      values.append(row)
    values = np.asarray(values, np.float32).reshape(len(rows), dim or 0)
  else:
    cols = []
    for i in others:
      t = table.schema.field(i).type
      if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise DataError(file, f"feature column has non-numeric type {t}", field=names[i])
      c = table.column(i)
      if c.null_count:
        row = next(r for r, x in enumerate(c.to_pylist()) if x is None)
        raise DataError(file, "missing value", line=row + 1, field=names[i], line_label="row")
      cols.append(c.to_numpy().astype(np.float32))
    values = np.stack(cols, axis=1)
  seen = {}
  for r, x in enumerate(ids):
    if x in seen:
      raise DataError(
        file,
        f"item id {x!r} already in row {seen[x]}",
        line=r + 1,
        field=id_column,
        line_label="row",
      )
    seen[x] = r + 1
  src = FeatureSource(name, ids, values, file)
  _check_values(src)
  return src


def load_feature_source(
  name: str, file, ids_file=None, id_column: str = "item_id"
) -> FeatureSource:
  file = pathlib.Path(file)
  if file.suffix.lower() == ".parquet":
    if ids_file is not None:
      raise ValueError(f"feature '{name}': a Parquet file carries its ids; drop ':{ids_file}'")
    return load_parquet(name, file, id_column)
  if file.suffix.lower() == ".npy":
    return load_npy(name, file, ids_file)
  raise ValueError(f"feature '{name}': {file} is neither .npy nor .parquet")


def align(
  src: FeatureSource,
  item_ids: Sequence[str],
  known: Collection[str] | None = None,
  ignore_unknown: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
  """Aligns a feature source to the dataset's items.

  Args:
    src: the loaded source.
    item_ids: the N raw ids of the dataset (vocab rows 2..N+1).
    known: every raw item id that occurs in the input interactions (before filtering); ids
      outside it are "unknown". None = `item_ids`.
    ignore_unknown: skip unknown ids instead of raising.

  Returns:
    (values float32 [N, D], present bool [N], counts) with counts of matched / filtered-out /
    unknown rows.
  """
  index = {x: i for i, x in enumerate(item_ids)}
  known = index if known is None else known
  values = np.zeros((len(item_ids), src.values.shape[1]), np.float32)
  present = np.zeros(len(item_ids), bool)
  counts = {"matched": 0, "filtered_out": 0, "unknown": 0}
  for r, x in enumerate(src.ids):
    i = index.get(x)
    if i is not None:
      values[i] = src.values[r]
      present[i] = True
      counts["matched"] += 1
    elif x in known:
      counts["filtered_out"] += 1
    elif ignore_unknown:
      counts["unknown"] += 1
    else:
      file, line, label = src.where(r)
      raise DataError(
        file,
        f"item id {x!r} does not occur in the interactions (wrong id "
        "column or id mapping? --ignore-unknown-items skips such rows)",
        line=line,
        field=src.name,
        line_label=label,
      )
  if not counts["matched"]:
    raise DataError(src.file, "no row matches an item of the dataset", field=src.name)
  return values, present, counts


# --- item text ---------------------------------------------------------------------------------


@dataclasses.dataclass
class ItemText:
  """Item texts read from a table: `texts[r]` belongs to `ids[r]` (line `lines[r]` of `file`).
  An empty text means "no text" (the modality is absent for that item)."""

  ids: list
  texts: list
  lines: list
  file: pathlib.Path

  def where(self, r: int):
    return self.file, self.lines[r], "line" if self.file.suffix != ".parquet" else "row"


def read_item_text(
  path,
  id_column: str = "item_id",
  text_columns: Sequence[str] | None = None,
  sep: str | None = None,
  id_map: Mapping[str, str] | None = None,
) -> ItemText:
  """Reads item text from a delimited file with a header row (CSV, TSV, UniSRec `.text`,
  RecBole `.item`) or Parquet.

  Args:
    id_column: the item id column (RecBole `name:type` headers match `name`).
    text_columns: columns joined (". ") into the item's text; default every other column.
    id_map: optional raw-id translation applied to the id column.
  """
  path = pathlib.Path(path)
  if path.suffix.lower() == ".parquet":
    import pyarrow.parquet as pq

    if not path.is_file():
      raise FileNotFoundError(f"item text file not found: {path}")
    table = pq.read_table(path)
    header = [strip_type(n) for n in table.column_names]
    data = [
      [("" if v is None else str(v)) for v in table.column(i).to_pylist()]
      for i in range(len(header))
    ]
    rows = ((r + 1, [c[r] for c in data]) for r in range(table.num_rows))
  else:
    header, rows = iter_rows(path, sep)
  if id_column not in header:
    raise DataError(
      path,
      f"missing item id column (the file has columns: "
      f"{', '.join(header)}); choose it with --id-column",
      field=id_column,
    )
  ii = header.index(id_column)
  if text_columns:
    missing = [c for c in text_columns if c not in header]
    if missing:
      raise DataError(
        path, f"missing text column (the file has columns: {', '.join(header)})", field=missing[0]
      )
    ti = [header.index(c) for c in text_columns]
  else:
    ti = [i for i in range(len(header)) if i != ii]
    if not ti:
      raise DataError(path, "no text column besides the id column", field=id_column)
  ids, texts, lines, seen = [], [], [], {}
  for line, fields in rows:
    x = fields[ii].strip()
    if not x:
      raise DataError(path, "empty item id", line=line, field=id_column)
    if id_map is not None:
      if x not in id_map:
        raise DataError(path, f"item {x!r} is not in the item id map", line=line, field=id_column)
      x = id_map[x]
    if x in seen:
      raise DataError(path, f"item id {x!r} already on line {seen[x]}", line=line, field=id_column)
    seen[x] = line
    parts = [" ".join(fields[i].split()) for i in ti]
    text = ". ".join(p.rstrip(". ") for p in parts if p.strip(" ."))
    ids.append(x)
    texts.append(text)
    lines.append(line)
  if not ids:
    raise DataError(path, "no item rows after the header")
  return ItemText(ids, texts, lines, path)


def restrict_text(
  text: ItemText,
  item_ids: Sequence[str],
  known: Collection[str],
  ignore_unknown: bool = False,
  field: str = "item_id",
) -> ItemText:
  """The rows of `text` whose id is one of `item_ids`; an id that never occurs in the
  interactions (`known`) is an error unless `ignore_unknown`."""
  index = set(item_ids)
  rows = []
  for r, x in enumerate(text.ids):
    if x in index:
      rows.append(r)
    elif x not in known and not ignore_unknown:
      file, line, label = text.where(r)
      raise DataError(
        file,
        f"item id {x!r} does not occur in the interactions (wrong id "
        "column or id mapping? --ignore-unknown-items skips such rows)",
        line=line,
        field=field,
        line_label=label,
      )
  if not rows:
    raise DataError(text.file, "no row matches an item of the dataset", field=field)
  return ItemText(
    [text.ids[r] for r in rows],
    [text.texts[r] for r in rows],
    [text.lines[r] for r in rows],
    text.file,
  )


def text_to_source(
  name: str, text: ItemText, embeddings: np.ndarray, keep: np.ndarray
) -> FeatureSource:
  """FeatureSource from the embeddings of the rows `keep` (items with a non-empty text)."""
  rows = np.flatnonzero(keep)
  src = FeatureSource(
    name, [text.ids[r] for r in rows], np.asarray(embeddings, np.float32), text.file
  )
  src.where = lambda r, _rows=rows: text.where(int(_rows[r]))  # messages point at the text file
  _check_values(src)
  return src
