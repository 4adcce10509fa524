"""Where a training step's time goes, by part of the model.

    python -m benchmarks.step_profile                       # the default at L = 20 (10k items)
    python -m benchmarks.step_profile --preset comirec_sa   # the one-view reference
    python -m benchmarks.step_profile --length 50 --model-flags "--mm-fusion mean"

Runs `benchmarks.train_throughput`'s setting (random batches, batch 256, 256 sampled negatives,
XLA) in a child process with XLA's per-operation trace on, maps every compiled operation back to
the TensorFlow op it came from (the `op_name` metadata of the optimized HLO), and sums the
operations' thread time by model part (the ID and MM views' towers and modules, scoring and
losses, the optimizer), forward and backward apart. Thread time: both cores' operation time
added, so it exceeds the step's wall time when the two cores overlap. Tracing slows the step
a little; the shares are what it is for. Not every operation emits a trace event: a dot that
contracts its left operand's rows (the candidate-table gradient of `bivrec_tf.model.winner_scores`,
~20 ms per view at batch 2048) runs untraced and is in no row, so compare two steps by their wall
time (`benchmarks.train_throughput`), not by the rows' sum. Prints a markdown table, writes JSON.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Operations that contain others (executors, thread pools, the input pipeline), not work.
_CONTAINERS = re.compile(
  r"ExecutorState|CpuExecutable|ThunkExecutor|BlockUntilReady|Iterator|Prefetch|Eager|TFE_|"
  r"KernelAndDevice|train_function|MemoryCache|FunctionRun|ExecutorDoneCallback|SlinkyThreadPool|"
  r"ThreadpoolListener|MemoryAllocation|MemoryDeallocation|ValidateInputTypeAndPlacement|^end: "
)


def model_part(op_name: str):
  """(part, "forward" | "backward") of a TensorFlow op name from the training step's graph:
  backward under autodiff's `gradient_tape/` scope or a hand-written gradient's `*_grad/` scope
  (e.g. `bivrec_tf.model.winner_scores`)."""
  backward = op_name.startswith("gradient_tape/") or bool(
    re.search(r"(^|/)\w+_grad(_\d+)?/", op_name)
  )
  name = op_name.replace("gradient_tape/", "")
  if name.startswith("Adam") or "/Adam" in name:
    part = "optimizer"
  elif "mm_tower" in name:
    part = "MM tower, fusion MLP" if "/fuse_" in name else "MM tower"
  elif "interest_embedding" in name or "interest_decomposition" in name:
    view = "ID" if "id_view" in name else "MM"
    part = f"{view} modules 1-2"
  elif "id_tower" in name:
    part = "ID table"
  else:
    part = "scoring, losses, metrics"
  return part, "backward" if backward else "forward"


def hlo_op_names(text: str) -> dict:
  """Instruction name -> TensorFlow op name, from an optimized HLO module's text. A fusion or
  wrapped instruction without metadata of its own takes the first op name inside the computation
  it calls."""
  computations, current = {}, None
  for line in text.splitlines():
    header = re.match(r"^(?:ENTRY )?%(\S+) .*\{\s*$", line)
    if header:
      current = header.group(1)
      computations[current] = []
    elif current is not None:
      computations[current].append(line)
  names, operands = {}, {}
  for lines in computations.values():
    for line in lines:
      instruction = re.match(r"^\s+(?:ROOT )?%(\S+) = [^(]*\(([^)]*)\)", line)
      if not instruction:
        continue
      op = re.search(r'op_name="([^"]*)"', line)
      if not op:
        called = re.search(r"calls=%([^,\s]+)", line)
        inner = computations.get(called.group(1), []) if called else []
        op = next((m for m in (re.search(r'op_name="([^"]*)"', x) for x in inner) if m), None)
      if op:
        names.setdefault(instruction.group(1), op.group(1))
      else:
        operands[instruction.group(1)] = re.findall(r"%([^,\s)]+)", instruction.group(2))
  # Still unnamed (e.g. a reduction tree XLA split out of an op): the op its first named input
  # came from.
  for name, inputs in operands.items():
    source = next((names[i] for i in inputs if i in names), None)
    if source and name not in names:
      names[name] = source
  return names


def profile(spec: dict) -> dict:
  """One configuration, in this process (XLA_FLAGS must already hold the trace and dump flags)."""
  import bivrec_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from benchmarks.train_throughput import compiled_steps, make_model, random_batches  # pylint: disable=import-outside-toplevel
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel

  args = (spec["L"], 4, spec["d"], spec["items"], spec["batch"], spec["negatives"], True)
  model = make_model(*args, preset=spec["preset"], flags=spec["flags"])
  data = random_batches(spec["L"], spec["items"], spec["batch"], spec["negatives"])
  run = compiled_steps(model, data)
  step_ms = 1000 * run(spec["steps"]) / spec["steps"]
  names = {}
  for path in glob.glob(os.path.join(spec["dump"], "*cpu_after_optimizations.txt")):
    names.update(hlo_op_names(Path(path).read_text()))
  logdir = tempfile.mkdtemp(prefix="step_profile_trace_")
  tf.profiler.experimental.start(logdir)
  run(spec["steps"])
  tf.profiler.experimental.stop()
  space = xplane_pb2.XSpace()
  space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
  parts, unmapped, ops = collections.Counter(), collections.Counter(), collections.Counter()
  for plane in space.planes:
    metadata = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      for event in line.events:
        name = metadata.get(event.metadata_id, "?")
        if _CONTAINERS.search(name):
          continue
        ms = event.duration_ps / 1e9 / spec["steps"]
        op = names.get(name)
        if op is None:
          unmapped[re.sub(r"\.\d+$", "", name)] += ms
        else:
          parts[" / ".join(model_part(op))] += ms
          ops[op] += ms
  return {
    **{k: v for k, v in spec.items() if k != "dump"},
    "step_ms": step_ms,
    "parts_ms": dict(parts),
    "unmapped_ms": dict(unmapped.most_common(10)),
    "top_ops_ms": dict(ops.most_common(15)),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--preset", default="bivrec")
  parser.add_argument("--model-flags", default="", metavar="FLAGS", help="train CLI flags")
  parser.add_argument("--length", type=int, default=20, help="history length L")
  parser.add_argument("--items", type=int, default=10_000)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--negatives", type=int, default=256)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", default="benchmarks/results/step_profile.json")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: profile one spec (JSON)
  args = parser.parse_args(argv)
  if args.one:
    print("RESULT " + json.dumps(profile(json.loads(args.one))))
    return
  dump = tempfile.mkdtemp(prefix="step_profile_hlo_")
  spec = dict(
    preset=args.preset,
    flags=args.model_flags,
    L=args.length,
    items=args.items,
    batch=args.batch,
    negatives=args.negatives,
    d=args.dim,
    steps=args.steps,
    dump=dump,
  )
  env = dict(
    os.environ,
    TF_USE_LEGACY_KERAS="1",
    XLA_FLAGS=f"--xla_cpu_enable_xprof_traceme=true --xla_dump_to={dump} "
    "--xla_dump_hlo_as_text --xla_dump_hlo_pass_re=NONE",
  )
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.step_profile", "--one", json.dumps(spec)],
    capture_output=True,
    text=True,
    env=env,
    check=False,
  )
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode or not lines:
    sys.exit(f"the profiled run failed:\n{proc.stderr[-3000:]}")
  row = json.loads(lines[-1][7:])
  total = sum(row["parts_ms"].values()) + sum(row["unmapped_ms"].values())
  print(
    f"\n{args.preset}"
    + (f" {args.model_flags}" if args.model_flags else "")
    + f", L = {args.length}, {args.items} items, batch {args.batch}: "
    f"step {row['step_ms']:.1f} ms wall, {total:.1f} ms of operation thread time\n"
  )
  print("| part | forward / backward | thread ms per step | share |\n|---|---|---|---|")
  for key, ms in sorted(row["parts_ms"].items(), key=lambda kv: -kv[1]):
    part, direction = key.split(" / ")
    print(f"| {part} | {direction} | {ms:.2f} | {100 * ms / total:.1f} % |")
  unmapped = sum(row["unmapped_ms"].values())
  print(
    f"| not mapped to an op (mostly reduction trees inside fusions) | - | {unmapped:.2f} | "
    f"{100 * unmapped / total:.1f} % |"
  )
  result = {"command": "python -m benchmarks.step_profile " + " ".join(argv or sys.argv[1:]), **row}
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
