"""An approximate-nearest-neighbour index over an export's item vectors, for two-stage retrieval.

One FAISS index per view (inner product over the unit-norm vectors the export's
`item_embeddings` signature answers), plus what the exact re-ranking of `serving.two_stage` needs:
the item vectors themselves, the cold and servable (not retired) flags, the popular items, the
fusion weight, `tau_rec` and the history setting. Rows follow the export's item tables: row r is
the export's r-th real item (vocabulary row r + 2; rows 0 and 1 are padding and OOV).

What goes into each view's ANN index: servable items only (a retired item can never be
returned); in a two-view export the ID index also leaves out cold items, whose fused score is
s_mm alone (their ID vectors are never read), so the MM index is what finds them.

On disk (`save` writes a temporary sibling directory and renames it; `load` memory-maps the
arrays):

    index.json                views, fusion_weight, tau_rec, exclude_history, spec, nprobe,
                              the export it was built from, build seconds, library version
    item_ids.npy              bytes [N] raw item ids by row;  item_order.npy  int64 [N] sort order
    cold.npy servable.npy     bool [N]
    popular.npy               int64 [P] rows answering an empty history (+ popular_scores.npy)
    vectors_<view>.npy        float32 [N, d] (the export's item_embeddings, for re-ranking)
    <view>.faiss              the view's FAISS index (ids = rows)

Index types (`spec`): "auto" is exact ("Flat") below AUTO_EXACT_BELOW items, else "IVF<n>,Flat"
with n = the power of two nearest 4 sqrt(N) (k-means coarse quantizer trained on a sample of
TRAIN_PER_LIST points per list); any FAISS `index_factory` string is accepted.
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
TRAIN_PER_LIST = 64
DEFAULT_NPROBE = 32
SEED = 0


def auto_spec(num_items: int) -> str:
  """The FAISS factory string "auto" stands for at `num_items` items."""
  if num_items < AUTO_EXACT_BELOW:
    return "Flat"
  return f"IVF{2 ** round(math.log2(4 * math.sqrt(num_items)))},Flat"


def build_ann(vectors: np.ndarray, rows: np.ndarray, spec: str, nprobe: int) -> faiss.Index:
  """A FAISS inner-product index over `vectors[rows]` (float32 `[N, d]`, int64 `[n]`) whose search
  answers rows (-1 where fewer than asked exist). IVF indexes are trained on a sample."""
  d = vectors.shape[1]
  index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
  x = np.ascontiguousarray(vectors[rows], np.float32)
  if not index.is_trained:
    ivf = faiss.extract_index_ivf(index)
    sample = min(len(x), TRAIN_PER_LIST * ivf.nlist)
    pick = np.random.default_rng(SEED).choice(len(x), sample, replace=False)
    index.train(x[np.sort(pick)])
  try:
    faiss.extract_index_ivf(index).nprobe = nprobe
  except RuntimeError:  # not an IVF index
    pass
  if not isinstance(index, faiss.IndexIVF):
    index = faiss.IndexIDMap2(index)
  index.add_with_ids(x, rows.astype(np.int64))
  return index


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
  """Lists scanned per query of an IVF index (no effect on other types)."""
  try:
    faiss.extract_index_ivf(index).nprobe = int(nprobe)
  except RuntimeError:
    pass


def index_bytes(index: faiss.Index) -> int:
  """Serialized size of a FAISS index (about its resident memory)."""
  return int(faiss.serialize_index(index).nbytes)


@dataclasses.dataclass
class ItemIndex:
  """Everything two-stage retrieval reads, for N items and the export's views.

  Attributes:
    item_ids: bytes `[N]` raw ids by row. cold, servable: bool `[N]`.
    vectors: view -> float32 `[N, d]` unit-norm item vectors (may be memory-mapped).
    popular: int64 `[P]` rows answering a history without a known item, popular_scores `[P]`.
    ann: view -> FAISS index over that view's searchable rows.
    fusion_weight, tau_rec, exclude_history: the export's scoring settings.
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

  def __post_init__(self):
    if self.item_order is None:
      self.item_order = np.argsort(self.item_ids, kind="stable")

  @property
  def views(self):
    return tuple(self.vectors)

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
  ) -> "ItemIndex":
    """Builds the views' ANN indexes (see the module docstring for what each one holds)."""
    ids = np.asarray([x if isinstance(x, bytes) else str(x).encode() for x in item_ids])
    n = len(ids)
    cold = np.asarray(cold, bool)
    servable = np.ones(n, bool) if servable is None else np.asarray(servable, bool)
    for name, arr in [("cold", cold), ("servable", servable)] + [
      (f"vectors[{v}]", t) for v, t in vectors.items()
    ]:
      if len(arr) != n:
        raise ValueError(f"ann index: {name} has {len(arr)} rows but there are {n} item ids")
    spec = auto_spec(n) if spec == "auto" else spec
    start, ann = time.perf_counter(), {}
    for v, table in vectors.items():
      keep = servable & ~cold if (v == "id" and len(vectors) > 1) else servable
      ann[v] = build_ann(table, np.flatnonzero(keep), spec, nprobe)
    info = {
      **(info or {}),
      "spec": spec,
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
    )

  def rows(self, ids: Sequence[str]) -> np.ndarray:
    """int64 `[n]` row of each raw id, -1 for ids the index does not know (and "")."""
    if len(ids) == 0:
      return np.zeros(0, np.int64)
    keys = np.asarray([str(x).encode() for x in ids], dtype=self.item_ids.dtype)
    sorted_ids = self.item_ids[self.item_order]
    pos = np.minimum(np.searchsorted(sorted_ids, keys), len(sorted_ids) - 1)
    rows = np.asarray(self.item_order[pos], np.int64)
    known = (sorted_ids[pos] == keys) & (keys != b"")
    return np.where(known, rows, -1)

  def set_nprobe(self, nprobe: int) -> None:
    for index in self.ann.values():
      set_nprobe(index, nprobe)
    self.info["nprobe"] = int(nprobe)

  def memory_bytes(self) -> Dict[str, int]:
    """Bytes held: the ANN indexes and the re-ranking arrays (vectors, flags, ids)."""
    arrays = [*self.vectors.values(), self.item_ids, self.item_order, self.cold, self.servable]
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
      for v, index in self.ann.items():
        faiss.write_index(index, str(tmp / f"{v}.faiss"))
      meta = {
        **self.info,
        "views": list(self.views),
        "fusion_weight": self.fusion_weight,
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
      if k not in ("views", "fusion_weight", "tau_rec", "exclude_history")
    }
    return cls(
      item_ids=arr("item_ids"),
      item_order=arr("item_order"),
      vectors={v: arr(f"vectors_{v}") for v in meta["views"]},
      cold=np.asarray(arr("cold")),
      servable=np.asarray(arr("servable")),
      popular=np.asarray(arr("popular")),
      popular_scores=np.asarray(arr("popular_scores")),
      ann={v: faiss.read_index(str(path / f"{v}.faiss")) for v in meta["views"]},
      fusion_weight=meta["fusion_weight"],
      tau_rec=meta["tau_rec"],
      exclude_history=meta["exclude_history"],
      info=info,
    )
