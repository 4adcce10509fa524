"""`python -m input_pipelines.public.online_retail`: UCI Online Retail II (a UK online gift shop's
invoices) -> prepared dataset directory with long customer histories and item text.

Source: Daqing Chen, "Online Retail II", UCI Machine Learning Repository, 2019,
https://archive.ics.uci.edu/dataset/502/online+retail+ii (DOI 10.24432/C5CG6D); licence
Creative Commons Attribution 4.0 (CC BY 4.0): redistribution and any use allowed with
attribution. Every invoice line of a UK-based, non-store online retailer of all-occasion gift
ware (many customers are wholesalers), 1 Dec 2009 - 9 Dec 2011, in the workbook
`online_retail_II.xlsx`, one sheet per year:

  Year 2009-2010   525,461 lines (1 Dec 2009 - 9 Dec 2010)
  Year 2010-2011   541,910 lines (1 Dec 2010 - 9 Dec 2011; the earlier UCI "Online Retail")

Columns: Invoice (6 digits; a leading "C" marks a cancellation), StockCode (5 digits, sometimes
with a letter; a few non-product codes such as POST, M, DOT, BANK CHARGES), Description,
Quantity, InvoiceDate (day and minute, UK local time), Price (GBP per unit), Customer ID
(5 digits, empty for guest orders), Country. The older "Online Retail" names (`InvoiceNo`,
`UnitPrice`, `CustomerID`) are accepted too.

`--raw` takes one or more tables: `.parquet` (for instance the sheet read by
`pandas.read_excel("online_retail_II.xlsx").to_parquet(...)`) or `.csv` / `.tsv` exports of a sheet
with a header row. InvoiceDate may be a Parquet timestamp or text: ISO (`2009-12-01 07:45:00`)
or Excel's US form (`12/1/2009 7:45`, `12/1/10 7:45`). The times are UK local time and are stored
as if they were UTC (the order, which is all the model uses, is the same).

Usage:

  python -m input_pipelines.public.online_retail \\
      --raw data_cache/raw/online-retail-ii/online_retail_II_2009-2010.parquet \\
      --out data_cache/online-retail-ii --text-encoder minilm
  python -m input_pipelines.describe data_cache/online-retail-ii

What it does (every step deterministic; `--seed` fixes the user sample):

1. Reads every row; malformed ones stop the run with the file, line (row) and field.
2. Keeps product purchases: a customer id, an invoice not starting with "C", Quantity > 0,
   Price > 0, and a StockCode of 5 digits (optionally followed by letters, upper-cased) - the
   postage, manual, carriage, fee, test and gift-voucher codes are dropped. The number of rows
   each rule drops is recorded.
3. Item = StockCode. Item text (modality `text`) = its most frequent Description over the kept
   rows (whitespace collapsed; ties by text), e.g. "WHITE HANGING HEART T-LIGHT HOLDER".
4. Per customer, lines are sorted by InvoiceDate; lines of one invoice share a timestamp and keep
   their order on the invoice. `--repeats first` (default): each product once, at its first
   purchase (re-orders of the same products would otherwise dominate and make next-item
   prediction a copy task); `--repeats consecutive` keeps re-orders and drops only an immediate
   repeat.
5. Items: those bought by at least `--min-item-customers` (5) customers, at most `--max-items`
   (10,000) of them, most bought first (ties by code). Customers: at least `--min-user-items`
   (30) items on them, a seeded sample of `--max-users` (1,100) if more, each cut to the most
   recent `--max-user-len` (60) items. This bounds the training set to ~60k examples.
6. `input_pipelines.prepare --format csv --dedup <repeats> --min-user-interactions 30
   --min-item-interactions 5 --protocol loo` (iterated k-core), with the item text encoded into
   modality `text` (`--text-encoder`, default `auto`: MiniLM when requirements-text.txt is
   installed, else hashing). The counts after each step go into dataset.json
   (`public_source`).

The intermediate tables (interactions.csv: user,item,timestamp; items.csv: item_id,text) are
written to a temporary directory, or kept in `--keep-tables DIR` (for instance to encode the text
separately with `python -m input_pipelines.encode_text --items DIR/items.csv ...`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import collections
import csv
import dataclasses
import datetime
import math
import pathlib
import re
import sys
from typing import Iterable, Sequence

import numpy as np

from input_pipelines.errors import DataError, run_cli
from input_pipelines.public.common import check_out, prepare_from_tables, record_public_source

SOURCE_URL = "https://archive.ics.uci.edu/dataset/502/online+retail+ii"
CITATION = (
  "Chen, D. (2019). Online Retail II [Dataset]. UCI Machine Learning Repository. "
  "https://doi.org/10.24432/C5CG6D"
)

# Canonical field -> accepted column names (Online Retail II first, then Online Retail).
COLUMNS = {
  "invoice": ("Invoice", "InvoiceNo"),
  "stock": ("StockCode",),
  "description": ("Description",),
  "quantity": ("Quantity",),
  "time": ("InvoiceDate",),
  "price": ("Price", "UnitPrice"),
  "customer": ("Customer ID", "CustomerID"),
}
TIME_FORMATS = (
  "%Y-%m-%d %H:%M:%S",
  "%Y-%m-%d %H:%M",
  "%Y-%m-%dT%H:%M:%S",
  "%m/%d/%Y %H:%M",
  "%m/%d/%y %H:%M",
  "%m/%d/%Y %H:%M:%S",
  "%d/%m/%Y %H:%M",
)
PRODUCT_CODE = re.compile(r"^[0-9]{5}[A-Za-z]*$")


@dataclasses.dataclass
class Lines:
  """Invoice lines in file order (several files: concatenated in the order given)."""

  invoice: list
  stock: list
  description: list
  quantity: list
  time: list  # float seconds (UK local time read as UTC)
  price: list
  customer: list  # '' when missing

  def __len__(self) -> int:
    return len(self.invoice)

  def extend(self, other: "Lines") -> None:
    for f in dataclasses.fields(self):
      getattr(self, f.name).extend(getattr(other, f.name))


def _empty() -> Lines:
  return Lines([], [], [], [], [], [], [])


def parse_time(text: str) -> float:
  """'2009-12-01 07:45:00' / '12/1/2009 7:45' / '12/1/10 7:45' -> seconds (read as UTC)."""
  text = text.strip()
  for fmt in TIME_FORMATS:
    try:
      t = datetime.datetime.strptime(text, fmt)
    except ValueError:
      continue
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()
  raise ValueError(text)


def customer_id(value) -> str:
  """13085.0 / '13085' / 13085 -> '13085'; None, NaN, '' -> ''."""
  if value is None:
    return ""
  if isinstance(value, float):
    if math.isnan(value):
      return ""
    return str(int(value)) if value.is_integer() else repr(value)
  text = str(value).strip()
  if text.lower() in ("", "nan", "none", "null"):
    return ""
  if text.endswith(".0") and text[:-2].isdigit():
    text = text[:-2]
  return text


def _find_columns(names: Sequence[str], file) -> dict:
  out = {}
  for field, candidates in COLUMNS.items():
    found = next((c for c in candidates if c in names), None)
    if found is None:
      raise DataError(
        file, f"no column {' / '.join(repr(c) for c in candidates)} (columns: {', '.join(names)})"
      )
    out[field] = found
  return out


def read_records(
  records: Iterable[dict], file="<input>", first_line: int = 1, line_label: str = "line"
) -> Lines:
  """Parses rows given as dicts (column name -> value: str, number, datetime or None).

  `first_line` is the number of the first record (2 for a CSV file with a header row).
  Raises DataError naming the file, line and field of the first malformed row.
  """
  out = _empty()
  cols = None
  for n, rec in enumerate(records, start=first_line):
    if cols is None:
      cols = _find_columns(list(rec), file)

    def get(field):
      return rec.get(cols[field])

    def bad(field, msg):
      return DataError(file, msg, line=n, field=cols[field], line_label=line_label)

    invoice = str(get("invoice") if get("invoice") is not None else "").strip()
    if invoice.endswith(".0") and invoice[:-2].isdigit():
      invoice = invoice[:-2]
    if not invoice:
      raise bad("invoice", "empty invoice number")
    stock = str(get("stock") if get("stock") is not None else "").strip()
    if not stock:
      raise bad("stock", "empty stock code")
    try:
      q = get("quantity")
      quantity = float(q)
      if not math.isfinite(quantity):
        raise ValueError
    except (TypeError, ValueError):
      raise bad("quantity", f"quantity {get('quantity')!r} is not a number") from None
    try:
      p = get("price")
      price = float(p)
      if not math.isfinite(price):
        raise ValueError
    except (TypeError, ValueError):
      raise bad("price", f"price {get('price')!r} is not a number") from None
    t = get("time")
    if isinstance(t, datetime.datetime):
      seconds = t.replace(tzinfo=datetime.timezone.utc).timestamp()
    else:
      try:
        seconds = parse_time(str(t if t is not None else ""))
      except ValueError:
        raise bad(
          "time", f"invoice date {t!r} is not like '2009-12-01 07:45:00' or '12/1/2009 7:45'"
        ) from None
    desc = get("description")
    desc = "" if desc is None or (isinstance(desc, float) and math.isnan(desc)) else str(desc)
    out.invoice.append(invoice)
    out.stock.append(stock)
    out.description.append(desc)
    out.quantity.append(quantity)
    out.time.append(seconds)
    out.price.append(price)
    out.customer.append(customer_id(get("customer")))
  return out


def read_table(path) -> Lines:
  """One raw table: `.parquet`, or `.csv` / `.tsv` / `.txt` with a header row."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} not found: --raw takes the Online Retail II sheet(s) as "
      f".parquet or .csv ({SOURCE_URL})"
    )
  suffix = path.suffix.lower()
  if suffix == ".parquet":
    import pyarrow.parquet as pq

    try:
      table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid and friends
      raise DataError(path, f"not a readable Parquet file ({err})") from None
    _find_columns(table.column_names, path)
    return read_records(table.to_pylist(), path, first_line=1, line_label="row")
  if suffix in (".xlsx", ".xls"):
    raise ValueError(
      f"{path}: export each sheet of the workbook to .csv (or .parquet with "
      "pandas.read_excel(...).to_parquet(...)) and pass those files"
    )
  sep = "\t" if suffix in (".tsv", ".tab") else ","
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError:
    text = raw.decode("latin-1")
  reader = csv.reader(text.splitlines(), delimiter=sep)
  header = next(reader, None)
  if not header:
    raise DataError(path, "empty file (expected a header row)")
  header = [h.strip() for h in header]

  def records():
    for n, row in enumerate(reader, start=2):
      if not row or not any(x.strip() for x in row):
        continue
      if len(row) != len(header):
        raise DataError(path, f"expected {len(header)} fields, got {len(row)}", line=n)
      yield dict(zip(header, row))

  return read_records(records(), path, first_line=2)


def read_raw(paths: Sequence) -> Lines:
  data = _empty()
  for p in paths:
    data.extend(read_table(p))
  if not len(data):
    raise DataError(", ".join(map(str, paths)), "no rows")
  return data


def clean(data: Lines) -> tuple[list, dict]:
  """Indices of the kept product purchases (file order) and the rows each rule dropped."""
  dropped = collections.Counter()
  keep = []
  for i in range(len(data)):
    if not data.customer[i]:
      dropped["no_customer_id"] += 1
    elif data.invoice[i][:1].upper() == "C" or data.quantity[i] <= 0:
      dropped["cancellation_or_return"] += 1
    elif data.price[i] <= 0:
      dropped["non_positive_price"] += 1
    elif not PRODUCT_CODE.match(data.stock[i]):
      dropped["non_product_code"] += 1
    else:
      keep.append(i)
  return keep, {"rows_read": len(data), "rows_kept": len(keep), **dict(sorted(dropped.items()))}


def normalize_text(text: str) -> str:
  return " ".join(text.split())


def item_texts(data: Lines, rows: Sequence[int]) -> dict:
  """StockCode (upper-cased) -> its most frequent non-empty description (ties by text)."""
  counts: dict = collections.defaultdict(collections.Counter)
  for i in rows:
    d = normalize_text(data.description[i])
    if d:
      counts[data.stock[i].upper()][d] += 1
  return {code: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for code, c in counts.items()}


def customer_sequences(data: Lines, rows: Sequence[int], repeats: str = "first") -> dict:
  """customer -> [(time, item)] sorted by time; lines of one time keep their file order.

  repeats: 'first' = each item once (its first purchase); 'consecutive' = drop only an item
  that repeats the one right before it.
  """
  if repeats not in ("first", "consecutive"):
    raise ValueError(f"--repeats must be first or consecutive, got {repeats!r}")
  order = sorted(rows, key=lambda i: (data.time[i], i))
  seqs: dict = {}
  seen: dict = {}
  for i in order:
    u, item = data.customer[i], data.stock[i].upper()
    seq = seqs.setdefault(u, [])
    if repeats == "first":
      s = seen.setdefault(u, set())
      if item in s:
        continue
      s.add(item)
    elif seq and seq[-1][1] == item:
      continue
    seq.append((data.time[i], item))
  return seqs


@dataclasses.dataclass
class Selection:
  seqs: dict  # customer -> [(time, item)], filtered
  items: list  # kept items, most bought first
  info: dict  # counts at every step (recorded in dataset.json)


def select(
  seqs: dict,
  min_item_customers: int = 5,
  max_items: int = 10000,
  min_user_items: int = 30,
  max_users: int = 1100,
  max_user_len: int | None = 60,
  seed: int = 0,
  repeats: str = "first",
) -> Selection:
  """Step 5 of the module docstring: item filter and cap, customer filter and seeded sample,
  most recent `max_user_len` items per customer."""
  info = {"customers_read": len(seqs), "purchases_in_sequences": sum(map(len, seqs.values()))}
  counts: dict = {}
  for seq in seqs.values():
    for item in {x for _, x in seq}:
      counts[item] = counts.get(item, 0) + 1
  info["items_read"] = len(counts)
  ranked = sorted(
    (x for x, c in counts.items() if c >= min_item_customers), key=lambda x: (-counts[x], x)
  )
  info["items_with_min_customers"] = len(ranked)
  kept = ranked[:max_items] if max_items else ranked
  keep = set(kept)
  filtered = {}
  for u, seq in seqs.items():
    s = [(t, x) for t, x in seq if x in keep]
    if repeats == "consecutive":  # dropping items can make an item follow itself
      s = [e for k, e in enumerate(s) if k == 0 or e[1] != s[k - 1][1]]
    if len(s) >= min_user_items:
      filtered[u] = s
  info["customers_with_min_items"] = len(filtered)
  users = sorted(filtered)
  if max_users and len(users) > max_users:
    rng = np.random.default_rng(seed)
    users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
  out = {u: (filtered[u][-max_user_len:] if max_user_len else filtered[u]) for u in users}
  info.update(
    customers_sampled=len(out),
    purchases_selected=sum(map(len, out.values())),
    params=dict(
      min_item_customers=min_item_customers,
      max_items=max_items,
      min_user_items=min_user_items,
      max_users=max_users,
      max_user_len=max_user_len,
      seed=seed,
      repeats=repeats,
    ),
  )
  return Selection(out, kept, info)


def write_tables(sel: Selection, texts: dict, out_dir: pathlib.Path) -> dict:
  """interactions.csv (user,item,timestamp) and items.csv (item_id,text) in `out_dir`."""
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"interactions": out_dir / "interactions.csv", "items": out_dir / "items.csv"}
  used = sorted({x for s in sel.seqs.values() for _, x in s})
  with open(paths["interactions"], "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(["user", "item", "timestamp"])
    for u in sorted(sel.seqs):
      for t, x in sel.seqs[u]:
        w.writerow([u, x, f"{t:.0f}"])
  with open(paths["items"], "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(["item_id", "text"])
    for x in used:
      w.writerow([x, texts.get(x, "")])
  return paths


def prepare_args(paths: dict, out, args) -> list:
  argv = [
    "--format",
    "csv",
    "--interactions",
    str(paths["interactions"]),
    "--user-column",
    "user",
    "--item-column",
    "item",
    "--time-column",
    "timestamp",
    "--dedup",
    args.repeats,
    "--min-user-interactions",
    str(args.min_user_items),
    "--min-item-interactions",
    str(args.k_core_items),
    "--protocol",
    "loo",
    "--max-history",
    str(args.max_history),
    "--seed",
    str(args.seed),
    "--out",
    str(out),
  ]
  if args.text_encoder != "none":
    argv += [
      "--item-text",
      str(paths["items"]),
      "--text-id-column",
      "item_id",
      "--text-columns",
      "text",
      "--text-encoder",
      args.text_encoder,
    ]
  if args.overwrite:
    argv.append("--overwrite")
  if args.quiet:
    argv.append("--quiet")
  return argv


def run(args) -> pathlib.Path:
  out = check_out(args.out, args.overwrite)
  data = read_raw(args.raw)
  rows, cleaning = clean(data)
  texts = item_texts(data, rows)
  sel = select(
    customer_sequences(data, rows, args.repeats),
    args.min_item_customers,
    args.max_items,
    args.min_user_items,
    args.max_users,
    args.max_user_len,
    args.seed,
    args.repeats,
  )
  if not sel.seqs:
    raise DataError(", ".join(map(str, args.raw)), "no customer left after filtering")
  if not args.quiet:
    print("cleaning: " + ", ".join(f"{k} {v:,}" for k, v in cleaning.items()), file=sys.stderr)
    print(
      "selection: " + ", ".join(f"{k} {v:,}" for k, v in sel.info.items() if isinstance(v, int)),
      file=sys.stderr,
    )
  path = prepare_from_tables(
    lambda d: write_tables(sel, texts, d),
    lambda paths: prepare_args(paths, out, args),
    args.keep_tables,
    ".online-retail-tables-",
  )
  record_public_source(
    path,
    "input_pipelines.public.online_retail",
    {
      "name": "UCI Online Retail II",
      "url": SOURCE_URL,
      "citation": CITATION,
      "licence": "CC BY 4.0",
      "raw_files": [str(p) for p in args.raw],
      "cleaning": cleaning,
      "selection": sel.info,
      "item": "StockCode",
      "item_text": "most frequent Description of the StockCode",
      "timestamps": "InvoiceDate (minutes, UK local time read as UTC); lines of one invoice "
      "keep their invoice order",
    },
  )
  return path


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m input_pipelines.public.online_retail",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--raw",
    required=True,
    nargs="+",
    metavar="FILE",
    help="Online Retail II sheet(s) as .parquet or .csv/.tsv",
  )
  p.add_argument("--out", required=True, help="prepared dataset directory to write")
  p.add_argument(
    "--repeats",
    default="first",
    choices=("first", "consecutive"),
    help="first: each product once per customer (default); consecutive: keep "
    "re-orders, drop immediate repeats",
  )
  p.add_argument("--min-item-customers", type=int, default=5)
  p.add_argument("--max-items", type=int, default=10000)
  p.add_argument("--min-user-items", type=int, default=30)
  p.add_argument("--max-users", type=int, default=1100)
  p.add_argument(
    "--max-user-len",
    type=int,
    default=60,
    help="keep each customer's most recent N items (0 = all)",
  )
  p.add_argument(
    "--k-core-items",
    type=int,
    default=5,
    help="prepare's --min-item-interactions (iterated with the user minimum)",
  )
  p.add_argument("--max-history", type=int, default=200)
  p.add_argument("--seed", type=int, default=0, help="customer sample seed")
  p.add_argument(
    "--text-encoder",
    default="auto",
    choices=("auto", "minilm", "hashing", "none"),
    help="none: no text modality (encode later with input_pipelines.encode_text)",
  )
  p.add_argument("--keep-tables", metavar="DIR", help="keep the intermediate tables here")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--quiet", action="store_true")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.max_user_len is not None and args.max_user_len <= 0:
    args.max_user_len = None
  path = run(args)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(run_cli(main))
