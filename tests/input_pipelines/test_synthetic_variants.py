"""Synthetic variants: history length and interest drift (input_pipelines.synthetic)."""

import hashlib
import json

import pytest

from input_pipelines import synthetic
from input_pipelines.synthetic import (
  ensure_synthetic,
  generate,
  is_synthetic_spec,
  parse_synthetic_spec,
  sequence_stats,
)

SMALL = dict(num_items=600, num_users=300, num_topics=12)

# The default dataset as first published (GENERATOR_VERSION 1): its cache key and the sha256 of
# every file (TFRecords serialized deterministically, `history` before `target`). A change here
# means `--data synthetic` is no longer the same data: results measured on it stop being
# comparable.
DEFAULT_KEY = "9d4c244a2d"
DEFAULT_SHA256 = {
  # dataset.json gained each modality's standardization record (mean, std) for the catalogue's
  # `add` (2f8c985); every data file kept its bytes.
  "dataset.json": "7ae1451e057374655621ef110c94fb6a6c95f077d0e7884894b59c354f053df1",
  "features/image.npy": "ecb5a68a2c07da740ae28f16af8ce286133164d51583a4d3af3f4bf7c8974895",
  "features/image_present.npy": "e113efd37873b94abffb294570f6f411213e787ce69080e52a20fd7db2973d80",
  "features/text.npy": "3611b9d40affd946fe047d45c47e47637d11a7239cccd78e703e2f049f51dda1",
  "features/text_present.npy": "55197a10a9a6bf56558904a3aece9d6bb250b118276f856fd357adae4581a7c6",
  "item_vocab.txt": "14426d72232d429a32d010be3fd1504c9275e44b501ed6511cf1d6150709e93a",
  "test.tfrecord": "b6039961a7c637f4d50534559c5463f071c23b28d159b32ed8f189414f0f63af",
  "train.tfrecord": "ea27acd0bcb1383ec452150acee85875b16e9f906c4c7512004f496bdc6a974b",
  "valid.tfrecord": "bb438ad4dedd06cc2a70acc789265b4fb5346483e93d15e626617b32703748d7",
}


def test_default_dataset_is_unchanged_byte_for_byte(tmp_path):
  assert synthetic.cache_key(0) == DEFAULT_KEY
  assert synthetic.cache_key(0, **parse_synthetic_spec("synthetic")) == DEFAULT_KEY
  path = ensure_synthetic(tmp_path)
  assert path.name == f"synthetic-s0-{DEFAULT_KEY}"
  for name, digest in DEFAULT_SHA256.items():
    assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest, name


def test_explicit_default_knobs_give_the_default_key():
  key = synthetic.cache_key(0, **SMALL)
  assert (
    synthetic.cache_key(
      0, **synthetic.variant_params(seq_len=18, drift=0.15, topics=(2, 3), turnover=0.0, **SMALL)
    )
    == key
  )


def test_each_variant_is_cached_in_its_own_directory(tmp_path):
  paths = {
    spec: ensure_synthetic(tmp_path, **SMALL, **parse_synthetic_spec(spec))
    for spec in (
      "synthetic",
      "synthetic?seq_len=30",
      "synthetic?switch=0.4",
      "synthetic?turnover=0.05",
    )
  }
  assert len(set(paths.values())) == 4
  again = ensure_synthetic(tmp_path, **SMALL, seq_len=30)
  assert again == paths["synthetic?seq_len=30"]
  meta = json.loads((again / "dataset.json").read_text())
  assert meta["generator"]["params"]["mean_len"] == 30
  assert "topic_turnover" not in meta["generator"]["params"]  # recorded only when not default
  turn = json.loads((paths["synthetic?turnover=0.05"] / "dataset.json").read_text())
  assert turn["generator"]["params"]["topic_turnover"] == 0.05


def test_sequence_length_grows_with_seq_len(tmp_path):
  stats = [
    sequence_stats(
      generate(tmp_path / str(n), seed=0, **SMALL, **synthetic.variant_params(seq_len=n))
    )
    for n in (12, 30, 60)
  ]
  means = [s["mean_len"] for s in stats]
  medians = [s["median_len"] for s in stats]
  assert means[0] < means[1] < means[2] and medians[0] < medians[1] < medians[2]
  assert 40 < means[2] < 70 and medians[2] >= 30


def test_long_preset_scales_max_len_and_recommended_max_len():
  p = synthetic.variant_params(**parse_synthetic_spec("synthetic:long"))
  assert p["mean_len"] == 60 and p["max_len"] > 3 * 40 and p["recommended_max_len"] == 50
  p = synthetic.variant_params(seq_len=18)
  assert (p["max_len"], p["recommended_max_len"]) == (40, 20)


def test_drift_raises_the_measured_topic_switch_rate(tmp_path):
  # Without partner jumps, consecutive items change topic only by a switch.
  base = dict(SMALL, partner_prob=0.0)
  rates = [
    sequence_stats(
      generate(tmp_path / str(d), seed=0, **base, **synthetic.variant_params(drift=d))
    )["switch_rate"]
    for d in (0.0, 0.1, 0.4)
  ]
  assert rates[0] == 0.0
  # Every user has 2-3 topics and a switch goes to another one: the measured rate is `drift`
  # (up to sampling noise; the first item of a sequence cannot switch).
  assert rates[1] == pytest.approx(0.1, abs=0.03)
  assert rates[2] == pytest.approx(0.4, abs=0.05)


def test_topic_turnover_makes_users_visit_more_topics(tmp_path):
  base = dict(SMALL, partner_prob=0.0, mean_len=40, max_len=80)
  still = sequence_stats(generate(tmp_path / "a", seed=0, **base))
  moving = sequence_stats(generate(tmp_path / "b", seed=0, **base, topic_turnover=0.05))
  assert still["topics_per_user"] <= 3.0
  assert moving["topics_per_user"] > still["topics_per_user"] + 0.5


def test_concurrent_topics_are_a_knob(tmp_path):
  base = dict(SMALL, partner_prob=0.0, mean_len=40, max_len=80, switch_prob=0.3)
  one = sequence_stats(
    generate(tmp_path / "a", seed=0, **base, **synthetic.variant_params(topics=1))
  )
  four = sequence_stats(
    generate(tmp_path / "b", seed=0, **base, **synthetic.variant_params(topics=(4, 4)))
  )
  assert one["topics_per_user"] == 1.0 and one["switch_rate"] == 0.0
  assert four["topics_per_user"] > 3.0


@pytest.mark.parametrize(
  "spec, expected",
  [
    ("synthetic", {}),
    ("synthetic:default", {}),
    ("synthetic:long", {"seq_len": 60}),
    ("synthetic?mean_len=60&switch=0.1", {"mean_len": 60, "drift": 0.1}),
    ("synthetic:long?drift=0.3&topics=2-4", {"seq_len": 60, "drift": 0.3, "topics": (2, 4)}),
    (
      "synthetic?len=40&turnover=0.02&num_users=800",
      {"seq_len": 40, "turnover": 0.02, "num_users": 800},
    ),
    ("synthetic?topics=3", {"topics": (3, 3)}),
  ],
)
def test_spec_strings_parse_to_ensure_synthetic_arguments(spec, expected):
  assert parse_synthetic_spec(spec) == expected


@pytest.mark.parametrize(
  "spec, message",
  [
    ("synthetic:huge", "unknown preset"),
    ("synthetic?colour=red", "unknown key"),
    ("synthetic?seq_len=abc", "not a number"),
    ("synthetic?seq_len", "not key=value"),
    ("synthetic?seed=3", "--data-seed"),
    ("synthetic?switch=1.5", r"\[0, 1\]"),
    ("synthetic?seq_len=2", "at least min_len"),
    ("synthetics", "not a synthetic data spec"),
  ],
)
def test_bad_spec_strings_are_rejected_with_a_clear_message(spec, message):
  with pytest.raises(ValueError, match=message):
    parse_synthetic_spec(spec)


def test_is_synthetic_spec_recognises_only_synthetic_specs():
  assert is_synthetic_spec("synthetic") and is_synthetic_spec("synthetic:long")
  assert is_synthetic_spec("synthetic?switch=0.1")
  assert not is_synthetic_spec("data_cache/synthetic-s0-x")
  assert not is_synthetic_spec("tfds:movielens/100k-ratings")
  assert not is_synthetic_spec(None)


def test_prepared_files_are_byte_identical_across_runs(tmp_path):
  a = generate(tmp_path / "a", seed=3, **SMALL)
  b = generate(tmp_path / "b", seed=3, **SMALL)
  for name in ("train.tfrecord", "valid.tfrecord", "test.tfrecord", "dataset.json"):
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
