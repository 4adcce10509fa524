"""Readers for raw interaction logs and item tables (DESIGN.md section 4).

Everything here is pure Python / numpy (pyarrow for Parquet): no TensorFlow. Each reader checks
what it reads and raises `DataError` naming the file, line (or row) and field of the first problem.

Supported layouts:

- delimited tables (CSV / TSV / RecBole atomic `.inter` / `.item`): a header row names the
  columns (RecBole's `name:type` headers match `name`), or `names=` gives them for a file without
  one;
- Parquet tables (the same column roles);
- UniSRec-style pre-split files `<name>.{train,valid,test}.inter` with columns
  `user_id`, `item_id_list` (space-separated history, oldest first) and `item_id` (the target),
  optionally with a `<name>.item2index` map from raw item ids to the integers used in them.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import math
import pathlib
import sys
from typing import Iterator, Mapping, Sequence

import numpy as np

from input_pipelines.errors import DataError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclasses.dataclass
class Interactions:
  """A raw interaction log, one entry per row (file order kept).

  Attributes:
    users, items: str [n] raw ids.
    times: float64 [n] timestamps, or None (file order is the chronological order).
    labels: int64 [n] split labels (MMRec `x_label`: 0 train, 1 valid, 2 test), or None.
    source: the file(s) read, for messages and dataset.json.
  """

  users: np.ndarray
  items: np.ndarray
  times: np.ndarray | None
  labels: np.ndarray | None
  source: str

  def __len__(self) -> int:
    return int(self.users.shape[0])


def strip_type(name: str) -> str:
  """`item_id:token` -> `item_id` (RecBole atomic-file headers); whitespace/BOM stripped."""
  name = name.strip().lstrip("\ufeff")
  head, sep, tail = name.rpartition(":")
  if sep and head and tail and tail.replace("_", "").isalpha():
    return head
  return name


def guess_sep(path: pathlib.Path, sep: str | None) -> str:
  if sep:
    return {"\\t": "\t", "tab": "\t", "comma": ",", "space": " "}.get(sep, sep)
  suffix = path.suffix.lower()
  if suffix in (".csv",):
    return ","
  if suffix in (".tsv", ".inter", ".item", ".txt", ".text", ".user", ".tab"):
    return "\t"
  with open(path, encoding="utf-8", errors="replace") as f:
    first = f.readline()
  return "\t" if "\t" in first else ","


def _open_text(path: pathlib.Path):
  if not path.is_file():
    raise FileNotFoundError(f"input file not found: {path}")
  return open(path, encoding="utf-8", newline="")


def iter_rows(
  path,
  sep: str | None = None,
  names: Sequence[str] | None = None,
  progress: bool = False,
  desc: str | None = None,
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
  """(column names, iterator of (line number, fields)) of a delimited text file.

  With `names`, the file has no header row. Rows with a wrong number of fields raise
  `DataError`; blank lines are skipped. TSV files are read without quote processing (so a `"`
  in a product title is data), CSV files with standard quoting.
  """
  path = pathlib.Path(path)
  sep = guess_sep(path, sep)
  _open_text(path).close()  # FileNotFoundError with the usual message
  f = open(path, "rb")  # decoded line by line, so invalid UTF-8 names its line
  quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
  size = path.stat().st_size

  def lines():
    bar = None
    if progress:
      from tqdm.auto import tqdm

      bar = tqdm(
        total=size, unit="B", unit_scale=True, desc=desc or path.name, leave=False, file=sys.stderr
      )
    try:
      pending = 0
      for number, raw in enumerate(f, 1):
        pending += len(raw)
        if bar is not None and pending > 1 << 20:
          bar.update(pending)
          pending = 0
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
          raise DataError(
            path,
            f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at "
            f"column {err.start + 1}); save the file as UTF-8",
            line=number,
          ) from None
        yield line
    finally:
      if bar is not None:
        bar.update(pending)
        bar.close()
      f.close()

  reader = csv.reader(lines(), delimiter=sep, quoting=quoting, strict=True)
  if names is None:
    try:
      header = next(reader)
    except StopIteration:
      raise DataError(path, "file is empty (expected a header row)", line=1) from None
    except csv.Error as err:
      raise DataError(path, f"malformed header row: {err}", line=1) from None
    header = [strip_type(h) for h in header]
    if not any(header):
      raise DataError(path, "the header row is empty", line=1)
    dupes = {h for h in header if header.count(h) > 1}
    if dupes:
      raise DataError(path, f"header names column '{sorted(dupes)[0]}' twice", line=1)
  else:
    header = list(names)

  def rows():
    n = len(header)
    while True:
      start = reader.line_num + 1  # a quoted field may run over several lines
      try:
        fields = next(reader)
      except StopIteration:
        return
      except csv.Error as err:
        if "unexpected end of data" in str(err):
          raise DataError(
            path,
            "unterminated quoted field: the quote opened in this row is never closed",
            line=start,
          ) from None
        raise DataError(path, f"malformed row: {err}", line=reader.line_num) from None
      if not fields or (len(fields) == 1 and not fields[0].strip()):
        continue
      if len(fields) != n:
        raise DataError(
          path,
          f"malformed row: expected {n} fields "
          f"({sep!r}-separated: {', '.join(header)}), got {len(fields)}",
          line=reader.line_num,
        )
      yield reader.line_num, fields

  return header, rows()


def column_index(path, header: Sequence[str], name: str, role: str) -> int:
  """Index of column `name` in `header`; DataError listing the available columns if absent."""
  for i, h in enumerate(header):
    if h == name or strip_type(h) == name:
      return i
  hint = " (or --time-column none: the file order is the time order)" if role == "time" else ""
  raise DataError(
    path,
    f"missing {role} column (the file has columns: {', '.join(header)}); "
    f"choose another with --{role}-column{hint}",
    field=name,
  )


def parse_time(path, value: str, line: int, field: str, time_format: str | None) -> float:
  """A timestamp as float seconds (numbers as given; dates with `time_format`)."""
  value = value.strip()
  try:
    t = float(value)
    if math.isfinite(t):
      return t
  except ValueError:
    pass
  if time_format:
    try:
      if time_format == "iso":
        d = datetime.datetime.fromisoformat(value)
      else:
        d = datetime.datetime.strptime(value, time_format)
      if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
      return d.timestamp()
    except ValueError:
      raise DataError(
        path,
        f"timestamp {value!r} does not match --time-format {time_format!r}",
        line=line,
        field=field,
      ) from None
  raise DataError(
    path,
    f"timestamp {value!r} is not a finite number (for dates, pass "
    "--time-format iso or a strptime format such as %Y-%m-%d)",
    line=line,
    field=field,
  )


@dataclasses.dataclass(frozen=True)
class Columns:
  """Column names per role. `time`/`rating`/`label` None = not used. A tuple of candidates
  means "the first that exists" (e.g. MMRec's `userID` or the prototype's `user`)."""

  user: str | tuple = "user_id"
  item: str | tuple = "item_id"
  time: str | tuple | None = "timestamp"
  rating: str | None = None
  label: str | tuple | None = None
  min_rating: float | None = None
  time_format: str | None = None


def _pick(path, header, wanted, role: str, optional: bool = False):
  if wanted is None:
    return None
  candidates = [wanted] if isinstance(wanted, str) else list(wanted)
  stripped = [strip_type(h) for h in header]
  for c in candidates:
    if c in stripped:
      return stripped.index(c), c
  if optional:
    return None
  column_index(path, header, candidates[0], role)  # raises with the column list
  raise AssertionError("unreachable")


def read_delimited(
  path,
  columns: Columns,
  sep: str | None = None,
  names: Sequence[str] | None = None,
  progress: bool = False,
  time_optional: bool = False,
) -> Interactions:
  """Reads an interaction table (CSV/TSV/RecBole `.inter`).

  Args:
    path: the file.
    columns: column names per role (see `Columns`).
    sep: field separator; default from the extension (`.csv` comma, `.tsv`/`.inter` tab).
    names: column names of a file without a header row.
    time_optional: a missing time column means "file order" instead of an error.
  """
  path = pathlib.Path(path)
  header, rows = iter_rows(path, sep, names, progress, desc=f"reading {path.name}")
  u = _pick(path, header, columns.user, "user")
  i = _pick(path, header, columns.item, "item")
  t = _pick(path, header, columns.time, "time", optional=time_optional)
  r = _pick(path, header, columns.rating, "rating")
  lab = _pick(path, header, columns.label, "label")
  users, items, times, labels = [], [], [], []
  for line, fields in rows:
    user, item = fields[u[0]].strip(), fields[i[0]].strip()
    if not user:
      raise DataError(path, "empty user id", line=line, field=u[1])
    if not item:
      raise DataError(path, "empty item id", line=line, field=i[1])
    if r is not None:
      try:
        rating = float(fields[r[0]])
      except ValueError:
        raise DataError(
          path, f"rating {fields[r[0]]!r} is not a number", line=line, field=r[1]
        ) from None
      if columns.min_rating is not None and not rating >= columns.min_rating:
        continue
    if t is not None:
      times.append(parse_time(path, fields[t[0]], line, t[1], columns.time_format))
    if lab is not None:
      value = fields[lab[0]].strip()
      if value not in ("0", "1", "2"):
        raise DataError(
          path,
          f"split label {value!r} is not 0 (train), 1 (valid) or 2 (test)",
          line=line,
          field=lab[1],
        )
      labels.append(int(value))
    users.append(user)
    items.append(item)
  return Interactions(
    users=np.asarray(users, dtype=object),
    items=np.asarray(items, dtype=object),
    times=np.asarray(times, np.float64) if t is not None else None,
    labels=np.asarray(labels, np.int64) if lab is not None else None,
    source=str(path),
  )


def read_parquet(path, columns: Columns, time_optional: bool = False) -> Interactions:
  """Reads an interaction table from Parquet (same column roles as `read_delimited`)."""
  import pyarrow as pa
  import pyarrow.compute as pc
  import pyarrow.parquet as pq

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"input file not found: {path}")
  try:
    pf = pq.ParquetFile(path)
  except Exception as err:  # pyarrow raises ArrowInvalid and friends
    raise DataError(path, f"not a readable Parquet file: {err}") from None
  header = list(pf.schema_arrow.names)
  u = _pick(path, header, columns.user, "user")
  i = _pick(path, header, columns.item, "item")
  t = _pick(path, header, columns.time, "time", optional=time_optional)
  r = _pick(path, header, columns.rating, "rating")
  lab = _pick(path, header, columns.label, "label")
  wanted = [c for c in (u, i, t, r, lab) if c is not None]
  table = pf.read(columns=[header[c[0]] for c in wanted])

  def col(c):
    return table.column(header[c[0]])

  def check_nulls(c, what):
    arr = col(c)
    if arr.null_count:
      row = int(np.flatnonzero(np.asarray(pc.is_null(arr).to_numpy(zero_copy_only=False)))[0])
      raise DataError(path, f"missing {what}", line=row + 1, field=c[1], line_label="row")

  def as_str(c, what):
    check_nulls(c, what)
    values = np.asarray(col(c).cast(pa.string()).to_pylist(), dtype=object)
    empty = np.flatnonzero(np.char.str_len(values.astype(str)) == 0) if len(values) else []
    if len(empty):
      raise DataError(path, f"empty {what}", line=int(empty[0]) + 1, field=c[1], line_label="row")
    return values

  def as_float(c, what):
    check_nulls(c, what)
    arr = col(c)
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
      arr = arr.cast(pa.timestamp("s")) if pa.types.is_date(arr.type) else arr
      return (
        arr.cast(pa.int64()).to_numpy().astype(np.float64)
        / {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[arr.type.unit]
      )
    if (
      pa.types.is_integer(arr.type)
      or pa.types.is_floating(arr.type)
      or pa.types.is_boolean(arr.type)
    ):
      values = arr.to_numpy().astype(np.float64)
    else:
      out = []
      for row, v in enumerate(arr.to_pylist()):
        if what == "timestamp":
          out.append(parse_time(path, str(v), row + 1, c[1], columns.time_format))
          continue
        try:
          out.append(float(v))
        except (TypeError, ValueError):
          raise DataError(
            path, f"{what} {v!r} is not a number", line=row + 1, field=c[1], line_label="row"
          ) from None
      values = np.asarray(out, np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise DataError(
        path, f"{what} is not a finite number", line=int(bad[0]) + 1, field=c[1], line_label="row"
      )
    return values

  users, items = as_str(u, "user id"), as_str(i, "item id")
  times = as_float(t, "timestamp") if t is not None else None
  labels = None
  if lab is not None:
    labels = as_float(lab, "split label")
    bad = np.flatnonzero(~np.isin(labels, (0, 1, 2)))
    if bad.size:
      raise DataError(
        path,
        f"split label {labels[bad[0]]!r} is not 0, 1 or 2",
        line=int(bad[0]) + 1,
        field=lab[1],
        line_label="row",
      )
    labels = labels.astype(np.int64)
  if r is not None:
    ratings = as_float(r, "rating")
    if columns.min_rating is not None:
      keep = ratings >= columns.min_rating
      users, items = users[keep], items[keep]
      times = times[keep] if times is not None else None
      labels = labels[keep] if labels is not None else None
  return Interactions(users=users, items=items, times=times, labels=labels, source=str(path))


# --- UniSRec-style pre-split sequences -------------------------------------------------------

UNISREC_SPLITS = ("train", "valid", "test")


def find_unisrec_files(input_path, name: str | None = None) -> tuple[str, dict]:
  """(dataset name, split -> path) for `<dir>/<name>.{train,valid,test}.inter`."""
  p = pathlib.Path(input_path)
  if not p.is_dir():
    raise NotADirectoryError(
      f"--input for --format unisrec must be a directory holding "
      f"<name>.train.inter, .valid.inter and .test.inter: {p}"
    )
  if name is None:
    names = sorted(x.name[: -len(".train.inter")] for x in p.glob("*.train.inter"))
    if not names:
      raise FileNotFoundError(f"no <name>.train.inter file in {p}")
    if len(names) > 1:
      raise DataError(p, f"several datasets ({', '.join(names)}); choose one with --name")
    name = names[0]
  files = {s: p / f"{name}.{s}.inter" for s in UNISREC_SPLITS}
  for s, f in files.items():
    if not f.is_file():
      raise FileNotFoundError(f"missing {s} split file for --format unisrec: {f}")
  return name, files


def read_id_map(path) -> tuple[dict, list]:
  """A `<raw id>\\t<integer>` file (UniSRec `.item2index`) -> ({str(int): raw id}, raw ids in
  integer order)."""
  path = pathlib.Path(path)
  header, rows = iter_rows(path, "\t", names=["raw", "index"])
  out, order = {}, {}
  for line, (raw, index) in rows:
    raw, index = raw.strip(), index.strip()
    if not raw:
      raise DataError(path, "empty raw id", line=line, field="raw id")
    try:
      k = int(index)
    except ValueError:
      raise DataError(
        path, f"index {index!r} is not an integer", line=line, field="index"
      ) from None
    if str(k) in out:
      raise DataError(path, f"index {k} is listed twice", line=line, field="index")
    out[str(k)] = raw
    order[k] = raw
  if not out:
    raise DataError(path, "the id map is empty")
  if len(set(out.values())) != len(out):
    raise DataError(path, "a raw id is mapped to two indices")
  return out, [order[k] for k in sorted(order)]


def read_unisrec_split(
  path, id_map: Mapping[str, str] | None, progress: bool = False
) -> tuple[list, list]:
  """(users, examples) of one `.inter` file; examples are (history raw ids, [target raw id])."""
  path = pathlib.Path(path)
  header, rows = iter_rows(path, "\t", progress=progress, desc=f"reading {path.name}")
  ui = column_index(path, header, "user_id", "user")
  hi = column_index(path, header, "item_id_list", "history")
  ti = column_index(path, header, "item_id", "item")

  def mapped(token, line, field):
    if id_map is None:
      return token
    try:
      return id_map[token]
    except KeyError:
      raise DataError(
        path, f"item {token!r} is not in the item id map", line=line, field=field
      ) from None

  users, examples = [], []
  for line, fields in rows:
    user = fields[ui].strip()
    if not user:
      raise DataError(path, "empty user id", line=line, field="user_id")
    history = fields[hi].split()
    target = fields[ti].strip()
    if not target or len(target.split()) != 1:
      raise DataError(
        path, f"expected one target item id, got {target!r}", line=line, field="item_id"
      )
    users.append(user)
    examples.append(
      ([mapped(x, line, "item_id_list") for x in history], [mapped(target, line, "item_id")])
    )
  if not examples:
    raise DataError(path, "no rows after the header")
  return users, examples
