"""Half-precision item tables in the export (`table_dtype`): stored at half the bytes, scored in
float32, answers within the rounding bound of the float32 export's."""

import json

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf import export as export_lib
from bivrec_tf.config import Config
from bivrec_tf.model import FIRST_ITEM
from tests.serving import models as tiny

W = 0.6
HISTORIES = [
  ["item-3", "item-9", "item-12", "item-30"],
  ["item-1", "item-1", "item-2", "item-7"],
  ["item-39", "", "", ""],
]
# Unit roundoff (half an ulp at 1.0) of each storage format.
ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  base = tmp_path_factory.mktemp("half")
  model = tiny.tiny_model(seed=3)
  paths = {
    dtype: export_lib.export_model(
      model, tiny.vocab(), W, str(base), dtype, tiny.TOP_K, table_dtype=dtype
    )
    for dtype in ROUNDOFF
  }
  return model, paths, {d: tf.saved_model.load(str(p)) for d, p in paths.items()}


def _fused_scores(model, history, dtype):
  """Every item's fused score in numpy from tables rounded to `dtype` and back to float32,
  padding and history items -inf -> `[V]`."""
  index = {item: i for i, item in enumerate(tiny.vocab())}
  ids = [index[x] for x in history if x in index and index[x] >= FIRST_ITEM][-tiny.MAX_LEN :]
  row = np.array([[0] * (tiny.MAX_LEN - len(ids)) + ids], np.int64)
  queries = {v: q.numpy()[0] for v, q in model.queries(row).items()}
  tau = model.config.model.tau_rec
  s = {}
  for v, q in queries.items():
    table = tf.cast(tf.cast(model.item_table(v), dtype), tf.float32).numpy()
    s[v] = (q @ table.T).max(axis=0) / tau
  fused = np.where(np.asarray(model.cold), s["mm"], W * s["id"] + (1 - W) * s["mm"])
  fused[:FIRST_ITEM] = -np.inf
  fused[ids] = -np.inf
  return fused


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_tables_are_stored_half_and_scored_in_float32(exports, dtype):
  model, paths, loaded = exports
  reader = tf.train.load_checkpoint(str(paths[dtype] / "variables" / "variables"))
  stored = {
    name: reader.get_variable_to_dtype_map()[name]
    for name in reader.get_variable_to_shape_map()
    if name.startswith("tables/")
  }
  assert sorted(stored) == [
    "tables/id/.ATTRIBUTES/VARIABLE_VALUE",
    "tables/mm/.ATTRIBUTES/VARIABLE_VALUE",
  ]
  assert all(d == tf.as_dtype(dtype) for d in stored.values()), stored
  meta = json.loads((paths[dtype] / "assets.extra" / export_lib.METADATA_FILE).read_text())
  assert meta["table_dtype"] == dtype and meta["tau_rec"] == model.config.model.tau_rec

  out = loaded[dtype].signatures["serving_default"](history=tf.constant(HISTORIES))
  assert out["scores"].dtype == tf.float32
  # |s_half - s_fp32| <= u * |q| |e| / tau per view (unit-norm q, e), so the fused score too.
  bound = ROUNDOFF[dtype] / model.config.model.tau_rec
  for row, history in enumerate(HISTORIES):
    # Exactly the float32 ranking of the rounded vectors (the cast happens before the matmul) ...
    fused = _fused_scores(model, history, dtype)
    order = np.argsort(-fused, kind="stable")[: tiny.TOP_K]
    np.testing.assert_array_equal(out["item_ids"][row].numpy().astype(str), tiny.vocab()[order])
    np.testing.assert_allclose(out["scores"][row], fused[order], rtol=1e-5, atol=1e-5)
    # ... and within the rounding bound of the float32 scores, item by item.
    fp32_fused = _fused_scores(model, history, "float32")
    finite = np.isfinite(fp32_fused)
    diff = np.abs(fused[finite] - fp32_fused[finite])
    assert 0 < diff.max() <= bound, (diff.max(), bound)

  emb = loaded[dtype].signatures["item_embeddings"](item_ids=tf.constant(["item-4", "nope"]))
  assert emb["id_embedding"].dtype == tf.float32
  expected = tf.cast(tf.cast(model.item_table("id")[FIRST_ITEM + 4], dtype), tf.float32)
  np.testing.assert_array_equal(emb["id_embedding"][0], expected)
  np.testing.assert_array_equal(emb["id_embedding"][1], np.zeros(tiny.DIM))


def test_half_tables_halve_the_stored_table_bytes(exports):
  model, paths, _ = exports
  fp32_bytes = sum(model.item_table(v)[FIRST_ITEM:].numpy().nbytes for v in model.view_names)
  sizes = {}
  for dtype, path in paths.items():
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    sizes[dtype] = sum(
      int(np.prod(shapes[n])) * dtypes[n].size for n in shapes if n.startswith("tables/")
    )
  assert sizes["bfloat16"] * 2 == fp32_bytes == sizes["float16"] * 2


def test_unknown_table_dtype_is_refused_naming_the_field(tmp_path):
  with pytest.raises(ValueError, match="table_dtype = 'int8' must be one of"):
    export_lib.export_model(
      tiny.tiny_model(), tiny.vocab(), W, str(tmp_path), "m", 3, table_dtype="int8"
    )
  assert not list((tmp_path / "m").iterdir())
  with pytest.raises(ValueError, match="config field `table_dtype` = 'fp8'"):
    Config().replace(export={"table_dtype": "fp8"})
