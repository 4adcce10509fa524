"""Two-stage retrieval: the export's interests, ANN candidates per interest, exact re-ranking.

For catalogues whose exact scan no longer fits a request's budget (docs/serving.md, "Large
catalogues"). The export stays what TF Serving loads; this runs beside it:

1. interests: the export's `user_interests` signature (TF Serving REST, pinned to the version the
   index was built from, or a SavedModel loaded in-process) -> U_v `[B, K, d]` per view;
2. candidates: the ANN index (`serving.ann_index`) returns the `candidates` best items of each
   of the K x K joined interest pairs (warm items, ranked by their fused score) and of the K MM
   interests (cold items); the results are merged per request row;
3. exact re-ranking of the candidates, as the export ranks: s_v(i) = max_k <U_v[k], e_v(i)> /
   tau_rec, s = w s_id + (1 - w) s_mm (cold items: s_mm), retired items never returned, the
   request's history items excluded iff the export's `exclude_history`; the top k (fewer when
   fewer candidates survive; a history without a known item gets the export's popular items).

    python -m serving.two_stage build --export saved_models/bivrec/3 --out ann/bivrec-3
    python -m serving.two_stage query --index ann/bivrec-3 --url http://localhost:8501 \\
        --model bivrec --history item_00017 item_00042 --k 10
    python -m serving.two_stage query --index ann/bivrec-3 --export saved_models/bivrec/3 ...

With an exact index ("Flat") and `candidates` >= the catalogue, the answer is the export's
serving_default answer (tests/serving/test_two_stage.py).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import faiss
import numpy as np

from serving.ann_index import DEFAULT_NPROBE, ItemIndex
from serving.client import Client, RestError, pad_histories

DEFAULT_CANDIDATES = 100  # per search query
EMBED_BATCH = 65_536  # item ids per item_embeddings call while building
METADATA = Path("assets.extra") / "bivrec_metadata.json"

InterestFn = Callable[[List[List[str]]], Dict[str, np.ndarray]]


class TwoStageRetriever:
  """Top-k recommendations from an ItemIndex and a source of interests.

  Args:
    index: the ItemIndex built from the export that `interests` comes from.
    interests: padded histories (str `[B, L]`) -> view -> float32 `[B, K, d]`.
    candidates: ANN neighbours fetched per search query (joined interest pair, cold MM
      interest).
  """

  def __init__(self, index: ItemIndex, interests: InterestFn, candidates: int = DEFAULT_CANDIDATES):
    if candidates < 1:
      raise ValueError(f"two-stage: candidates = {candidates} must be >= 1")
    self.index, self.interests, self.candidates = index, interests, int(candidates)

  def recommend(
    self, histories: Sequence[Sequence[str]], k: int = 10
  ) -> Tuple[np.ndarray, np.ndarray]:
    """histories: raw ids, most recent last -> (item ids str `[B, k]`, scores float32 `[B, k]`);
    rows with fewer than k survivors are padded with "" and -inf."""
    if k < 1:
      raise ValueError(f"two-stage: k = {k} must be >= 1")
    padded = pad_histories(histories)
    queries = self.interests(padded)
    seen = [self.index.rows(h) for h in padded]
    rows, scores = self.rank(queries, seen, k)
    ids = np.where(rows >= 0, self.index.item_ids[np.maximum(rows, 0)], b"")
    return np.char.decode(ids.astype(bytes), "utf-8"), scores

  def rank(
    self, queries: Dict[str, np.ndarray], seen: Sequence[np.ndarray], k: int
  ) -> Tuple[np.ndarray, np.ndarray]:
    """queries: view -> `[B, K, d]`; seen: per row the int64 rows of its history (-1 = unknown)
    -> (rows int64 `[B, k]`, -1 = no item; scores float32 `[B, k]`)."""
    ix = self.index
    batch = len(seen)
    found = []
    for part, q in ix.queries(queries).items():
      if ix.ann[part].ntotal == 0:
        continue
      _, nn = ix.ann[part].search(np.ascontiguousarray(q.reshape(-1, q.shape[-1])), self.candidates)
      found.append(nn.reshape(batch, -1))
    out_rows = np.full((batch, k), -1, np.int64)
    out_scores = np.full((batch, k), -np.inf, np.float32)
    for b in range(batch):
      known = seen[b][seen[b] >= 0]
      if known.size == 0:
        popular = ix.servable[ix.popular]
        rows, scores = ix.popular[popular][:k], ix.popular_scores[popular][:k]
        out_rows[b, : len(rows)], out_scores[b, : len(rows)] = rows, scores
        continue
      cand = np.unique(np.concatenate([nn[b] for nn in found]))
      cand = cand[cand >= 0]
      cand = cand[ix.servable[cand]]
      if ix.exclude_history:
        cand = cand[~np.isin(cand, known)]
      s = fused_scores({v: queries[v][b] for v in ix.views}, ix, cand)
      top = np.argsort(-s, kind="stable")[:k]
      out_rows[b, : len(top)], out_scores[b, : len(top)] = cand[top], s[top]
    return out_rows, out_scores


def fused_scores(queries: Dict[str, np.ndarray], index: ItemIndex, rows: np.ndarray) -> np.ndarray:
  """The export's score of `rows` int64 `[n]` for one request: queries view -> `[K, d]` ->
  float32 `[n]` (max over interests / tau_rec per view; w s_id + (1 - w) s_mm, or with the
  index's interest-level fusion max_k [w s_id,k + (1 - w) s_mm,k]; cold: s_mm)."""
  per_interest = {  # [K, n]
    v: np.asarray(q, np.float32) @ np.asarray(index.vectors[v][rows]).T / np.float32(index.tau_rec)
    for v, q in queries.items()
  }
  s = {v: p.max(axis=0) for v, p in per_interest.items()}
  if len(s) == 1:
    return next(iter(s.values())).astype(np.float32)
  w = np.float32(index.fusion_weight)
  if index.fusion == "interest":
    fused = (w * per_interest["id"] + (np.float32(1) - w) * per_interest["mm"]).max(axis=0)
  else:
    fused = w * s["id"] + (np.float32(1) - w) * s["mm"]
  return np.where(index.cold[rows], s["mm"], fused).astype(np.float32)


# --- interest sources ------------------------------------------------------------------------------


def saved_model_interests(export_dir, views: Sequence[str]) -> InterestFn:
  """`user_interests` of a SavedModel loaded in this process."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  fn = tf.saved_model.load(str(export_dir)).signatures["user_interests"]

  def interests(histories):
    out = fn(history=tf.constant(histories, tf.string))
    return {v: out[f"{v}_interests"].numpy() for v in views}

  return interests


def rest_interests(
  url: str, model: str, version: Optional[int], views: Sequence[str], timeout: float = 10.0
) -> InterestFn:
  """`user_interests` through TF Serving's REST API (pinned to `version` when given)."""
  client = Client(url, model, version=version, timeout=timeout)

  def interests(histories):
    out = client.predict(inputs={"history": histories}, signature_name="user_interests")
    return {v: np.asarray(out["outputs"][f"{v}_interests"], np.float32) for v in views}

  return interests


# --- building from an export -------------------------------------------------------------------------


def index_from_export(
  export_dir, spec: str = "auto", nprobe: int = DEFAULT_NPROBE, top_k: Optional[int] = None
) -> ItemIndex:
  """Reads an export version (the SavedModel TF Serving loads) and builds its ItemIndex: item
  vectors through `item_embeddings`, cold / servable flags and popular items from the module's
  variables, fusion weight, tau_rec, views and history setting from its metadata."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  export = Path(export_dir)
  meta_path = export / METADATA
  if not meta_path.is_file():
    raise FileNotFoundError(f"{meta_path} not found: is {export} an export version directory?")
  meta = json.loads(meta_path.read_text())
  tau = meta.get("tau_rec", (meta.get("config") or {}).get("model", {}).get("tau_rec"))
  if tau is None:
    raise ValueError(f"{meta_path}: no tau_rec (nor config.model.tau_rec): re-export the run")
  loaded = tf.saved_model.load(str(export))
  vocab = loaded.vocab.numpy()
  cold = loaded.cold.numpy().astype(bool)
  offset = len(vocab) - len(cold)  # padding and OOV rows of the vocabulary
  item_ids = vocab[offset:]
  servable = loaded.servable.numpy().astype(bool) if hasattr(loaded, "servable") else None
  embed = loaded.signatures["item_embeddings"]
  views = list(meta["views"])
  parts = {v: [] for v in views}
  for start in range(0, len(item_ids), EMBED_BATCH):
    out = embed(item_ids=tf.constant(item_ids[start : start + EMBED_BATCH]))
    for v in views:
      parts[v].append(out[f"{v}_embedding"].numpy())
  popular = loaded.popular_ids.numpy() - offset
  return ItemIndex.build(
    item_ids,
    {v: np.concatenate(p) for v, p in parts.items()},
    cold,
    fusion_weight=meta["fusion_weight"],
    fusion=meta.get("fusion", "score"),  # exports made before the field: score level
    tau_rec=tau,
    exclude_history=meta.get("exclude_history", True),
    servable=servable,
    popular=popular,
    popular_scores=loaded.popular_scores.numpy(),
    spec=spec,
    nprobe=nprobe,
    info={
      "export": str(export.resolve()),
      "model_name": meta.get("model_name"),
      "version": meta.get("version"),
      "table_dtype": meta.get("table_dtype", "float32"),
    },
  )


# --- command line ------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m serving.two_stage",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  build = sub.add_parser("build", help="build the ANN index of an export version")
  build.add_argument("--export", required=True, help="export version directory")
  build.add_argument("--out", required=True, help="index directory to create")
  build.add_argument(
    "--spec", default="auto", help="FAISS index_factory string, or auto (Flat / IVF<n>,Flat)"
  )
  build.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE, help="IVF lists per query")
  build.add_argument("--threads", type=int, default=0, help="FAISS threads (0 = all cores)")
  query = sub.add_parser("query", help="recommend for one history")
  query.add_argument("--index", required=True, help="index directory")
  source = query.add_mutually_exclusive_group(required=True)
  source.add_argument("--url", help="TF Serving REST base URL (interests from user_interests)")
  source.add_argument("--export", help="load the export in-process instead of calling a server")
  query.add_argument("--model", default=None, help="model name (default: the index's)")
  query.add_argument(
    "--version", type=int, default=None, help="default: the version the index was built from"
  )
  query.add_argument("--history", nargs="*", default=[], metavar="ID", help="oldest first")
  query.add_argument("--k", type=int, default=10)
  query.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES)
  query.add_argument("--nprobe", type=int, default=None, help="default: the index's")
  query.add_argument("--threads", type=int, default=1, help="FAISS threads per query")
  args = parser.parse_args(argv)
  try:
    if args.command == "build":
      if args.threads:
        faiss.omp_set_num_threads(args.threads)
      start = time.perf_counter()
      index = index_from_export(args.export, args.spec, args.nprobe)
      path = index.save(args.out)
      mem = index.memory_bytes()
      print(
        f"built {path}: {index.num_items:,} items, {index.info['spec']}, "
        f"{time.perf_counter() - start:.1f} s, ANN {mem['ann'] / 1e6:.0f} MB + "
        f"re-ranking arrays {mem['rerank'] / 1e6:.0f} MB"
      )
      return 0
    if args.k < 1 or args.candidates < 1:
      parser.error("--k and --candidates must be >= 1")
    faiss.omp_set_num_threads(args.threads)
    index = ItemIndex.load(args.index)
    if args.nprobe:
      index.set_nprobe(args.nprobe)
    if args.url:
      model = args.model or index.info.get("model_name") or "bivrec"
      version = args.version if args.version is not None else index.info.get("version")
      interests = rest_interests(args.url, model, version, index.views)
    else:
      interests = saved_model_interests(args.export, index.views)
    ids, scores = TwoStageRetriever(index, interests, args.candidates).recommend(
      [args.history], args.k
    )
  except RestError as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(f"{'rank':>4}  {'item_id':<24} score")
  for rank, (item, score) in enumerate(zip(ids[0], scores[0]), 1):
    if item:
      print(f"{rank:>4}  {item:<24} {score:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
