"""Speed and memory of data preparation: in one process and on Apache Beam (DirectRunner).

    nice -n 10 python -m benchmarks.prepare                  # generated logs of 10^5, 10^6, 10^7 rows
    nice -n 10 python -m benchmarks.prepare --data synthetic,scientific,rows:1e6 --paths beam1

Data (`--data`, comma-separated): `rows:N`, a generated CSV log `user_id,item_id,timestamp` of N
rows (Zipf-distributed user activity and item popularity, timestamps with ties, ~1 % repeated
rows: `random_log`); `synthetic`, the default dataset's user sequences written as a log
(`synthetic_log`); `scientific`, Amazon Scientific's UniSRec files in ../shared/data. Logs are
prepared with leave-one-out and the default filters (exact dedup, users >= 3 interactions).

Paths (`--paths`): `in_process` (one file per split), `in_process_shards` (--shards auto),
`beam1` / `beam2` (--runner DirectRunner, --num-workers 1 / 2, the second in multi-process
mode). Each measurement runs `python -m input_pipelines.prepare` in its own process
(`--repeat` times, the fastest counts: the machine may be shared). Rows/s = input rows / wall
time of the whole command (reading, filtering, writing; Python start and imports included); CPU
s = user + system time of the command and every process it waited for (Beam's workers); peak
memory = the largest sum of the resident memory of the command's process tree (sampled every
0.2 s) and of its largest process.

After the runs of one data set, each Beam output is compared with the in-process --shards
output file by file (`same_files_as_in_process_shards`: every shard, the vocabulary, the
features, dataset.json but for `prepare_args.out`).

Prints a markdown table and writes benchmarks/results/prepare.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
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


# --- running and measuring ----------------------------------------------------------------------


def machine() -> dict:
  import psutil

  cpu = next(
    (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
    platform.processor(),
  )
  versions = {}
  for name in ("tensorflow", "apache_beam", "numpy", "protobuf"):
    try:
      from importlib.metadata import version

      versions[name] = version(name.replace("_", "-"))
    except Exception:
      versions[name] = None
  return {
    "cpu": cpu,
    "cpus": os.cpu_count(),
    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    "python": platform.python_version(),
    "versions": versions,
  }


def measure(cmd: list, timeout: float) -> dict:
  """Runs `cmd`; wall and CPU seconds, exit code, peak RSS of its process tree (sum and
  largest process, sampled every 0.2 s) and the last line of its stderr on failure."""
  import psutil

  env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    root = psutil.Process(proc.pid)
    peak_sum = peak_one = 0
    timed_out = False
    while proc.poll() is None:
      try:
        tree = [root, *root.children(recursive=True)]
        rss = [p.memory_info().rss for p in tree if p.is_running()]
        peak_sum, peak_one = max(peak_sum, sum(rss)), max(peak_one, max(rss))
      except psutil.Error:
        pass
      if time.perf_counter() - start > timeout:
        timed_out = True
        for p in reversed([root, *root.children(recursive=True)]):
          try:
            p.kill()
          except psutil.Error:
            pass
        proc.wait()
        break
      time.sleep(0.2)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    err.seek(0)
    tail = [line for line in err.read().splitlines() if line.strip()][-1:]
  return {
    "seconds": round(seconds, 2),
    # CPU time of the command and every process it waited for (Beam's workers included)
    "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
    "exit_code": proc.returncode,
    "timed_out": timed_out,
    "peak_rss_gb": round(peak_sum / 2**30, 3),
    "peak_rss_largest_process_gb": round(peak_one / 2**30, 3),
    "error": tail[0] if (proc.returncode or timed_out) and tail else None,
  }


def same_files(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Every file of two prepared directories equal (dataset.json but for prepare_args.out)."""

  def contents(d):
    out = {}
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
      data = f.read_bytes()
      if f.name == "dataset.json":
        data = json.loads(data)
        data["prepare_args"].pop("out", None)
      out[str(f.relative_to(d))] = data
    return out

  return contents(a) == contents(b)


def dataset(spec: str, work: pathlib.Path) -> tuple[list, int]:
  """(prepare flags of the input, its rows) for `rows:N`, `synthetic` or `scientific`."""
  if spec.startswith("rows:"):
    rows = int(float(spec.split(":", 1)[1]))
    log = work / f"log-{rows}.csv"
    if not log.is_file():
      print(f"generating {log} ...", file=sys.stderr)
      random_log(rows, log)
    return ["--format", "csv", "--interactions", str(log)], rows
  if spec == "synthetic":
    from input_pipelines.synthetic import ensure_synthetic

    log = work / "synthetic.csv"
    if not log.is_file():
      synthetic_log(ensure_synthetic(work / "synthetic"), log)
    return ["--format", "csv", "--interactions", str(log)], _lines(log) - 1
  if spec == "scientific":
    d = ROOT.parent / "shared" / "data" / "amazon-scientific"
    rows = sum(_lines(f) - 1 for f in d.glob("*.inter"))
    return ["--format", "unisrec", "--input", str(d)], rows
  raise ValueError(f"unknown --data {spec!r}: rows:N, synthetic or scientific")


def _lines(path) -> int:
  with open(path, "rb") as f:
    return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


def table(results: list) -> str:
  head = (
    "| data | rows | path | wall s | CPU s | rows/s | peak RSS GB (tree / largest) | same files |"
  )
  lines = [head, "|---|---:|---|---:|---:|---:|---|---|"]
  for r in results:
    if r.get("exit_code"):
      speed = "failed" if not r.get("timed_out") else f"> {r['seconds']:.0f} s (stopped)"
      lines.append(f"| {r['data']} | {r['rows']:,} | {r['path']} | {speed} | | | | |")
      continue
    same = {True: "yes", False: "**no**", None: ""}[r.get("same_files_as_in_process_shards")]
    lines.append(
      f"| {r['data']} | {r['rows']:,} | {r['path']} | {r['seconds']:.1f} | "
      f"{r['cpu_seconds']:.0f} | {r['rows'] / r['seconds']:,.0f} | {r['peak_rss_gb']:.2f} / "
      f"{r['peak_rss_largest_process_gb']:.2f} | {same} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--data", default="rows:1e5,rows:1e6,rows:1e7", help="comma-separated")
  p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated of {list(PATHS)}")
  p.add_argument(
    "--work", default=str(ROOT / "data_cache" / "bench_prepare"), help="logs and outputs"
  )
  p.add_argument("--timeout", type=float, default=900, help="seconds per run")
  p.add_argument("--repeat", type=int, default=1, help="runs per measurement (the fastest)")
  p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
  p.add_argument("--keep", action="store_true", help="keep the prepared outputs")
  args = p.parse_args(argv)
  work = pathlib.Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  info = {
    "command": "python -m benchmarks.prepare "
    + " ".join(argv if argv is not None else sys.argv[1:]),
    "machine": machine(),
    "load_average_at_start": os.getloadavg(),
    "results": [],
  }
  for spec in args.data.split(","):
    flags, rows = dataset(spec, work)
    outs = {}
    for name in args.paths.split(","):
      out = work / f"out-{spec.replace(':', '')}-{name}"
      cmd = [sys.executable, "-m", "input_pipelines.prepare", "--quiet", *flags, *PATHS[name]]
      cmd += ["--out", str(out)]
      if name.startswith("beam"):
        cmd += ["--shards", "auto"]
      print(f"{spec} {name} ...", file=sys.stderr, flush=True)
      runs = []
      for _ in range(args.repeat):  # the machine is shared: the fastest of a few runs
        shutil.rmtree(out, ignore_errors=True)
        runs.append({**measure(cmd, args.timeout), "load_average_after": os.getloadavg()})
        if runs[-1]["exit_code"]:
          break
      best = min(runs, key=lambda m: (bool(m["exit_code"]), m["seconds"]))
      r = {"data": spec, "rows": rows, "path": name, **best}
      r["all_seconds"] = [m["seconds"] for m in runs]
      if not r["exit_code"]:
        outs[name] = out
      info["results"].append(r)
      print(json.dumps(r), file=sys.stderr, flush=True)
    ref = outs.get("in_process_shards")
    for r in info["results"]:
      if r["data"] == spec and r["path"].startswith("beam") and ref is not None:
        if r["path"] in outs:
          r["same_files_as_in_process_shards"] = same_files(ref, outs[r["path"]])
    if not args.keep:
      for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
  info["load_average_at_end"] = os.getloadavg()
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
  print(table(info["results"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
