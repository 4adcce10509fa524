"""Full-ranking evaluation over the whole catalogue and fusion-weight tuning (DESIGN.md section 5).

For every user the model scores all items (padding and out-of-vocabulary rows excluded; with
history exclusion also every item of the user's whole earlier history, not only the last
`max_len` the model reads), keeps the top max(ks), and

    Recall@K  = |hits in top K| / |targets|
    NDCG@K    = DCG@K / IDCG@K, IDCG over min(|targets|, K) ideal hits
    HitRate@K = 1[hits > 0]
    MRR@K     = 1 / rank of the first hit (0 if none in the top K)

averaged over users. Items are scored in chunks, so very large catalogues fit in memory.

History exclusion is one setting for offline metrics, fusion tuning and serving
(`EvalConfig.exclude_history`; `resolve_history_exclusion` turns "auto" into a decision from the
training data's repeat rate, and the export serves under the resolved value). This replaces
DESIGN.md section 5's "not excluded unless --exclude-history" (issue 12; docs/data.md, "Repeat
items and history exclusion").
"""

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from bivrec_tf.model import FIRST_ITEM, interest_fused_scores, interest_scores, max_over_interests
from bivrec_tf.warm_compiled import WarmCompiled

METRICS = ("recall", "ndcg", "hitrate", "mrr")


def rank_metrics(topk: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
  """Mean metrics of ranked lists.

  Args:
    topk: int `[N, >= max(ks)]` item indices, best first.
    targets: int `[N, T]` target item indices, padded with values < FIRST_ITEM (ignored).
    ks: cut-offs.
  Returns: {"recall@10": ..., "ndcg@10": ..., "hitrate@10": ..., "mrr@10": ..., ...}.
  """
  return {
    k: float(v.mean()) if len(v) else 0.0 for k, v in per_user_metrics(topk, targets, ks).items()
  }


def per_user_metrics(topk, targets, ks) -> Dict[str, np.ndarray]:
  """As `rank_metrics`, without the mean: {name: `[N]`} (users without targets are dropped)."""
  topk = np.asarray(topk)
  targets = np.asarray(targets)
  if targets.ndim == 1:
    targets = targets[:, None]
  valid_t = targets >= FIRST_ITEM
  has = valid_t.any(axis=1)
  topk, targets, valid_t = topk[has], targets[has], valid_t[has]
  # De-duplicate targets within a row so |targets| counts distinct items.
  sorted_t = np.sort(np.where(valid_t, targets, -1), axis=1)
  dup = np.zeros_like(valid_t)
  dup[:, 1:] = sorted_t[:, 1:] == sorted_t[:, :-1]
  sorted_valid = (sorted_t >= FIRST_ITEM) & ~dup
  num_targets = sorted_valid.sum(axis=1)
  hits = ((topk[:, :, None] == sorted_t[:, None, :]) & sorted_valid[:, None, :]).any(axis=2)
  discounts = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))
  out = {}
  for k in ks:
    h = hits[:, :k]
    n_hits = h.sum(axis=1)
    dcg = (h * discounts[:k]).sum(axis=1)
    ideal = np.cumsum(discounts[:k])[np.minimum(num_targets, k) - 1]
    first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, np.inf)
    out[f"recall@{k}"] = n_hits / num_targets
    out[f"ndcg@{k}"] = dcg / ideal
    out[f"hitrate@{k}"] = (n_hits > 0).astype(np.float64)
    out[f"mrr@{k}"] = 1.0 / first
  return out


def stack_targets(batches: List[np.ndarray]) -> np.ndarray:
  """Per-batch target arrays `[b_i, T_i]` (0-padded) -> one `[sum b_i, max T_i]` array."""
  width = max(t.shape[1] for t in batches)
  return np.concatenate([np.pad(t, [(0, 0), (0, width - t.shape[1])]) for t in batches])


def exclusion_decision(setting: Optional[bool], repeat_rate: float, threshold: float) -> bool:
  """The resolved history-exclusion setting: `setting` when given (True / False), else ("auto")
  exclude exactly when fewer than `threshold` of the training targets are repeats."""
  if setting is not None:
    return bool(setting)
  return repeat_rate < threshold


def resolve_history_exclusion(ev, ds) -> Dict[str, object]:
  """Resolves `ev.exclude_history` (an `EvalConfig`) on a `PreparedDataset` once per run.

  The repeat rate is the share of the train split's targets that already occur in the same
  example's history (the user's whole earlier sequence; `input_pipelines.dataset.repeat_rate`).
  Excluding the history makes exactly those targets impossible to hit, so "auto" excludes when
  they are rare (below `ev.repeat_threshold`) and keeps the history otherwise.

  Returns: {"exclude_history": bool (resolved), "setting": "auto" | "on" | "off",
    "train_repeat_rate": float, "repeat_threshold": float, "history_cut_at": int or None (the
    `prepare --max-history` limit when it cut stored histories: exclusion then covers only the
    last that many items)}; recorded in metrics.json and the export's metadata.
  """
  rate = float(ds.repeat_rate("train"))
  setting = ev.exclude_history
  return {
    "exclude_history": exclusion_decision(setting, rate, ev.repeat_threshold),
    "setting": "auto" if setting is None else ("on" if setting else "off"),
    "train_repeat_rate": rate,
    "repeat_threshold": float(ev.repeat_threshold),
    "history_cut_at": ds.history_cut_at(),
  }


def describe_history_exclusion(info: Dict[str, object]) -> str:
  """One line for logs: the resolved value and why."""
  verdict = "excluded" if info["exclude_history"] else "not excluded"
  why = (
    f"auto: train repeat rate {info['train_repeat_rate']:.2%} "
    f"{'<' if info['exclude_history'] else '>='} threshold {info['repeat_threshold']:.0%}"
    if info["setting"] == "auto"
    else f"set {info['setting']}; train repeat rate {info['train_repeat_rate']:.2%}"
  )
  cut = (
    f"; stored histories are cut at {info['history_cut_at']} items (prepare --max-history)"
    if info.get("history_cut_at")
    else ""
  )
  return f"history items {verdict} in metrics, fusion tuning and serving ({why}){cut}"


def history_mask(items, start, size) -> tf.Tensor:
  """bool `[B, size]`: True where item index `start + j` occurs in row b of `items`.

  Args:
    items: int `[B, H]` item indices (any H, e.g. a whole history); values below FIRST_ITEM
      (padding, out-of-vocabulary) and outside [start, start + size) are ignored.
    start, size: the scored chunk of item indices.
  Built by scattering the history into the chunk, O(B H) work, not the O(B H size) of comparing
  every pair, so long histories cost little.
  """
  items = tf.cast(items, tf.int64)
  start = tf.cast(start, tf.int64)
  size = tf.cast(size, tf.int64)
  local = items - start
  inside = (items >= FIRST_ITEM) & (local >= 0) & (local < size)
  where = tf.where(inside)  # [M, 2] (row, h)
  index = tf.stack([where[:, 0], tf.gather_nd(local, where)], axis=1)
  hits = tf.scatter_nd(
    index,
    tf.ones([tf.shape(index)[0]], tf.int32),
    tf.stack([tf.shape(items, out_type=tf.int64)[0], size]),
  )
  return hits > 0


class Ranker:
  """Top-k over the full catalogue for several scoring rules at once.

  Rules are (name, w, cold_rule): score = w s_id + (1 - w) s_mm (with `ModelConfig.fusion`
  "interest": max_k [w s_id,k + (1 - w) s_mm,k]), with cold items scored s_mm when cold_rule; a
  single-view model has just its own view. Item tables are computed once per call
  to `refresh()` (after training changes the weights). `exclude_history` is the resolved setting
  (a bool: resolve "auto" with `resolve_history_exclusion` first); when True, every item of the
  `seen` rows given to `topk` (the whole history) is never ranked.
  """

  def __init__(self, model, kmax: int, item_chunk: int = 20_000, exclude_history: bool = False):
    if not isinstance(exclude_history, (bool, np.bool_)):
      raise ValueError(
        f"Ranker: exclude_history = {exclude_history!r} must be True or False; "
        "resolve the 'auto' setting (None) with "
        "bivrec_tf.evaluate.resolve_history_exclusion(cfg.eval, dataset) first"
      )
    self.model = model
    self.kmax = kmax
    self.item_chunk = item_chunk
    self.exclude_history = bool(exclude_history)
    self.tables = None
    # The queries of each batch: eagerly for a short evaluation, compiled once it has seen 8
    # batches (compiled, a batch's forward pass costs ~1/4; tracing it costs ~1.6 s).
    self._queries = WarmCompiled(model.queries, eager_calls=8)

  def refresh(self):
    self.tables = {v: self.model.item_table(v) for v in self.model.view_names}

  def rules(self, fusion_weights: Iterable[float]):
    names = self.model.view_names
    if len(names) == 1:
      return [(names[0], 1.0 if names[0] == "id" else 0.0, False)]
    return [("id", 1.0, False), ("mm", 0.0, False)] + [
      (f"fused@{w:.2f}", float(w), True) for w in fusion_weights
    ]

  @tf.function(reduce_retracing=True)
  def _topk_chunk(self, queries, tables, seen, ids, weights, cold_rule):
    """Top-k of the items `ids` `[n]` (consecutive; tables `{view: [n, d]}`) for every rule,
    items of `seen` `[B, H]` excluded when `exclude_history`: (`[G, B, k]` scores, `[G, B, k]`
    ids)."""
    tau = self.model.config.model.tau_rec
    per_interest = {v: interest_scores(queries[v], tables[v]) for v in queries}  # [B, K, n]
    scores = {v: max_over_interests(p, tau) for v, p in per_interest.items()}
    s_id = scores.get("id", scores.get("mm"))
    s_mm = scores.get("mm", s_id)
    cold = tf.gather(self.model.cold, ids)
    if len(queries) == 2 and self.model.config.model.fusion == "interest":
      plain = tf.map_fn(  # [G, B, n], one [B, K, n] sum at a time
        lambda w: interest_fused_scores(per_interest["id"], per_interest["mm"], w, tau), weights
      )
    else:
      w = weights[:, None, None]
      plain = w * s_id[None] + (1.0 - w) * s_mm[None]  # [G, B, n]
    use_mm = cold_rule[:, None, None] & cold[None, None, :]
    s = tf.where(use_mm, s_mm[None], plain)
    banned = ids < FIRST_ITEM
    s = tf.where(banned[None, None, :], -np.inf, s)
    if self.exclude_history:
      in_hist = history_mask(seen, ids[0], tf.shape(ids)[0])  # [B, n]
      s = tf.where(in_hist[None], -np.inf, s)
    top_s, top_i = tf.math.top_k(s, k=tf.minimum(self.kmax, tf.shape(ids)[0]))
    return top_s, tf.gather(ids, top_i)

  def topk(self, history, fusion_weights: Sequence[float], seen=None):
    """history `[B, L]` (what the model reads) -> {rule name: item ids `[B, kmax]`} (0 in slots
    left when fewer than kmax items can be ranked).

    seen: int `[B, H]`, the items excluded when `exclude_history` (the user's whole history, any
      H, 0-padded); defaults to `history`.
    """
    if self.tables is None:
      self.refresh()
    rules = self.rules(fusion_weights)
    weights = tf.constant([w for _, w, _ in rules], tf.float32)
    cold_rule = tf.constant([c for _, _, c in rules], tf.bool)
    history = tf.convert_to_tensor(history, tf.int64)
    seen = history if seen is None else tf.convert_to_tensor(seen, tf.int64)
    queries = self._queries(history)
    best_s, best_i = None, None
    vocab = self.model.vocab_size
    for start in range(0, vocab, self.item_chunk):
      end = min(start + self.item_chunk, vocab)
      tables = {v: t[start:end] for v, t in self.tables.items()}
      ids = tf.range(start, end, dtype=tf.int64)
      s, i = self._topk_chunk(queries, tables, seen, ids, weights, cold_rule)
      if best_s is None:
        best_s, best_i = s, i
      else:
        s, i = tf.concat([best_s, s], -1), tf.concat([best_i, i], -1)
        best_s, pos = tf.math.top_k(s, k=min(self.kmax, s.shape[-1]))
        best_i = tf.gather(i, pos, batch_dims=2)
    # Slots beyond the rankable items (kmax > catalogue minus history) hold excluded items at
    # -inf: report them as padding (0), which never counts as a hit.
    best_i = tf.where(best_s == -np.inf, tf.zeros_like(best_i), best_i).numpy()
    return {name: best_i[g] for g, (name, _, _) in enumerate(rules)}


def evaluate(
  ranker: Ranker,
  dataset: tf.data.Dataset,
  ks: Sequence[int],
  fusion_weights: Sequence[float] = (0.5,),
  progress: Optional[str] = None,
) -> Dict[str, Dict[str, float]]:
  """Mean metrics per scoring rule over an eval dataset of {"history", "targets"} batches; with
  the ranker's history exclusion, each batch's "full_history" (the whole history) is excluded
  when present, else "history"."""
  ranker.refresh()
  collected: Dict[str, List[np.ndarray]] = {}
  targets: List[np.ndarray] = []
  batches = dataset
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

    batches = tqdm(dataset, desc=progress, unit="batch", leave=False)
  for batch in batches:
    for name, top in ranker.topk(
      batch["history"], fusion_weights, batch.get("full_history")
    ).items():
      collected.setdefault(name, []).append(top)
    targets.append(batch["targets"].numpy())
  if not targets:
    raise ValueError("evaluation dataset is empty")
  all_targets = stack_targets(targets)
  return {
    name: rank_metrics(np.concatenate(tops), all_targets, ks) for name, tops in collected.items()
  }


def popularity_metrics(
  item_counts: np.ndarray,
  dataset: tf.data.Dataset,
  ks: Sequence[int],
  exclude_history: bool = False,
) -> Dict[str, float]:
  """The Popularity baseline: every user gets the most frequent train targets (with
  `exclude_history`, those not in the user's whole history: "full_history" when the batches
  carry it)."""
  scores = np.asarray(item_counts, np.float64).copy()
  scores[:FIRST_ITEM] = -np.inf
  kmax = max(ks)
  tops, targets = [], []
  order = np.argsort(-scores, kind="stable")
  for batch in dataset:
    hist = batch.get("full_history", batch["history"]).numpy()
    if exclude_history:
      rows = []
      for h in hist:
        seen = set(h[h >= FIRST_ITEM].tolist())
        rows.append([i for i in order[: kmax + len(seen)] if i not in seen][:kmax])
      tops.append(np.asarray(rows))
    else:
      tops.append(np.tile(order[:kmax], (len(hist), 1)))
    targets.append(batch["targets"].numpy())
  return rank_metrics(np.concatenate(tops), stack_targets(targets), ks)


def best_fusion(results: Dict[str, Dict[str, float]], metric: str) -> float:
  """The fusion weight w of the best `fused@w` rule on `metric` (ties -> the first, smallest w)."""
  fused = [(name, m[metric]) for name, m in results.items() if name.startswith("fused@")]
  if not fused:
    raise ValueError("no fused rules in the results (single-view model?)")
  best_name = max(fused, key=lambda x: x[1])[0]
  return float(best_name.split("@")[1])
