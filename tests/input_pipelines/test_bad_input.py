"""Bad input: one clear line naming file, line and field; exit status 2; nothing written."""

import pathlib
import shutil

import numpy as np
import pytest

from input_pipelines import encode_text, prepare
from input_pipelines.errors import run_cli

FIX = pathlib.Path(__file__).parent / "fixtures"
LOG = (FIX / "log.csv").read_text()


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return path


def _csv(tmp_path, text=LOG):
  return ["--format", "csv", "--interactions", str(_write(tmp_path, "log.csv", text))]


def _features(tmp_path, values, ids):
  np.save(tmp_path / "f.npy", np.asarray(values))
  _write(tmp_path, "f.ids.txt", "".join(f"{x}\n" for x in ids))
  return ["--features", f"img={tmp_path / 'f.npy'}:{tmp_path / 'f.ids.txt'}"]


def _lines(text):
  return text.splitlines()


def case_malformed_row(tmp_path):
  lines = _lines(LOG)
  lines[4] = lines[4] + ",extra"
  return _csv(tmp_path, "\n".join(lines) + "\n"), [
    "log.csv",
    "line 5",
    "expected 4 fields",
    "got 5",
  ]


def case_missing_column(tmp_path):
  return _csv(tmp_path) + ["--item-column", "product"], [
    "log.csv",
    "field 'product'",
    "missing item column",
    "user_id, item_id, timestamp",
  ]


def case_non_numeric_timestamp(tmp_path):
  lines = _lines(LOG)
  fields = lines[7].split(",")
  fields[2] = "yesterday"
  lines[7] = ",".join(fields)
  return _csv(tmp_path, "\n".join(lines) + "\n"), [
    "log.csv",
    "line 8",
    "field 'timestamp'",
    "'yesterday' is not a finite number",
  ]


def case_empty_item_id(tmp_path):
  lines = _lines(LOG)
  fields = lines[2].split(",")
  fields[1] = ""
  lines[2] = ",".join(fields)
  return _csv(tmp_path, "\n".join(lines) + "\n"), ["line 3", "field 'item_id'", "empty item id"]


def case_feature_row_count_mismatch(tmp_path):
  return _csv(tmp_path) + _features(tmp_path, np.ones((3, 4)), ["sku00", "sku01"]), [
    "f.npy",
    "field 'img'",
    "3 rows but",
    "lists 2 ids",
  ]


def case_feature_dimension_mismatch(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(
    pa.table({"item_id": ["sku00", "sku01", "sku02"], "emb": [[1.0, 2.0], [3.0, 4.0], [5.0]]}),
    tmp_path / "f.parquet",
  )
  return _csv(tmp_path) + ["--features", f"img={tmp_path / 'f.parquet'}"], [
    "f.parquet",
    "row 3",
    "field 'emb'",
    "dimension mismatch: 1 values, row 1 has 2",
  ]


def case_nan_feature(tmp_path):
  values = np.ones((3, 4))
  values[1, 2] = np.nan
  return _csv(tmp_path) + _features(tmp_path, values, ["sku00", "sku01", "sku02"]), [
    "f.ids.txt",
    "line 2",
    "field 'img'",
    "NaN/Inf in dimension 2 of item 'sku01'",
  ]


def case_inf_feature(tmp_path):
  values = np.ones((3, 4))
  values[2, 0] = np.inf
  return _csv(tmp_path) + _features(tmp_path, values, ["sku00", "sku01", "sku02"]), [
    "f.ids.txt",
    "line 3",
    "NaN/Inf",
  ]


def case_unknown_item_in_feature_file(tmp_path):
  return _csv(tmp_path) + _features(tmp_path, np.ones((3, 4)), ["sku00", "SKU-99", "sku02"]), [
    "f.ids.txt",
    "line 2",
    "field 'img'",
    "'SKU-99' does not occur in the interactions",
  ]


def case_unknown_item_in_text_file(tmp_path):
  text = _write(tmp_path, "items.csv", "item_id,title\nsku00,glue\nsku77,mystery\n")
  return _csv(tmp_path) + ["--item-text", str(text), "--text-encoder", "hashing"], [
    "items.csv",
    "line 3",
    "field 'item_id'",
    "'sku77' does not occur",
  ]


def case_empty_after_filtering(tmp_path):
  return _csv(tmp_path) + ["--k-core", "50"], [
    "log.csv",
    "no interactions left after filtering",
    "--k-core",
  ]


def case_unisrec_item_not_in_map(tmp_path):
  d = tmp_path / "uni"
  shutil.copytree(FIX / "unisrec", d)
  lines = _lines((d / "Mini.valid.inter").read_text())
  fields = lines[3].split("\t")
  fields[2] = "999999"
  lines[3] = "\t".join(fields)
  (d / "Mini.valid.inter").write_text("\n".join(lines) + "\n")
  return ["--format", "unisrec", "--input", str(d)], [
    "Mini.valid.inter",
    "line 4",
    "field 'item_id'",
    "'999999' is not in the item id map",
  ]


def case_mmrec_bad_split_label(tmp_path):
  d = tmp_path / "mm"
  shutil.copytree(FIX / "mmrec", d)
  lines = _lines((d / "toy.csv").read_text())
  lines[6] = lines[6][:-1] + "7"
  (d / "toy.csv").write_text("\n".join(lines) + "\n")
  return ["--format", "mmrec", "--input", str(d)], [
    "toy.csv",
    "line 7",
    "field 'x_label'",
    "'7' is not 0 (train), 1 (valid) or 2 (test)",
  ]


def case_mmrec_feature_rows_for_unknown_items(tmp_path):
  d = tmp_path / "mm"
  shutil.copytree(FIX / "mmrec", d)
  np.save(d / "image_feat.npy", np.ones((14, 4), np.float32))  # items 12, 13 never occur
  return ["--format", "mmrec", "--input", str(d)], [
    "image_feat.npy",
    "row 13",
    "field 'image'",
    "'12' does not occur",
  ]


CASES = [
  case_malformed_row,
  case_missing_column,
  case_non_numeric_timestamp,
  case_empty_item_id,
  case_feature_row_count_mismatch,
  case_feature_dimension_mismatch,
  case_nan_feature,
  case_inf_feature,
  case_unknown_item_in_feature_file,
  case_unknown_item_in_text_file,
  case_empty_after_filtering,
  case_unisrec_item_not_in_map,
  case_mmrec_bad_split_label,
  case_mmrec_feature_rows_for_unknown_items,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_gives_one_error_line_exit_2_and_no_output(case, tmp_path, capsys):
  argv, expected = case(tmp_path)
  out = tmp_path / "out" / "prepared"
  code = run_cli(prepare.main, argv + ["--out", str(out), "--quiet"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
  for piece in expected:
    assert piece in err, (piece, err)
  assert not out.exists()
  assert not (out.parent.exists() and list(out.parent.iterdir()))  # no temporary leftovers


def test_existing_output_is_not_replaced_without_overwrite(tmp_path, capsys):
  out = tmp_path / "d"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  code = run_cli(prepare.main, _csv(tmp_path) + ["--out", str(out), "--quiet"])
  assert code == 2 and "already exists" in capsys.readouterr().err
  assert (out / "keep.txt").read_text() == "mine"


def test_failure_while_writing_leaves_the_previous_directory_intact(tmp_path, capsys):
  out = tmp_path / "d"
  assert run_cli(prepare.main, _csv(tmp_path) + ["--out", str(out), "--quiet"]) == 0
  before = sorted(p.name for p in out.iterdir())
  argv = _csv(tmp_path) + _features(tmp_path, [[np.nan]], ["sku00"])
  assert run_cli(prepare.main, argv + ["--out", str(out), "--overwrite", "--quiet"]) == 2
  assert sorted(p.name for p in out.iterdir()) == before
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []


def test_encode_text_names_the_missing_id_column(tmp_path, capsys):
  items = _write(tmp_path, "items.tsv", "asin\ttext\nA1\tglue\n")
  code = run_cli(
    encode_text.main,
    ["--items", str(items), "--out", str(tmp_path / "t.npy"), "--encoder", "hashing"],
  )
  err = capsys.readouterr().err
  assert code == 2 and "items.tsv" in err and "field 'item_id'" in err and "asin" in err
  assert not (tmp_path / "t.npy").exists()
