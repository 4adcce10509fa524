"""Properties of the prepared-directory writer (input_pipelines.prepared)."""

import json

import numpy as np
import pytest

from input_pipelines import prepared
from input_pipelines.prepared import write_prepared

N = 6


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  item_ids = [f"it{i}" for i in range(N)]
  text = rng.normal(3.0, 5.0, size=(N, 4))
  image = rng.normal(-1.0, 0.1, size=(N, 3))
  image[:, 2] = 7.0  # constant dimension: std guard
  image_present = np.array([True, True, False, True, True, True])
  features = {"text": (text, np.ones(N, bool)), "image": (image, image_present)}
  splits = {
    "train": [([2], [3]), ([2, 3], [4]), ([2, 3, 4], [5])],
    "valid": [([2, 3, 4], [5]), ([5], [7])],
    "test": [([2, 3, 4, 6], [7])],
  }
  return item_ids, features, splits


def _leftovers(parent):
  return sorted(p.name for p in parent.iterdir() if p.name.startswith(".tmp-"))


def test_dataset_json_fields_are_consistent_with_files(tmp_path):
  item_ids, features, splits = _inputs()
  out = write_prepared(
    tmp_path / "ds",
    item_ids,
    features,
    splits,
    {"source": "hand", "protocol": "loo", "recommended_max_len": 3},
  )
  meta = json.loads((out / "dataset.json").read_text())
  assert meta["schema_version"] == 1
  assert meta["num_items"] == N and meta["vocab_size"] == N + 2
  assert meta["source"] == "hand" and meta["recommended_max_len"] == 3
  vocab = (out / "item_vocab.txt").read_text().splitlines()
  assert vocab == ["[PAD]", "[OOV]", *item_ids]
  for name, info in meta["modalities"].items():
    table = np.load(out / info["file"])
    present = np.load(out / info["present_file"])
    assert table.dtype == np.float32 and table.shape == (N + 2, info["dim"])
    assert present.dtype == bool and present.shape == (N + 2,)
    assert not present[:2].any() and info["num_present"] == present.sum()
    assert not table[:2].any() and not table[~present].any()
  assert meta["modalities"]["image"]["num_present"] == N - 1
  for split, examples in splits.items():
    info = meta["splits"][split]
    assert (out / info["file"]).is_file()
    assert info["num_examples"] == len(examples)
  stats = meta["statistics"]
  assert stats["num_users"] == 1
  assert stats["num_interactions"] == 5  # loo: the test example holds the whole sequence
  assert stats["max_history_length"]["train"] == 3
  assert stats["mean_history_length"]["valid"] == 2.0
  assert stats["share_test_targets_unseen_in_train"] == 1.0  # item 7 never in train
  assert stats["share_valid_targets_unseen_in_train"] == 0.5


def test_features_are_standardized_over_present_rows(tmp_path):
  item_ids, features, splits = _inputs()
  out = write_prepared(tmp_path / "ds", item_ids, features, splits, {})
  for name in ("text", "image"):
    table = np.load(out / f"features/{name}.npy")
    present = np.load(out / f"features/{name}_present.npy")
    rows = table[present].astype(np.float64)
    np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-5)
    std = rows.std(axis=0)
    if name == "image":
      np.testing.assert_allclose(std[:2], 1.0, atol=1e-4)
      np.testing.assert_allclose(std[2], 0.0, atol=1e-6)  # constant dim: zeros, no NaN
    else:
      np.testing.assert_allclose(std, 1.0, atol=1e-4)
    assert np.isfinite(table).all()


def test_recorded_moments_standardize_a_raw_row_to_the_same_bits(tmp_path):
  """dataset.json keeps each modality's mean and std, so an item added to a served model later
  gets exactly the features it would have got at preparation."""
  item_ids, features, splits = _inputs()
  out = write_prepared(tmp_path / "ds", item_ids, features, splits, {})
  meta = json.loads((out / "dataset.json").read_text())
  for name, (raw, present) in features.items():
    table = np.load(out / f"features/{name}.npy")
    moments = meta["modalities"][name]["standardization"]
    again = prepared.standardize(raw[present], moments)
    np.testing.assert_array_equal(again, table[2:][present])
  assert meta["modalities"]["image"]["standardization"]["std"][2] == 1.0  # constant dimension


def test_nan_feature_is_rejected_naming_modality_and_row_and_leaves_nothing(tmp_path):
  item_ids, features, splits = _inputs()
  text = features["text"][0].copy()
  text[4, 1] = np.nan
  features["text"] = (text, features["text"][1])
  with pytest.raises(ValueError, match=r"'text'.*row 4"):
    write_prepared(tmp_path / "ds", item_ids, features, splits, {})
  assert not (tmp_path / "ds").exists()
  assert _leftovers(tmp_path) == []


def test_nan_in_absent_row_is_ignored(tmp_path):
  item_ids, features, splits = _inputs()
  image = features["image"][0].copy()
  image[2] = np.inf  # item 2 lacks the image
  features["image"] = (image, features["image"][1])
  out = write_prepared(tmp_path / "ds", item_ids, features, splits, {})
  assert np.isfinite(np.load(out / "features/image.npy")).all()


def test_feature_row_count_mismatch_names_modality(tmp_path):
  item_ids, features, splits = _inputs()
  features["image"] = (features["image"][0][:-1], features["image"][1][:-1])
  with pytest.raises(ValueError, match="'image'"):
    write_prepared(tmp_path / "ds", item_ids, features, splits, {})


def test_failure_midway_leaves_no_out_dir_and_no_temp_dir(tmp_path, monkeypatch):
  item_ids, features, splits = _inputs()
  real = prepared._write_split

  def failing(path, split, *args):
    if split == "valid":
      raise OSError("disk full (simulated)")
    return real(path, split, *args)

  monkeypatch.setattr(prepared, "_write_split", failing)
  with pytest.raises(OSError, match="simulated"):
    write_prepared(tmp_path / "ds", item_ids, features, splits, {})
  assert not (tmp_path / "ds").exists()
  assert _leftovers(tmp_path) == []


def test_failure_during_overwrite_keeps_the_old_directory(tmp_path, monkeypatch):
  item_ids, features, splits = _inputs()
  out = write_prepared(tmp_path / "ds", item_ids, features, splits, {"source": "old"})
  monkeypatch.setattr(
    prepared, "_write_split", lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
  )
  with pytest.raises(RuntimeError):
    write_prepared(out, item_ids, features, splits, {"source": "new"}, overwrite=True)
  assert json.loads((out / "dataset.json").read_text())["source"] == "old"
  assert _leftovers(tmp_path) == []


def test_existing_out_dir_requires_overwrite(tmp_path):
  item_ids, features, splits = _inputs()
  out = write_prepared(tmp_path / "ds", item_ids, features, splits, {"source": "old"})
  with pytest.raises(FileExistsError):
    write_prepared(out, item_ids, features, splits, {"source": "new"})
  write_prepared(out, item_ids, features, splits, {"source": "new"}, overwrite=True)
  assert json.loads((out / "dataset.json").read_text())["source"] == "new"
  assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_is_rejected_by_name(tmp_path, split):
  item_ids, features, splits = _inputs()
  splits[split] = []
  with pytest.raises(ValueError, match=f"'{split}'"):
    write_prepared(tmp_path / "ds", item_ids, features, splits, {})
  assert not (tmp_path / "ds").exists()
  assert _leftovers(tmp_path) == []


def test_out_of_range_item_index_is_rejected(tmp_path):
  item_ids, features, splits = _inputs()
  splits["valid"] = [([2, N + 2], [3])]
  with pytest.raises(ValueError, match="'valid'.*history"):
    write_prepared(tmp_path / "ds", item_ids, features, splits, {})
  assert _leftovers(tmp_path) == []
