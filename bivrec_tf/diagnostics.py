"""Interest diagnostics that tell whether the K interests of a user differ and are all used.

- `cos_<view>`: mean pairwise cosine between a user's K interests (1 = every interest the same
  vector; the target is <= 0.5), averaged over users.
- `win_<view>`: for every (user, target) pair, the interest that scores the target highest (the
  max-over-interests rule of inference "wins" it); the share of targets won by each interest,
  sorted from the most to the least winning (`maxwin_<view>` = the first share; 1/K = balanced).

Gradient shares of the loss terms are `BivRecModel.gradient_shares`.
"""

from typing import Dict

import numpy as np
import tensorflow as tf

from bivrec_tf.layers import interest_similarity
from bivrec_tf.model import FIRST_ITEM


def interest_diagnostics(model, dataset: tf.data.Dataset) -> Dict[str, object]:
  """Diagnostics over an eval dataset of {"history" `[B, L]`, "targets" `[B, T]`} batches.

  Returns {"cos_<v>": float, "win_<v>": [K floats, descending], "maxwin_<v>": float} per view.
  """
  cos_sum = {v: 0.0 for v in model.view_names}
  wins = {v: None for v in model.view_names}
  users = 0
  for batch in dataset:
    history = tf.convert_to_tensor(batch["history"], tf.int64)
    targets = tf.convert_to_tensor(batch["targets"], tf.int64)
    valid = targets >= FIRST_ITEM  # [B, T]
    queries = model.queries(history)
    users += int(history.shape[0])
    for v, u in queries.items():
      cos, _ = interest_similarity(u)
      cos_sum[v] += float(tf.reduce_sum(cos))
      e = model.views[v].item_vectors(tf.maximum(targets, FIRST_ITEM))  # [B, T, d]
      winner = tf.argmax(tf.einsum("bkd,btd->btk", u, e), axis=-1)  # [B, T]
      k = u.shape[1]
      counts = tf.math.bincount(
        tf.cast(tf.boolean_mask(winner, valid), tf.int32),
        minlength=k,
        maxlength=k,
        dtype=tf.float64,
      ).numpy()
      wins[v] = counts if wins[v] is None else wins[v] + counts
  if not users:
    raise ValueError("interest diagnostics: the evaluation dataset is empty")
  out: Dict[str, object] = {}
  for v in model.view_names:
    share = np.sort(wins[v] / max(wins[v].sum(), 1.0))[::-1]
    out[f"cos_{v}"] = cos_sum[v] / users
    out[f"win_{v}"] = [round(float(s), 4) for s in share]
    out[f"maxwin_{v}"] = float(share[0])
  return out
