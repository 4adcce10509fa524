"""Living catalogues measured: `python -m bivrec_tf.catalogue` on served models.

    nice -n 10 python -m benchmarks.catalog                   # all three parts
    python -m benchmarks.catalog --parts speed,swap --items 20000 --new 2000   # quick

- quality: the default data with 10 % of its items held out of training, exactly as
  `python -m benchmarks.quality --mode cold` does it (`benchmarks.quality.cold`: the same copy,
  the same BivRec training, the same `cold_eval` reference). The trained model is exported
  *without* the held-out items (version 1: they are not in its vocabulary), then
  `catalogue add` brings them in from their raw features: version 2 scores them by the MM view
  alone (`--id-embedding none`, the cold rule), version 3 with ID vectors imputed from their MM
  vectors (`--id-embedding imputed`). Every test user is sent through REST (local server,
  `:predict` on each version); held-out and warm Recall@20 / NDCG@20 are computed from the
  served top-50 and set against `cold_eval`'s (what `--mode cold` reports) for the same model.
- speed: a random-weight export of `--items` items (the default config, `benchmarks.serving`'s
  export), then `catalogue add` of `--new` items as a subprocess: wall time of the command
  (Python and TensorFlow start-up included) and the time it reports for its own work.
- swap: the local server serving that export under `--clients` loopback clients sending
  `:predict` without a version while `catalogue add` writes the next version: failed requests,
  latency before / during / after, seconds until the new version answers.

Prints a markdown table and writes JSON (default benchmarks/results/catalog.json); results,
command and machine are in docs/serving.md ("Living catalogues").
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np

from benchmarks.serving import _free_port, export_random, machine

ROOT = Path(__file__).resolve().parents[1]
KS = (10, 20, 50)
SEED = 42  # benchmarks.quality's first seed


# --- helpers --------------------------------------------------------------------------------------


def catalogue_cli(*argv) -> dict:
  """Runs `python -m bivrec_tf.catalogue ...` in a fresh process: {"wall_s", "line"}."""
  cmd = [sys.executable, "-m", "bivrec_tf.catalogue", *map(str, argv)]
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if out.returncode != 0:
    raise RuntimeError(f"{shlex.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
  line = out.stdout.strip().splitlines()[-1]
  return {"wall_s": wall, "line": line, "reported_s": float(line.rsplit("(", 1)[1].split()[0])}


def _get(port: int, path: str, body: bytes | None = None, timeout: float = 60):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  conn.request("POST" if body else "GET", path, body=body)
  resp = conn.getresponse()
  data = resp.read()
  conn.close()
  return resp.status, data


@contextlib.contextmanager
def local_server(model_dir: Path, all_versions: bool = False):
  """`python -m serving.local_server` on `model_dir` (model "bivrec"); yields its port once a
  version is AVAILABLE. `all_versions`: serve every version (a models.config, policy all)."""
  port = _free_port()
  flags = ["--model_name", "bivrec", "--model_base_path", str(model_dir)]
  if all_versions:
    config = model_dir.parent / f"{model_dir.name}.models.config"
    config.write_text(
      'model_config_list { config { name: "bivrec" base_path: "%s" '
      "model_version_policy { all {} } } }\n" % model_dir
    )
    flags = ["--model_config_file", str(config)]
  cmd = [sys.executable, "-m", "serving.local_server", *flags, "--rest_api_port", str(port)]
  cmd += ["--file_system_poll_wait_seconds", "0.5"]
  server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while served_versions(port) == [] and time.time() < deadline and server.poll() is None:
      time.sleep(0.5)
    if server.poll() is not None or not served_versions(port):
      raise RuntimeError(f"local server did not start: {shlex.join(cmd)}")
    yield port
  finally:
    server.terminate()
    server.wait(60)


def served_versions(port: int) -> list:
  """The AVAILABLE versions of model "bivrec" ([] while the server is not up)."""
  try:
    status, data = _get(port, "/v1/models/bivrec", timeout=5)
  except OSError:
    return []
  if status != 200:
    return []
  states = json.loads(data)["model_version_status"]
  return sorted(int(s["version"]) for s in states if s["state"] == "AVAILABLE")


def wait_for_version(port: int, version: int, timeout: float = 600) -> float:
  """Seconds until `version` is AVAILABLE."""
  start = time.perf_counter()
  while version not in served_versions(port):
    if time.perf_counter() - start > timeout:
      raise RuntimeError(f"version {version} never became AVAILABLE")
    time.sleep(0.1)
  return time.perf_counter() - start


# --- quality ----------------------------------------------------------------------------------------


def trained(work: Path, name: str, data: Path) -> dict:
  """BivRec trained on `data` as `benchmarks.quality` trains it (`train_one`, seed 42), the
  record kept in `<work>/<name>_record.json` and reused while its run directory exists."""
  from benchmarks.quality.runs import train_one

  record_file = work / f"{name}_record.json"
  if record_file.is_file():
    record = json.loads(record_file.read_text())
    if (Path(record["run_dir"]) / "checkpoints").is_dir():
      return record
  record = train_one("bivrec", str(data), SEED, work, None)
  record_file.write_text(json.dumps(record, indent=2, default=str))
  return record


def cold_copy(work: Path, share: float) -> tuple:
  """(cold copy dir, source dir): the default data with `share` of its items held out of
  training, made as `benchmarks.quality --mode cold` makes it."""
  from benchmarks.quality.cold import make_cold_copy
  from bivrec_tf import config as config_lib
  from bivrec_tf import train as train_lib

  src = train_lib.load_data(config_lib.Config()).path
  return make_cold_copy(src, work / "data" / f"synthetic-cold{share:g}", share, seed=0), src


def unseen_copy(cold_dir: Path, out: Path) -> Path:
  """The cold copy without the held-out items in its vocabulary at all (so training never
  samples them as negatives either); valid/test targets that are held-out items are dropped.
  Its raw features are the cold copy's rows."""
  from benchmarks.quality.cold import read_split
  from input_pipelines.dataset import PreparedDataset
  from input_pipelines.prepared import write_prepared

  if (out / "dataset.json").is_file():
    return out
  ds = PreparedDataset.load(cold_dir)
  held = np.zeros(ds.vocab_size, bool)
  held[ds.meta["cold_holdout"]["items"]] = True
  keep = np.flatnonzero(~held)[2:]
  new_index = np.zeros(ds.vocab_size, np.int64)
  new_index[keep] = np.arange(2, len(keep) + 2)

  def remap(examples):
    out_ = []
    for history, targets in examples:
      targets = [t for t in targets if not held[t]]
      if history and targets:
        out_.append((new_index[history].tolist(), new_index[targets].tolist()))
    return out_

  splits = {s: remap(read_split(ds, s)) for s in ds.splits}
  features = {m: (ds.features[m][keep], ds.present[m][keep]) for m in ds.features}
  meta = {k: ds.meta[k] for k in ("source", "protocol", "recommended_max_len") if k in ds.meta}
  meta["unseen_holdout"] = {"source": str(cold_dir), "num_items": int(held.sum())}
  return write_prepared(out, list(ds.vocab[keep]), features, splits, meta)


def export_without(record: dict, held: np.ndarray, base: Path) -> Path:
  """Version 1: the trained model with the held-out items removed from its vocabulary (their
  rows were never trained); every other item's vectors as the reference ranks them."""
  from benchmarks.quality.runs import load_trained
  from bivrec_tf.catalogue import Catalogue
  from bivrec_tf.catalogue.ops import item_tables, with_item_tables
  from bivrec_tf.evaluate import resolve_history_exclusion
  from bivrec_tf.export import export_model

  model, ds, cfg = load_trained(record)
  keep = np.setdiff1d(np.arange(ds.vocab_size), held)  # rows 0 and 1 stay
  ids, feats, present = item_tables(model)
  small = with_item_tables(
    model,
    ids[keep],
    {m: f[keep] for m, f in feats.items()},
    {m: p[keep] for m, p in present.items()},
  )
  full, rows = Catalogue.from_model(model, ds.vocab), keep[2:] - 2
  catalogue = Catalogue(
    vocab=ds.vocab[keep],
    tables={v: t[rows] for v, t in full.tables.items()},
    cold=full.cold[rows],
    servable=full.servable[rows],
    popularity=full.popularity[rows],
    imputed=full.imputed[rows],
  )
  meta = {
    "config": cfg.to_dict(),
    "dataset": ds.meta,
    "history_exclusion": resolve_history_exclusion(cfg.eval, ds),
    "run_dir": record["run_dir"],
  }
  return export_model(
    small,
    catalogue.vocab,
    record["fusion_weight"],
    str(base),
    "bivrec",
    max(KS),
    metadata=meta,
    exclude_history=bool(record["exclude_history"]),
    catalogue=catalogue,
  )


def write_raw_features(src: Path, held: np.ndarray, out: Path) -> list:
  """The held-out items' raw features (what the cold copy was prepared from), one
  `NAME=FEATS.npy:IDS.txt` spec per modality."""
  from input_pipelines.dataset import PreparedDataset

  ds = PreparedDataset.load(src)
  out.mkdir(parents=True, exist_ok=True)
  specs = []
  for m in sorted(ds.features):
    rows = held[ds.present[m][held]]
    np.save(out / f"{m}.npy", ds.features[m][rows])
    (out / f"{m}.ids.txt").write_text("".join(f"{x}\n" for x in ds.vocab[rows]))
    specs.append(f"{m}={out / f'{m}.npy'}:{out / f'{m}.ids.txt'}")
  return specs


def served_metrics(port: int, version: int, cold_dir: Path, batch: int = 256) -> dict:
  """Held-out and warm test metrics of the served top-50 of `version` (REST :predict)."""
  from benchmarks.quality.cold import read_split
  from bivrec_tf.evaluate import rank_metrics
  from input_pipelines.dataset import PreparedDataset

  ds = PreparedDataset.load(cold_dir)
  held = np.zeros(ds.vocab_size, bool)
  held[ds.meta["cold_holdout"]["items"]] = True
  index = {x: i for i, x in enumerate(ds.vocab)}
  examples = read_split(ds, "test")
  tops, targets = [], []
  start = time.perf_counter()
  for b in range(0, len(examples), batch):
    chunk = examples[b : b + batch]
    width = max(len(h) for h, _ in chunk)
    rows = [[""] * (width - len(h)) + [str(ds.vocab[i]) for i in h] for h, _ in chunk]
    body = json.dumps({"instances": rows}).encode()
    status, data = _get(port, f"/v1/models/bivrec/versions/{version}:predict", body)
    if status != 200:
      raise RuntimeError(f"version {version}: HTTP {status} {data[:200]!r}")
    for p in json.loads(data)["predictions"]:
      tops.append([index.get(x, 0) for x in p["item_ids"]])
    targets += [t[:1] for _, t in chunk]
  seconds = time.perf_counter() - start
  tops, targets = np.array(tops), np.array(targets)
  sel = {
    "held_out": held[targets[:, 0]],
    "warm": ds.seen_in_train[targets[:, 0]],
    "all": targets[:, 0] >= 2,  # also the items never in the data's training split
  }
  out = {part: rank_metrics(tops, np.where(m[:, None], targets, 0), KS) for part, m in sel.items()}
  out["users"], out["seconds"] = len(tops), seconds
  return out


def add_and_serve(model_dir: Path, specs: list, cold_dir: Path) -> tuple:
  """Adds the held-out items to version 1 twice (v2: cold rule, v3: imputed ID vectors) and
  measures v1-v3 through REST: (add timings, {label: served metrics})."""
  flags = [f for s in specs for f in ("--features", s)]
  adds = {
    "none": catalogue_cli("add", "--model-dir", model_dir, *flags),  # v2
    "imputed": catalogue_cli(
      "add", "--model-dir", model_dir, "--version", 1, *flags, "--id-embedding", "imputed"
    ),  # v3
  }
  with local_server(model_dir, all_versions=True) as port:
    for version in (1, 2, 3):
      wait_for_version(port, version)
    served = {v: served_metrics(port, v, cold_dir) for v in (1, 2, 3)}
  labels = {1: "v1 (before add)", 2: "v2 add, cold rule", 3: "v3 add, imputed ID"}
  return adds, {labels[v]: m for v, m in served.items()}


def _fresh(base: Path) -> Path:
  if base.exists():
    shutil.rmtree(base)
  return base


def run_quality(work: Path, share: float) -> dict:
  """The trained model of `--mode cold`, exported without its held-out items, then added."""
  from benchmarks.quality.cold import cold_eval

  cold_dir, src = cold_copy(work, share)
  record = trained(work, "cold", cold_dir)
  reference = cold_eval(record)  # what --mode cold reports for this model
  held = np.array(json.loads((cold_dir / "dataset.json").read_text())["cold_holdout"]["items"])
  base = _fresh(work / "quality_models")
  export_without(record, held, base)
  specs = write_raw_features(src, held, work / "held_out_features")
  adds, served = add_and_serve(base / "bivrec", specs, cold_dir)
  return {
    "record": {k: record[k] for k in ("run_dir", "fusion_weight", "exclude_history", "max_len")},
    "held_out_items": int(len(held)),
    "targets": reference["num_targets"],
    "reference": {rule: reference[rule] for rule in ("fused", "ID view", "MM view")},
    "served": served,
    "adds": adds,
  }


def run_unseen(work: Path, share: float) -> dict:
  """The same items held out of the vocabulary itself: a model that never saw them, not even
  as sampled negatives, exported as trained, then the items added."""
  from benchmarks.quality.runs import load_trained
  from bivrec_tf.evaluate import resolve_history_exclusion
  from bivrec_tf.export import export_model

  cold_dir, _ = cold_copy(work, share)
  unseen_dir = unseen_copy(cold_dir, work / "data" / f"synthetic-unseen{share:g}")
  record = trained(work, "unseen", unseen_dir)
  model, ds, cfg = load_trained(record)
  base = _fresh(work / "unseen_models")
  export_model(
    model,
    ds.vocab,
    record["fusion_weight"],
    str(base),
    "bivrec",
    max(KS),
    metadata={
      "config": cfg.to_dict(),
      "dataset": ds.meta,
      "history_exclusion": resolve_history_exclusion(cfg.eval, ds),
    },
    exclude_history=bool(record["exclude_history"]),
  )
  held = np.array(json.loads((cold_dir / "dataset.json").read_text())["cold_holdout"]["items"])
  specs = write_raw_features(cold_dir, held, work / "unseen_features")
  adds, served = add_and_serve(base / "bivrec", specs, cold_dir)
  return {
    "record": {k: record[k] for k in ("run_dir", "fusion_weight", "exclude_history", "max_len")},
    "test_rows": record["test_rows"],
    "served": served,
    "adds": adds,
  }


# --- speed and swap ---------------------------------------------------------------------------------


def new_items(work: Path, num: int, prefix: str) -> list:
  """Random standardized features of `num` new items (the random export's modalities)."""
  rng = np.random.default_rng(1)
  out = work / f"new_{prefix}"
  out.mkdir(parents=True, exist_ok=True)
  ids = "".join(f"{prefix}{i}\n" for i in range(num))
  specs = []
  for m, d in (("text", 48), ("image", 32)):
    np.save(out / f"{m}.npy", rng.standard_normal((num, d), np.float32))
    (out / f"{m}.ids.txt").write_text(ids)
    specs += ["--features", f"{m}={out / f'{m}.npy'}:{out / f'{m}.ids.txt'}"]
  return specs + ["--standardized"]


class Load(threading.Thread):
  """One keep-alive client sending batch-1 `:predict` without a version; records
  (end time, latency, HTTP status or error)."""

  def __init__(self, port: int, bodies: list, stop: threading.Event):
    super().__init__(daemon=True)
    self.port, self.bodies, self.stop, self.log = port, bodies, stop, []

  def run(self):
    conn, i = None, 0
    while not self.stop.is_set():
      t = time.perf_counter()
      try:
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/v1/models/bivrec:predict", body=self.bodies[i % len(self.bodies)])
        resp = conn.getresponse()
        resp.read()
        status = resp.status
      except (OSError, http.client.HTTPException) as err:
        status, conn = repr(err), None
      self.log.append((time.perf_counter(), time.perf_counter() - t, status))
      i += 1


def _window(log: list, start: float, end: float) -> dict:
  rows = [(lat, status) for t, lat, status in log if start <= t < end]
  ms = np.array([lat for lat, _ in rows]) * 1000
  return {
    "requests": len(rows),
    "failed": sum(status != 200 for _, status in rows),
    "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
    "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
  }


def run_speed_and_swap(work: Path, items: int, new: int, clients: int, parts: set) -> dict:
  base = _fresh(work / "speed_models")
  start = time.perf_counter()
  model_dir = export_random(items, base).parent
  out = {"items": items, "new": new, "export_s": time.perf_counter() - start}
  if "speed" in parts:
    out["add"] = catalogue_cli("add", "--model-dir", model_dir, *new_items(work, new, "new"))
  if "swap" in parts:
    rng = np.random.default_rng(2)
    bodies = [
      json.dumps({"instances": [[f"i{j}" for j in rng.integers(0, items, 20)]]}).encode()
      for _ in range(256)
    ]
    with local_server(model_dir) as port:
      before = served_versions(port)[-1]
      stop = threading.Event()
      clients_ = [Load(port, bodies, stop) for _ in range(clients)]
      for c in clients_:
        c.start()
      time.sleep(5)
      t_add = time.perf_counter()
      add = catalogue_cli(
        "add", "--model-dir", model_dir, "--version", 1, *new_items(work, new, "swap")
      )
      t_written = time.perf_counter()
      wait_for_version(port, before + 1)
      t_served = time.perf_counter()
      time.sleep(5)
      stop.set()
      for c in clients_:
        c.join()
      # requests without a version now go to the new one
      _, data = _get(port, "/v1/models/bivrec/metadata")
      log = [row for c in clients_ for row in c.log]
      out["swap"] = {
        "clients": clients,
        "from_version": before,
        "to_version": before + 1,
        "add": add,
        "served_after_written_s": t_served - t_written,
        "before": _window(log, 0, t_add),
        "during add and swap": _window(log, t_add, t_served),
        "after": _window(log, t_served, float("inf")),
        "failed_total": sum(status != 200 for _, _, status in log),
        "unversioned_goes_to": int(json.loads(data)["model_spec"]["version"]),
        "errors": sorted({str(s) for _, _, s in log if s != 200})[:5],
      }
  return out


# --- report -----------------------------------------------------------------------------------------


def _fmt(x, digits=4):
  return "-" if x is None else f"{x:.{digits}f}"


def _row(label: str, m: dict) -> str:
  every = _fmt(m["all"]["recall@20"]) if "all" in m else "-"
  return (
    f"| {label} | {_fmt(m['held_out']['recall@20'])} | {_fmt(m['held_out']['ndcg@20'])} | "
    f"{_fmt(m['warm']['recall@20'])} | {_fmt(m['warm']['ndcg@20'])} | {every} |"
  )


def table(results: dict) -> str:
  lines = []
  q, u = results.get("quality"), results.get("unseen")
  if q or u:
    head = q or u
    lines += [
      "| model, scoring | held-out Recall@20 | held-out NDCG@20 | warm Recall@20 | warm NDCG@20 "
      "| all targets Recall@20 |",
      "|---|---|---|---|---|---|",
    ]
  if q:
    lines += [
      _row(f"cold-protocol model, --mode cold reference, {r}", m) for r, m in q["reference"].items()
    ]
    lines += [_row(f"cold-protocol model, served {k}", m) for k, m in q["served"].items()]
  if u:
    lines += [_row(f"never-in-vocabulary model, served {k}", m) for k, m in u["served"].items()]
  if q or u:
    n = next(iter(head["served"].values()))
    lines += [
      "",
      f"Test users {n['users']}; held-out items {q['held_out_items'] if q else '-'}, test "
      f"targets {q['targets'] if q else '-'}",
    ]
    for name, part in (("cold-protocol", q), ("never-in-vocabulary", u)):
      for k, a in (part or {}).get("adds", {}).items():
        lines.append(
          f"{name} add ({k}): {a['wall_s']:.1f} s wall, {a['reported_s']:.1f} s reported"
        )
  s = results.get("speed")
  if s:
    lines += ["", f"Random-weight export of {s['items']:,} items: {s['export_s']:.1f} s"]
    if "add" in s:
      a = s["add"]
      lines.append(
        f"add of {s['new']:,} items: {a['wall_s']:.1f} s wall (process start included), "
        f"{a['reported_s']:.1f} s reported by the command"
      )
    if "swap" in s:
      w = s["swap"]
      lines += [
        "",
        f"Swap v{w['from_version']} -> v{w['to_version']} under {w['clients']} clients "
        f"(new version served {w['served_after_written_s']:.1f} s after it was written); "
        f"failed requests: {w['failed_total']}",
        "",
        "| window | requests | failed | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
      ]
      for k in ("before", "during add and swap", "after"):
        r = w[k]
        lines.append(
          f"| {k} | {r['requests']} | {r['failed']} | {_fmt(r['p50_ms'], 1)} | "
          f"{_fmt(r['p99_ms'], 1)} |"
        )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.catalog",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--parts", default="quality,unseen,speed,swap", help="comma-separated, of these four"
  )
  parser.add_argument("--work-dir", type=Path, default=Path("runs/catalog"))
  parser.add_argument("--out", type=Path, default=Path("benchmarks/results/catalog.json"))
  parser.add_argument("--cold-share", type=float, default=0.1)
  parser.add_argument("--items", type=int, default=100_000, help="items of the speed export")
  parser.add_argument("--new", type=int, default=10_000, help="items added to it")
  parser.add_argument("--clients", type=int, default=4, help="load clients during the swap")
  args = parser.parse_args(argv)
  parts = set(args.parts.split(","))
  args.work_dir.mkdir(parents=True, exist_ok=True)
  results = {
    "command": "python -m benchmarks.catalog " + shlex.join(argv or sys.argv[1:]),
    "machine": machine(),
  }
  if "quality" in parts:
    results["quality"] = run_quality(args.work_dir, args.cold_share)
  if "unseen" in parts:
    results["unseen"] = run_unseen(args.work_dir, args.cold_share)
  if parts & {"speed", "swap"}:
    results["speed"] = run_speed_and_swap(args.work_dir, args.items, args.new, args.clients, parts)
  results["machine"]["load_average_end"] = list(os.getloadavg())
  print(table(results))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  tmp = args.out.with_suffix(".tmp")
  tmp.write_text(json.dumps(results, indent=2, default=str))
  tmp.replace(args.out)
  print(f"\nwrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
