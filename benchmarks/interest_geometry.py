"""Why a trained model's K interests are alike: item anisotropy against interest similarity.

    python -m benchmarks.interest_geometry RUN_DIR [RUN_DIR ...]

For each view of the run's best checkpoint, on one batch (512 users) of its test split, prints the
popularity-weighted mean cosine between two items' candidate vectors, the norm of the mean item
direction, the mean pairwise cosine of a user's K interests, and that cosine after removing the
mean item direction from every interest. Interests that stay alike after the mean direction is
removed read the same items (docs/model.md, "Module 2: competing interests and label-aware
routing"). Also: the norm of the mean of all users' interests (a direction every user shares),
the interest cosine without it, and the cosine of two different items of one user's history
(`histcos_<view>`; docs/results.md, "Session 17"). Which items: the tokens each interest's
seeding attention reads (exp of its entropy, median over users, interests sorted from the
sharpest), against the user's valid tokens. Writes nothing.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np

from bivrec_tf import config as config_lib
from bivrec_tf.builders import build_model, restore_trained
from bivrec_tf.diagnostics import history_cosine, tokens_read
from bivrec_tf.train import DEFAULT_MAX_LEN, load_data
from input_pipelines.dataset import eval_dataset


def _mean_pairwise_cosine(u):
  """u `[B, K, d]` -> mean cosine over the K (K - 1) ordered pairs of each row (NaN for K = 1)."""
  u = u / np.linalg.norm(u, axis=-1, keepdims=True)
  k = u.shape[1]
  if k < 2:
    return float("nan")
  return float(np.einsum("bkd,bjd->bkj", u, u)[:, ~np.eye(k, dtype=bool)].mean())


def _load_config(run_dir: Path) -> config_lib.Config:
  """The run's Config; fields this version no longer has (switches removed after the run, at
  their default values) are dropped with a note."""
  raw = json.loads((run_dir / "config.json").read_text())
  for section in dataclasses.fields(config_lib.Config):
    known = {f.name for f in dataclasses.fields(section.default.__class__)}
    for key in sorted(set(raw.get(section.name, {})) - known):
      print(
        f"note: {run_dir}: dropping removed config field {section.name}.{key} = "
        f"{raw[section.name].pop(key)!r}"
      )
  return config_lib.Config.from_dict(raw)


def geometry(run_dir: Path, pairs: int = 20_000, seed: int = 0) -> dict:
  cfg = _load_config(run_dir)
  ds = load_data(cfg)
  max_len = cfg.data.max_len or int(ds.meta.get("recommended_max_len", DEFAULT_MAX_LEN))
  model = build_model(cfg, ds, max_len)
  restore_trained(model, str(run_dir / "checkpoints" / "best"))
  counts = np.asarray(ds.item_counts, np.float64).copy()
  counts[:2] = 0.0
  p = counts / counts.sum()
  rng = np.random.default_rng(seed)
  batch = next(iter(eval_dataset(ds, "test", max_len, 512)))
  out = {}
  for v, u in model.queries(batch["history"]).items():
    attention = model.views[v].seeding_attention(batch["history"])
    table = model.item_table(v).numpy()
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    a, b = rng.choice(len(p), pairs, p=p), rng.choice(len(p), pairs, p=p)
    mean_dir = (p[:, None] * table).sum(0)
    u = model.views[v].personal(u).numpy()  # the user's own interests (no global query)
    mean_interest = u.reshape(-1, u.shape[-1]).mean(axis=0)  # over all users and interests
    out[v] = {
      "item_cosine": float(np.mean(np.sum(table[a] * table[b], 1))),
      "mean_direction_norm": float(np.linalg.norm(mean_dir)),
      "interest_cosine": _mean_pairwise_cosine(u),
      "centred_interest_cosine": _mean_pairwise_cosine(u - mean_dir),
      "mean_interest_norm": float(np.linalg.norm(mean_interest)),
      "interest_cosine_without_mean_interest": _mean_pairwise_cosine(u - mean_interest),
      # pairs of different items of one user's history (the runs' `histcos_<view>`)
      "history_item_cosine": float(np.divide(*history_cosine(model.views[v], batch["history"]))),
    }
    if attention is not None:
      read, n_valid = tokens_read(*attention)
      out[v].update(
        tokens_read=np.median(read, axis=0).tolist(), valid_tokens=float(np.median(n_valid))
      )
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dirs", nargs="+", type=Path)
  args = parser.parse_args(argv)
  print(
    "| run | view | item cosine | mean direction norm | interest cosine | centred | "
    "mean interest norm | without the mean interest | history item cosine | "
    "tokens each interest reads (median) | valid tokens (median) |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for run in args.run_dirs:
    for v, g in geometry(run).items():
      print(
        f"| {run.name} | {v} | {g['item_cosine']:.3f} | {g['mean_direction_norm']:.3f} | "
        f"{g['interest_cosine']:.3f} | {g['centred_interest_cosine']:.3f} | "
        f"{g['mean_interest_norm']:.3f} | {g['interest_cosine_without_mean_interest']:.3f} | "
        f"{g['history_item_cosine']:.3f} | "
        f"{' / '.join(f'{x:.1f}' for x in g.get('tokens_read', [])) or '-'} | "
        f"{g.get('valid_tokens', float('nan')):.0f} |"
      )


if __name__ == "__main__":
  main()
