"""UCI Online Retail II preparation (input_pipelines.public.online_retail) on inline fixtures:
the tests never need the real data."""

import datetime
import json

import numpy as np
import pytest

from input_pipelines.errors import DataError
from input_pipelines.public import online_retail as orr

HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
# Lines as in the Online Retail II sheets (invoice lines in file order).
ROWS = [
  "489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,"
  "United Kingdom\n",
  "489434,79323W, WHITE CHERRY LIGHTS,12,2009-12-01 07:45:00,6.75,13085.0,United Kingdom\n",
  "489435,22350,CAT BOWL ,12,2009-12-01 07:46:00,2.55,13085.0,United Kingdom\n",
  "489436,79323W,WHITE CHERRY LIGHTS,6,2009-12-01 09:06:00,6.75,13078.0,United Kingdom\n",
  "489437,POST,POSTAGE,1,2009-12-01 09:08:00,18.00,12682.0,France\n",
  "C489449,22087,PAPER BUNTING WHITE LACE,-12,2009-12-01 10:33:00,2.95,16321.0,Australia\n",
  "489450,21232,STRAWBERRY CERAMIC TRINKET BOX,24,2009-12-01 10:40:00,1.25,,United Kingdom\n",
  "489451,22111,SCOTTIE DOG HOT WATER BOTTLE,3,2009-12-01 10:41:00,0.0,13078.0,United Kingdom\n",
  "489452,79323w,WHITE CHERRY LIGHTS,12,2009-11-30 18:00:00,6.75,13085.0,United Kingdom\n",
  "489453,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,1,2009-12-02 08:00:00,6.95,13085.0,"
  "United Kingdom\n",
]


def _csv(tmp_path, rows=ROWS, header=HEADER, name="sheet.csv"):
  path = tmp_path / name
  path.write_text(header + "".join(rows), encoding="utf-8")
  return path


def _seconds(text):
  return (
    datetime.datetime.strptime(text, "%Y-%m-%d %H:%M")
    .replace(tzinfo=datetime.timezone.utc)
    .timestamp()
  )


def test_rows_are_parsed_with_customer_ids_and_times(tmp_path):
  data = orr.read_table(_csv(tmp_path))
  assert len(data) == len(ROWS)
  assert data.customer[:3] == ["13085", "13085", "13085"] and data.customer[6] == ""
  assert data.invoice[5] == "C489449" and data.quantity[5] == -12
  assert data.time[0] == _seconds("2009-12-01 07:45")
  assert data.stock[1] == "79323W" and data.description[1] == " WHITE CHERRY LIGHTS"


@pytest.mark.parametrize(
  "text, expected",
  [
    ("2009-12-01 07:45:00", "2009-12-01 07:45"),
    ("12/1/2009 7:45", "2009-12-01 07:45"),
    ("12/1/10 8:26", "2010-12-01 08:26"),
    ("2011-12-09T12:50:00", "2011-12-09 12:50"),
  ],
)
def test_date_formats(text, expected):
  assert orr.parse_time(text) == _seconds(expected)


def test_old_online_retail_column_names_and_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  old = (
    HEADER.replace("Invoice,", "InvoiceNo,")
    .replace("Price", "UnitPrice")
    .replace("Customer ID", "CustomerID")
  )
  a = orr.read_table(_csv(tmp_path, header=old))
  assert a.customer[0] == "13085" and a.price[0] == 6.95
  table = pa.table(
    {
      "Invoice": ["1", "C2"],
      "StockCode": ["85048", "22087"],
      "Description": ["BALL", None],
      "Quantity": [3, -1],
      "InvoiceDate": [datetime.datetime(2009, 12, 1, 7, 45)] * 2,
      "Price": [1.5, 2.0],
      "Customer ID": [13085.0, float("nan")],
      "Country": ["United Kingdom"] * 2,
    }
  )
  pq.write_table(table, tmp_path / "sheet.parquet")
  b = orr.read_table(tmp_path / "sheet.parquet")
  assert b.customer == ["13085", ""] and b.description == ["BALL", ""]
  assert b.time[0] == _seconds("2009-12-01 07:45")


@pytest.mark.parametrize(
  "row, field, message",
  [
    ("1,85048,BALL,twelve,2009-12-01 07:45:00,6.95,13085.0,UK\n", "Quantity", "not a number"),
    ("1,85048,BALL,12,yesterday,6.95,13085.0,UK\n", "InvoiceDate", "is not like"),
    ("1,85048,BALL,12,2009-12-01 07:45:00,,13085.0,UK\n", "Price", "not a number"),
    ("1,,BALL,12,2009-12-01 07:45:00,6.95,13085.0,UK\n", "StockCode", "empty stock code"),
    ("1,85048,BALL,12,2009-12-01 07:45:00,6.95\n", None, "expected 8 fields, got 6"),
  ],
)
def test_a_malformed_row_names_file_line_and_field(tmp_path, row, field, message):
  path = _csv(tmp_path, rows=[ROWS[0], row])
  with pytest.raises(DataError, match=message) as err:
    orr.read_table(path)
  assert err.value.file == str(path) and err.value.line == 3 and err.value.field == field


def test_missing_column_and_missing_file(tmp_path):
  with pytest.raises(DataError, match="no column 'Price' / 'UnitPrice'"):
    orr.read_table(_csv(tmp_path, header=HEADER.replace("Price", "Cost")))
  with pytest.raises(FileNotFoundError, match="online"):
    orr.read_raw([tmp_path / "absent.parquet"])
  with pytest.raises(ValueError, match="export each sheet"):
    (tmp_path / "book.xlsx").write_bytes(b"PK")
    orr.read_table(tmp_path / "book.xlsx")


def test_cleaning_keeps_product_purchases_of_known_customers(tmp_path):
  data = orr.read_table(_csv(tmp_path))
  keep, info = orr.clean(data)
  assert keep == [0, 1, 2, 3, 8, 9]
  assert info == {
    "rows_read": 10,
    "rows_kept": 6,
    "cancellation_or_return": 1,
    "no_customer_id": 1,
    "non_positive_price": 1,
    "non_product_code": 1,
  }
  texts = orr.item_texts(data, keep)
  # 79323W / 79323w: one item; its most frequent description, whitespace collapsed.
  assert texts == {
    "85048": "15CM CHRISTMAS GLASS BALL 20 LIGHTS",
    "79323W": "WHITE CHERRY LIGHTS",
    "22350": "CAT BOWL",
  }


def test_sequences_are_chronological_with_invoice_order_and_first_purchases(tmp_path):
  data = orr.read_table(_csv(tmp_path))
  keep, _ = orr.clean(data)
  first = orr.customer_sequences(data, keep, "first")
  # 13085: 79323w on 30 Nov, then invoice 489434 (85048, 79323W: a re-order, dropped), 22350,
  # then 85048 again on 2 Dec (dropped).
  assert [x for _, x in first["13085"]] == ["79323W", "85048", "22350"]
  assert [x for _, x in first["13078"]] == ["79323W"]
  again = orr.customer_sequences(data, keep, "consecutive")
  assert [x for _, x in again["13085"]] == ["79323W", "85048", "79323W", "22350", "85048"]
  # Invoice 489434's lines share a time: 85048 before 79323W, as on the invoice.
  assert data.time[0] == data.time[1]
  with pytest.raises(ValueError, match="--repeats"):
    orr.customer_sequences(data, keep, "all")


def _toy_sequences(num_users=60, num_items=40, length=45, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for u in range(num_users):
    items = rng.permutation(num_items)[: length - u % 20]
    out[f"c{u:03d}"] = [(float(t // 5), f"{10000 + int(x)}") for t, x in enumerate(items)]
  return out


def test_item_filter_ranks_by_customers_and_breaks_ties_by_code():
  seqs = {
    "a": [(0.0, "x"), (1.0, "y"), (2.0, "z")],
    "b": [(0.0, "y"), (1.0, "z"), (2.0, "w")],
    "c": [(0.0, "x")],
  }
  sel = orr.select(
    seqs, min_item_customers=2, max_items=2, min_user_items=1, max_users=0, max_user_len=None
  )
  assert sel.items == ["x", "y"]  # x, y, z bought by 2 customers each; w by 1
  assert {u: [x for _, x in s] for u, s in sel.seqs.items()} == {
    "a": ["x", "y"],
    "b": ["y"],
    "c": ["x"],
  }
  assert sel.info["items_read"] == 4 and sel.info["items_with_min_customers"] == 3


def test_customer_sample_is_seeded_and_keeps_the_most_recent_items():
  seqs = _toy_sequences()
  kw = dict(min_item_customers=1, max_items=0, min_user_items=30, max_users=20, max_user_len=25)
  a, b = orr.select(seqs, seed=1, **kw), orr.select(seqs, seed=1, **kw)
  c = orr.select(seqs, seed=2, **kw)
  assert a.seqs == b.seqs and set(a.seqs) != set(c.seqs) and len(a.seqs) == 20
  for u, s in a.seqs.items():
    assert len(seqs[u]) >= 30 and s == seqs[u][-25:]
  assert a.info["customers_sampled"] == 20 and a.info["params"]["seed"] == 1
  assert a.info["customers_with_min_items"] == sum(len(s) >= 30 for s in seqs.values())


def test_end_to_end_writes_a_prepared_directory_with_text(tmp_path):
  rows = []
  for u, seq in _toy_sequences(num_users=40, num_items=30, length=24).items():
    for t, x in seq:
      stamp = datetime.datetime(2010, 1, 1) + datetime.timedelta(days=t)
      rows.append(
        f"5{u[1:]}{int(t)},{x},PRODUCT {x} IN {'RED' if int(x) % 2 else 'BLUE'},"
        f"2,{stamp:%Y-%m-%d %H:%M:%S},1.25,{20000 + int(u[1:])}.0,UK\n"
      )
  raw = _csv(tmp_path, rows=rows)
  out = tmp_path / "retail"
  assert (
    orr.main(
      [
        "--raw",
        str(raw),
        "--out",
        str(out),
        "--min-item-customers",
        "2",
        "--min-user-items",
        "8",
        "--max-users",
        "30",
        "--max-user-len",
        "12",
        "--k-core-items",
        "2",
        "--text-encoder",
        "hashing",
        "--quiet",
      ]
    )
    == 0
  )
  meta = json.loads((out / "dataset.json").read_text())
  assert meta["source"] == "input_pipelines.public.online_retail"
  assert meta["protocol"] == "loo" and set(meta["modalities"]) == {"text"}
  assert meta["public_source"]["licence"] == "CC BY 4.0"
  assert meta["public_source"]["selection"]["customers_sampled"] == 30
  assert meta["statistics"]["num_users"] <= 30
  assert meta["statistics"]["sequence_length"]["max"] <= 12
  assert meta["modalities"]["text"]["num_present"] == meta["num_items"]
  with pytest.raises(FileExistsError):
    orr.main(["--raw", str(raw), "--out", str(out), "--quiet"])
