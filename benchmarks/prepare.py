"""Speed and memory of data preparation: in one process and on Apache Beam (DirectRunner).

    nice -n 10 python -m benchmarks.prepare                         # 10^5, 10^6, 10^7 rows
    nice -n 10 python -m benchmarks.prepare --rows 100000 --paths in_process,beam1
    python -m benchmarks.prepare --check-only --data synthetic      # the equality checks

Each measurement runs `python -m input_pipelines.prepare` in its own process on a generated
interaction log (CSV `user_id,item_id,timestamp`: Zipf-distributed user activity and item
popularity, timestamps with ties, ~1 % repeated rows; see `random_log`) with leave-one-out and
the default filters (exact dedup, users >= 3 interactions). Paths: `in_process` (the default
layout: one file per split), `in_process_shards` (--shards auto), `beam1` / `beam2`
(--runner DirectRunner, --num-workers 1 / 2 in multi-process mode). Rows/s = input rows / wall
time of the whole command (reading, filtering, writing; Python start and imports included);
peak memory = the largest sum of the resident memory of the command's process tree (sampled
every 0.2 s) and the largest single process.

After the runs of a size, the in-process --shards output and the Beam outputs are compared file
by file (`same_bytes`: every shard, the vocabulary, the features and dataset.json but for its
`prepare_args.out`). `--check-only` makes only that comparison for the default data (the
synthetic dataset, exported as a log), Amazon Scientific (UniSRec files) or a log size.

Prints a markdown table and writes benchmarks/results/prepare.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATHS = {
  "in_process": [],
  "in_process_shards": ["--shards", "auto"],
  "beam1": ["--runner", "DirectRunner", "--num-workers", "1"],
  "beam2": ["--runner", "DirectRunner", "--num-workers", "2"],
}


def random_log(rows: int, out, seed: int = 0) -> pathlib.Path:
  """Writes a CSV interaction log of `rows` rows (`user_id,item_id,timestamp`).

  Users: rows / 10 of them, activity ~ Zipf (a few heavy users, many light ones); items:
  rows / 20, popularity ~ Zipf; timestamps: a per-user start plus increasing gaps, rounded to
  the minute (ties occur); ~1 % of rows repeat the row before (exact duplicates).
  """
  rng = np.random.default_rng(seed)
  num_users, num_items = max(rows // 10, 10), max(rows // 20, 10)
  weights = 1.0 / np.arange(1, num_users + 1) ** 0.6
  users = rng.choice(num_users, size=rows, p=weights / weights.sum())
  items = (rng.zipf(1.2, size=rows) - 1) % num_items
  items = rng.permutation(num_items)[items]
  gaps = rng.exponential(3600.0, size=rows)
  order = np.argsort(users, kind="stable")
  g = gaps[order]
  cs = np.cumsum(g)
  first = np.concatenate([[0], np.flatnonzero(np.diff(users[order])) + 1])
  t = np.empty(rows)
  t[order] = cs - np.repeat(cs[first] - g[first], np.diff(np.append(first, rows)))
  t += rng.uniform(1.6e9, 1.7e9, size=num_users)[users]
  t = np.floor(t / 60) * 60
  dup = rng.random(rows) < 0.01
  dup[0] = False
  prev = np.arange(rows) - 1
  src = np.where(dup, prev, np.arange(rows))
  users, items, t = users[src], items[src], t[src]
  out = pathlib.Path(out)
  with open(out, "w") as f:
    f.write("user_id,item_id,timestamp\n")
    step = 1_000_000
    for a in range(0, rows, step):
      f.write(
        "".join(
          f"u{u},i{i},{int(x)}\n"
          for u, i, x in zip(users[a : a + step], items[a : a + step], t[a : a + step])
        )
      )
  return out


def synthetic_log(prepared_dir, out) -> pathlib.Path:
  """Writes the user sequences of a prepared `loo` dataset (the test examples: history and
  target) as a CSV log `user_id,item_id,timestamp` (timestamp = position; raw item ids)."""
  from input_pipelines.dataset import PreparedDataset

  ds = PreparedDataset.load(prepared_dir, validate=False)
  import tensorflow as tf

  spec = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}
  out = pathlib.Path(out)
  with open(out, "w") as f:
    f.write("user_id,item_id,timestamp\n")
    user = 0
    for batch in ds.records("test").batch(4096):
      p = tf.io.parse_example(batch, spec)
      hist = tf.RaggedTensor.from_sparse(p["history"]).to_list()
      tgt = tf.RaggedTensor.from_sparse(p["target"]).to_list()
      for h, t in zip(hist, tgt):
        for pos, x in enumerate(h + t):
          f.write(f"s{user},{ds.vocab[x]},{pos}\n")
        user += 1
  return out
