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
    rows: int64 [n] line (text) or 1-based row (Parquet) of each entry, or None (= 1..n).
  """

  users: np.ndarray
  items: np.ndarray
  times: np.ndarray | None
  labels: np.ndarray | None
  source: str
  rows: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.users.shape[0])

  def row_numbers(self) -> np.ndarray:
    """int64 [n]: each entry's line (text files) or row (Parquet) in `source`, increasing in file
    order; 1..n when the reader did not record them."""
    if self.rows is not None:
      return np.asarray(self.rows, np.int64)
    return np.arange(1, len(self) + 1, dtype=np.int64)


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


@dataclasses.dataclass
class ByteRange:
  """The part of a text file that one reader of a parallel read parses.

  Attributes:
    start: byte offset of the first line (0, or just after a line break).
    end: rows starting at or after this offset belong to the next part (None = end of file).
      A row that starts before `end` is read to its end, even across `end` (a quoted field with
      line breaks).
    lines_before: number of lines in [0, start), so that messages give the file's line numbers.
    stopped_at: set by `iter_rows` when reading ends: the offset just after the last row read
      (= the next part's `start` unless a row ran across `end`).
  """

  start: int = 0
  end: int | None = None
  lines_before: int = 0
  stopped_at: int | None = None


def split_at_lines(path, part_bytes: int) -> list[int]:
  """Start offsets of the parts of a file cut every `part_bytes` bytes, each moved forward to
  just after the next line break: [0, s_1, s_2, ...] (increasing, all < the file size)."""
  path = pathlib.Path(path)
  size = path.stat().st_size
  starts = [0]
  with open(path, "rb") as f:
    for nominal in range(part_bytes, size, part_bytes):
      if nominal <= starts[-1]:
        continue
      f.seek(nominal - 1)
      f.readline()  # to just after the line break at or after nominal - 1
      if f.tell() < size and f.tell() > starts[-1]:
        starts.append(f.tell())
  return starts


def count_lines(path, start: int, end: int | None) -> int:
  """Number of line breaks in bytes [start, end) of a file."""
  n = 0
  with open(path, "rb") as f:
    f.seek(start)
    left = None if end is None else end - start
    while left is None or left > 0:
      block = f.read(1 << 24 if left is None else min(1 << 24, left))
      if not block:
        break
      n += block.count(b"\n")
      if left is not None:
        left -= len(block)
  return n


def iter_rows(
  path,
  sep: str | None = None,
  names: Sequence[str] | None = None,
  progress: bool = False,
  desc: str | None = None,
  part: ByteRange | None = None,
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
  """(column names, iterator of (line number, fields)) of a delimited text file.

  With `names`, the file has no header row (or, with a `part` after the first, its header was
  read by whoever split the file). Rows with a wrong number of fields raise `DataError`; blank
  lines are skipped. TSV files are read without quote processing (so a `"` in a product title
  is data), CSV files with standard quoting. With `part`, only the rows starting in that byte
  range are read (see `ByteRange`); line numbers are still the file's.
  """
  path = pathlib.Path(path)
  sep = guess_sep(path, sep)
  part = part or ByteRange()
  if part.start and names is None:
    raise ValueError("iter_rows: a part after the first needs the header as `names`")
  _open_text(path).close()  # FileNotFoundError with the usual message
  f = open(path, "rb")  # decoded line by line, so invalid UTF-8 names its line
  f.seek(part.start)
  quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
  size = path.stat().st_size
  consumed = [0]  # bytes handed to the csv reader (it never reads ahead of the row it parses)

  def lines():
    bar = None
    if progress:
      from tqdm.auto import tqdm

      bar = tqdm(
        total=size, unit="B", unit_scale=True, desc=desc or path.name, leave=False, file=sys.stderr
      )
    try:
      pending = 0
      for number, raw in enumerate(f, part.lines_before + 1):
        pending += len(raw)
        consumed[0] += len(raw)
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

  source = lines()
  reader = csv.reader(source, delimiter=sep, quoting=quoting, strict=True)
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
  end = None if part.end is None else part.end - part.start
  before = part.lines_before

  def rows():
    n = len(header)
    try:
      while end is None or consumed[0] < end:
        start = before + reader.line_num + 1  # a quoted field may run over several lines
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
          raise DataError(path, f"malformed row: {err}", line=before + reader.line_num) from None
        if not fields or (len(fields) == 1 and not fields[0].strip()):
          continue
        if len(fields) != n:
          raise DataError(
            path,
            f"malformed row: expected {n} fields "
            f"({sep!r}-separated: {', '.join(header)}), got {len(fields)}",
            line=before + reader.line_num,
          )
        yield before + reader.line_num, fields
    finally:
      part.stopped_at = part.start + consumed[0]
      source.close()

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


@dataclasses.dataclass(frozen=True)
class ColumnPlan:
  """Where each role's column is in a table's header: (index, name), or None if unused."""

  user: tuple
  item: tuple
  time: tuple | None
  rating: tuple | None
  label: tuple | None


def plan_columns(path, header, columns: Columns, time_optional: bool = False) -> ColumnPlan:
  """The columns of `header` that `columns` names; DataError (listing the header) if one is
  missing. `time_optional`: a missing time column means "file order" instead of an error."""
  return ColumnPlan(
    user=_pick(path, header, columns.user, "user"),
    item=_pick(path, header, columns.item, "item"),
    time=_pick(path, header, columns.time, "time", optional=time_optional),
    rating=_pick(path, header, columns.rating, "rating"),
    label=_pick(path, header, columns.label, "label"),
  )


def parse_rows(path, rows, plan: ColumnPlan, columns: Columns) -> Interactions:
  """Interactions from (line number, fields) rows of `iter_rows`: ids checked, ratings below
  `columns.min_rating` dropped, timestamps and split labels parsed. The first bad row raises
  `DataError` with its line and field. Used for a whole file and for each part of a parallel
  read alike."""
  path = pathlib.Path(path)
  u, i, t, r, lab = plan.user, plan.item, plan.time, plan.rating, plan.label
  users, items, times, labels, lines = [], [], [], [], []
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
    lines.append(line)
  return Interactions(
    users=np.asarray(users, dtype=object),
    items=np.asarray(items, dtype=object),
    times=np.asarray(times, np.float64) if t is not None else None,
    labels=np.asarray(labels, np.int64) if lab is not None else None,
    source=str(path),
    rows=np.asarray(lines, np.int64),
  )


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
  return parse_rows(path, rows, plan_columns(path, header, columns, time_optional), columns)


def open_parquet(path, columns: Columns, time_optional: bool = False):
  """(pyarrow ParquetFile, its column names, ColumnPlan) of an interaction table in Parquet."""
  import pyarrow.parquet as pq

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"input file not found: {path}")
  try:
    pf = pq.ParquetFile(path)
  except Exception as err:  # pyarrow raises ArrowInvalid and friends
    raise DataError(path, f"not a readable Parquet file: {err}") from None
  header = list(pf.schema_arrow.names)
  return pf, header, plan_columns(path, header, columns, time_optional)


def parquet_column_names(header, plan: ColumnPlan) -> list:
  """The names of the columns a ColumnPlan uses (what to read from the file)."""
  roles = (plan.user, plan.item, plan.time, plan.rating, plan.label)
  return [header[c[0]] for c in roles if c is not None]


def parse_parquet_table(
  path, table, header, plan: ColumnPlan, columns: Columns, row_offset: int = 0
) -> Interactions:
  """Interactions from a Parquet table (the whole file, or one row group that starts at row
  `row_offset` + 1): the checks of `parse_rows`, column by column. A raised `DataError` carries
  `order` = (check number, row): the first error of a whole-file read is the smallest `order`
  over its row groups."""
  import pyarrow as pa
  import pyarrow.compute as pc

  path = pathlib.Path(path)
  u, i, t, r, lab = plan.user, plan.item, plan.time, plan.rating, plan.label
  check = [0]

  def col(c):
    return table.column(header[c[0]])

  def fail(message, row, field):
    err = DataError(path, message, line=row_offset + row + 1, field=field, line_label="row")
    err.order = (check[0], err.line)
    return err

  def check_nulls(c, what):
    check[0] += 1
    arr = col(c)
    if arr.null_count:
      row = int(np.flatnonzero(np.asarray(pc.is_null(arr).to_numpy(zero_copy_only=False)))[0])
      raise fail(f"missing {what}", row, c[1])
    check[0] += 1

  def as_str(c, what):
    check_nulls(c, what)
    values = np.asarray(col(c).cast(pa.string()).to_pylist(), dtype=object)
    empty = np.flatnonzero(np.char.str_len(values.astype(str)) == 0) if len(values) else []
    if len(empty):
      raise fail(f"empty {what}", int(empty[0]), c[1])
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
          try:
            out.append(parse_time(path, str(v), row_offset + row + 1, c[1], columns.time_format))
          except DataError as err:
            err.order = (check[0], err.line)
            raise
          continue
        try:
          out.append(float(v))
        except (TypeError, ValueError):
          raise fail(f"{what} {v!r} is not a number", row, c[1]) from None
      values = np.asarray(out, np.float64)
    check[0] += 1
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise fail(f"{what} is not a finite number", int(bad[0]), c[1])
    return values

  users, items = as_str(u, "user id"), as_str(i, "item id")
  times = as_float(t, "timestamp") if t is not None else None
  labels = None
  if lab is not None:
    labels = as_float(lab, "split label")
    check[0] += 1
    bad = np.flatnonzero(~np.isin(labels, (0, 1, 2)))
    if bad.size:
      raise fail(f"split label {labels[bad[0]]!r} is not 0, 1 or 2", int(bad[0]), lab[1])
    labels = labels.astype(np.int64)
  rows = np.arange(row_offset + 1, row_offset + len(users) + 1, dtype=np.int64)
  if r is not None:
    ratings = as_float(r, "rating")
    if columns.min_rating is not None:
      keep = ratings >= columns.min_rating
      users, items, rows = users[keep], items[keep], rows[keep]
      times = times[keep] if times is not None else None
      labels = labels[keep] if labels is not None else None
  return Interactions(
    users=users, items=items, times=times, labels=labels, source=str(path), rows=rows
  )


def read_parquet(path, columns: Columns, time_optional: bool = False) -> Interactions:
  """Reads an interaction table from Parquet (same column roles as `read_delimited`)."""
  pf, header, plan = open_parquet(path, columns, time_optional)
  table = pf.read(columns=parquet_column_names(header, plan))
  return parse_parquet_table(path, table, header, plan, columns)


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


def unisrec_columns(path, header) -> tuple[int, int, int]:
  """Indices of `user_id`, `item_id_list` and `item_id` in a UniSRec `.inter` header."""
  return (
    column_index(path, header, "user_id", "user"),
    column_index(path, header, "item_id_list", "history"),
    column_index(path, header, "item_id", "item"),
  )


def parse_unisrec_rows(
  path, rows, cols: tuple[int, int, int], id_map: Mapping[str, str] | None
) -> tuple[list, list, list]:
  """(users, examples, line numbers) from (line, fields) rows of a UniSRec `.inter` file (a
  whole file or one part of a parallel read); examples are (history raw ids, [target raw id])."""
  path = pathlib.Path(path)
  ui, hi, ti = cols

  def mapped(token, line, field):
    if id_map is None:
      return token
    try:
      return id_map[token]
    except KeyError:
      raise DataError(
        path, f"item {token!r} is not in the item id map", line=line, field=field
      ) from None

  users, examples, lines = [], [], []
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
    lines.append(line)
  return users, examples, lines


def read_unisrec_split(
  path, id_map: Mapping[str, str] | None, progress: bool = False
) -> tuple[list, list]:
  """(users, examples) of one `.inter` file; examples are (history raw ids, [target raw id])."""
  path = pathlib.Path(path)
  header, rows = iter_rows(path, "\t", progress=progress, desc=f"reading {path.name}")
  users, examples, _ = parse_unisrec_rows(path, rows, unisrec_columns(path, header), id_map)
  if not examples:
    raise DataError(path, "no rows after the header")
  return users, examples
