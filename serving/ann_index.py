"""An approximate-nearest-neighbour index over an export's item vectors, for two-stage retrieval.

FAISS inner-product indexes over the unit-norm vectors the export's `item_embeddings` signature
answers, plus what the exact re-ranking of `serving.two_stage` needs: the item vectors, the cold
and servable (not retired) flags, the popular items, the fusion weight, `tau_rec` and the history
setting. Rows follow the export's item tables: row r is the export's r-th real item (vocabulary
row r + 2; rows 0 and 1 are padding and OOV). Only servable items are indexed (a retired item can
never be returned).

Fusion-aware parts. The fused score of a warm item is
  w max_k <U_id[k], e_id> + (1 - w) max_j <U_mm[j], e_mm> = max_{k,j} <[w U_id[k], (1 - w) U_mm[j]],
                                                                      [e_id, e_mm]>   (times 1/tau)
(the two maxima are independent), so one index over the joined vectors [e_id, e_mm] of the warm
items (part "fused"), searched with the K x K joined queries, ranks warm items exactly by their
fused score: an item in the fused top-n is in the top-n of the query pair that attains its score.
An export with interest-level fusion (`ModelConfig.fusion` "interest", index field `fusion`)
scores max_k <[w U_id[k], (1 - w) U_mm[k]], [e_id, e_mm]>: the same index, searched with the K
joined queries of matching interests (k = j) only.
Cold items (fused score = s_mm) are in their own MM index (part "cold", searched with the K MM
interests). Searching each view separately instead misses the items whose fused score is high but
neither view's alone is (measured: docs/serving.md, "Large catalogues"). A one-view export has
one part, named after its view.

On disk (`save` writes a temporary sibling directory and renames it; `load` memory-maps the
arrays):

    index.json                views, fusion_weight, fusion, tau_rec, exclude_history, spec, nprobe,
                              the export it was built from, build seconds, library version
    item_ids.npy              bytes [N] raw item ids by row;  item_order.npy  int64 [N] sort order
    cold.npy servable.npy     bool [N]
    popular.npy               int64 [P] rows answering an empty history (+ popular_scores.npy)
    vectors_<view>.npy        float32 [N, d] (the export's item_embeddings, for re-ranking)
    <part>.faiss              each part's FAISS index (ids = rows): fused + cold, or the view

Index types (`spec`, for the main part; the cold part is always "auto" for its size): "auto" is
exact ("Flat") below AUTO_EXACT_BELOW items, else "IVF<n>,Flat" with n = the power of two nearest
2 sqrt(N) (spherical k-means coarse quantizer trained on TRAIN_PER_LIST points per list), from
AUTO_HNSW_QUANTIZER_FROM items "IVF<n>_HNSW32,Flat" (items find their list through an HNSW graph
over the centroids instead of comparing with all of them: the build's main cost at 10M items);
any FAISS `index_factory` string is accepted.
"""

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import faiss
import numpy as np

INDEX_FILE = "index.json"
AUTO_EXACT_BELOW = 50_000
AUTO_HNSW_QUANTIZER_FROM = 2_000_000  # items assigned to lists through an HNSW graph of centroids
TRAIN_PER_LIST = 40
ADD_CHUNK = 1_000_000
DEFAULT_NPROBE = 32
FUSIONS = ("score", "interest")  # ModelConfig.fusion
SEED = 0


def check_fusion(fusion: str) -> None:
  if fusion not in FUSIONS:
    raise ValueError(f"ann index: fusion = {fusion!r} must be one of {FUSIONS}")


def auto_spec(num_items: int) -> str:
  """The FAISS factory string "auto" stands for at `num_items` items."""
  if num_items < AUTO_EXACT_BELOW:
    return "Flat"
  lists = 2 ** round(math.log2(2 * math.sqrt(num_items)))
  quantizer = "_HNSW32" if num_items >= AUTO_HNSW_QUANTIZER_FROM else ""
  return f"IVF{lists}{quantizer},Flat"


def build_ann(vectors_of, rows: np.ndarray, dim: int, spec: str, nprobe: int) -> faiss.Index:
  """A FAISS inner-product index over `vectors_of(rows)` (a function: int64 `[n]` -> float32
  `[n, dim]`, called on a sample and then on ADD_CHUNK rows at a time, so that the vectors are
  never all copied at once) whose search answers rows (-1 where fewer than asked exist)."""
  index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
  if not index.is_trained:
    ivf = faiss.extract_index_ivf(index)
    sample = min(len(rows), TRAIN_PER_LIST * ivf.nlist)
    pick = np.random.default_rng(SEED).choice(len(rows), sample, replace=False)
    index.train(vectors_of(rows[np.sort(pick)]))
  set_nprobe(index, nprobe)
  if not isinstance(index, faiss.IndexIVF):
    index = faiss.IndexIDMap2(index)
  for start in range(0, len(rows), ADD_CHUNK):
    part = rows[start : start + ADD_CHUNK]
    index.add_with_ids(vectors_of(part), part.astype(np.int64))
  return index


def index_parts(vectors: Dict[str, np.ndarray], cold: np.ndarray, servable: np.ndarray):
  """-> [(part, rows int64 `[n]`, dim, vectors_of: rows -> float32 `[len(rows), dim]`)]: the
  joined [e_id, e_mm] of warm servable items and e_mm of cold servable items, or one view's
  servable items."""

  def view_of(v):
    return lambda rows: np.ascontiguousarray(vectors[v][rows], np.float32)

  def joined(rows):
    return np.concatenate([vectors["id"][rows], vectors["mm"][rows]], axis=1).astype(np.float32)

  if len(vectors) == 1:
    ((v, table),) = vectors.items()
    return [(v, np.flatnonzero(servable), table.shape[1], view_of(v))]
  d = vectors["id"].shape[1] + vectors["mm"].shape[1]
  return [
    ("fused", np.flatnonzero(servable & ~cold), d, joined),
    ("cold", np.flatnonzero(servable & cold), vectors["mm"].shape[1], view_of("mm")),
  ]


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
  """Lists scanned per query of an IVF index (no effect on other types)."""
  try:
    faiss.extract_index_ivf(index).nprobe = int(nprobe)
  except RuntimeError:
    pass


def index_bytes(index: faiss.Index) -> int:
  """About the resident bytes of a FAISS index: stored codes and ids, plus the IVF centroids."""
  try:
    ivf = faiss.extract_index_ivf(index)
  except RuntimeError:
    return int(index.ntotal * (index.d * 4 + 8))
  return int(ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4)


@dataclasses.dataclass
class ItemIndex:
  """Everything two-stage retrieval reads, for N items and the export's views.

  Attributes:
    item_ids: bytes `[N]` raw ids by row. cold, servable: bool `[N]`.
    vectors: view -> float32 `[N, d]` unit-norm item vectors (may be memory-mapped).
    popular: int64 `[P]` rows answering a history without a known item, popular_scores `[P]`.
    ann: view -> FAISS index over that view's searchable rows.
    fusion_weight, tau_rec, exclude_history: the export's scoring settings; fusion: its rule,
      "score" (w s_id + (1 - w) s_mm) or "interest" (max_k of w s_id,k + (1 - w) s_mm,k).
    info: where it came from and how it was built (written to index.json).
  """

  item_ids: np.ndarray
  vectors: Dict[str, np.ndarray]
  cold: np.ndarray
  servable: np.ndarray
  popular: np.ndarray
  popular_scores: np.ndarray
  ann: Dict[str, faiss.Index]
  fusion_weight: float
  tau_rec: float
  exclude_history: bool
  info: dict = dataclasses.field(default_factory=dict)
  item_order: Optional[np.ndarray] = None
  fusion: str = "score"

  def __post_init__(self):
    check_fusion(self.fusion)
    if self.item_order is None:
      self.item_order = np.argsort(self.item_ids, kind="stable")
    self._sorted_ids = np.asarray(self.item_ids[self.item_order])  # for `rows`

  @property
  def views(self):
    return tuple(self.vectors)

  def queries(self, interests: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """interests view -> `[B, K, d]` -> part -> float32 `[B, Q, d']` search queries: for the fused
    part the K x K joined queries [w U_id[k], (1 - w) U_mm[j]] (Q = K^2, d' = 2d), or with
    interest-level fusion the K joined queries [w U_id[k], (1 - w) U_mm[k]] (Q = K)."""
    u = {v: np.asarray(interests[v], np.float32) for v in self.views}
    if len(u) == 1:
      return u
    w = np.float32(self.fusion_weight)
    b, k, d = u["id"].shape
    if self.fusion == "interest":
      joined = np.concatenate([w * u["id"], (1 - w) * u["mm"]], axis=-1)
      return {"fused": joined.astype(np.float32), "cold": u["mm"]}
    left = np.broadcast_to((w * u["id"])[:, :, None, :], (b, k, k, d))
    right = np.broadcast_to(((1 - w) * u["mm"])[:, None, :, :], (b, k, k, d))
    joined = np.concatenate([left, right], axis=-1).reshape(b, k * k, 2 * d)
    return {"fused": joined, "cold": u["mm"]}

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  @classmethod
  def build(
    cls,
    item_ids: Sequence,
    vectors: Dict[str, np.ndarray],
    cold: np.ndarray,
    fusion_weight: float,
    tau_rec: float,
    exclude_history: bool = True,
    servable: Optional[np.ndarray] = None,
    popular: Optional[np.ndarray] = None,
    popular_scores: Optional[np.ndarray] = None,
    spec: str = "auto",
    nprobe: int = DEFAULT_NPROBE,
    info: Optional[dict] = None,
    fusion: str = "score",
  ) -> "ItemIndex":
    """Builds the views' ANN indexes (see the module docstring for what each one holds)."""
    check_fusion(fusion)  # before any index is built
    ids = np.asarray([x if isinstance(x, bytes) else str(x).encode() for x in item_ids])
    n = len(ids)
    cold = np.asarray(cold, bool)
    servable = np.ones(n, bool) if servable is None else np.asarray(servable, bool)
    for name, arr in [("cold", cold), ("servable", servable)] + [
      (f"vectors[{v}]", t) for v, t in vectors.items()
    ]:
      if len(arr) != n:
        raise ValueError(f"ann index: {name} has {len(arr)} rows but there are {n} item ids")
    start, ann, specs = time.perf_counter(), {}, {}
    for part, rows, dim, vectors_of in index_parts(vectors, cold, servable):
      specs[part] = auto_spec(len(rows)) if (spec == "auto" or part == "cold") else spec
      ann[part] = build_ann(vectors_of, rows, dim, specs[part], nprobe)
    main = next(iter(specs))
    info = {
      **(info or {}),
      "spec": specs[main],
      "specs": specs,
      "nprobe": int(nprobe),
      "build_seconds": time.perf_counter() - start,
      "faiss": faiss.__version__,
      "num_items": n,
    }
    return cls(
      item_ids=ids,
      vectors={v: np.asarray(t, np.float32) for v, t in vectors.items()},
      cold=cold,
      servable=servable,
      popular=np.zeros(0, np.int64) if popular is None else np.asarray(popular, np.int64),
      popular_scores=np.zeros(0, np.float32)
      if popular_scores is None
      else np.asarray(popular_scores, np.float32),
      ann=ann,
      fusion_weight=float(fusion_weight),
      tau_rec=float(tau_rec),
      exclude_history=bool(exclude_history),
      info=info,
      fusion=fusion,
    )

  def rows(self, ids: Sequence[str]) -> np.ndarray:
    """int64 `[n]` row of each raw id, -1 for ids the index does not know (and "")."""
    if len(ids) == 0:
      return np.zeros(0, np.int64)
    keys = np.asarray([str(x).encode() for x in ids], dtype=self.item_ids.dtype)
    pos = np.minimum(np.searchsorted(self._sorted_ids, keys), len(self._sorted_ids) - 1)
    rows = np.asarray(self.item_order[pos], np.int64)
    known = (self._sorted_ids[pos] == keys) & (keys != b"")
    return np.where(known, rows, -1)

  def set_nprobe(self, nprobe: int) -> None:
    for index in self.ann.values():
      set_nprobe(index, nprobe)
    self.info["nprobe"] = int(nprobe)

  def memory_bytes(self) -> Dict[str, int]:
    """Bytes held: the ANN indexes and the re-ranking arrays (vectors, flags, ids)."""
    arrays = [*self.vectors.values(), self.item_ids, self.item_order, self._sorted_ids]
    arrays += [self.cold, self.servable]
    return {
      "ann": sum(index_bytes(i) for i in self.ann.values()),
      "rerank": int(sum(a.nbytes for a in arrays)),
    }

  # --- files -------------------------------------------------------------------------------------

  def save(self, out_dir) -> Path:
    """Writes the index directory atomically (temporary sibling, renamed last); refuses to
    replace an existing directory."""
    out = Path(out_dir)
    if out.exists():
      raise FileExistsError(f"ann index: {out} already exists (choose a new --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
      tmp.mkdir()
      arrays = {
        "item_ids": self.item_ids,
        "item_order": self.item_order,
        "cold": self.cold,
        "servable": self.servable,
        "popular": self.popular,
        "popular_scores": self.popular_scores,
        **{f"vectors_{v}": t for v, t in self.vectors.items()},
      }
      for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", np.asarray(arr))
      for part, index in self.ann.items():
        faiss.write_index(index, str(tmp / f"{part}.faiss"))
      meta = {
        **self.info,
        "views": list(self.views),
        "fusion_weight": self.fusion_weight,
        "fusion": self.fusion,
        "tau_rec": self.tau_rec,
        "exclude_history": self.exclude_history,
      }
      (tmp / INDEX_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
      os.rename(tmp, out)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    return out

  @classmethod
  def load(cls, index_dir) -> "ItemIndex":
    """Reads an index directory; arrays are memory-mapped (pages are read as rows are used)."""
    path = Path(index_dir)
    if not (path / INDEX_FILE).is_file():
      raise FileNotFoundError(
        f"{path / INDEX_FILE} not found: build one with python -m serving.two_stage build"
      )
    meta = json.loads((path / INDEX_FILE).read_text())

    def arr(name):
      return np.load(path / f"{name}.npy", mmap_mode="r")

    info = {
      k: v
      for k, v in meta.items()
      if k not in ("views", "fusion_weight", "fusion", "tau_rec", "exclude_history")
    }
    return cls(
      item_ids=arr("item_ids"),
      item_order=arr("item_order"),
      vectors={v: arr(f"vectors_{v}") for v in meta["views"]},
      cold=np.asarray(arr("cold")),
      servable=np.asarray(arr("servable")),
      popular=np.asarray(arr("popular")),
      popular_scores=np.asarray(arr("popular_scores")),
      ann={p: faiss.read_index(str(path / f"{p}.faiss")) for p in meta["specs"]},
      fusion_weight=meta["fusion_weight"],
      tau_rec=meta["tau_rec"],
      exclude_history=meta["exclude_history"],
      info=info,
      fusion=meta.get("fusion", "score"),  # indexes built before the field: score level
    )
