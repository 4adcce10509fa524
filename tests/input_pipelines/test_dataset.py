"""Properties of loading a prepared directory and its tf.data pipelines."""

import json
import os

import numpy as np
import pytest

from input_pipelines.dataset import PreparedDataset, eval_dataset, train_dataset
from input_pipelines.prepared import write_prepared

N = 12  # real items 2..13, V = 14
V = N + 2
TRAIN = [
  ([2], [3]),
  ([2, 3], [4]),
  ([2, 3, 4, 5, 6, 7, 8], [9]),
  ([9, 8, 7, 6, 5, 4, 3, 2, 10], [11]),
  ([4, 4], [4]),
  ([11], [3, 12]),
  ([5, 6, 7], [8]),
  ([3, 2, 3], [10]),
]
VALID = [
  ([2, 3, 4, 5, 6, 7], [13, 4, 5]),
  ([7], [8]),
  ([9, 10], [11, 12]),
]
TEST = [([2, 3, 4, 5, 6, 7, 8], [9])]


def expected_history(history, max_len):
  kept = list(history)[-max_len:]
  return [0] * (max_len - len(kept)) + kept


@pytest.fixture()
def tiny(tmp_path):
  rng = np.random.default_rng(0)
  present = np.ones(N, bool)
  present[3] = False
  path = write_prepared(
    tmp_path / "tiny",
    [f"i{k}" for k in range(N)],
    {
      "text": (rng.normal(size=(N, 5)), np.ones(N, bool)),
      "image": (rng.normal(size=(N, 2)), present),
    },
    {"train": TRAIN, "valid": VALID, "test": TEST},
    {"protocol": "loo"},
  )
  return PreparedDataset.load(path)


def test_load_exposes_vocab_features_and_train_statistics(tiny):
  assert tiny.vocab_size == V and tiny.vocab.shape == (V,)
  assert list(tiny.vocab[:3]) == ["[PAD]", "[OOV]", "i0"]
  assert tiny.features["text"].shape == (V, 5) and tiny.features["text"].dtype == np.float32
  assert tiny.present["image"].sum() == N - 1 and not tiny.present["image"][5]
  expected_counts = np.zeros(V, np.int64)
  expected_seen = np.zeros(V, bool)
  for history, targets in TRAIN:
    expected_counts[targets] += 1
    expected_seen[history + targets] = True
  np.testing.assert_array_equal(tiny.item_counts, expected_counts)
  np.testing.assert_array_equal(tiny.seen_in_train, expected_seen)
  assert not tiny.seen_in_train[13]
  assert tiny.num_examples("valid") == len(VALID)
  assert tiny.split_path("test").name == "test.tfrecord"


@pytest.mark.parametrize("max_len", [1, 3, 5, 12])
def test_train_histories_are_right_aligned_left_padded_and_keep_the_last_items(tiny, max_len):
  data = train_dataset(tiny, max_len=max_len, batch_size=4, num_negatives=3, seed=0, shuffle=False)
  batches = list(data.as_numpy_iterator())
  assert len(batches) == 2  # 8 examples, drop_remainder
  history = np.concatenate([b["history"] for b in batches])
  target = np.concatenate([b["target"] for b in batches])
  assert history.dtype == np.int64 and history.shape == (8, max_len)
  assert history.tolist() == [expected_history(h, max_len) for h, _ in TRAIN]
  assert target.tolist() == [t[0] for _, t in TRAIN]


def test_train_batches_have_static_shapes(tiny):
  data = train_dataset(tiny, max_len=4, batch_size=3, num_negatives=7, seed=0)
  spec = data.element_spec
  assert spec["history"].shape.as_list() == [3, 4]
  assert spec["target"].shape.as_list() == [3]
  assert spec["negatives"].shape.as_list() == [7]
  assert len(list(data)) == 2  # 8 // 3, remainder dropped


def test_shuffled_train_data_covers_each_example_once_per_epoch(tiny):
  data = train_dataset(tiny, max_len=12, batch_size=8, num_negatives=1, seed=3)
  epochs = [next(iter(data.as_numpy_iterator()))["target"].tolist() for _ in range(2)]
  for order in epochs:
    assert sorted(order) == sorted(t[0] for _, t in TRAIN)


def test_negatives_are_real_items_reproducible_and_differ_between_batches(tiny):
  def draws(seed):
    data = train_dataset(tiny, max_len=3, batch_size=2, num_negatives=64, seed=seed, repeat=True)
    return np.stack([b["negatives"] for b in data.take(6).as_numpy_iterator()])

  first = draws(7)
  assert first.dtype == np.int64 and first.shape == (6, 64)
  assert first.min() >= 2 and first.max() < V
  assert len(np.unique(first)) == V - 2  # 384 uniform draws over 12 items hit them all
  assert all(not np.array_equal(first[0], first[i]) for i in range(1, 6))
  np.testing.assert_array_equal(first, draws(7))
  assert not np.array_equal(first, draws(8))


def test_negatives_change_between_epochs(tiny):
  data = train_dataset(tiny, max_len=3, batch_size=8, num_negatives=32, seed=1, shuffle=False)
  a = [b["negatives"] for b in data.as_numpy_iterator()]
  b = [b["negatives"] for b in data.as_numpy_iterator()]
  assert not np.array_equal(a[0], b[0])


def test_skipped_stream_continues_the_same_seeds_stream(tiny):
  """A resumed run's stream (`skip_batches` = steps done) is the uninterrupted stream's tail:
  the same shuffles across epochs and the same negatives, not the first epoch again."""

  def stream(skip, count):
    data = train_dataset(
      tiny, max_len=4, batch_size=3, num_negatives=5, seed=4, repeat=True, skip_batches=skip
    )
    return list(data.take(count).as_numpy_iterator())

  whole, tail = stream(0, 9), stream(5, 4)  # 8 // 3 = 2 batches per epoch: skip 2.5 epochs
  for a, b in zip(whole[5:], tail):
    for key in ("history", "target", "negatives"):
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(whole[0]["negatives"], tail[0]["negatives"])
  with pytest.raises(ValueError, match="skip_batches"):
    train_dataset(tiny, max_len=4, batch_size=3, num_negatives=5, seed=4, skip_batches=-1)


def test_eval_targets_are_right_padded_with_zero_in_file_order(tiny):
  data = eval_dataset(tiny, "valid", max_len=4, batch_size=2)
  batches = list(data.as_numpy_iterator())
  assert [b["history"].shape[0] for b in batches] == [2, 1]  # last batch kept
  assert batches[0]["targets"].tolist() == [[13, 4, 5], [8, 0, 0]]
  assert batches[1]["targets"].tolist() == [[11, 12]]
  history = np.concatenate([b["history"] for b in batches])
  assert history.tolist() == [expected_history(h, 4) for h, _ in VALID]
  again = list(eval_dataset(tiny, "valid", max_len=4, batch_size=2).as_numpy_iterator())
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x["targets"], y["targets"])
    np.testing.assert_array_equal(x["history"], y["history"])


def test_eval_max_targets_truncates_and_pads_to_a_fixed_width(tiny):
  data = eval_dataset(tiny, "valid", max_len=4, batch_size=3, max_targets=2)
  (batch,) = list(data.as_numpy_iterator())
  assert batch["targets"].tolist() == [[13, 4], [8, 0], [11, 12]]
  wide = next(eval_dataset(tiny, "valid", 4, 3, max_targets=5).as_numpy_iterator())
  assert wide["targets"].tolist() == [[13, 4, 5, 0, 0], [8, 0, 0, 0, 0], [11, 12, 0, 0, 0]]


def test_loading_a_missing_directory_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    PreparedDataset.load(tmp_path / "nowhere")


def test_loading_without_dataset_json_names_the_file(tiny):
  os.remove(tiny.path / "dataset.json")
  with pytest.raises(FileNotFoundError, match="dataset.json"):
    PreparedDataset.load(tiny.path)


def test_loading_with_a_missing_feature_file_names_it(tiny):
  os.remove(tiny.path / "features" / "image.npy")
  with pytest.raises(FileNotFoundError, match=r"image\.npy"):
    PreparedDataset.load(tiny.path)


def test_loading_with_a_missing_split_file_names_it(tiny):
  os.remove(tiny.path / "valid.tfrecord")
  with pytest.raises(FileNotFoundError, match=r"valid\.tfrecord"):
    PreparedDataset.load(tiny.path)


def test_loading_features_with_wrong_row_count_is_rejected(tiny):
  np.save(tiny.path / "features" / "text.npy", np.zeros((V - 1, 5), np.float32))
  with pytest.raises(ValueError, match=r"text\.npy.*vocab_size"):
    PreparedDataset.load(tiny.path)


def test_loading_an_unknown_schema_version_is_rejected(tiny):
  meta_file = tiny.path / "dataset.json"
  meta = json.loads(meta_file.read_text())
  meta["schema_version"] = 99
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="schema_version"):
    PreparedDataset.load(tiny.path)


def test_eval_full_history_keeps_items_older_than_max_len(tiny):
  (batch,) = list(eval_dataset(tiny, "valid", max_len=2, batch_size=3).as_numpy_iterator())
  assert batch["history"].tolist() == [expected_history(h, 2) for h, _ in VALID]
  width = max(len(h) for h, _ in VALID)
  assert batch["full_history"].tolist() == [list(h) + [0] * (width - len(h)) for h, _ in VALID]


def _share_of_repeats(examples):
  repeats = sum(t in set(h) for h, targets in examples for t in targets)
  return repeats / sum(len(targets) for _, targets in examples)


def test_repeat_rate_is_the_share_of_targets_already_in_the_history(tiny):
  assert tiny.repeat_rate("train") == pytest.approx(_share_of_repeats(TRAIN))  # 1 of 9
  assert tiny.repeat_rate("valid") == pytest.approx(_share_of_repeats(VALID))  # 2 of 6
  assert tiny.repeat_rate("test") == 0.0


def test_history_cut_at_reports_a_max_history_that_cut_stored_histories(tmp_path):
  longest = max(len(h) for h, _ in TRAIN + VALID + TEST)

  def prepared(name, max_history):
    return PreparedDataset.load(
      write_prepared(
        tmp_path / name,
        [f"i{k}" for k in range(N)],
        {},
        {"train": TRAIN, "valid": VALID, "test": TEST},
        {"max_history": max_history},
      )
    )

  assert prepared("cut", longest).history_cut_at() == longest
  assert prepared("whole", longest + 1).history_cut_at() is None
