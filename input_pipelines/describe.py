"""`python -m input_pipelines.describe DIR`: statistics of a prepared dataset directory.

Prints sizes, protocol, per-split example counts and history lengths, modality coverage, the
share of evaluation targets never seen in training, and a sequence-length histogram (text), and
saves the histogram as a PNG (default `DIR/sequence_lengths.png`, `--png` to choose, `--no-png`
to skip). Sequence lengths come from dataset.json (`sequence_length_counts`, written by
`input_pipelines.prepare`) or, for other directories, from the last split's examples
(history + targets).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import json
import pathlib
import sys

import numpy as np

from input_pipelines.errors import DataError, run_cli


def sequence_lengths(path: pathlib.Path, meta: dict) -> tuple[np.ndarray, np.ndarray, str]:
  """(lengths, counts, where they come from)."""
  counts = (meta.get("statistics") or {}).get("sequence_length_counts")
  if counts:
    items = sorted((int(k), int(v)) for k, v in counts.items())
    return (
      np.array([k for k, _ in items]),
      np.array([v for _, v in items]),
      "user sequences (dataset.json)",
    )
  splits = meta.get("splits") or {}
  split = next((s for s in ("test", "valid", "train") if s in splits), None)
  if split is None:
    raise DataError(path / "dataset.json", "no split to measure", field="splits")
  import tensorflow as tf

  spec = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}

  def lengths(serialized):
    p = tf.io.parse_example(serialized, spec)
    return (
      tf.RaggedTensor.from_sparse(p["history"]).row_lengths()
      + tf.RaggedTensor.from_sparse(p["target"]).row_lengths()
    )

  from input_pipelines.dataset import split_records

  records = split_records(path, meta, split)
  out = np.concatenate(
    list(records.batch(8192).map(lengths).as_numpy_iterator()) or [np.zeros(0, np.int64)]
  )
  uniq, cnt = np.unique(out, return_counts=True)
  return uniq, cnt, f"'{split}' examples (history + targets)"


def text_histogram(
  lengths: np.ndarray, counts: np.ndarray, bins: int = 12, width: int = 40
) -> list:
  values = np.repeat(lengths, counts)
  lo, hi = int(values.min()), int(values.max())
  if hi - lo + 1 <= bins:
    edges = np.arange(lo, hi + 2)
  else:  # log-spaced bins for long tails
    edges = np.unique(np.round(np.geomspace(lo, hi + 1, bins + 1)).astype(int))
  hist, edges = np.histogram(values, bins=edges)
  top = max(int(hist.max()), 1)
  lines = []
  for a, b, h in zip(edges[:-1], edges[1:], hist):
    label = f"{a}" if b - a == 1 else f"{a}-{b - 1}"
    lines.append(f"  {label:>9} | {'#' * int(round(width * h / top)):<{width}} {h:,}")
  return lines


def save_png(lengths: np.ndarray, counts: np.ndarray, png: pathlib.Path, title: str) -> None:
  try:
    import matplotlib
  except ImportError:
    raise ValueError(
      "saving the histogram needs matplotlib (pip install -r requirements.txt), or pass --no-png"
    ) from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  ax.bar(lengths, counts, width=1.0, color="#4477aa", edgecolor="white", linewidth=0.3)
  ax.set_xlabel("sequence length (items)")
  ax.set_ylabel("users")
  ax.set_title(title)
  if lengths.max() > 20 * max(np.median(np.repeat(lengths, counts)), 1):
    ax.set_xscale("log")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  png.parent.mkdir(parents=True, exist_ok=True)
  tmp = png.with_name(f".tmp-{png.name}")
  fig.savefig(tmp, format="png")
  plt.close(fig)
  os.replace(tmp, png)


def describe(path, png: pathlib.Path | None = None) -> dict:
  """Prints the description; returns it as a dict (also what --json prints)."""
  path = pathlib.Path(path)
  meta_file = path / "dataset.json"
  if not meta_file.is_file():
    raise FileNotFoundError(f"not a prepared dataset directory (no dataset.json): {path}")
  try:
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
  except json.JSONDecodeError as err:
    raise DataError(meta_file, f"not valid JSON: {err.msg}", line=err.lineno) from None
  stats = meta.get("statistics") or {}
  lengths, counts, origin = sequence_lengths(path, meta)
  values = np.repeat(lengths, counts)
  n_items = int(meta.get("num_items", 0))
  lines = [
    f"{path}",
    f"  source      {meta.get('source', '?')}",
    f"  protocol    {meta.get('protocol', '?')}",
    f"  users       {stats.get('num_users', '?'):,}"
    if isinstance(stats.get("num_users"), int)
    else f"  users       {stats.get('num_users')}",
    f"  items       {n_items:,} (vocab size {meta.get('vocab_size')})",
  ]
  if stats.get("num_interactions"):
    lines.append(f"  interactions {stats['num_interactions']:,}")
  if stats.get("density"):
    lines.append(f"  density     {stats['density']:.5f}")
  seen = stats.get("num_items_seen_in_train")
  if seen is not None and n_items:
    lines.append(f"  items seen in train {seen:,} ({seen / n_items:.1%})")
  lines.append("  splits:")
  for s, info in (meta.get("splits") or {}).items():
    mh = (stats.get("mean_history_length") or {}).get(s)
    xh = (stats.get("max_history_length") or {}).get(s)
    nt = (stats.get("num_targets") or {}).get(s)
    unseen = stats.get(f"share_{s}_targets_unseen_in_train")
    extra = f", {unseen:.1%} of targets unseen in train" if unseen is not None else ""
    hist = f", history mean {mh:.2f} max {xh}" if mh is not None else ""
    targ = f", {nt:,} targets" if nt is not None else ""
    lines.append(f"    {s:<6} {info.get('num_examples', 0):>9,} examples{hist}{targ}{extra}")
  mods = meta.get("modalities") or {}
  lines.append("  modalities:" + ("" if mods else " none (ID view only)"))
  for name, info in mods.items():
    cov = info.get("num_present", 0) / n_items if n_items else 0
    enc = f", encoder {info['encoder']}" if "encoder" in info else ""
    lines.append(
      f"    {name:<6} dim {info.get('dim')}, present for "
      f"{info.get('num_present', 0):,} items ({cov:.1%}){enc}"
    )
  lines.append(
    f"  sequence length over {values.size:,} {origin}: min {values.min()}, "
    f"median {np.median(values):g}, mean {values.mean():.2f}, "
    f"p90 {np.percentile(values, 90):g}, max {values.max()}"
  )
  lines += text_histogram(lengths, counts)
  if meta.get("recommended_max_len"):
    lines.append(f"  recommended --max-len {meta['recommended_max_len']}")
  if png is not None:
    save_png(lengths, counts, png, f"{path.name}: sequence lengths ({values.size:,} users)")
    lines.append(f"  histogram saved to {png}")
  print("\n".join(lines))
  return {
    "path": str(path),
    "statistics": stats,
    "sequence_lengths": {"lengths": lengths.tolist(), "counts": counts.tolist(), "origin": origin},
    "png": str(png) if png else None,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m input_pipelines.describe",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("dir", help="prepared dataset directory")
  p.add_argument("--png", help="histogram PNG path (default DIR/sequence_lengths.png)")
  p.add_argument("--no-png", action="store_true", help="print only")
  args = p.parse_args(argv)
  png = (
    None
    if args.no_png
    else pathlib.Path(args.png or pathlib.Path(args.dir) / "sequence_lengths.png")
  )
  describe(args.dir, png)
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main))
