"""Where a table's numbers come from: the commands, the commit, the data and the training
setup, in the paragraph above each table."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import List


def git_commit() -> str:
  try:
    return subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def provenance(command: str, records: List[dict], data_desc: str) -> str:
  cfg = records[0]["config"]
  tr, m, ls = cfg["train"], cfg["model"], cfg["loss"]
  # The resolved setting of the runs (older records: their config's explicit value).
  excluded = records[0].get("exclude_history", cfg["eval"]["exclude_history"])
  history = "the user's whole history excluded" if excluded else "history items not excluded"
  seeds = sorted({r["seed"] for r in records})
  commands = list(dict.fromkeys([r["command"] for r in records if "command" in r] + [command]))
  return (
    "Commands (the table pools the stored runs of all of them): "
    + ", ".join(f"`{c}`" for c in commands)
    + f" (code at commit `{git_commit()}`, "
    f"{datetime.date.today().isoformat()}). Data: {data_desc}. Full ranking over the "
    f"whole catalogue, {history}; "
    f"early stopping on validation NDCG@20 (patience {tr['patience']}, at most "
    f"{tr['epochs']} epochs), fusion weight tuned on validation; L={records[0]['max_len']}, "
    f"d={m['dim']}, batch {tr['batch_size']}, lr {tr['learning_rate']}, "
    f"{ls['num_negatives']} sampled negatives; training seeds {seeds}. Times are wall "
    f"seconds of `fit` (validation included) on a shared 2-core CPU"
    + (
      "; with `--threads 1` each run had one core (two benchmark runs in parallel, "
      "pinned with `taskset`)."
      if "--threads 1" in command
      else "."
    )
  )


def describe_data(data: str) -> str:
  if data == "synthetic":
    return "the embedded default (`--data synthetic`: 3,000 items, 1,500 users, loo)"
  if data.startswith("synthetic"):
    return f"the generated variant `--data {data}` (input_pipelines/synthetic.py)"
  ds_meta = json.loads((Path(data) / "dataset.json").read_text())
  st = ds_meta.get("statistics", {})
  users = st.get("num_users")
  users = f"{users:,}" if isinstance(users, int) else "?"
  return (
    f"`{data}` ({ds_meta['num_items']:,} items, {users} users, "
    f"modalities {sorted(ds_meta['modalities'])}, protocol {ds_meta.get('protocol', '?')})"
  )
