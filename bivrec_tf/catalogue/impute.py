"""ID vectors for items without one, imputed from their MM vectors.

A new item has no trained ID embedding. Instead of scoring it by the MM view alone (the cold
rule), `catalogue add --id-embedding imputed` gives it `e_id = e_mm W + b`, a ridge regression
fitted on the items that do have a trained ID embedding (the mapping the trained model implies
between its two item spaces), and scores it like a warm item. docs/serving.md ("Living
catalogues") measures which rule recommends held-out items better.
"""

import dataclasses
from typing import Sequence

import numpy as np

LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclasses.dataclass(frozen=True)
class IdMap:
  """`e_id = x W + b`: weights float64 `[d_mm, d_id]`, bias `[d_id]`; `lam` the ridge penalty
  chosen on held-out items, `holdout_cosine` their mean cosine(prediction, true ID vector)."""

  weights: np.ndarray
  bias: np.ndarray
  lam: float
  holdout_cosine: float

  def apply(self, x: np.ndarray) -> np.ndarray:
    """float `[n, d_mm]` -> float32 `[n, d_id]`."""
    return (np.asarray(x, np.float64) @ self.weights + self.bias).astype(np.float32)


def _ridge(x, y, lam):
  mx, my = x.mean(axis=0), y.mean(axis=0)
  xc, yc = x - mx, y - my
  w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
  return w, my - mx @ w


def _cosine(a, b):
  num = (a * b).sum(axis=1)
  den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return float(np.mean(num / np.maximum(den, 1e-12)))


def fit_id_map(
  x: np.ndarray,
  y: np.ndarray,
  lambdas: Sequence[float] = LAMBDAS,
  holdout: float = 0.1,
  seed: int = 0,
) -> IdMap:
  """Ridge regression of ID vectors `y` `[n, d_id]` on MM vectors `x` `[n, d_mm]` (the items
  with a trained ID embedding). The penalty is the one of `lambdas` with the best mean cosine on
  a random `holdout` share of the items; the map is then refitted on all of them."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2:
    raise ValueError("imputing ID vectors needs at least 2 items with a trained ID embedding")
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(x))
  n_val = max(1, int(round(holdout * len(x))))
  val, fit = order[:n_val], order[n_val:]
  scores = {}
  for lam in lambdas:
    w, b = _ridge(x[fit], y[fit], lam)
    scores[lam] = _cosine(x[val] @ w + b, y[val])
  lam = max(scores, key=scores.get)
  w, b = _ridge(x, y, lam)
  return IdMap(w, b, float(lam), scores[lam])
