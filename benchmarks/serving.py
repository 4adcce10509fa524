"""Serving latency and throughput of the SavedModel export and the local REST server.

    python -m benchmarks.serving                        # 3k, 10k, 100k and 1M-item catalogues
    python -m benchmarks.serving --catalogues 3000 --rest-seconds 5   # quick

For each catalogue a randomly initialized model with the default config (d=64, K=4, L=20, text 48 +
image 32 features) is exported; the weights do not change the amount of work, so latency is that of
a trained model. Then, each in a fresh process (TensorFlow's thread pools are fixed at start-up):

- in-process `serving_default` latency (p50/p99) at batch 1, 32, 256, loading the SavedModel as TF
  Serving would and calling the signature with random histories of 20 known ids, under two
  thread settings: TF's defaults (intra-op = inter-op = all cores) and the serving setting
  recommended in the README (intra-op 1, inter-op = cores: requests run side by side, each on
  one core);
- for the largest catalogue, the memory-bandwidth floor of one request: bytes of item tables
  read (both views) / the single-core read bandwidth measured with a numpy sum over 1 GiB;
- REST on the default catalogue: the local server in a subprocess, `--rest-clients` loopback
  clients on keep-alive connections sending batch-1 `:predict` requests for `--rest-seconds`:
  requests/second and latency p50/p99. Measured for the server's HTTP stack (aiohttp,
  `serving.rest`) and, in the same run, for the standard-library `http.server` transport it
  replaced (`serving.stdlib_server`, kept as the reference), alternating the two for
  `--rest-rounds` rounds; the table gives the median of each figure over the rounds.

    python -m benchmarks.serving --rest-only --rest-seconds 10    # the REST comparison alone

Prints a markdown table and writes JSON to benchmarks/results/serving.json.
"""

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HISTORY_LEN = 20
BATCHES = (1, 32, 256)
THREADS = {
  "tf-default": (0, 0),
  "serving": (1, 0),  # (intra, inter); 0 = all cores
  "serving, XLA export": (1, 0),
}


def machine() -> dict:
  cpu = "unknown"
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "memory_gib": round(mem, 1),
    "python": platform.python_version(),
    "tensorflow": tf.__version__,
    "load_average": os.getloadavg(),
  }


def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
  """Single-core streaming read bandwidth (GB/s): best of numpy sums over a large float32 array."""
  a = np.ones(int(gib * 2**30 / 4), np.float32)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    a.sum()
    best = min(best, time.perf_counter() - start)
  return a.nbytes / best / 1e9


FEATURE_DIMS = (("text", 48), ("image", 32))


def export_random(
  num_items: int,
  base: Path,
  jit: bool = False,
  table_dtype: str = "float32",
  feature_dims=FEATURE_DIMS,
) -> Path:
  """A randomly initialized default model over `num_items` items (ids "i0", "i1", ...), exported
  to `base`; `feature_dims` = (modality, dim) pairs of its random feature tables."""
  import bivrec_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from bivrec_tf.config import Config  # pylint: disable=import-outside-toplevel
  from bivrec_tf.export import export_model  # pylint: disable=import-outside-toplevel
  from bivrec_tf.model import BivRecModel  # pylint: disable=import-outside-toplevel

  v = num_items + 2
  rng = np.random.default_rng(0)
  feats = {m: rng.standard_normal((v, dim), np.float32) for m, dim in feature_dims}
  present = {m: np.ones(v, bool) for m in feats}
  model = BivRecModel(
    Config(),
    v,
    HISTORY_LEN,
    feats,
    present,
    item_counts=rng.integers(0, 100, v),
    seen_in_train=rng.random(v) > 0.08,
  )
  model.queries(tf.zeros([1, HISTORY_LEN], tf.int64))
  vocab = np.array(["[PAD]", "[OOV]"] + [f"i{i}" for i in range(num_items)])
  return export_model(
    model, vocab, 0.7, str(base), f"items{num_items}", 10, jit_compile=jit, table_dtype=table_dtype
  )


def _histories(rng, num_items, batch):
  return np.array(
    [[f"i{j}" for j in rng.choice(num_items, HISTORY_LEN, replace=False)] for _ in range(batch)]
  )


def measure_in_process(path: str, num_items: int, seconds: float, batches=BATCHES) -> dict:
  """(Runs in a fresh process.) p50/p99 ms of serving_default per batch size."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  fn = tf.saved_model.load(path).signatures["serving_default"]
  rng = np.random.default_rng(1)
  out = {}
  for batch in batches:
    inputs = [tf.constant(_histories(rng, num_items, batch)) for _ in range(8)]
    for x in inputs[:3]:
      fn(history=x)["scores"].numpy()
    times, start, i = [], time.perf_counter(), 0
    cpu_start = time.process_time()
    while (time.perf_counter() - start < seconds or len(times) < 5) and len(times) < 2000:
      t = time.perf_counter()
      fn(history=inputs[i % len(inputs)])["scores"].numpy()
      times.append(time.perf_counter() - t)
      i += 1
    ms = np.array(times) * 1000
    out[str(batch)] = {
      "p50_ms": float(np.percentile(ms, 50)),
      "p99_ms": float(np.percentile(ms, 99)),
      "n": len(ms),
      # CPU time of the process (all threads) per call: what load on a shared machine inflates
      # least.
      "cpu_ms_mean": (time.process_time() - cpu_start) * 1000 / len(ms),
    }
  return out


def _in_subprocess(
  path: Path, num_items: int, intra: int, inter: int, seconds: float, batches=BATCHES
) -> dict:
  code = (
    "import os, json, sys\n"
    f"os.environ['TF_NUM_INTRAOP_THREADS'] = '{intra}'\n"
    f"os.environ['TF_NUM_INTEROP_THREADS'] = '{inter}'\n"
    "import tensorflow as tf\n"
    f"tf.config.threading.set_intra_op_parallelism_threads({intra})\n"
    f"tf.config.threading.set_inter_op_parallelism_threads({inter})\n"
    "from benchmarks.serving import measure_in_process\n"
    f"print('RESULT', json.dumps(measure_in_process({str(path)!r}, {num_items}, "
    f"{seconds}, {tuple(batches)!r})))\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=Path(__file__).resolve().parents[1],
    timeout=3600,
  )
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT ") :])
  raise RuntimeError(f"measurement failed:\n{proc.stderr[-3000:]}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _process_cpu_seconds(pid: int) -> float:
  """User + system CPU time of a process (all its threads), from /proc."""
  fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


REST_SERVERS = {  # label -> (module, extra flags)
  "aiohttp (serving.rest)": ("serving.local_server", ["--file_system_poll_wait_seconds", "0"]),
  "http.server (reference)": ("serving.stdlib_server", []),
}


def measure_rest(
  base: Path,
  name: str,
  num_items: int,
  clients: int,
  seconds: float,
  intra: int = 1,
  server_label: str = "aiohttp (serving.rest)",
) -> dict:
  """Server subprocess + `clients` keep-alive loopback clients, batch-1 :predict."""
  port = _free_port()
  module, extra = REST_SERVERS[server_label]
  server = subprocess.Popen(
    [
      sys.executable,
      "-m",
      module,
      "--model_name",
      name,
      "--model_base_path",
      str(base / name),
      "--rest_api_port",
      str(port),
      "--tensorflow_intra_op_parallelism",
      str(intra),
      *extra,
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    cwd=Path(__file__).resolve().parents[1],
  )
  try:
    deadline = time.time() + 180
    while True:
      try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", f"/v1/models/{name}")
        if conn.getresponse().status == 200:
          break
      except OSError:
        pass
      if time.time() > deadline or server.poll() is not None:
        raise RuntimeError("local server did not start")
      time.sleep(0.5)
    rng = np.random.default_rng(2)
    bodies = [
      json.dumps({"instances": _histories(rng, num_items, 1).tolist()}).encode() for _ in range(256)
    ]
    latencies, errors = [], []
    stop_at = [0.0]

    def client(idx):
      conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
      i = idx
      while time.perf_counter() < stop_at[0]:
        t = time.perf_counter()
        conn.request(
          "POST",
          f"/v1/models/{name}:predict",
          body=bodies[i % len(bodies)],
          headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - t)
        if resp.status != 200:
          errors.append(resp.status)
        i += clients
      conn.close()

    # Warm-up, then the measured window.
    stop_at[0] = time.perf_counter() + 2
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    latencies.clear()
    start = time.perf_counter()
    cpu_start = _process_cpu_seconds(server.pid)
    stop_at[0] = start + seconds
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    elapsed = time.perf_counter() - start
    cpu = _process_cpu_seconds(server.pid) - cpu_start
    ms = np.array(latencies) * 1000
    return {
      "server_cpu_ms_per_request": cpu * 1000 / max(len(ms), 1),
      "server": server_label,
      "clients": clients,
      "requests": len(ms),
      "errors": len(errors),
      "requests_per_s": len(ms) / elapsed,
      "p50_ms": float(np.percentile(ms, 50)),
      "p99_ms": float(np.percentile(ms, 99)),
      "intra_op_threads": intra,
    }
  finally:
    server.terminate()
    server.wait(30)


def table(results: dict) -> str:
  lines = [
    "| catalogue | threads (intra/inter) | batch | p50 ms | p99 ms |",
    "|---|---|---|---|---|",
  ]
  for cat in results["in_process"]:
    for label, per_batch in cat["latency"].items():
      intra, inter = THREADS[label]
      for batch, r in per_batch.items():
        lines.append(
          f"| {cat['num_items']:,} items | {label} ({intra or 'all'}/"
          f"{inter or 'all'}) | {batch} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        )
  out = "\n".join(lines)
  floor = results.get("bandwidth_floor")
  if floor:
    out += (
      f"\n\nMemory-bandwidth floor, {floor['num_items']:,} items: {floor['table_bytes'] / 1e6:.0f} MB"
      f" of item tables per request / {floor['read_gbs']:.1f} GB/s measured read bandwidth"
      f" = {floor['floor_ms']:.1f} ms; measured batch-1 p50 {floor['p50_ms']:.1f} ms "
      f"({floor['p50_ms'] / floor['floor_ms']:.2f} x the floor)."
    )
  if results.get("rest"):
    out += (
      "\n\n| REST (local server, batch 1) | HTTP stack | clients | requests/s | p50 ms | "
      "p99 ms | server CPU ms / request |\n|---|---|---|---|---|---|---|"
    )
    for rest in results["rest"]:
      cpu = rest.get("server_cpu_ms_per_request")
      out += (
        f"\n| {rest['num_items']:,} items | {rest.get('server', '')} | {rest['clients']} | "
        f"{rest['requests_per_s']:.0f} | {rest['p50_ms']:.2f} | {rest['p99_ms']:.2f} | "
        f"{'' if cpu is None else f'{cpu:.2f}'} |"
      )
  return out


def rest_comparison(
  work: Path, name: str, num_items: int, clients_list, seconds: float, rounds: int
) -> list:
  """Both HTTP stacks, alternating (A B, B A, ...) for `rounds` rounds; per client count the
  median of each figure over the rounds, with every round kept under `rounds`."""
  out = []
  labels = list(REST_SERVERS)
  for clients in clients_list:
    runs = {label: [] for label in labels}
    for r in range(rounds):
      for label in labels if r % 2 == 0 else labels[::-1]:
        runs[label].append(
          measure_rest(work, name, num_items, clients, seconds, server_label=label)
        )
        print(f"REST: {json.dumps(runs[label][-1])}", flush=True)
    for label in labels:
      out.append(summarize_rounds(num_items, label, clients, runs[label]))
  return out


ROUND_METRICS = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")


def summarize_rounds(num_items: int, label: str, clients: int, rounds: list) -> dict:
  """Median of every metric over the rounds (each round kept under `rounds`)."""
  return {
    "num_items": num_items,
    "server": label,
    "clients": clients,
    **{k: float(np.median([r[k] for r in rounds])) for k in ROUND_METRICS},
    "errors": int(sum(r["errors"] for r in rounds)),
    "requests": int(sum(r["requests"] for r in rounds)),
    "rounds": [{k: r[k] for k in ROUND_METRICS + ("errors", "requests")} for r in rounds],
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.serving",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--catalogues", default="3000,10000,100000,1000000")
  parser.add_argument("--seconds", type=float, default=4.0, help="per batch size")
  parser.add_argument("--rest-seconds", type=float, default=15.0)
  parser.add_argument("--rest-clients", default="2,4", help="concurrent clients, one run each")
  parser.add_argument(
    "--rest-rounds",
    type=int,
    default=2,
    help="alternating rounds of the two HTTP stacks (median reported)",
  )
  parser.add_argument(
    "--rest-only",
    action="store_true",
    help="only the REST comparison (first catalogue; no in-process latency)",
  )
  parser.add_argument("--threads", default="tf-default,serving")
  parser.add_argument(
    "--jit-catalogues",
    default="10000",
    help="also measure an export with --jit-compile (serving threads) here",
  )
  parser.add_argument("--out", default="benchmarks/results/serving.json")
  args = parser.parse_args(argv)
  catalogues = [int(c) for c in args.catalogues.split(",")]
  labels = args.threads.split(",")
  results = {
    "command": "python -m benchmarks.serving " + " ".join(argv or sys.argv[1:]),
    "machine": machine(),
    "history_len": HISTORY_LEN,
    "in_process": [],
  }
  work = Path(tempfile.mkdtemp(prefix="bivrec-serving-bench-"))
  try:
    for n in catalogues:
      start = time.time()
      path = export_random(n, work)
      size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
      entry = {
        "num_items": n,
        "export_seconds": time.time() - start,
        "export_mb": size / 1e6,
        "latency": {},
      }
      if args.rest_only:
        results["rest"] = rest_comparison(
          work,
          path.parent.name,
          n,
          [int(c) for c in args.rest_clients.split(",")],
          args.rest_seconds,
          args.rest_rounds,
        )
        break
      for label in labels:
        intra, inter = THREADS[label]
        entry["latency"][label] = _in_subprocess(path, n, intra, inter, args.seconds)
        print(f"{n} items, {label}: {json.dumps(entry['latency'][label])}", flush=True)
      if str(n) in args.jit_catalogues.split(","):
        jit_path = export_random(n, work / "jit", jit=True)
        entry["latency"]["serving, XLA export"] = _in_subprocess(jit_path, n, 1, 0, args.seconds)
        print(
          f"{n} items, XLA export: {json.dumps(entry['latency']['serving, XLA export'])}",
          flush=True,
        )
        shutil.rmtree(jit_path.parent, ignore_errors=True)
      results["in_process"].append(entry)
      if n == catalogues[0] and args.rest_seconds > 0:
        results["rest"] = rest_comparison(
          work,
          path.parent.name,
          n,
          [int(c) for c in args.rest_clients.split(",")],
          args.rest_seconds,
          args.rest_rounds,
        )
      if n == max(catalogues):
        gbs = read_bandwidth_gbs()
        table_bytes = 2 * n * 64 * 4
        p50 = entry["latency"][labels[-1]]["1"]["p50_ms"]
        results["bandwidth_floor"] = {
          "num_items": n,
          "table_bytes": table_bytes,
          "read_gbs": gbs,
          "floor_ms": table_bytes / gbs / 1e6,
          "p50_ms": p50,
          "threads": labels[-1],
        }
      shutil.rmtree(path.parent, ignore_errors=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  results["load_average_after"] = os.getloadavg()
  out.write_text(json.dumps(results, indent=2))
  print()
  print(table(results))
  print(f"\nwritten: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
