"""`describe` output, and the round trip raw CSV -> prepared -> tf.data -> one training step."""

import pathlib

import numpy as np
import pytest

from input_pipelines import describe, prepare
from input_pipelines.dataset import PreparedDataset, eval_dataset, train_dataset
from input_pipelines.errors import run_cli

FIX = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("rt")
  return prepare.run(
    prepare.build_parser().parse_args(
      [
        "--format",
        "csv",
        "--interactions",
        str(FIX / "log.csv"),
        "--item-text",
        str(FIX / "items.csv"),
        "--text-encoder",
        "hashing",
        "--text-dim",
        "16",
        "--out",
        str(root / "d"),
        "--quiet",
      ]
    )
  )


def test_describe_prints_statistics_and_saves_a_png_histogram(prepared, tmp_path, capsys):
  png = tmp_path / "hist.png"
  assert run_cli(describe.main, [str(prepared), "--png", str(png)]) == 0
  out = capsys.readouterr().out
  for piece in (
    "users       6",
    "items       12",
    "protocol    loo",
    "train",
    "valid",
    "text   dim 16, present for 11 items",
    "sequence length over 6 user sequences",
    "median",
    "recommended --max-len",
  ):
    assert piece in out, (piece, out)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_describe_measures_lengths_of_directories_without_length_counts(tmp_path, capsys):
  from input_pipelines.prepared import write_prepared

  d = write_prepared(
    tmp_path / "plain",
    ["a", "b", "c"],
    {},
    {"train": [([2], [3])], "test": [([2, 3], [4]), ([3], [2])]},
    {},
  )
  assert run_cli(describe.main, [str(d), "--no-png"]) == 0
  out = capsys.readouterr().out
  assert "over 2 'test' examples (history + targets): min 2" in out and "max 3" in out


def test_describe_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
  assert run_cli(describe.main, [str(tmp_path / "nope")]) == 2
  assert capsys.readouterr().err.startswith("error: not a prepared dataset directory")


def test_raw_csv_to_one_training_step(prepared):
  from bivrec_tf import train
  from bivrec_tf.config import Config

  ds = PreparedDataset.load(prepared)
  batch = next(iter(train_dataset(ds, max_len=8, batch_size=4, num_negatives=8, seed=0)))
  assert batch["history"].shape == (4, 8) and batch["target"].shape == (4,)
  ev = next(iter(eval_dataset(ds, "test", max_len=8, batch_size=16)))
  assert ev["history"].shape == (6, 8)
  cfg = Config().replace(
    data={"data": str(prepared)},
    model={"dim": 8, "num_heads": 1, "num_interests": 2},
    loss={"num_negatives": 8},
    train={"batch_size": 4, "jit_compile": False},
  )
  model = train.build_model(cfg, ds, 8)
  logs = model.fit(train_dataset(ds, 8, 4, 8, seed=0).take(1), epochs=1, verbose=0)
  loss = logs.history["loss"][0]
  assert np.isfinite(loss) and loss > 0
