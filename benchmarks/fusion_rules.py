"""Other rules for fusing the two views, scored post hoc on a quality store's trained runs.

    python -m benchmarks.fusion_rules --store runs/screen/online-retail-ii-ref11-standard.json

For every seed with a `bivrec` run (and, when the store has them, the `id_only` and `mm_only`
runs that make `late_fusion`), each view's scores over the whole catalogue are computed once on
validation and test, then fused by each rule with w on the project's grid, w tuned on
validation NDCG@20 and the test NDCG@20 reported at that w. Rules:

- `score`: the project's rule, w s_id + (1 - w) s_mm (cold items s_mm);
- `z`: the same on each view's scores standardised per user over the rankable items;
- `prob`: a mixture of the views' softmax distributions, w p_id + (1 - w) p_mm;
- `rank`: reciprocal-rank fusion (Cormack et al. 2009), w / (c + r_id) + (1 - w) / (c + r_mm),
  ranks truncated at `--depth` (cold items out of the ID ranking, scored by their MM rank).

Ties: the rank rule ties often (at w = 0.5 an item ranked (0, 5) ties one ranked (5, 0)), and a
target that ties counts as above every tied item when only strictly greater scores are counted.
`target_rank` therefore breaks ties by the `score` rule (what a served top k would have to do to
be deterministic and sensible); `--ties optimistic` shows the inflated number for comparison
(docs/results.md, "Session 13"). Prints one line per (seed, model, rule) and a markdown table;
`--out FILE` also writes the per-seed results as JSON (atomically). Also printed: how alike
the two views' test rankings are (`agreement`: per-user NDCG@20 correlation, the share of users
only one view hits, and the per-user oracle of the two).
"""

import argparse
import json
from pathlib import Path
from typing import Dict, Optional

import bivrec_tf  # noqa: F401  (Keras-2 guard before TensorFlow)
import numpy as np

from benchmarks.quality.runs import load_trained
from bivrec_tf.evaluate import history_mask, resolve_history_exclusion
from bivrec_tf.io_utils import write_text_atomic
from bivrec_tf.model import FIRST_ITEM, fuse_scores, view_scores
from input_pipelines.dataset import eval_dataset

GRID = np.round(np.linspace(0.0, 1.0, 11), 2)


def target_rank(fused, target, tie_break=None):
  """0-based rank of each row's target under `fused` `[U, N]` (-inf = not rankable): items
  scoring strictly higher, plus tied items scoring higher on `tie_break` `[U, N]` (None: ties
  counted in the target's favour, the optimistic count)."""
  rows = np.arange(len(target))
  ft = fused[rows, target][:, None]
  rank = (fused > ft).sum(1)
  if tie_break is not None:
    rank += ((fused == ft) & (tie_break > tie_break[rows, target][:, None])).sum(1)
  return rank


def ndcg_at(rank, k: int = 20) -> float:
  """Mean NDCG@k of one target per row at 0-based `rank`."""
  return float(np.mean(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)))


def view_matrices(record: dict, split: str):
  """({view: scores `[U, N]`}, targets `[U]`, not-rankable mask `[U, N]`, cold `[N]`) of one
  stored run over a split, history items masked when the run excluded them."""
  model, ds, cfg = load_trained(record)
  exclude = resolve_history_exclusion(cfg.eval, ds)["exclude_history"]
  tables = {v: model.item_table(v) for v in model.view_names}
  scores = {v: [] for v in model.view_names}
  targets, masks = [], []
  for batch in eval_dataset(ds, split, record["max_len"], cfg.eval.eval_batch_size):
    queries = model.queries(batch["history"])
    for v in model.view_names:
      scores[v].append(view_scores(queries[v], tables[v], cfg.model.tau_rec).numpy())
    targets.append(batch["targets"].numpy()[:, 0])
    if exclude:  # the whole history, as the Ranker excludes it
      masks.append(history_mask(batch["full_history"], 0, model.vocab_size).numpy())
  scores = {v: np.concatenate(s) for v, s in scores.items()}
  target = np.concatenate(targets)
  mask = np.concatenate(masks) if exclude else np.zeros((len(target), model.vocab_size), bool)
  mask[:, :FIRST_ITEM] = True
  return scores, target, mask, np.asarray(model.cold.numpy(), bool)


def _ranks(scores, mask):
  masked = np.where(mask, -np.inf, scores)
  return np.argsort(np.argsort(-masked, axis=1, kind="stable"), axis=1)


def _log_softmax(scores, mask):
  masked = np.where(mask, -np.inf, scores)
  top = masked.max(1, keepdims=True)
  return scores - top - np.log(np.exp(masked - top).sum(1, keepdims=True))


def fused_scores(rule: str, s_id, s_mm, w: float, mask, cold, constant=60.0, depth=200):
  """`[U, N]` fused scores of one rule (module docstring), not-rankable items at -inf."""
  if rule == "score":  # the project's rule, as the Ranker and the export apply it
    out = fuse_scores(s_id, s_mm, np.float32(w), cold).numpy()
  elif rule == "z":
    kept = np.where(mask, np.nan, s_id), np.where(mask, np.nan, s_mm)
    z_id, z_mm = (
      (s - np.nanmean(k, 1, keepdims=True)) / np.nanstd(k, 1, keepdims=True)
      for s, k in zip((s_id, s_mm), kept)
    )
    out = np.where(cold[None], z_mm, w * z_id + (1 - w) * z_mm)
  elif rule == "prob":
    p_id, p_mm = np.exp(_log_softmax(s_id, mask)), np.exp(_log_softmax(s_mm, mask))
    out = np.where(cold[None], p_mm, w * p_id + (1 - w) * p_mm)
  elif rule == "rank":
    r_id = np.minimum(_ranks(s_id, mask | cold[None]), depth)
    r_mm = np.minimum(_ranks(s_mm, mask), depth)
    out = np.where(
      cold[None], 1 / (constant + r_mm), w / (constant + r_id) + (1 - w) / (constant + r_mm)
    )
  else:
    raise ValueError(f"unknown rule {rule!r}")
  return np.where(mask, -np.inf, out)


def tuned(rule: str, splits: Dict[str, tuple], optimistic: bool, depth: int) -> tuple:
  """(validation, test, w) of `rule` with w tuned on validation NDCG@20."""
  best = None
  for w in GRID:
    row = []
    for split in ("valid", "test"):
      s_id, s_mm, target, mask, cold = splits[split]
      fused = fused_scores(rule, s_id, s_mm, w, mask, cold, depth=depth)
      tie = None if optimistic else fused_scores("score", s_id, s_mm, w, mask, cold)
      row.append(ndcg_at(target_rank(fused, target, tie)))
    if best is None or row[0] > best[0]:
      best = (row[0], row[1], float(w))
  return best


def agreement(splits: Dict[str, tuple]) -> Dict[str, float]:
  """How alike the two views' test rankings are, per user: the correlation of their NDCG@20,
  the share of users where exactly one view puts the target in its top 20, and the NDCG@20 of
  an oracle that takes the better view for each user (an upper bound no rule reaches)."""
  s_id, s_mm, target, mask, cold = splits["test"]
  per = []
  for scores in (np.where(cold[None], -np.inf, s_id), s_mm):
    rank = target_rank(np.where(mask, -np.inf, scores), target)
    per.append(np.where(rank < 20, 1.0 / np.log2(rank + 2.0), 0.0))
  hit_id, hit_mm = per[0] > 0, per[1] > 0
  return {
    "ndcg_correlation": float(np.corrcoef(per[0], per[1])[0, 1]),
    "one_view_hits": float(np.mean(hit_id != hit_mm)),
    "oracle": float(np.mean(np.maximum(per[0], per[1]))),
  }


def pair_splits(id_rec: dict, mm_rec: Optional[dict] = None) -> Dict[str, tuple]:
  """{split: (s_id, s_mm, targets, mask, cold)} of one joint run, or of two single-view runs."""
  out = {}
  for split in ("valid", "test"):
    scores, target, mask, cold = view_matrices(id_rec, split)
    if mm_rec is not None:
      scores["mm"] = view_matrices(mm_rec, split)[0]["mm"]
    out[split] = (scores["id"], scores["mm"], target, mask, cold)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--store", required=True, help="a quality store (*-standard.json)")
  parser.add_argument("--rules", default="score,z,prob,rank")
  parser.add_argument("--depth", type=int, default=200, help="rank rule: ranks truncated here")
  parser.add_argument("--ties", choices=("score", "optimistic"), default="score")
  parser.add_argument("--out", help="also write the results here as JSON")
  args = parser.parse_args(argv)
  records = json.loads(Path(args.store).read_text())
  by = {(r["model"], r["seed"]): r for r in records}
  rules = args.rules.split(",")
  results: Dict[tuple, list] = {}
  for seed in sorted(s for m, s in by if m == "bivrec"):
    models = {"bivrec": pair_splits(by[("bivrec", seed)])}
    if ("id_only", seed) in by and ("mm_only", seed) in by:
      models["late_fusion"] = pair_splits(by[("id_only", seed)], by[("mm_only", seed)])
    for name, splits in models.items():
      a = agreement(splits)
      results.setdefault((name, "agreement"), []).append(a)
      print(
        f"seed {seed} {name}: per-user NDCG@20 correlation {a['ndcg_correlation']:.3f}, "
        f"one view only hits {a['one_view_hits']:.3f}, oracle {a['oracle']:.4f}"
      )
      for rule in rules:
        res = tuned(rule, splits, args.ties == "optimistic", args.depth)
        results.setdefault((name, rule), []).append(res)
        print(f"seed {seed} {name} {rule}: valid {res[0]:.4f} test {res[1]:.4f} w {res[2]:.1f}")
  print("\n| model | rule | validation NDCG@20 | test NDCG@20 (mean ± std) | w per seed |")
  print("|---|---|---|---|---|")
  for (name, rule), rows in results.items():
    if rule == "agreement":
      continue
    v, t = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    ws = ", ".join(f"{r[2]:.1f}" for r in rows)
    print(f"| {name} | {rule} | {v.mean():.4f} | {t.mean():.4f} ± {t.std():.4f} | {ws} |")
  print("\n| model | per-user NDCG@20 correlation | one view only hits | oracle NDCG@20 |")
  print("|---|---|---|---|")
  for (name, rule), rows in results.items():
    if rule == "agreement":
      mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
      print(
        f"| {name} | {mean['ndcg_correlation']:.3f} | {mean['one_view_hits']:.3f} | "
        f"{mean['oracle']:.4f} |"
      )
  if args.out:
    rows = [
      {
        "model": name,
        "rule": rule,
        "seeds": rs if rule == "agreement" else [dict(zip(("valid", "test", "w"), r)) for r in rs],
      }
      for (name, rule), rs in results.items()
    ]
    payload = {"store": args.store, "ties": args.ties, "depth": args.depth, "results": rows}
    write_text_atomic(args.out, json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
