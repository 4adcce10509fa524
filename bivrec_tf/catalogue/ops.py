"""The three catalogue changes: each takes an exported version and returns the encoders and the
catalogue of the next one (`version.write_version` writes it).

- `add_items`: new vocabulary rows. The MM tower reads the new items' standardized features
  (its feature tables grow), their MM vectors come from it; the ID view has no embedding for
  them: with `id_embedding="none"` their ID rows are zero and they are cold (scored by the MM
  view alone, the model's cold rule), with `"imputed"` their ID rows are imputed from their MM
  vectors (`impute.fit_id_map`) and they are scored like warm items.
- `retire_items`: the items are marked not servable (never recommended); their rows stay, so
  histories that contain them are read as before (`undo`: servable again).
- `update_items`: the items' features are replaced and their MM vectors (and imputed ID
  vectors) recomputed.

Every other item's rows are copied bit for bit from the old version's tables, and the encoders'
weights are the old version's, so warm items score exactly as before.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from bivrec_tf.catalogue.features import NewFeatures
from bivrec_tf.catalogue.impute import IdMap, fit_id_map
from bivrec_tf.catalogue.served import Catalogue
from bivrec_tf.catalogue.version import ExportedVersion, build_encoders
from bivrec_tf.model import FIRST_ITEM, BivRecModel
from input_pipelines.errors import DataError

ID_EMBEDDINGS = ("none", "imputed")


def item_tables(model: BivRecModel):
  """(ID embeddings `[V, d]` or None, {modality: features `[V, D]`}, {modality: bool `[V]`})."""
  ids = np.array(model.views["id"].tower.embeddings) if "id" in model.views else None
  if "mm" not in model.views:
    return ids, {}, {}
  tower = model.views["mm"].tower
  features = {m: np.array(tower.tables[m]) for m in tower.modalities}
  present = {m: tower.present_masks[m].numpy() > 0.5 for m in tower.modalities}
  return ids, features, present


def with_item_tables(
  model: BivRecModel,
  id_embeddings: Optional[np.ndarray],
  features: Dict[str, np.ndarray],
  present: Dict[str, np.ndarray],
) -> BivRecModel:
  """A copy of `model`'s encoders over new item tables (any vocabulary size V'): ID embeddings
  `[V', d]`, feature tables `[V', D_m]` and presence `[V']`; every other weight is copied."""
  vocab_size = len(next(iter(features.values()))) if features else len(id_embeddings)
  tower = model.views["mm"].tower if "mm" in model.views else None
  new = build_encoders(
    model.config,
    vocab_size,
    model.max_len,
    dict(tower.feature_dims) if tower else {},
    features,
    present,
  )
  tables = {}
  if "id" in model.views:
    tables[id(model.views["id"].tower.embeddings)] = id_embeddings
  if tower is not None:
    for m in tower.modalities:
      tables[id(tower.tables[m])] = features[m]
      tables[id(tower.present_masks[m])] = present[m].astype(np.float32)
  for v in model.view_names:
    old_w, new_w = model.views[v].weights, new.views[v].weights
    if [w.name for w in old_w] != [w.name for w in new_w]:
      raise ValueError("the rebuilt encoders do not match the exported ones")
    for a, b in zip(old_w, new_w):
      b.assign(tables.get(id(a), a))
  return new


def _id_map(v: ExportedVersion, ids: np.ndarray) -> IdMap:
  """The MM -> ID map fitted on the items with a trained ID embedding (neither cold nor
  imputed)."""
  cat = v.catalogue
  trained = ~cat.cold & ~cat.imputed
  return fit_id_map(cat.tables["mm"][trained], ids[FIRST_ITEM:][trained])


def _candidates(model: BivRecModel, view: str, vectors: np.ndarray) -> np.ndarray:
  """Tower outputs `[n, d]` -> candidate vectors (unit-norm for cosine), as `item_table`."""
  encoder = model.views[view]
  out = tf.math.l2_normalize(vectors, axis=-1) if encoder.normalize else tf.constant(vectors)
  return out.numpy()


def _mm_rows(model: BivRecModel, rows: np.ndarray) -> np.ndarray:
  """MM candidate vectors `[n, d]` of catalogue rows `rows` (tower on their features)."""
  return model.views["mm"].item_vectors(tf.constant(rows + FIRST_ITEM, tf.int64)).numpy()


def _known_rows(v: ExportedVersion, ids: Sequence[str], where, must_exist: bool) -> np.ndarray:
  rows = v.catalogue.rows(ids)
  bad = np.flatnonzero(rows < 0) if must_exist else np.flatnonzero(rows >= 0)
  if bad.size:
    x = ids[int(bad[0])]
    file, line, label = where(x)
    hint = "use add for new items" if must_exist else "use update to change its features"
    state = "not in" if must_exist else "already in"
    raise DataError(
      file,
      f"item {x!r} is {state} version {v.version} ({hint})",
      line=line,
      field="item id",
      line_label=label,
    )
  return rows


def add_items(
  v: ExportedVersion, new: NewFeatures, id_embedding: str = "none"
) -> Tuple[BivRecModel, Catalogue, dict]:
  """The next version's (encoders, catalogue, op record) with `new`'s items appended."""
  if id_embedding not in ID_EMBEDDINGS:
    raise ValueError(f"--id-embedding {id_embedding!r}: choose one of {ID_EMBEDDINGS}")
  if "mm" not in v.model.views:
    raise ValueError("this model has no MM view: it cannot score items it was not trained on")
  _known_rows(v, new.ids, new.where.get, must_exist=False)
  cat, n = v.catalogue, len(new.ids)
  old_ids, features, present = item_tables(v.model)
  for m in features:
    given = new.values.get(m)
    features[m] = np.concatenate(
      [features[m], given if given is not None else np.zeros((n, features[m].shape[1]))]
    ).astype(np.float32)
    present[m] = np.concatenate([present[m], new.present.get(m, np.zeros(n, bool))])
  d = old_ids.shape[1] if old_ids is not None else 0
  ids = None if old_ids is None else np.concatenate([old_ids, np.zeros((n, d), np.float32)])
  model = with_item_tables(v.model, ids, features, present)
  rows = np.arange(cat.num_items, cat.num_items + n)
  tables = {"mm": np.concatenate([cat.tables["mm"], _mm_rows(model, rows)])}
  imputed = id_embedding == "imputed" and ids is not None
  op = {"op": "add", "items": n, "id_embedding": id_embedding if ids is not None else "-"}
  if ids is not None:
    new_id = np.zeros((n, d), np.float32)
    if imputed:
      id_map = _id_map(v, old_ids)
      new_id = id_map.apply(tables["mm"][rows])
      model.views["id"].tower.embeddings[rows[0] + FIRST_ITEM :].assign(new_id)
      op["id_map"] = {"lambda": id_map.lam, "holdout_cosine": id_map.holdout_cosine}
    tables["id"] = np.concatenate([cat.tables["id"], _candidates(model, "id", new_id)])
  catalogue = Catalogue(
    vocab=np.concatenate([cat.vocab, np.asarray(new.ids, str)]),
    tables=tables,
    cold=np.concatenate([cat.cold, np.full(n, not imputed)]),
    servable=np.concatenate([cat.servable, np.ones(n, bool)]),
    popularity=np.concatenate([cat.popularity, np.zeros(n, np.float32)]),
    imputed=np.concatenate([cat.imputed, np.full(n, imputed)]),
  )
  return model, catalogue, op


def retire_items(
  v: ExportedVersion, ids: Sequence[str], where, undo: bool = False
) -> Tuple[BivRecModel, Catalogue, dict]:
  """The next version's (encoders, catalogue, op record) with `ids` never recommended (with
  `undo`: recommendable again, back in stock). `where(id)` -> (file, line, label) locates an id
  for error messages."""
  rows = _known_rows(v, list(ids), where, must_exist=True)
  cat = v.catalogue
  servable = cat.servable.copy()
  servable[rows] = undo
  if not servable.any():
    raise ValueError("retiring these items would leave nothing to recommend")
  new = Catalogue(cat.vocab, cat.tables, cat.cold, servable, cat.popularity, cat.imputed)
  op = {"op": "unretire" if undo else "retire", "items": len(rows)}
  return v.model, new, {**op, "retired": int((~servable).sum())}


def update_items(v: ExportedVersion, new: NewFeatures) -> Tuple[BivRecModel, Catalogue, dict]:
  """The next version's (encoders, catalogue, op record) with `new`'s items' features replaced
  (only the modalities given; an item's other modalities keep their features)."""
  if "mm" not in v.model.views:
    raise ValueError("this model has no MM view: item features are not used")
  rows = _known_rows(v, new.ids, new.where.get, must_exist=True)
  cat = v.catalogue
  old_ids, features, present = item_tables(v.model)
  for m, given in new.present.items():
    at = rows[given] + FIRST_ITEM
    features[m][at] = new.values[m][given]
    present[m][at] = True
  model = with_item_tables(v.model, old_ids, features, present)
  tables = {k: t.copy() for k, t in cat.tables.items()}
  tables["mm"][rows] = _mm_rows(model, rows)
  redo = rows[cat.imputed[rows]]
  if redo.size:
    new_id = _id_map(v, old_ids).apply(tables["mm"][redo])
    model.views["id"].tower.embeddings.scatter_nd_update(redo[:, None] + FIRST_ITEM, new_id)
    tables["id"][redo] = _candidates(model, "id", new_id)
  catalogue = Catalogue(cat.vocab, tables, cat.cold, cat.servable, cat.popularity, cat.imputed)
  return model, catalogue, {"op": "update", "items": len(rows), "modalities": sorted(new.present)}
