"""The quality benchmark on a tiny planted dataset: every baseline learns (beats random ranking)
after one short epoch, and the report lists every requested model; the cold-start copy holds its
items out of training only.

One benchmark run (module fixture, ~1 epoch per model, no XLA) feeds the tests.
"""

import json
import re

import numpy as np
import pytest

from benchmarks.quality import cli, runs
from benchmarks.quality.cold import make_cold_copy, read_split
from benchmarks.quality.noise import noise_eval
from benchmarks.quality.store import Store
from bivrec_tf.presets import BASELINES
from input_pipelines import NUM_RESERVED
from input_pipelines.dataset import PreparedDataset
from input_pipelines.prepared import write_prepared

N_ITEMS, N_USERS, SEQ_LEN = 120, 240, 12
TINY_FLAGS = [
  "--epochs",
  "1",
  "--batch-size",
  "64",
  "--dim",
  "16",
  "--num-negatives",
  "32",
  "--max-len",
  "8",
  "--no-jit-compile",
  "--eval-batch-size",
  "512",
]
MODELS = ("sasrec", "comirec_sa", "mm_seq", "bivrec")


def planted_dataset(out):
  """Items on a cycle; users step forward by 1 (mostly) or 2. The text features are a smooth
  map of the position on the cycle, so both views can learn the next item."""
  rng = np.random.default_rng(0)
  angle = 2 * np.pi * np.arange(N_ITEMS) / N_ITEMS
  text = np.concatenate(
    [np.cos(k * angle)[:, None] for k in (1, 2, 3)]
    + [np.sin(k * angle)[:, None] for k in (1, 2, 3)],
    axis=1,
  )
  text += rng.normal(0, 0.05, text.shape)
  seqs = []
  for _ in range(N_USERS):
    pos = [int(rng.integers(N_ITEMS))]
    for _ in range(SEQ_LEN - 1):
      pos.append((pos[-1] + (1 if rng.random() < 0.85 else 2)) % N_ITEMS)
    seqs.append([p + NUM_RESERVED for p in pos])
  splits = {
    "train": [(s[:j], [s[j]]) for s in seqs for j in range(1, len(s) - 2)],
    "valid": [(s[:-2], [s[-2]]) for s in seqs],
    "test": [(s[:-1], [s[-1]]) for s in seqs],
  }
  return write_prepared(
    out,
    [f"i{i}" for i in range(N_ITEMS)],
    {"text": (text, np.ones(N_ITEMS, bool))},
    splits,
    {"protocol": "loo", "recommended_max_len": 8},
  )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  root = tmp_path_factory.mktemp("quality")
  data = planted_dataset(root / "planted")
  out = root / "results.md"
  out.write_text("# Results\n\nHand-written text that must survive.\n")
  cli.main(
    [
      "--data",
      str(data),
      "--models",
      ",".join(MODELS),
      "--seeds",
      "1",
      "--out",
      str(out),
      "--work-dir",
      str(root / "work"),
      *TINY_FLAGS,
    ]
  )
  store = json.loads((root / "work" / "planted-standard.json").read_text())
  return root, data, out, {r["model"]: r for r in store}


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_beats_random_ranking_after_one_epoch(report, name):
  _, _, _, records = report
  random_recall = 10 / N_ITEMS
  assert records[name]["epochs_run"] == 1
  assert records[name]["test"]["recall@10"] > 2 * random_recall, records[name]["test"]


def test_report_has_a_row_for_every_requested_model_and_keeps_other_text(report):
  root, _, out, _ = report
  text = out.read_text()
  assert "Hand-written text that must survive." in text
  assert text.count("<!-- BEGIN quality:standard:planted -->") == 1
  table = [ln for ln in text.splitlines() if ln.startswith("| ")]
  assert any(ln.startswith("| Popularity |") for ln in table)
  for name in MODELS:
    row = next(ln for ln in table if f"`{name}`" in ln)
    assert len(row.strip("|").split("|")) == 11, row  # model, 6 metrics, delta, seeds, time, ep
  assert (root / "quality_planted_ndcg20.png").stat().st_size > 1000


def test_rerun_reuses_stored_runs_and_replaces_the_section_in_place(report):
  root, data, out, records = report
  before = out.read_text()
  cli.main(
    [
      "--data",
      str(data),
      "--models",
      "sasrec",
      "--seeds",
      "1",
      "--out",
      str(out),
      "--work-dir",
      str(root / "work"),
      *TINY_FLAGS,
    ]
  )  # sasrec seed 42 is stored
  after = out.read_text()
  assert after.count("<!-- BEGIN quality:standard:planted -->") == 1
  assert after.split("<!-- BEGIN")[0] == before.split("<!-- BEGIN")[0]
  store = json.loads((root / "work" / "planted-standard.json").read_text())
  assert len(store) == len(MODELS)


def test_cold_copy_holds_items_out_of_training_but_keeps_them_as_test_targets(report, tmp_path):
  _, data, _, _ = report
  cold = PreparedDataset.load(make_cold_copy(data, tmp_path / "cold", share=0.1))
  held = np.array(cold.meta["cold_holdout"]["items"])
  assert len(held) == round(0.1 * N_ITEMS)
  assert not cold.seen_in_train[held].any()
  test = read_split(cold, "test")
  assert not any(np.isin(h, held).any() for h, _ in test)  # not in histories either
  assert any(np.isin(t, held).any() for _, t in test)


def test_noise_evaluation_at_zero_sigma_reproduces_the_clean_test_metrics(report):
  _, _, _, records = report
  rec = records["bivrec"]
  res = noise_eval(rec, sigmas=(0.0, 1.0))
  clean = rec["test_rows"]
  assert res["0"]["MM view"]["ndcg@20"] == pytest.approx(clean["MM view"]["ndcg@20"], abs=1e-6)
  assert res["0"]["ID view"] == res["1"]["ID view"]  # the ID view never reads features
  assert res["1"]["MM view"]["ndcg@20"] < res["0"]["MM view"]["ndcg@20"]


def test_cost_mode_reuses_the_standard_runs_and_compares_bivrec_with_sasrec(report):
  root, data, out, _ = report
  cli.main(
    [
      "--data",
      str(data),
      "--mode",
      "cost",
      "--seeds",
      "1",
      "--out",
      str(out),
      "--work-dir",
      str(root / "work"),
      *TINY_FLAGS,
    ]
  )
  section = out.read_text().split("<!-- BEGIN quality:cost:planted -->")[1]
  assert "| SASRec |" in section and "| BivRec |" in section
  assert "SASRec's best validation NDCG@20" in section
  assert len(json.loads((root / "work" / "planted-standard.json").read_text())) == len(MODELS)


def test_cold_mode_reports_held_out_targets_per_view(report):
  root, data, out, _ = report
  cli.main(
    [
      "--data",
      str(data),
      "--mode",
      "cold",
      "--models",
      "bivrec",
      "--seeds",
      "1",
      "--out",
      str(out),
      "--work-dir",
      str(root / "work"),
      *TINY_FLAGS,
    ]
  )
  section = out.read_text().split("<!-- BEGIN quality:cold:planted -->")[1]
  for rule in ("ID view", "MM view", "fused"):
    assert f"| BivRec | {rule} |" in section
  (rec,) = json.loads((root / "work" / "planted-cold.json").read_text())
  cold = rec["cold"]
  assert cold["num_targets"]["held_out"] > 0
  # An ID embedding never trained on an item cannot recover it; item features can.
  assert cold["MM view"]["held_out"]["recall@50"] > cold["ID view"]["held_out"]["recall@50"]


def test_two_benchmark_processes_sharing_a_store_keep_each_others_runs(tmp_path):
  path = tmp_path / "synthetic-standard.json"
  first, second = Store(path), Store(path)  # both opened before either writes
  first.add({"model": "sasrec", "seed": 42, "test": {}})
  second.add({"model": "mm_seq", "seed": 42, "test": {}})
  first.add({"model": "sasrec", "seed": 43, "test": {}})
  stored = {(r["model"], r["seed"]) for r in json.loads(path.read_text())}
  assert stored == {("sasrec", 42), ("mm_seq", 42), ("sasrec", 43)}


# The flags of `python -m benchmarks.quality` before it became a package (commit 959d2c2).
QUALITY_FLAGS = [
  "--cold-share",
  "--data",
  "--fresh",
  "--help",
  "--mode",
  "--models",
  "--noise-sigmas",
  "--out",
  "--quick",
  "--seeds",
  "--tag",
  "--threads",
  "--work-dir",
]


def test_command_line_keeps_every_flag_and_the_mode_choices(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  options = text[text.index("\noptions:") :]
  assert sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", options))) == QUALITY_FLAGS
  assert "--mode {standard,cold,noise,cost}" in options
  assert text.startswith("usage: python -m benchmarks.quality")


def test_train_flags_override_every_models_preset_and_quick_means_one_seed(tmp_path):
  args, models, overrides = cli.parse_args(
    ["--quick", "--models", "bivrec,sasrec", "--max-len", "20", "--lambda-sem", "0.5"]
  )
  assert args.seeds == 1 and models == ("bivrec", "sasrec")
  cfg = runs.model_config("bivrec", "synthetic", 42, tmp_path, overrides)
  assert cfg.data.max_len == 20 and cfg.loss.lambda_sem == 0.5
  assert cfg.train.seed == 42 and not cfg.export.export
