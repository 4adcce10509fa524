"""Training throughput of the full model (both views), sequences per second.

    python -m benchmarks.train_throughput --lengths 20,50 --interests 4 --batch 2048 --items 10000

Feeds random in-memory batches (the tf.data pipeline is measured separately with `--pipeline`), so
the number is the model's training step: forward, backward, optimizer. Reports FLOPs per sequence
(counted by TensorFlow's graph profiler on the train step) and the achieved share of the CPU's fp32
matmul peak, measured here with a large matmul. Prints a markdown table, writes JSON.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np
import tensorflow as tf

from bivrec_tf.config import Config
from bivrec_tf.model import BivRecModel


def matmul_peak_gflops(n: int = 2048, repeats: int = 20) -> float:
  """Measured fp32 matmul throughput of this machine (GFLOP/s)."""
  a = tf.random.normal([n, n])
  b = tf.random.normal([n, n])
  f = tf.function(lambda x, y: tf.matmul(x, y))
  f(a, b).numpy()
  start = time.perf_counter()
  for _ in range(repeats):
    c = f(a, b)
  c.numpy()
  return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def make_model(length, interests, dim, items, batch, negatives, jit, text_dim=48, image_dim=32):
  cfg = Config().replace(model={"num_interests": interests, "dim": dim},
                         loss={"num_negatives": negatives},
                         train={"batch_size": batch, "jit_compile": jit})
  rng = np.random.default_rng(0)
  v = items + 2
  feats = {"text": rng.normal(size=(v, text_dim)).astype(np.float32),
           "image": rng.normal(size=(v, image_dim)).astype(np.float32)}
  present = {m: np.ones(v, bool) for m in feats}
  model = BivRecModel(cfg, v, length, feats, present, item_counts=rng.integers(1, 100, v),
                      seen_in_train=np.ones(v, bool))
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), jit_compile=jit)
  return model


def random_batches(length, items, batch, negatives, seed=0):
  rng = np.random.default_rng(seed)
  n = 8
  hist = rng.integers(2, items + 2, (n, batch, length))
  lengths = rng.integers(1, length + 1, (n, batch))
  hist[np.arange(length)[None, None, :] < (length - lengths)[..., None]] = 0
  data = {"history": hist, "target": rng.integers(2, items + 2, (n, batch)),
          "negatives": rng.integers(2, items + 2, (n, negatives))}
  return tf.data.Dataset.from_tensor_slices(data).cache().repeat()


def train_step_flops(model, batch_example) -> float:
  """FLOPs of one training step (forward + backward + update) from the graph profiler."""
  from tensorflow.python.profiler import model_analyzer, option_builder  # pylint: disable=import-outside-toplevel

  fn = tf.function(model.train_step).get_concrete_function(
      {k: tf.TensorSpec(v.shape, v.dtype) for k, v in batch_example.items()})
  opts = option_builder.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  info = model_analyzer.profile(fn.graph, options=opts)
  return float(info.total_float_ops)


def measure(length, interests, dim, items, batch, negatives, jit, steps):
  model = make_model(length, interests, dim, items, batch, negatives, jit)
  data = random_batches(length, items, batch, negatives)
  example = next(iter(data))
  model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # build + compile
  start = time.perf_counter()
  model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
  seconds = time.perf_counter() - start
  flops = train_step_flops(make_model(length, interests, dim, items, batch, negatives, False),
                           example)
  return {"L": length, "K": interests, "d": dim, "items": items, "batch": batch,
          "negatives": negatives, "xla": jit, "steps": steps,
          "seq_per_s": steps * batch / seconds, "step_ms": 1000 * seconds / steps,
          "gflop_per_step": flops / 1e9, "gflops": flops * steps / seconds / 1e9}


def pipeline_rate(data_dir, length, batch, negatives, steps=200):
  """Batches/s of the real tf.data pipeline alone (it must never be the bottleneck)."""
  from input_pipelines.dataset import PreparedDataset, train_dataset  # pylint: disable=import-outside-toplevel

  ds = PreparedDataset.load(data_dir)
  it = iter(train_dataset(ds, length, batch, negatives, seed=0, repeat=True))
  next(it)
  start = time.perf_counter()
  for _ in range(steps):
    next(it)
  return steps * batch / (time.perf_counter() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="20,50")
  parser.add_argument("--interests", default="4")
  parser.add_argument("--items", default="10000")
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=2048)
  parser.add_argument("--negatives", type=int, default=256)
  parser.add_argument("--xla", default="1", help="comma list of 1/0")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--pipeline", metavar="DATA_DIR", help="also time tf.data on this dataset")
  parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
  args = parser.parse_args(argv)
  peak = matmul_peak_gflops()
  rows = []
  for length in map(int, args.lengths.split(",")):
    for k in map(int, args.interests.split(",")):
      for items in map(int, args.items.split(",")):
        for jit in (x == "1" for x in args.xla.split(",")):
          row = measure(length, k, args.dim, items, args.batch, args.negatives, jit, args.steps)
          row["peak_share"] = row["gflops"] / peak
          rows.append(row)
          print(f"L={length} K={k} items={items} xla={jit}: {row['seq_per_s']:.0f} seq/s",
                flush=True)
  result = {"machine": {"cpus": len(tf.config.list_physical_devices("CPU")),
                        "platform": platform.platform(), "tensorflow": tf.__version__,
                        "matmul_peak_gflops": peak},
            "rows": rows}
  if args.pipeline:
    result["pipeline_seq_per_s"] = pipeline_rate(args.pipeline, int(args.lengths.split(",")[0]),
                                                 args.batch, args.negatives)
  print(f"\nfp32 matmul peak measured: {peak:.0f} GFLOP/s\n")
  print("| L | K | items | batch | XLA | seq/s | ms/step | GFLOP/step | GFLOP/s | share of peak |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['L']} | {r['K']} | {r['items']} | {r['batch']} | {'yes' if r['xla'] else 'no'} "
          f"| {r['seq_per_s']:.0f} | {r['step_ms']:.0f} | {r['gflop_per_step']:.2f} "
          f"| {r['gflops']:.1f} | {100 * r['peak_share']:.1f} % |")
  if "pipeline_seq_per_s" in result:
    print(f"\ntf.data pipeline alone: {result['pipeline_seq_per_s']:.0f} seq/s")
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(result, indent=2))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
