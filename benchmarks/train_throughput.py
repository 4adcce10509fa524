"""Training and evaluation throughput of the full model (both views).

    python -m benchmarks.train_throughput            # the sweep of docs/performance.md
    python -m benchmarks.train_throughput --quick    # the two target rows only
    python -m benchmarks.train_throughput --quick --reference comirec_sa   # + ratio to a preset
    python -m benchmarks.train_throughput --quick --reference comirec_sa \
        --model-flags "--num-interests 2 --mm-fusion mean"   # a form against comirec_sa's defaults

Each configuration runs in its own process (so peak memory is its own): random in-memory batches
feed `model.fit`, so the number is the training step itself (forward, backward, optimizer),
timed over `--repeats` windows of `--steps` steps and reported as the median window's rate; the
real tf.data pipeline is timed separately. FLOPs per step are counted by TensorFlow's graph
profiler on the train step (plus Einsum, which it does not count), and compared with this CPU's
fp32 matmul peak, measured with a large matmul. Evaluation: users/s of full ranking over the
catalogue. Prints a markdown table, writes JSON and a PNG plot of cost against catalogue size and
history length.
"""

import argparse
import os
import json
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np
import tensorflow as tf

from bivrec_tf.config import Config, add_flags, from_flags
from bivrec_tf.model import BivRecModel
from bivrec_tf.presets import apply_preset
from bivrec_tf.teaching_probe import TeachingProbe, probe_interval


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
  return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def make_model(
  length,
  interests,
  dim,
  items,
  batch,
  negatives,
  jit,
  text_dim=48,
  image_dim=32,
  preset="bivrec",
  flags="",
):
  """The preset at K = `interests`, d = `dim`, then `flags` (train CLI flags, e.g.
  "--num-interests 2 --mm-fusion mean") on top."""
  cfg = apply_preset(Config(), preset).replace(
    model={"num_interests": interests, "dim": dim},
    loss={"num_negatives": negatives},
    train={"batch_size": batch, "jit_compile": jit},
  )
  if flags:
    parser = argparse.ArgumentParser(prog="--model-flags", add_help=False)
    add_flags(parser)
    cfg = from_flags(parser.parse_args(shlex.split(flags)), base=cfg)
  rng = np.random.default_rng(0)
  v = items + 2
  feats = {
    "text": rng.normal(size=(v, text_dim)).astype(np.float32),
    "image": rng.normal(size=(v, image_dim)).astype(np.float32),
  }
  present = {m: np.ones(v, bool) for m in feats}
  model = BivRecModel(
    cfg,
    v,
    length,
    feats,
    present,
    item_counts=rng.integers(1, 100, v),
    seen_in_train=np.ones(v, bool),
  )
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), jit_compile=jit)
  return model


def random_batches(length, items, batch, negatives, seed=0):
  rng = np.random.default_rng(seed)
  n = 8
  hist = rng.integers(2, items + 2, (n, batch, length))
  lengths = rng.integers(1, length + 1, (n, batch))
  hist[np.arange(length)[None, None, :] < (length - lengths)[..., None]] = 0
  data = {
    "history": hist,
    "target": rng.integers(2, items + 2, (n, batch)),
    "negatives": rng.integers(2, items + 2, (n, negatives)),
  }
  return tf.data.Dataset.from_tensor_slices(data).cache().repeat()


def _register_einsum_flops():
  """TensorFlow's profiler has no FLOP count for Einsum (it silently counts 0): 2 x the product
  of every index size, i.e. one multiply-add per point of the joint index space."""
  from tensorflow.python.framework import graph_util, ops  # pylint: disable=import-outside-toplevel

  try:

    @ops.RegisterStatistics("Einsum", "flops")
    def _einsum_flops(graph, node):  # pylint: disable=unused-variable
      terms = node.attr["equation"].s.decode().split("->")[0].split(",")
      sizes = {}
      for term, name in zip(terms, node.input):
        shape = graph_util.tensor_shape_from_node_def_name(graph, name).as_list()
        sizes.update(zip(term, shape))
      return ops.OpStats("flops", 2 * int(np.prod([s for s in sizes.values()])))
  except KeyError:  # already registered
    pass


def _per_view(row, key: str) -> str:
  """The K or d column: "4", or "4 / 2" when the MM view has its own (ID / MM)."""
  own = row.get(f"{key}_mm")
  return str(row[key]) if own in (None, row[key]) else f"{row[key]} / {own}"


def train_step_flops(model, batch_example) -> float:
  """FLOPs of one training step (forward + backward + update) from the graph profiler."""
  from tensorflow.python.profiler import model_analyzer, option_builder  # pylint: disable=import-outside-toplevel

  _register_einsum_flops()
  fn = tf.function(model.train_step).get_concrete_function(
    {k: tf.TensorSpec(v.shape, v.dtype) for k, v in batch_example.items()}
  )
  opts = option_builder.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  info = model_analyzer.profile(fn.graph, options=opts)
  return float(info.total_float_ops)


def compiled_steps(model, data):
  """Builds and XLA-compiles `model`'s training step on `data` (one short `fit`) and returns
  run(steps) -> seconds taken by that many steps of Keras' own compiled train function on one
  iterator, the last step's result awaited (one step already run, so no compilation is timed).
  (A second `model.fit` call in one process can run its steps ~1.7x slower here for reasons
  outside the step; a real run is one `fit`, whose per-epoch times are in the training logs.)"""
  model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
  iterator, train_function = iter(data), model.train_function
  probe = teaching_probe_calls(model, data)

  def run(steps):
    start = time.perf_counter()
    for _ in range(steps):
      logs = train_function(iterator)
    float(logs["loss"])
    seconds = time.perf_counter() - start
    if probe is not None:  # the job probes once every probe_every steps: that share is added
      start = time.perf_counter()
      probe()
      seconds += (time.perf_counter() - start) * steps / probe_interval(model)
    return seconds

  run(1)
  return run


def teaching_probe_calls(model, data):
  """None without a teaching probe (`loss.probe_every` 0); else a function doing one probe's work
  as the job does: `TeachingProbe.measure` (compiled `teaching_alignment` on two batches of
  `probe_batch` rows, results read back). Each timed window of n steps times one call and adds
  n / probe_every of it (a window shorter than probe_every would otherwise hold no probe or a
  whole one)."""
  lc = model.config.loss
  if not probe_interval(model):
    return None
  rows = dict(next(iter(data)))
  n = min(lc.probe_batch, int(rows["target"].shape[0]))
  batch = {k: (v if k == "negatives" else v[:n]) for k, v in rows.items()}
  held = {**batch, "target": tf.roll(batch["target"], 1, axis=0)}
  probe = TeachingProbe(
    *(tf.data.Dataset.from_tensors(b).repeat() for b in (batch, held)),
    probe_interval(model),
    lc.probe_momentum,
    lc.probe_signal,  # "fused" takes a fourth gradient per view
  )
  probe.set_model(model)
  probe.measure()  # traced outside the timed windows, as the job's first probe is once per run
  return probe.measure


def measure(
  length, interests, dim, items, batch, negatives, jit, steps, preset="bivrec", flags="", repeats=1
):
  """One configuration: `repeats` timed windows of `steps` steps each; the rate is the median
  window's (a one-view step takes 9-14 ms on these machines, so one short window can be off
  by 2x; the median of several is stable). Every window's rate is kept in the row."""
  model = make_model(
    length, interests, dim, items, batch, negatives, jit, preset=preset, flags=flags
  )
  data = random_batches(length, items, batch, negatives)
  example = next(iter(data))
  timer = compiled_steps(model, data)
  windows = [timer(steps) for _ in range(max(1, repeats))]
  seconds = float(np.median(windows))
  flops = train_step_flops(
    make_model(length, interests, dim, items, batch, negatives, False, preset=preset, flags=flags),
    example,
  )
  m = model.config.model
  return {
    "preset": preset,
    "flags": flags,
    "L": length,
    "K": m.num_interests,
    "K_mm": m.for_view("mm").num_interests if "mm" in m.views else None,  # the MM view's own K
    "d": m.dim,
    "d_mm": m.for_view("mm").dim if "mm" in m.views else None,  # the MM view's own d
    "items": items,
    "batch": batch,
    "negatives": negatives,
    "xla": jit,
    "probe_every": probe_interval(model),
    "steps": steps,
    "repeats": len(windows),
    "window_seq_per_s": [round(steps * batch / w, 1) for w in windows],
    "seq_per_s": steps * batch / seconds,
    "step_ms": 1000 * seconds / steps,
    "gflop_per_step": flops / 1e9,
    "gflops": flops * steps / seconds / 1e9,
  }


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


def eval_users_per_s(length, interests, dim, items, users=2048, batch=512, preset="bivrec"):
  """Full-ranking evaluation speed (both views + fused rule), users/s."""
  from bivrec_tf.evaluate import Ranker  # pylint: disable=import-outside-toplevel

  model = make_model(length, interests, dim, items, 8, 8, False, preset=preset)
  model.build_all()
  rng = np.random.default_rng(1)
  hist = rng.integers(2, items + 2, (users, length))
  ranker = Ranker(model, kmax=50)
  ranker.refresh()
  ranker.topk(hist[:batch], [0.5])
  start = time.perf_counter()
  for i in range(0, users, batch):
    ranker.topk(hist[i : i + batch], [0.5])
  return users / (time.perf_counter() - start)


def run_one(spec: dict) -> dict:
  """One configuration (in this process)."""
  preset = spec.get("preset", "bivrec")
  row = measure(
    spec["L"],
    spec["K"],
    spec["d"],
    spec["items"],
    spec["batch"],
    spec["negatives"],
    spec["xla"],
    spec["steps"],
    preset,
    spec.get("flags", ""),
    spec["repeats"],
  )
  if spec.get("eval"):
    row["eval_users_per_s"] = eval_users_per_s(
      spec["L"], spec["K"], spec["d"], spec["items"], preset=preset
    )
  row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return row


def sweep(base: dict, quick: bool):
  """One factor at a time around the targets (L=20 and L=50, K=4, 10k items, XLA)."""
  specs = [dict(base, L=20), dict(base, L=50)]
  if quick:
    return specs
  specs += [dict(base, L=200, batch=512)]
  specs += [dict(base, L=length, xla=False) for length in (20, 50)]
  specs += [dict(base, K=k) for k in (1, 8)]
  specs += [dict(base, items=n, eval=True) for n in (100_000, 1_000_000)]
  specs[0]["eval"] = True
  return specs


def plot(rows, path):
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  by_items = sorted(
    (r for r in rows if r["L"] == 20 and r["K"] == 4 and r["xla"]), key=lambda r: r["items"]
  )
  ax = axes[0]
  ax.plot(
    [r["items"] for r in by_items],
    [r["step_ms"] / r["batch"] * 1000 for r in by_items],
    "o-",
    label="training (µs / sequence)",
  )
  ev = [r for r in by_items if "eval_users_per_s" in r]
  ax.plot(
    [r["items"] for r in ev],
    [1e6 / r["eval_users_per_s"] for r in ev],
    "s--",
    label="full-ranking evaluation (µs / user)",
  )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("catalogue size (items)")
  ax.set_title("cost vs catalogue size (L=20, K=4)")
  ax.legend()
  by_len = sorted((r for r in rows if r["items"] == 10_000 and r["K"] == 4), key=lambda r: r["L"])
  ax = axes[1]
  for xla in (True, False):
    pts = [r for r in by_len if r["xla"] == xla]
    ax.plot(
      [r["L"] for r in pts],
      [r["step_ms"] / r["batch"] * 1000 for r in pts],
      "o-",
      label=f"training, XLA {'on' if xla else 'off'} (µs / sequence)",
    )
  ax.set_xlabel("history length L")
  ax.set_title("cost vs history length (10k items, K=4)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--quick", action="store_true", help="only the two target rows")
  parser.add_argument(
    "--preset", default="bivrec", help="model preset (bivrec_tf/presets.py), e.g. bivrec_design"
  )
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=2048)
  parser.add_argument("--negatives", type=int, default=256)
  parser.add_argument("--steps", type=int, default=15, help="training steps per timed window")
  parser.add_argument(
    "--repeats",
    type=int,
    default=7,
    help="timed windows per configuration; the median window's rate is reported",
  )
  parser.add_argument("--pipeline", metavar="DATA_DIR", help="also time tf.data on this dataset")
  parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
  parser.add_argument("--only", help="comma list of sweep row numbers to run (0-based)")
  parser.add_argument(
    "--reference",
    metavar="PRESET",
    help="also time this preset on every row, interleaved, and print the "
    "ratio of sequences/s (e.g. comirec_sa, the one-view baseline)",
  )
  parser.add_argument(
    "--model-flags",
    default="",
    metavar="FLAGS",
    help="train CLI flags applied to --preset only, not to --reference (quote them: "
    '"--num-interests 2 --mm-fusion mean"), so a form is timed against the reference at its '
    "defaults",
  )
  parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one spec (JSON)
  args = parser.parse_args(argv)
  if args.one:
    print("RESULT " + json.dumps(run_one(json.loads(args.one))))
    return
  base = dict(
    preset=args.preset,
    L=20,
    K=4,
    d=args.dim,
    items=10_000,
    batch=args.batch,
    negatives=args.negatives,
    xla=True,
    steps=args.steps,
    repeats=args.repeats,
    flags=args.model_flags,
  )
  peak = matmul_peak_gflops()
  rows = []
  specs = sweep(base, args.quick)
  if args.only:
    specs = [specs[int(i)] for i in args.only.split(",")]
  specs = [dict(spec, row=i) for i, spec in enumerate(specs)]
  if args.reference:  # interleaved, so both see the same machine load; flags apply to --preset
    specs = [s for spec in specs for s in (spec, dict(spec, preset=args.reference, flags=""))]
  for spec in specs:
    proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_throughput", "--one", json.dumps(spec)],
      capture_output=True,
      text=True,
      check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"failed: {spec}\n{proc.stderr[-2000:]}", file=sys.stderr)
      continue
    row = json.loads(lines[-1][7:])
    row["peak_share"] = row["gflops"] / peak
    row["row"] = spec["row"]
    rows.append(row)
    print(
      f"{row['preset']} L={row['L']} K={row['K']} items={row['items']} xla={row['xla']}: "
      f"{row['seq_per_s']:.0f} seq/s",
      flush=True,
    )
  result = {
    "command": "python -m benchmarks.train_throughput "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "machine": {
      "cpus": os.cpu_count(),
      "platform": platform.platform(),
      "tensorflow": tf.__version__,
      "matmul_peak_gflops": peak,
    },
    "rows": rows,
  }
  if args.pipeline:
    result["pipeline_seq_per_s"] = pipeline_rate(args.pipeline, 20, args.batch, args.negatives)
  print(f"\nfp32 matmul peak measured: {peak:.0f} GFLOP/s\n")
  print(
    f"preset: {args.preset}"
    + (f" with {args.model_flags}" if args.model_flags else "")
    + (f", reference {args.reference}" if args.reference else "")
  )
  print(
    "| preset | L | K | d | items | batch | XLA | train seq/s | ms/step | GFLOP/step | GFLOP/s | "
    "share of peak | peak RSS MB | eval users/s |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    ev = f"{r['eval_users_per_s']:.0f}" if "eval_users_per_s" in r else "-"
    print(
      f"| {r['preset']} | {r['L']} | {_per_view(r, 'K')} | {_per_view(r, 'd')} | {r['items']} | {r['batch']} "
      f"| {'yes' if r['xla'] else 'no'} "
      f"| {r['seq_per_s']:.0f} | {r['step_ms']:.0f} | {r['gflop_per_step']:.2f} "
      f"| {r['gflops']:.1f} | {100 * r['peak_share']:.1f} % | {r['peak_rss_mb']:.0f} | {ev} |"
    )
  if args.reference:
    result["ratios"] = []
    print(f"\n| L | {args.preset} seq/s | {args.reference} seq/s | ratio |\n|---|---|---|---|")
    for r in rows:
      if r["preset"] != args.preset:
        continue
      ref = [x for x in rows if x["preset"] == args.reference and x["row"] == r["row"]]
      if ref:
        ratio = r["seq_per_s"] / ref[0]["seq_per_s"]
        result["ratios"].append({"L": r["L"], "ratio": ratio})
        print(f"| {r['L']} | {r['seq_per_s']:.0f} | {ref[0]['seq_per_s']:.0f} | {ratio:.2f} |")
  if "pipeline_seq_per_s" in result:
    print(f"\ntf.data pipeline alone: {result['pipeline_seq_per_s']:.0f} seq/s")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  if not args.quick:
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
  main()
