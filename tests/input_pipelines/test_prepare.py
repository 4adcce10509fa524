"""Properties of `python -m input_pipelines.prepare` on small fixtures of every raw format.

The fixtures (tests/input_pipelines/fixtures/) are a few dozen rows each; `unisrec/` is a slice
of ../shared/data/amazon-scientific (8 users) so the tests never need ../shared.
"""

import json
import pathlib

import numpy as np
import tensorflow as tf

from input_pipelines import prepare
from input_pipelines.dataset import PreparedDataset

FIX = pathlib.Path(__file__).parent / "fixtures"


def run(*argv):
  return prepare.run(prepare.build_parser().parse_args([*map(str, argv), "--quiet"]))


def examples(path, split):
  spec = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}
  out = []
  for rec in tf.data.TFRecordDataset(str(path / f"{split}.tfrecord")):
    p = tf.io.parse_single_example(rec, spec)
    out.append(
      (
        tf.sparse.to_dense(p["history"]).numpy().tolist(),
        tf.sparse.to_dense(p["target"]).numpy().tolist(),
      )
    )
  return out


def raw(path, split):
  vocab = (path / "item_vocab.txt").read_text().splitlines()
  return [([vocab[i] for i in h], [vocab[i] for i in t]) for h, t in examples(path, split)]


def user_sequences_from_csv(file):
  rows = [line.split(",") for line in file.read_text().splitlines()[1:]]
  seqs = {}
  for u, i, t, _ in sorted(set(map(tuple, rows)), key=lambda r: (r[0], int(r[2]))):
    seqs.setdefault(u, []).append(i)
  return seqs


def test_csv_loo_sorts_chronologically_drops_short_users_and_exact_duplicates(tmp_path):
  out = run("--format", "csv", "--interactions", FIX / "log.csv", "--out", tmp_path / "d")
  seqs = {u: s for u, s in user_sequences_from_csv(FIX / "log.csv").items() if len(s) >= 3}
  test = raw(out, "test")
  assert sorted(h + t for h, t in test) == sorted(seqs.values())
  valid = raw(out, "valid")
  assert sorted(h + t for h, t in valid) == sorted(s[:-1] for s in seqs.values())
  train = raw(out, "train")
  assert len(train) == sum(len(s) - 3 for s in seqs.values())
  for s in seqs.values():
    for j in range(1, len(s) - 2):
      assert (s[:j], [s[j]]) in train
  meta = json.loads((out / "dataset.json").read_text())
  stats = meta["statistics"]
  assert meta["protocol"] == "loo" and stats["removed_duplicates"] == 1
  assert stats["num_users"] == len(seqs) == 6
  assert stats["num_interactions"] == sum(map(len, seqs.values()))
  assert sum(stats["sequence_length_counts"].values()) == len(seqs)


def test_parquet_gives_the_same_dataset_as_csv(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  rows = [line.split(",") for line in (FIX / "log.csv").read_text().splitlines()[1:]]
  pq.write_table(
    pa.table(
      {
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "timestamp": [int(r[2]) for r in rows],
      }
    ),
    tmp_path / "log.parquet",
  )
  a = run("--format", "csv", "--interactions", FIX / "log.csv", "--out", tmp_path / "a")
  b = run(
    "--format", "parquet", "--interactions", tmp_path / "log.parquet", "--out", tmp_path / "b"
  )
  for split in ("train", "valid", "test"):
    assert raw(a, split) == raw(b, split)


def test_recbole_atomic_files_with_item_text_match_the_csv(tmp_path):
  a = run("--format", "csv", "--interactions", FIX / "log.csv", "--out", tmp_path / "a")
  b = run(
    "--format",
    "recbole",
    "--interactions",
    FIX / "recbole/toy.inter",
    "--items",
    FIX / "recbole/toy.item",
    "--text-encoder",
    "hashing",
    "--text-dim",
    "16",
    "--out",
    tmp_path / "b",
  )
  for split in ("train", "valid", "test"):
    assert raw(a, split) == raw(b, split)
  ds = PreparedDataset.load(b)
  vocab = list(ds.vocab)
  # sku11 has an empty title and category: the text modality is absent for it only.
  assert not ds.present["text"][vocab.index("sku11")]
  assert ds.present["text"][2:].sum() == ds.num_items - 1
  assert ds.features["text"].shape == (ds.vocab_size, 16)


def test_dedup_and_k_core_options(tmp_path):
  base = run(
    "--format",
    "csv",
    "--interactions",
    FIX / "log.csv",
    "--dedup",
    "none",
    "--out",
    tmp_path / "none",
  )
  cons = run(
    "--format",
    "csv",
    "--interactions",
    FIX / "log.csv",
    "--dedup",
    "consecutive",
    "--out",
    tmp_path / "cons",
  )

  def n(p):
    return json.loads((p / "dataset.json").read_text())["statistics"]["num_interactions"]

  assert n(base) - n(cons) == 2  # the exact duplicate row and u5's repeated sku02
  core = run(
    "--format",
    "csv",
    "--interactions",
    FIX / "log.csv",
    "--k-core",
    "3",
    "--out",
    tmp_path / "core",
  )
  meta = json.loads((core / "dataset.json").read_text())
  counts = {}
  for h, t in examples(core, "test"):
    assert len(h) + len(t) >= 3
    for i in h + t:
      counts[i] = counts.get(i, 0) + 1
  assert min(counts.values()) >= 3  # every kept item has >= 3 interactions
  assert meta["statistics"]["removed_by_filtering"] > 0


def test_user_split_holds_out_whole_users_with_the_first_80_percent_as_history(tmp_path):
  out = run(
    "--format",
    "csv",
    "--interactions",
    FIX / "log.csv",
    "--protocol",
    "user_split",
    "--seed",
    "3",
    "--out",
    tmp_path / "d",
  )
  seqs = user_sequences_from_csv(FIX / "log.csv")
  for split in ("valid", "test"):
    for h, t in raw(out, split):
      full = h + t
      assert full in seqs.values()
      assert len(h) == max(1, int(0.8 * len(full)))
  held = [h + t for s in ("valid", "test") for h, t in raw(out, s)]
  for h, t in raw(out, "train"):  # train users are disjoint from valid/test users
    assert not any(full[: len(h) + 1] == h + t for full in held)


def test_max_history_keeps_the_most_recent_items(tmp_path):
  full = run("--format", "csv", "--interactions", FIX / "log.csv", "--out", tmp_path / "a")
  cut = run(
    "--format",
    "csv",
    "--interactions",
    FIX / "log.csv",
    "--max-history",
    "2",
    "--out",
    tmp_path / "b",
  )
  for split in ("train", "test"):
    for (h, t), (hc, tc) in zip(examples(full, split), examples(cut, split)):
      assert hc == h[-2:] and tc == t


def test_unisrec_split_is_kept_as_given_with_raw_ids_from_item2index(tmp_path):
  out = run(
    "--format",
    "unisrec",
    "--input",
    FIX / "unisrec",
    "--item-text",
    FIX / "unisrec/Mini.text",
    "--text-encoder",
    "hashing",
    "--out",
    tmp_path / "d",
  )
  imap = dict(
    line.split("\t")[::-1] for line in (FIX / "unisrec/Mini.item2index").read_text().splitlines()
  )
  for split in ("train", "valid", "test"):
    lines = (FIX / f"unisrec/Mini.{split}.inter").read_text().splitlines()[1:]
    given = [
      ([imap[x] for x in line.split("\t")[1].split()], [imap[line.split("\t")[2]]])
      for line in lines
    ]
    assert raw(out, split) == given
  ds = PreparedDataset.load(out)
  assert ds.present["text"][2:].all() and ds.meta["protocol"] == "given"
  # vocabulary rows follow the integer ids of item2index
  order = sorted(imap, key=int)
  assert list(ds.vocab[2:]) == [imap[k] for k in order]


def test_mmrec_uses_x_label_splits_and_both_feature_files(tmp_path):
  out = run("--format", "mmrec", "--input", FIX / "mmrec", "--out", tmp_path / "d")
  ds = PreparedDataset.load(out)
  assert set(ds.features) == {"image", "text"} and ds.meta["protocol"] == "given"
  image = np.load(FIX / "mmrec/image_feat.npy")
  vocab = list(ds.vocab)
  # standardized rows keep the order of the raw rows (row r = item id r)
  col = ds.features["image"][[vocab.index(str(r)) for r in range(12)], 0]
  assert np.array_equal(np.argsort(col), np.argsort(image[:, 0]))
  rows = [line.split(",") for line in (FIX / "mmrec/toy.csv").read_text().splitlines()[1:]]
  tests = [r[1] for r in rows if r[4] == "2"]
  assert sorted(t[0] for _, t in raw(out, "test")) == sorted(tests)


def test_features_from_npy_with_id_list_and_from_parquet_are_aligned_by_id(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  ids = [f"sku{k:02d}" for k in (3, 0, 7, 1)]  # a subset, in a different order
  values = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3) ** 1.5
  np.save(tmp_path / "f.npy", values)
  (tmp_path / "f.ids.txt").write_text("\n".join(ids) + "\n")
  pq.write_table(pa.table({"item_id": ids, "emb": values.tolist()}), tmp_path / "g.parquet")
  pq.write_table(
    pa.table({"item_id": ids, **{f"d{j}": values[:, j] for j in range(3)}}), tmp_path / "h.parquet"
  )
  out = run(
    "--format",
    "csv",
    "--interactions",
    FIX / "log.csv",
    "--features",
    f"a={tmp_path / 'f.npy'}:{tmp_path / 'f.ids.txt'}",
    "--features",
    f"b={tmp_path / 'g.parquet'}",
    "--features",
    f"c={tmp_path / 'h.parquet'}",
    "--out",
    tmp_path / "d",
  )
  ds = PreparedDataset.load(out)
  vocab = list(ds.vocab)
  rows = [vocab.index(x) for x in ids]
  for name in "abc":
    assert ds.present[name].sum() == 4 and ds.present[name][rows].all()
    np.testing.assert_allclose(ds.features[name], ds.features["a"], atol=1e-6)
  present_rows = ds.features["a"][rows]
  np.testing.assert_allclose(present_rows.mean(0), 0, atol=1e-5)  # standardized
  assert np.argsort(present_rows[:, 0]).tolist() == np.argsort(values[:, 0]).tolist()


def test_dataset_json_records_statistics_and_the_command(tmp_path):
  out = run("--format", "csv", "--interactions", FIX / "log.csv", "--out", tmp_path / "d")
  meta = json.loads((out / "dataset.json").read_text())
  assert meta["format"] == "csv" and meta["prepare_args"]["interactions"].endswith("log.csv")
  s = meta["statistics"]
  for key in (
    "num_users",
    "num_interactions",
    "density",
    "sequence_length",
    "num_examples",
    "mean_history_length",
    "num_items_seen_in_train",
  ):
    assert key in s
  assert 1 <= meta["recommended_max_len"] <= 50


def test_cli_exits_zero_and_writes_the_directory(tmp_path, capsys):
  from input_pipelines.errors import run_cli

  code = run_cli(
    prepare.main,
    [
      "--format",
      "csv",
      "--interactions",
      str(FIX / "log.csv"),
      "--out",
      str(tmp_path / "d"),
      "--quiet",
    ],
  )
  assert code == 0 and (tmp_path / "d" / "dataset.json").is_file()
  assert "6 users" in capsys.readouterr().out
