"""The Apache Beam path (`prepare --runner DirectRunner`) writes what the in-process path writes,
and fails as it fails.

Every comparison is file by file: the shards, the vocabulary, the feature tables and
dataset.json (but for `prepare_args.out`) of `prepare --shards 3` in one process and on Beam,
with byte ranges and buckets small enough that the input is really read in parts and the users
really spread over buckets. DirectRunner in its in-memory mode (one process); the multi-process
mode is compared by benchmarks/prepare.py. The larger data (the default synthetic dataset, Amazon
Scientific, a 10^6-row log) are compared by the benchmark too (docs/performance.md).
"""

import json
import pathlib

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from input_pipelines import beam_prepare, beam_steps, prepare  # noqa: E402
from input_pipelines.errors import run_cli  # noqa: E402

from tests.input_pipelines import test_bad_input as bad  # noqa: E402

FIX = pathlib.Path(__file__).parent / "fixtures"
BEAM = ["--runner", "DirectRunner", "--part-mb", "0.002", "--buckets", "3"]


def _prepare(argv, out, beam: bool):
  args = [*map(str, argv), "--shards", "3", "--quiet", "--out", str(out)]
  return prepare.run(prepare.build_parser().parse_args(args + (BEAM if beam else [])))


def _contents(path: pathlib.Path) -> dict:
  out = {}
  for f in sorted(p for p in path.rglob("*") if p.is_file()):
    data = f.read_bytes()
    if f.name == "dataset.json":
      data = json.loads(data)
      del data["prepare_args"]["out"]
    out[str(f.relative_to(path))] = data
  return out


def _assert_same(a: pathlib.Path, b: pathlib.Path):
  ca, cb = _contents(a), _contents(b)
  assert sorted(ca) == sorted(cb)
  for name in ca:
    assert ca[name] == cb[name], name


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> pathlib.Path:
  """A small synthetic dataset (the default data's generator) exported as a CSV log, shuffled
  so that users interleave, with ties and repeated rows; 14 kB: 7 parts of 2 kB."""
  from benchmarks.prepare import synthetic_log
  from input_pipelines.synthetic import generate

  d = tmp_path_factory.mktemp("log")
  ds = generate(d / "synthetic", num_items=150, num_users=60, num_topics=5, text_dim=4, image_dim=4)
  lines = synthetic_log(ds, d / "ordered.csv").read_text().splitlines()
  rng = np.random.default_rng(0)
  body = [lines[k] for k in rng.permutation(np.arange(1, len(lines)))]
  body += body[:20]  # repeated rows
  body = [b.rsplit(",", 1)[0] + "," + str(int(b.rsplit(",", 1)[1]) // 2) for b in body]  # ties
  path = d / "log.csv"
  path.write_text("\n".join([lines[0], *body]) + "\n")
  assert path.stat().st_size > 5 * 0.002 * (1 << 20)
  return path


@pytest.mark.parametrize(
  "argv",
  [
    ["--protocol", "loo"],
    ["--protocol", "user_split", "--k-core", "3", "--dedup", "consecutive", "--seed", "4"],
  ],
  ids=["loo", "user_split_k3"],
)
def test_log_gives_the_same_files_on_both_paths(log, argv, tmp_path):
  argv = ["--format", "csv", "--interactions", log, "--max-history", "10", *argv]
  _assert_same(_prepare(argv, tmp_path / "one", False), _prepare(argv, tmp_path / "beam", True))


def test_amazon_scientific_slice_gives_the_same_files(tmp_path):
  argv = ["--format", "unisrec", "--input", FIX / "unisrec"]
  _assert_same(_prepare(argv, tmp_path / "one", False), _prepare(argv, tmp_path / "beam", True))


def test_mmrec_labels_and_features_give_the_same_files(tmp_path):
  argv = ["--format", "mmrec", "--input", FIX / "mmrec"]
  one, beam = _prepare(argv, tmp_path / "one", False), _prepare(argv, tmp_path / "beam", True)
  _assert_same(one, beam)
  assert (beam / "features" / "image.npy").is_file()


# --- errors -------------------------------------------------------------------------------------


def _two_bad_rows_in_different_parts(tmp_path):
  lines = (FIX / "log.csv").read_text().splitlines()
  body = lines[1:] * 30  # ~25 kB: many parts
  body[700] = "u1,sku01,later,5"  # in a later part
  body[300] = "u1,sku01,earlier,5"
  return bad._csv(tmp_path, "\n".join([lines[0], *body]) + "\n"), ["line 302", "'earlier'"]


def _bad_row_in_a_later_parquet_row_group(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  n = 50
  ids = [f"i{k % 7}" for k in range(n)]
  ids[37] = ""
  table = pa.table({"user_id": [f"u{k % 5}" for k in range(n)], "item_id": ids})
  pq.write_table(table, tmp_path / "log.parquet", row_group_size=10)
  argv = ["--format", "parquet", "--interactions", str(tmp_path / "log.parquet")]
  return argv + ["--time-column", "none"], ["row 38", "empty item id"]


def _unterminated_quote(tmp_path):
  lines = (FIX / "log.csv").read_text().splitlines()
  body = lines[1:] * 30
  body[400] = 'u1,"sku01,1600000000'
  return bad._csv(tmp_path, "\n".join([lines[0], *body]) + "\n"), ["line 402", "unterminated"]


ERRORS = [
  bad.case_malformed_row,
  bad.case_missing_column,
  bad.case_unisrec_item_not_in_map,
  bad.case_mmrec_bad_split_label,
  bad.case_empty_after_filtering,
  _two_bad_rows_in_different_parts,
  _bad_row_in_a_later_parquet_row_group,
  _unterminated_quote,
]


@pytest.mark.parametrize("case", ERRORS, ids=[c.__name__.strip("_") for c in ERRORS])
def test_bad_input_gives_the_same_error_line_and_leaves_nothing(case, tmp_path, capsys):
  argv, expected = case(tmp_path)
  errors = []
  for beam in (False, True):
    out = tmp_path / f"out{int(beam)}" / "prepared"
    code = run_cli(prepare.main, argv + ["--out", str(out), "--quiet"] + (BEAM if beam else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("error: "), err
    errors.append(err[-1])
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
  assert errors[0] == errors[1]
  for piece in expected:
    assert piece in errors[1], (piece, errors[1])


def test_quoted_line_break_across_a_part_boundary_reads_the_file_again(tmp_path, monkeypatch):
  lines = (FIX / "log.csv").read_text().splitlines()
  notes = [f'"a\n{"b" * (k % 50)}"' for k in range(20 * (len(lines) - 1))]
  rows = ["user_id,item_id,timestamp,rating,note"]
  rows += [f"{x},{note}" for x, note in zip(lines[1:] * 20, notes)]
  path = tmp_path / "quoted.csv"
  path.write_text("\n".join(rows) + "\n")
  argv = ["--format", "csv", "--interactions", path]
  reads = []
  real = beam_prepare._read_job
  monkeypatch.setattr(beam_prepare, "_read_job", lambda *a: reads.append(len(a[4])) or real(*a))
  _assert_same(_prepare(argv, tmp_path / "one", False), _prepare(argv, tmp_path / "beam", True))
  assert len(reads) == 2 and reads[0] > 1 and reads[1] == 1  # in parts, then as one part


def test_a_failure_inside_the_pipeline_leaves_no_output(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise OSError("disk full (simulated)")

  monkeypatch.setattr(beam_steps, "write_shard", fail)
  out = tmp_path / "out" / "prepared"
  with pytest.raises(Exception, match="disk full"):
    _prepare(["--format", "csv", "--interactions", FIX / "log.csv"], out, True)
  assert not out.exists() and list(out.parent.iterdir()) == []
