"""The charts next to the tables: NDCG@20 per model, NDCG@20 against feature noise."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from bivrec_tf.presets import BASELINES, DESIGN_ABLATIONS, VARIANTS

from benchmarks.quality.roster import LABELS


def bar_chart(
  by_model: Dict[str, List[dict]], order: Sequence[str], path: Path, title: str
) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  names = [n for n in order if n in by_model]
  pop = next(iter(by_model.values()))[0]["test_rows"]["Popularity"]["ndcg@20"]
  labels = ["Popularity"] + [LABELS[n] for n in names]
  means = [pop] + [np.mean([r["test"]["ndcg@20"] for r in by_model[n]]) for n in names]
  errs = [0.0] + [
    np.std([r["test"]["ndcg@20"] for r in by_model[n]], ddof=1) if len(by_model[n]) > 1 else 0.0
    for n in names
  ]
  colors = ["#999999"] + [
    "#d62728"
    if n == "bivrec"
    else "#1f77b4"
    if n in BASELINES
    else "#2ca02c"
    if n in VARIANTS
    else "#9467bd"
    if n in DESIGN_ABLATIONS
    else "#ff7f0e"
    for n in names
  ]
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
  y = np.arange(len(labels))[::-1]
  ax.barh(y, means, xerr=errs, color=colors, capsize=3)
  ax.set_yticks(y, labels)
  for yi, m, e in zip(y, means, errs):
    ax.text(m + e, yi, f"  {m:.4f}", va="center", fontsize=8)
  ax.set_xlabel("test NDCG@20 (full ranking; mean ± std over seeds)")
  ax.set_title(title, fontsize=10)
  ax.set_xlim(0, max(means) * 1.22)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def noise_chart(results: Dict[str, List[dict]], path: Path, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(6.5, 4))
  for model, recs in results.items():
    sigmas = list(recs[0]["noise"])
    rules = [r for r in recs[0]["noise"][sigmas[0]] if r != "w re-tuned"]
    for rule in rules:
      ys = [np.mean([r["noise"][s][rule]["ndcg@20"] for r in recs]) for s in sigmas]
      ax.plot(
        [float(s) for s in sigmas],
        ys,
        marker="o",
        label=f"{LABELS[model]}: {rule}" if len(rules) > 1 else LABELS[model],
      )
  ax.set_xlabel("feature noise sigma (x per-dimension std), test time only")
  ax.set_ylabel("test NDCG@20")
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
