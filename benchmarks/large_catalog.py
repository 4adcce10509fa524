"""Large catalogues: exact in-graph scoring with float32 or half-precision item tables, against
two-stage retrieval (serving.two_stage: the export's interests, FAISS candidates, exact
re-ranking), at 1M and 10M items.

    nice -n 10 python -m benchmarks.large_catalog                  # 100k, 1M, 10M items
    python -m benchmarks.large_catalog --catalogues 100000 --queries 50 --seconds 2   # quick

Per catalogue size N:

1. In-graph (the export TF Serving runs): a randomly initialized default model (d=64, K=4,
   history 20; one 8-dim feature modality, so that the 10M-item model fits in memory; the
   features do not change the scoring work) exported with float32, bfloat16 and float16 item
   tables (`benchmarks.serving.export_random`); batch-1 `serving_default` p50/p99 in a fresh
   process with the serving threads (intra-op 1, inter-op all), item table bytes, export size.
2. Recall, on synthetic item tables (`clustered_catalogue`): N items in N/400 topics of skewed
   sizes; each view's vector = a topic centre + an item latent shared by the two views (each
   view sees it through its own rotation) + view-specific noise, unit norm (within-topic cosine
   about 0.36 for the ID view and 0.56 for the MM view, the MM view being smoother); 8 % cold
   items; Q users with three topics each, K = 4 interests per view near those topics' centres
   plus a taste shared by the views, and a history of 20 items of the same topics (excluded from
   the answers, as the default export does). The reference is the exact fused top-50 with
   float32 tables; recall@k = |top-k of a method & reference top-k| / k, averaged over users.
   Half precision = the same exact scoring with tables stored in bfloat16 / float16, cast to
   float32 chunk by chunk (what a half export computes).
3. Two-stage: `serving.ann_index.ItemIndex.build` on the synthetic tables (spec "auto"; each
   `--operating-points` nprobe:candidates pair), build seconds and index bytes; batch-1 latency
   of the ANN + re-ranking stage (`TwoStageRetriever.rank`, FAISS on one thread) and end to end
   (`TwoStageRetriever.recommend`: `user_interests` of a 10k-item export of the same model
   loaded in this process, whose cost does not depend on the catalogue, then the same stage).

4. With `--trained-runs RUN,...` (and `--catalogues ""` for that alone): each training run
   re-exported with `python -m bivrec_tf.export --run RUN --table-dtype D --top-k 50`, and the
   half exports' answers, and two-stage answers from indexes of the float32 export
   (`--trained-ann`), compared with the float32 export's on the run's test histories.

Speed is also given as a ratio to the float32 in-graph export measured in the same run. Prints a
markdown table and writes JSON to benchmarks/results/large_catalog.json.
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.serving import _in_subprocess, machine

ROOT = Path(__file__).resolve().parents[1]
DIM, K, HISTORY, TOP = 64, 4, 20, 50
FUSION_WEIGHT, TAU = 0.7, 0.07  # export_random's fusion weight, the default tau_rec
FEATURES = (("text", 8),)
ITEMS_PER_TOPIC = 400
COLD_SHARE = 0.08
ALPHA = {"id": 0.6, "mm": 0.75}  # weight of the topic centre in an item vector
SHARED = 0.5  # weight of the item latent both views share
QUERY_ALPHA = 0.8  # weight of the topic centre in an interest
SCORE_CHUNK = 131_072
INTERESTS_ITEMS = 10_000  # catalogue of the export that answers user_interests end to end


def _unit(x):
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  return x


def _gaussian(rng, shape, scale):
  """float32 noise of norm about `scale` per DIM-vector."""
  return rng.standard_normal(shape, np.float32) * np.float32(scale / np.sqrt(DIM))


def clustered_catalogue(n: int, seed: int = 0):
  """-> (tables view -> float32 `[n, DIM]` unit rows, topic int64 `[n]`, cold bool `[n]`,
  space: view -> (topic centres `[T, DIM]`, rotation `[DIM, DIM]`)).

  e_v(i) = unit(a_v c_v[topic(i)] + b R_v z_i + noise): a topic centre, an item latent z_i shared
  by the views (seen through each view's rotation R_v: both views learn the same item-level
  affinities, to a degree) and view-specific noise, in shares ALPHA / SHARED / the rest."""
  rng = np.random.default_rng(seed)
  topics = max(16, n // ITEMS_PER_TOPIC)
  rank = np.minimum((rng.pareto(1.2, n) * topics / 20).astype(np.int64), topics - 1)
  topic = rng.permutation(topics)[rank]
  space = {
    v: (_unit(rng.standard_normal((topics, DIM), np.float32)), _rotation(rng)) for v in ALPHA
  }
  tables = {v: np.empty((n, DIM), np.float32) for v in ALPHA}
  for s in range(0, n, 1_000_000):
    e = min(s + 1_000_000, n)
    latent = _gaussian(rng, (e - s, DIM), 1.0)
    for v, a in ALPHA.items():
      centres, rotation = space[v]
      rest = np.sqrt(max(0.0, 1 - a * a - SHARED * SHARED))
      x = _gaussian(rng, (e - s, DIM), rest)
      x += np.float32(a) * centres[topic[s:e]]
      x += np.float32(SHARED) * (latent @ rotation)
      tables[v][s:e] = _unit(x)
  cold = rng.random(n) < COLD_SHARE
  return tables, topic, cold, space


def _rotation(rng) -> np.ndarray:
  q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
  return q.astype(np.float32)


def synthetic_users(topic, space, q: int, seed: int = 1):
  """-> (interests view -> float32 `[q, K, DIM]`, history rows int64 `[q, HISTORY]`).

  A user has three topics (drawn by topic size); interest k = unit(QUERY_ALPHA c_v[t_k] +
  SHARED R_v y_k + noise), y_k a taste shared by the two views; the history is HISTORY random
  items of the user's topics."""
  rng = np.random.default_rng(seed)
  n = len(topic)
  mine = topic[rng.integers(0, n, (q, 3))]
  pick = mine[np.arange(q)[:, None], rng.integers(0, 3, (q, K))]
  taste = _gaussian(rng, (q, K, DIM), 1.0)
  rest = np.sqrt(max(0.0, 1 - QUERY_ALPHA**2 - SHARED**2))
  interests = {}
  for v, (centres, rotation) in space.items():
    x = _gaussian(rng, (q, K, DIM), rest)
    x += np.float32(QUERY_ALPHA) * centres[pick] + np.float32(SHARED) * (taste @ rotation)
    interests[v] = _unit(x)
  order = np.argsort(topic, kind="stable")
  starts = np.searchsorted(topic[order], np.arange(len(space["id"][0]) + 1))
  chosen = mine[np.arange(q)[:, None], rng.integers(0, 3, (q, HISTORY))]
  lo, hi = starts[chosen], starts[chosen + 1]
  history = order[lo + (rng.random((q, HISTORY)) * (hi - lo)).astype(np.int64)]
  return interests, history


def exact_top(tables, cold, interests, history, dtypes=("float32", "bfloat16", "float16")):
  """Exact fused top-TOP rows per user for tables stored in each dtype: dtype -> int64
  `[q, TOP]` (history items excluded). Scored as the export scores (TensorFlow, chunks of
  SCORE_CHUNK items, each chunk cast from its storage dtype to float32 before the matmul)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  q = len(history)
  best = {d: None for d in dtypes}
  queries = {v: tf.constant(u) for v, u in interests.items()}
  hist = tf.constant(history)
  for s in range(0, len(cold), SCORE_CHUNK):
    e = min(s + SCORE_CHUNK, len(cold))
    chunk = {v: tf.constant(t[s:e]) for v, t in tables.items()}
    is_cold = tf.constant(cold[None, s:e])
    in_chunk = tf.where((hist >= s) & (hist < e))
    positions = tf.stack([in_chunk[:, 0], tf.gather_nd(hist, in_chunk) - s], axis=1)
    for d in dtypes:
      view = {
        v: tf.reduce_max(
          tf.einsum("qkd,nd->qkn", queries[v], tf.cast(tf.cast(c, d), tf.float32)), 1
        )
        / TAU
        for v, c in chunk.items()
      }
      fused = tf.where(
        is_cold, view["mm"], FUSION_WEIGHT * view["id"] + (1 - FUSION_WEIGHT) * view["mm"]
      )
      fused = tf.tensor_scatter_nd_update(
        fused, positions, tf.fill([tf.shape(positions)[0]], -np.inf)
      )
      top_s, top_i = tf.math.top_k(fused, min(TOP, e - s))
      top_i = tf.cast(top_i, tf.int64) + s
      if best[d] is not None:
        cat_s, cat_i = tf.concat([best[d][0], top_s], 1), tf.concat([best[d][1], top_i], 1)
        top_s, pos = tf.math.top_k(cat_s, TOP)
        top_i = tf.gather(cat_i, pos, batch_dims=1)
      best[d] = (top_s, top_i)
  assert all(b[1].shape == (q, TOP) for b in best.values())
  return {d: b[1].numpy() for d, b in best.items()}


def recall(found: np.ndarray, reference: np.ndarray, k: int) -> float:
  """Mean over users of |found[:, :k] & reference[:, :k]| / k."""
  return float(np.mean([len(set(f[:k]) & set(r[:k])) / k for f, r in zip(found, reference)]))


def time_calls(fn, inputs, seconds: float, min_calls: int = 20) -> dict:
  """p50/p99 ms of fn(x) cycling over inputs for about `seconds` (after 3 warm-up calls), and
  the process's CPU ms per call (as benchmarks.serving.measure_in_process reports it)."""
  for x in inputs[:3]:
    fn(x)
  times, start, i = [], time.perf_counter(), 0
  cpu_start = time.process_time()
  while (time.perf_counter() - start < seconds or len(times) < min_calls) and len(times) < 5000:
    t = time.perf_counter()
    fn(inputs[i % len(inputs)])
    times.append(time.perf_counter() - t)
    i += 1
  ms = np.asarray(times) * 1000
  return {
    "p50_ms": float(np.percentile(ms, 50)),
    "p99_ms": float(np.percentile(ms, 99)),
    "n": len(ms),
    "cpu_ms_mean": (time.process_time() - cpu_start) * 1000 / len(ms),
  }


# --- the three measurements ---------------------------------------------------------------------


def _export_in_subprocess(n: int, base: Path, table_dtype: str) -> Path:
  """export_random in a fresh process (TensorFlow keeps the memory of a 10M-item model)."""
  code = (
    "from pathlib import Path\n"
    "from benchmarks.serving import export_random\n"
    f"print('PATH', export_random({n}, Path({str(base)!r}), table_dtype={table_dtype!r}, "
    f"feature_dims={FEATURES!r}))\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=7200
  )
  for line in proc.stdout.splitlines():
    if line.startswith("PATH "):
      return Path(line[len("PATH ") :])
  raise RuntimeError(f"export failed:\n{proc.stderr[-3000:]}")


def in_graph(n: int, dtypes, work: Path, seconds: float) -> dict:
  """Export the random model with each table dtype; batch-1 latency in a fresh process."""
  out = {}
  for d in dtypes:
    start = time.time()
    path = _export_in_subprocess(n, work / d, d)
    variables = sum(f.stat().st_size for f in (path / "variables").rglob("*") if f.is_file())
    latency = _in_subprocess(path, n, 1, 0, seconds, batches=(1,))["1"]
    out[d] = {
      **latency,
      "export_seconds": time.time() - start,
      "variables_mb": variables / 1e6,
      "table_mb": 2
      * n
      * DIM
      * np.dtype(np.float32 if d == "float32" else np.float16).itemsize
      / 1e6,
      "path": str(path),
    }
    print(f"{n:,} items, in-graph {d}: {json.dumps(out[d])}", flush=True)
  return out


def two_stage(
  tables, cold, interests, history, reference, operating_points, seconds, export, spec="auto"
):
  """Build the index, then per operating point (nprobe, candidates): recall and latency."""
  import faiss  # pylint: disable=import-outside-toplevel

  from serving.ann_index import ItemIndex  # pylint: disable=import-outside-toplevel
  from serving.two_stage import (  # pylint: disable=import-outside-toplevel
    TwoStageRetriever,
    saved_model_interests,
  )

  n = len(cold)
  faiss.omp_set_num_threads(os.cpu_count() or 1)
  ids = np.char.add("i", np.arange(n).astype(str))  # the exports' ids: histories resolve in both
  start = time.perf_counter()
  index = ItemIndex.build(ids, tables, cold, FUSION_WEIGHT, TAU, spec=spec)
  build = time.perf_counter() - start
  memory = index.memory_bytes()
  print(f"{n:,} items, index {index.info['spec']}: {build:.1f} s, {memory}", flush=True)
  faiss.omp_set_num_threads(1)
  q = len(history)
  points = []
  export_interests = saved_model_interests(export, ("id", "mm")) if export else None
  for nprobe, candidates in operating_points:
    index.set_nprobe(nprobe)
    retriever = TwoStageRetriever(index, export_interests, candidates)
    rows, _ = retriever.rank(interests, list(history), TOP)
    point = {
      "nprobe": nprobe,
      "candidates": candidates,
      "recall@10": recall(rows, reference, 10),
      "recall@50": recall(rows, reference, 50),
    }
    singles = [({v: u[b : b + 1] for v, u in interests.items()}, [history[b]]) for b in range(q)]
    point["ann_stage"] = time_calls(lambda x: retriever.rank(x[0], x[1], 10), singles, seconds)
    if export_interests:
      histories = [[[f"i{r}" for r in history[b]]] for b in range(q)]
      point["end_to_end"] = time_calls(lambda h: retriever.recommend(h, 10), histories, seconds)
    print(f"{n:,} items, two-stage: {json.dumps(point)}", flush=True)
    points.append(point)
  return {
    "spec": index.info["spec"],
    "build_seconds": build,
    "ann_mb": memory["ann"] / 1e6,
    "rerank_mb": memory["rerank"] / 1e6,
    "points": points,
  }


def trained_recall(run_dir: str, work: Path, dtypes, ann_specs=(), users: int = 2000) -> dict:
  """A trained run re-exported (`python -m bivrec_tf.export --run`) with each table dtype and
  top-k 50; the overlap of each half export's answers, and of two-stage answers from an index of
  the float32 export (each (spec, nprobe) of `ann_specs`, 100 candidates per query), with the
  float32 export's answers on the first `users` test histories of the run's dataset."""
  from serving.two_stage import (  # pylint: disable=import-outside-toplevel
    TwoStageRetriever,
    index_from_export,
    saved_model_interests,
  )

  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from bivrec_tf.export import main as export_main  # pylint: disable=import-outside-toplevel
  from input_pipelines.dataset import PreparedDataset  # pylint: disable=import-outside-toplevel

  metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
  ds = PreparedDataset.load(metrics["data"])
  vocab = np.asarray(ds.vocab).astype(str)
  spec = {"history": tf.io.RaggedFeature(tf.int64)}
  rows = [
    vocab[h].tolist()
    for h in (
      tf.io.parse_single_example(x, spec)["history"].numpy() for x in ds.records("test").take(users)
    )
  ]
  width = max(len(r) for r in rows)
  histories = tf.constant([[""] * (width - len(r)) + r for r in rows])
  answers, out = {}, {"run": str(run_dir), "num_items": len(vocab) - 2, "users": len(rows)}
  for d in ["float32", *dtypes]:
    base = work / "trained" / Path(run_dir).name / d
    args = ["--run", str(run_dir), "--export-base", str(base), "--top-k", str(TOP)]
    assert export_main([*args, "--model-name", "m", "--table-dtype", d]) == 0
    fn = tf.saved_model.load(str(base / "m" / "1")).signatures["serving_default"]
    answers[d] = fn(history=histories)["item_ids"].numpy().astype(str)
  for d in dtypes:
    out[d] = {f"recall@{k}": recall(answers[d], answers["float32"], k) for k in (10, 50)}
  exported = work / "trained" / Path(run_dir).name / "float32" / "m" / "1"
  out["two_stage"] = []
  for spec, nprobe in ann_specs:
    index = index_from_export(exported, spec, nprobe)
    retriever = TwoStageRetriever(index, saved_model_interests(exported, index.views))
    found, _ = retriever.recommend(rows, TOP)
    point = {"spec": index.info["spec"], "nprobe": nprobe, "candidates": retriever.candidates}
    point.update({f"recall@{k}": recall(found, answers["float32"], k) for k in (10, 50)})
    out["two_stage"].append(point)
  print(f"trained run {run_dir}: {json.dumps(out)}", flush=True)
  return out


# --- report -----------------------------------------------------------------------------------


def _speedup(ref: dict, r: dict) -> str:
  """'a / b': reference / this, for p50 wall time and CPU time per request."""
  return f"{ref['p50_ms'] / r['p50_ms']:.1f}x / {ref['cpu_ms_mean'] / r['cpu_ms_mean']:.1f}x"


def table(results: dict) -> str:
  lines = [
    "| items | tables | batch-1 p50 ms | p99 ms | CPU ms | speed-up (p50 / CPU) | table MB | "
    "export MB | recall@10 | recall@50 |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for cat in results["catalogues"]:
    ref = cat["in_graph"].get("float32")
    for d in list(cat["in_graph"]) + [d for d in cat["half_recall"] if d not in cat["in_graph"]]:
      rec = cat["half_recall"].get(d, {"recall@10": 1.0, "recall@50": 1.0})
      r = cat["in_graph"].get(d)
      measured = (
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_ms_mean']:.2f} | "
        f"{_speedup(ref, r) if ref else ''} | {r['table_mb']:.0f} | {r['variables_mb']:.0f}"
        if r
        else "not exported | | | | |"
      )
      lines.append(
        f"| {cat['num_items']:,} | {d} | {measured} | {rec['recall@10']:.4f} | "
        f"{rec['recall@50']:.4f} |"
      )
  lines += [
    "",
    "| items | method | recall@10 | recall@50 | batch-1 p50 ms | p99 ms | CPU ms | "
    "speed-up (p50 / CPU) | build s | memory MB |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for cat in results["catalogues"]:
    exact = cat["in_graph"].get("float32")
    ann = cat.get("two_stage")
    if not ann:
      continue
    if exact:
      lines.append(
        f"| {cat['num_items']:,} | exact in-graph, float32 | 1 | 1 | {exact['p50_ms']:.2f} | "
        f"{exact['p99_ms']:.2f} | {exact['cpu_ms_mean']:.2f} | 1x | | "
        f"{exact['table_mb']:.0f} |"
      )
    tf_ref = cat.get("exact_tf")
    if tf_ref:
      lines.append(
        f"| {cat['num_items']:,} | exact, export's ops in eager TF (no export) | 1 | 1 | "
        f"{tf_ref['p50_ms']:.2f} | {tf_ref['p99_ms']:.2f} | {tf_ref['cpu_ms_mean']:.2f} | "
        f"{_speedup(exact, tf_ref) if exact else '1x'} | | {2 * cat['num_items'] * DIM * 4 / 1e6:.0f} |"
      )
      exact = exact or tf_ref
    for p in ann["points"]:
      for label, key in (("ANN + re-rank", "ann_stage"), ("end to end", "end_to_end")):
        if key not in p:
          continue
        lat = p[key]
        lines.append(
          f"| {cat['num_items']:,} | {ann['spec']}, nprobe {p['nprobe']}, {p['candidates']} "
          f"per interest: {label} | {p['recall@10']:.4f} | {p['recall@50']:.4f} | "
          f"{lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['cpu_ms_mean']:.2f} | "
          f"{_speedup(exact, lat) if exact else ''} | {ann['build_seconds']:.0f} | "
          f"{ann['ann_mb']:.0f} + {ann['rerank_mb']:.0f} |"
        )
  if results.get("trained"):
    lines += [
      "",
      "| trained run | items | users | tables | recall@10 | recall@50 |",
      "|---|---|---|---|---|---|",
    ]
    for t in results["trained"]:
      for d in [k for k in t if isinstance(t[k], dict)]:
        lines.append(
          f"| {t['run']} | {t['num_items']:,} | {t['users']} | {d} | "
          f"{t[d]['recall@10']:.4f} | {t[d]['recall@50']:.4f} |"
        )
      for a in t.get("two_stage", []):
        lines.append(
          f"| {t['run']} | {t['num_items']:,} | {t['users']} | two stages, {a['spec']} nprobe "
          f"{a['nprobe']} | {a['recall@10']:.4f} | {a['recall@50']:.4f} |"
        )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.large_catalog",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--catalogues", default="100000,1000000,10000000")
  parser.add_argument("--ann-catalogues", default="1000000,10000000", help="two-stage here")
  parser.add_argument("--dtypes", default="float32,bfloat16,float16", help="in-graph table dtypes")
  parser.add_argument(
    "--half-above",
    type=int,
    default=1_000_000,
    help="above this size only float32 is exported and float16 left out of the recall (time)",
  )
  parser.add_argument(
    "--export-up-to",
    type=int,
    default=1_000_000,
    help="in-graph exports only up to this size (a 10M-item export needs more than the 10 GB "
    "this shared machine had free)",
  )
  parser.add_argument(
    "--exact-tf",
    action="store_true",
    help="also time batch-1 exact scoring of the synthetic tables with the export's ops in "
    "eager TensorFlow (a reference where no export is made)",
  )
  parser.add_argument("--queries", type=int, default=100, help="synthetic users for recall")
  parser.add_argument("--seconds", type=float, default=5.0, help="per latency measurement")
  parser.add_argument(
    "--operating-points",
    default="16:100,64:100",
    help="nprobe:candidates pairs of the two-stage path",
  )
  parser.add_argument(
    "--trained-runs",
    default="",
    help="training run directories: half vs float32 answers of their re-exports on test users",
  )
  parser.add_argument("--spec", default="auto", help="index type (serving.ann_index)")
  parser.add_argument(
    "--trained-ann",
    default="Flat:1 IVF128,Flat:8",
    help="space-separated spec:nprobe two-stage indexes of the trained runs' exports",
  )
  parser.add_argument("--out", default="benchmarks/results/large_catalog.json")
  args = parser.parse_args(argv)
  points = [tuple(int(x) for x in p.split(":")) for p in args.operating_points.split(",")]
  results = {
    "command": "python -m benchmarks.large_catalog " + " ".join(argv or sys.argv[1:]),
    "machine": machine(),
    "settings": {
      "dim": DIM,
      "interests": K,
      "history": HISTORY,
      "fusion_weight": FUSION_WEIGHT,
      "tau_rec": TAU,
      "items_per_topic": ITEMS_PER_TOPIC,
      "cold_share": COLD_SHARE,
      "alpha": ALPHA,
      "shared": SHARED,
      "query_alpha": QUERY_ALPHA,
      "queries": args.queries,
      "faiss_threads_query": 1,
      "tf_threads": "intra-op 1, inter-op all",
    },
    "catalogues": [],
  }
  started = time.time()
  work = Path(tempfile.mkdtemp(prefix="bivrec-large-catalog-"))
  try:
    # user_interests reads only the history's items: its cost does not depend on the catalogue,
    # so one small export answers the end-to-end two-stage requests.
    interests_export = (
      _export_in_subprocess(INTERESTS_ITEMS, work / "interests", "float32")
      if args.ann_catalogues
      else None
    )
    if args.trained_runs:
      half = [d for d in args.dtypes.split(",") if d != "float32"]
      specs = [(x.rsplit(":", 1)[0], int(x.rsplit(":", 1)[1])) for x in args.trained_ann.split()]
      results["trained"] = [
        trained_recall(r, work, half, specs) for r in args.trained_runs.split(",")
      ]
    for n in [int(c) for c in args.catalogues.split(",") if c]:
      dtypes = args.dtypes.split(",")
      exported = dtypes
      if n > args.half_above:
        exported, dtypes = ["float32"], [d for d in dtypes if d != "float16"]
      if n > args.export_up_to:
        exported = []
      entry = {"num_items": n}
      entry["in_graph"] = in_graph(n, exported, work / str(n), args.seconds)
      gc.collect()
      start = time.time()
      tables, topic, cold, space = clustered_catalogue(n)
      interests, history = synthetic_users(topic, space, args.queries)
      entry["generate_seconds"] = time.time() - start
      start = time.time()
      tops = exact_top(tables, cold, interests, history, tuple(dtypes))
      entry["exact_reference_seconds"] = time.time() - start
      if args.exact_tf:
        one = [
          ({v: u[b : b + 1] for v, u in interests.items()}, history[b : b + 1]) for b in range(20)
        ]
        entry["exact_tf"] = time_calls(
          lambda x, t=tables, c=cold: exact_top(t, c, x[0], x[1], ("float32",)),
          one,
          args.seconds,
          5,
        )
        print(f"{n:,} items, exact in TF eager: {json.dumps(entry['exact_tf'])}", flush=True)
      entry["half_recall"] = {
        d: {f"recall@{k}": recall(tops[d], tops["float32"], k) for k in (10, 50)}
        for d in tops
        if d != "float32"
      }
      print(f"{n:,} items, half-precision recall: {entry['half_recall']}", flush=True)
      if str(n) in args.ann_catalogues.split(","):
        entry["two_stage"] = two_stage(
          tables,
          cold,
          interests,
          history,
          tops["float32"],
          points,
          args.seconds,
          interests_export,
          args.spec,
        )
      results["catalogues"].append(entry)
      _write(results, Path(args.out))  # after each catalogue: a later failure keeps these
      for d in entry["in_graph"]:
        shutil.rmtree(work / str(n) / d, ignore_errors=True)
      del tables, topic, cold, space, interests, history, tops
      gc.collect()
  finally:
    shutil.rmtree(work, ignore_errors=True)
  results["wall_seconds"] = time.time() - started
  results["load_average_after"] = os.getloadavg()
  _write(results, Path(args.out))
  print()
  print(table(results))
  print(f"\nwritten: {args.out}")
  return 0


def _write(results: dict, out: Path) -> None:
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(results, indent=2))
  os.replace(tmp, out)


if __name__ == "__main__":
  sys.exit(main())
