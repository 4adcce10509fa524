"""SavedModel export for TensorFlow Serving (DESIGN.md section 6).

`saved_models/<model_name>/<version>/` with integer versions, written to a temporary sibling
directory (a name TF Serving ignores) and renamed, so a server polling the directory never sees a
half-written version. Signatures (`tensorflow/serving/predict`):

  serving_default   history string [B, None] (most recent last, "" = padding)
                    -> item_ids string [B, k], scores float [B, k]   (the request's history
                       items excluded iff the export's `exclude_history`, see below)
  user_interests    history -> id_interests, mm_interests float [B, K, d]
  item_embeddings   item_ids string [B] -> id_embedding, mm_embedding float [B, d]
                    (unknown ids -> zero vectors)
  predict_examples  examples: serialized tf.Example string [B] (bytes feature `history`)
                    -> as serving_default

Unknown ids are ignored (dropped; the remaining items stay right-aligned) and a history is cut to
its last `max_len` known items, so the model part of the graph always sees `[B, max_len]`. A
history with no known item gets the most popular items. A single-view model answers zeros for the
other view's outputs.

History exclusion is the training run's resolved `EvalConfig.exclude_history` (the setting
under which the fusion weight was tuned and the offline metrics were measured), recorded as
`exclude_history` in `bivrec_metadata.json`. When on, every known item of the request's history
is excluded, also items older than the last `max_len` the model reads (offline evaluation
excludes the user's whole history the same way).

Serving cost: the item tables (unit-norm for cosine similarity, padding/OOV rows dropped) are
precomputed at export time; a request scores them in chunks of `item_chunk` items (bounded
`[B, K, chunk]` intermediate), masks the chunk's history items by scattering the request's
history into it (O(B L) per chunk, any history length L) and keeps the top k per chunk. Only when
the history covers all but fewer than k items of the catalogue do history items fill the
remaining slots, with score -inf. `table_dtype` "bfloat16" or "float16" stores the item tables in
half precision (half the bytes a request reads); each chunk is cast to float32 before the matmul,
so scores are float32 products of the rounded vectors (docs/serving.md, "Large catalogues").

A model trained with ParameterServerStrategy is first copied to plain local variables (saved as
they are, its sharded tables do not load back). `python -m bivrec_tf.export --run RUN_DIR`
re-exports a training run's best checkpoint.
`assets.extra/` carries `bivrec_metadata.json` and `tf_serving_warmup_requests`.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from bivrec_tf.builders import build_model, restore_trained
from bivrec_tf.catalogue.served import Catalogue
from bivrec_tf.config import TABLE_DTYPES
from bivrec_tf.evaluate import history_mask, resolve_history_exclusion
from bivrec_tf.model import (
  FIRST_ITEM,
  BivRecModel,
  fuse_interest_scores,
  fuse_scores,
  interest_scores,
  view_scores,
)

SIGNATURES = ("serving_default", "user_interests", "item_embeddings", "predict_examples")
METADATA_FILE = "bivrec_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
TMP_PREFIX = ".tmp-"  # TF Serving only loads all-digit directory names
DEFAULT_ITEM_CHUNK = 65_536


class ServingModule(tf.Module):
  """String ids in, recommendations out; everything a served version needs.

  Args:
    model: a BivRecModel (trained, or freshly built for tests/benchmarks).
    vocab: str `[V]` raw item ids by index (rows 0 and 1 = padding / out-of-vocabulary).
    fusion_weight: w of the fused score `w s_id + (1 - w) s_mm` (with the model's
      `ModelConfig.fusion` "interest": max_k [w s_id,k + (1 - w) s_mm,k]; cold items: `s_mm`).
    top_k: number of recommendations per request row (fixed at export time).
    item_chunk: items scored at once per request (bounds the `[B, K, chunk]` intermediate).
    jit_compile: XLA-compile the interest extractor (the model part of every signature). TF
      Serving then needs `--xla_cpu_compilation_enabled=true` (experimental there), so it is
      off by default.
    exclude_history: never recommend an item of the request's whole history (the resolved
      `EvalConfig.exclude_history` of the run, so serving ranks as evaluation did).
    table_dtype: storage dtype of the item tables, one of TABLE_DTYPES; half-precision tables are
      cast to float32 chunk by chunk for scoring, and `item_embeddings` answers float32.
  """

  def __init__(
    self,
    model: BivRecModel,
    vocab: np.ndarray,
    fusion_weight: float,
    top_k: int,
    item_chunk: int = DEFAULT_ITEM_CHUNK,
    jit_compile: bool = False,
    exclude_history: bool = True,
    table_dtype: str = "float32",
    catalogue: Optional[Catalogue] = None,
  ):
    super().__init__(name="bivrec_serving")
    if table_dtype not in TABLE_DTYPES:
      raise ValueError(f"export: table_dtype = {table_dtype!r} must be one of {TABLE_DTYPES}")
    self.table_dtype = table_dtype
    if not isinstance(exclude_history, (bool, np.bool_)):
      raise ValueError(
        f"export: exclude_history = {exclude_history!r} must be True or False "
        "(the run's resolved setting, not 'auto')"
      )
    self.exclude_history = bool(exclude_history)
    vocab = np.asarray(vocab).astype(str)
    if len(vocab) != model.vocab_size:
      raise ValueError(
        f"vocab has {len(vocab)} rows but the model has vocab_size {model.vocab_size}"
      )
    num_items = len(vocab) - FIRST_ITEM
    if num_items < 1:
      raise ValueError("cannot export a model without items")
    if catalogue is None:
      catalogue = Catalogue.from_model(model, vocab)
    elif not np.array_equal(catalogue.vocab, vocab):
      raise ValueError("export: the catalogue's vocabulary is not `vocab`")
    # Track only what serving reads: the two view encoders (not the optimizer, the retrieval
    # tasks or the semantic heads of the training model).
    self.encoders = [model.views[v] for v in model.view_names]
    self._queries_fn = model.queries  # a bound method: not tracked (variables tracked above)
    self.view_names = tuple(model.view_names)
    self.max_len = int(model.max_len)
    self.top_k = int(min(top_k, int(catalogue.servable.sum())))
    self.item_chunk = int(max(1, item_chunk))
    self.tau_rec = float(model.config.model.tau_rec)
    self.interest_fusion = model.config.model.fusion == "interest"
    self.num_items = num_items
    self.id_lookup = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
        tf.constant(vocab[FIRST_ITEM:]), tf.range(FIRST_ITEM, len(vocab), dtype=tf.int64)
      ),
      default_value=1,
    )
    self.vocab = tf.Variable(vocab, trainable=False, name="vocab")
    # Candidate tables over real items only (row r = item index r + FIRST_ITEM).
    # The catalogue's fields under their own names (Catalogue.read reads them back).
    self.tables = {
      v: tf.Variable(tf.cast(catalogue.tables[v], table_dtype), trainable=False, name=f"{v}_items")
      for v in self.view_names
    }
    self.fusion_weight = tf.Variable(float(fusion_weight), trainable=False, name="fusion_weight")
    self.cold = tf.Variable(catalogue.cold, trainable=False, name="cold_items")
    self.servable = tf.Variable(catalogue.servable, trainable=False, name="servable_items")
    self.popularity = tf.Variable(catalogue.popularity, trainable=False, name="popularity")
    self.imputed = tf.Variable(catalogue.imputed, trainable=False, name="imputed_items")
    # Retired items are masked only when there are any (a fresh export's graph is unchanged).
    self.masks_retired = not catalogue.servable.all()
    popularity = np.where(catalogue.servable, catalogue.popularity, -np.inf)
    order = np.argsort(-popularity, kind="stable")[: self.top_k]
    self.popular_ids = tf.Variable(
      order.astype(np.int64) + FIRST_ITEM, trainable=False, name="popular_ids"
    )
    self.popular_scores = tf.Variable(popularity[order], trainable=False, name="popular_scores")
    # XLA pays off for the many small ops of the interest extractor; scoring and top-k stay
    # plain TensorFlow ops (XLA's CPU top-k sorts the whole row).
    self._jit_queries = (
      tf.function(self._queries_fn, jit_compile=True, autograph=False) if jit_compile else None
    )

  # --- graph pieces ----------------------------------------------------------------------------

  def _indices(self, history):
    """string `[B, L]` -> int64 `[B, max_len]`: the last max_len known items, right-aligned,
    unknown ids and "" dropped, 0 = padding."""
    ids = self.id_lookup.lookup(history)
    known = ids >= FIRST_ITEM
    pos = tf.range(1, tf.shape(ids)[1] + 1, dtype=tf.int64)[None, :]
    order = tf.argsort(tf.where(known, pos, 0), axis=1, stable=True)
    ids = tf.gather(ids, order, batch_dims=1)
    ids = tf.where(tf.gather(known, order, batch_dims=1), ids, tf.zeros_like(ids))
    ids = ids[:, -self.max_len :]
    ids = tf.pad(ids, [[0, 0], [self.max_len - tf.shape(ids)[1], 0]])
    return tf.ensure_shape(ids, [None, self.max_len])

  def _known(self, history):
    """string `[B, L]` -> int64 `[B, L]`: every known item of the whole history (unknown ids and
    "" -> 0), what history exclusion masks."""
    ids = self.id_lookup.lookup(history)
    return tf.where(ids >= FIRST_ITEM, ids, tf.zeros_like(ids))

  def _queries(self, ids):
    return (self._jit_queries or self._queries_fn)(ids)

  def _scores_and_interests(self, ids, seen=None):
    """ids `[B, max_len]` -> (top scores `[B, k]`, top item indices `[B, k]`, queries); items of
    `seen` int64 `[B, L]` (the whole history, any L) are never ranked when given."""
    queries = self._queries(ids)
    k = self.top_k
    best_s, best_i = None, None
    for start in range(0, self.num_items, self.item_chunk):
      end = min(start + self.item_chunk, self.num_items)
      tables = {v: tf.cast(self.tables[v][start:end], tf.float32) for v in queries}
      if len(queries) == 2 and self.interest_fusion:
        s_id, s_mm = (interest_scores(queries[v], tables[v]) for v in ("id", "mm"))
        s = fuse_interest_scores(s_id, s_mm, self.fusion_weight, self.cold[start:end], self.tau_rec)
      elif len(queries) == 2:
        s_id, s_mm = (view_scores(queries[v], tables[v], self.tau_rec) for v in ("id", "mm"))
        s = fuse_scores(s_id, s_mm, self.fusion_weight, self.cold[start:end])
      else:
        (v,) = queries
        s = view_scores(queries[v], tables[v], self.tau_rec)
      if self.masks_retired:
        s = tf.where(self.servable[None, start:end], s, tf.constant(-np.inf, s.dtype))
      if seen is not None:
        in_history = history_mask(seen, start + FIRST_ITEM, end - start)
        s = tf.where(in_history, tf.constant(-np.inf, s.dtype), s)
      top_s, top_i = tf.math.top_k(s, k=min(k, end - start))
      top_i = tf.cast(top_i, tf.int64) + (start + FIRST_ITEM)
      if best_s is None:
        best_s, best_i = top_s, top_i
      else:
        cat_s, cat_i = tf.concat([best_s, top_s], 1), tf.concat([best_i, top_i], 1)
        best_s, pos = tf.math.top_k(cat_s, k=min(k, cat_s.shape[1]))
        best_i = tf.gather(cat_i, pos, batch_dims=1)
    return best_s, best_i, queries

  def _recommend(self, history):
    ids = self._indices(history)
    seen = self._known(history) if self.exclude_history else None
    top_s, top_i, _ = self._scores_and_interests(ids, seen)
    empty = tf.reduce_all(ids < FIRST_ITEM, axis=1, keepdims=True)
    top_i = tf.where(empty, self.popular_ids[None, :], top_i)
    top_s = tf.where(empty, self.popular_scores[None, :], top_s)
    item_ids = tf.gather(self.vocab, top_i)
    if self.masks_retired:  # a retired item is never returned, even to fill a -inf slot
      servable = tf.gather(self.servable, top_i - FIRST_ITEM)
      item_ids = tf.where(servable, item_ids, "")
      top_s = tf.where(servable, top_s, tf.constant(-np.inf, top_s.dtype))
    return {"item_ids": item_ids, "scores": top_s}

  # --- signatures ------------------------------------------------------------------------------

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
  def serving_default(self, history):
    return self._recommend(history)

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
  def user_interests(self, history):
    queries = self._queries(self._indices(history))
    zeros = tf.zeros_like(next(iter(queries.values())))
    return {"id_interests": queries.get("id", zeros), "mm_interests": queries.get("mm", zeros)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
  def item_embeddings(self, item_ids):
    idx = self.id_lookup.lookup(item_ids) - FIRST_ITEM
    known = idx >= 0
    out = {}
    for v, t in self.tables.items():
      vec = tf.cast(tf.gather(t, tf.maximum(idx, 0)), tf.float32)
      out[v] = tf.where(known[:, None], vec, tf.zeros_like(vec))
    zeros = tf.zeros_like(next(iter(out.values())))
    return {"id_embedding": out.get("id", zeros), "mm_embedding": out.get("mm", zeros)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def predict_examples(self, examples):
    parsed = tf.io.parse_example(examples, {"history": tf.io.RaggedFeature(tf.string)})
    return self._recommend(parsed["history"].to_tensor(default_value=""))

  def signatures(self):
    return {name: getattr(self, name) for name in SIGNATURES}


# --- writing versions -----------------------------------------------------------------------------


def _needs_plain_copy(model: BivRecModel) -> bool:
  """Variables placed on parameter servers (possibly sharded) do not survive tf.saved_model.save
  loadably (TF 2.21 restores a sharded table as an empty tensor), so such models are copied."""
  return "ParameterServer" in type(model.distribute_strategy).__name__


def plain_copy(model: BivRecModel) -> BivRecModel:
  """The same model with ordinary local variables: rebuilt outside any strategy, weights moved
  through a checkpoint (which stores a sharded variable whole)."""
  import tempfile  # pylint: disable=import-outside-toplevel

  features = present = None
  if "mm" in model.view_names:
    tower = model.views["mm"].tower
    features = {m: tf.convert_to_tensor(tower.tables[m]).numpy() for m in tower.modalities}
    present = {
      m: tf.convert_to_tensor(tower.present_masks[m]).numpy() > 0.5 for m in tower.modalities
    }
  copy = BivRecModel(
    model.config,
    model.vocab_size,
    model.max_len,
    features,
    present,
    item_counts=np.asarray(model.popularity),
    seen_in_train=~np.asarray(model.cold),
  )
  copy.queries(tf.zeros([1, model.max_len], tf.int64))
  with tempfile.TemporaryDirectory() as tmp:
    model.save_weights(os.path.join(tmp, "weights"))
    copy.load_weights(os.path.join(tmp, "weights")).expect_partial()
  return copy


def next_version(model_dir: Path) -> int:
  """1 + the largest integer version directory under model_dir (1 if none). Only plain ASCII
  digits count, as for the servers ("²".isdigit() is True)."""
  versions = [
    int(p.name)
    for p in Path(model_dir).glob("*")
    if p.is_dir() and p.name.isascii() and p.name.isdigit()
  ]
  return max(versions, default=0) + 1


def warmup_requests(model_name: str, vocab: np.ndarray):
  """PredictionLog records replaying one request per signature (TF Serving warmup)."""
  from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # pylint: disable=import-outside-toplevel

  known = [str(v) for v in np.asarray(vocab)[FIRST_ITEM : FIRST_ITEM + 3]]
  known += [""] * (3 - len(known))
  history = tf.make_tensor_proto([known, [known[0], "", "unknown-item"]], dtype=tf.string)
  example = tf.train.Example(
    features=tf.train.Features(
      feature={
        "history": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[k.encode() for k in known])
        )
      }
    )
  )
  inputs = {
    "serving_default": {"history": history},
    "user_interests": {"history": history},
    "item_embeddings": {
      "item_ids": tf.make_tensor_proto(known + ["unknown-item"], dtype=tf.string)
    },
    "predict_examples": {
      "examples": tf.make_tensor_proto([example.SerializeToString()], dtype=tf.string)
    },
  }
  logs = []
  for signature, tensors in inputs.items():
    request = predict_pb2.PredictRequest(
      model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
    )
    for name, proto in tensors.items():
      request.inputs[name].CopyFrom(proto)
    logs.append(
      prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    )
  return logs


def _write_warmup(path: Path, model_name: str, vocab: np.ndarray) -> None:
  with tf.io.TFRecordWriter(str(path)) as writer:
    for log in warmup_requests(model_name, vocab):
      writer.write(log.SerializeToString())


def export_model(
  model: BivRecModel,
  vocab: np.ndarray,
  fusion_weight: float,
  base_dir: str,
  model_name: str = "bivrec",
  top_k: int = 10,
  metadata: Optional[dict] = None,
  version: Optional[int] = None,
  item_chunk: int = DEFAULT_ITEM_CHUNK,
  jit_compile: bool = False,
  exclude_history: bool = True,
  table_dtype: str = "float32",
  catalogue: Optional[Catalogue] = None,
  target_dir: Optional[str] = None,
) -> Path:
  """Writes a new integer version atomically and returns its path.

  `target_dir` (the TFX Trainer's `serving_model_dir`, which Pusher copies as one version):
  write the SavedModel exactly there instead (`base_dir`, `version` unused; metadata version
  None), through a temporary sibling `.tmp-<name>-<pid>` renamed last; an existing empty
  directory is replaced, a non-empty one is an error.

  `catalogue` (default: the model's own, `Catalogue.from_model`) is what the version ranks:
  `python -m bivrec_tf.catalogue` passes an edited one (items added, retired, updated). The
  metadata's computed fields (version, sizes, config, feature dims, ...) override `metadata`.

  `exclude_history` (the run's resolved setting) decides whether serving_default and
  predict_examples drop the request's history items; the metadata records it, and
  `table_dtype` (the item tables' storage, TABLE_DTYPES) and `tau_rec`.

  The SavedModel, warmup records and metadata are written to `<model>/.tmp-<version>-<pid>` and
  renamed to `<model>/<version>` last; on any error the temporary directory is removed, so no
  version directory (complete or not) is left behind.
  """
  if target_dir is not None:
    final, version = Path(target_dir), None
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and any(final.iterdir()):
      raise FileExistsError(f"export directory is not empty: {final}")
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
  else:
    model_dir = Path(base_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    final = model_dir / str(version)
    if final.exists():
      raise FileExistsError(f"export version already exists: {final}")
    tmp = model_dir / f"{TMP_PREFIX}{version}-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  if _needs_plain_copy(model):
    model = plain_copy(model)
  try:
    module = ServingModule(
      model,
      vocab,
      fusion_weight,
      top_k,
      item_chunk,
      jit_compile,
      exclude_history,
      table_dtype,
      catalogue,
    )
    tf.saved_model.save(module, str(tmp), signatures=module.signatures())
    extra = tmp / "assets.extra"
    extra.mkdir(exist_ok=True)
    _write_warmup(extra / WARMUP_FILE, model_name, vocab)
    meta = {
      **(metadata or {}),
      "model_name": model_name,
      "version": version,
      "fusion_weight": float(fusion_weight),
      "fusion": model.config.model.fusion,
      "top_k": module.top_k,
      "views": list(model.view_names),
      "max_len": model.max_len,
      "vocab_size": model.vocab_size,
      "num_items": module.num_items,
      "item_chunk": module.item_chunk,
      "jit_compile": bool(jit_compile),
      "exclude_history": module.exclude_history,
      "table_dtype": module.table_dtype,
      "tau_rec": module.tau_rec,
      # tensorflow_model_server runs it only with --xla_cpu_compilation_enabled=true.
      "requires_xla_cpu_compilation": bool(jit_compile),
      "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "signatures": list(SIGNATURES),
      # what python -m bivrec_tf.catalogue needs to rebuild the encoders from variables/
      "config": model.config.to_dict(),
      "feature_dims": (dict(model.views["mm"].tower.feature_dims) if "mm" in model.views else {}),
    }
    (extra / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


# --- re-export from a run directory ----------------------------------------------------------------


def export_run(
  run_dir: str,
  export_base: Optional[str] = None,
  model_name: Optional[str] = None,
  top_k: Optional[int] = None,
  version: Optional[int] = None,
  jit_compile: bool = False,
  table_dtype: Optional[str] = None,
) -> Path:
  """Rebuilds a training run's model, loads `checkpoints/best` and exports it (`table_dtype`
  None = the run's `ExportConfig.table_dtype`).

  The run directory holds `config.json`, `metrics.json` (fusion weight, data path, max_len,
  the resolved `exclude_history` the run was evaluated and tuned under) and `checkpoints/best*`,
  as written by `python -m bivrec_tf.train`. A metrics.json without `exclude_history` has it
  resolved again from the run's config and dataset.
  """
  from bivrec_tf import config as config_lib  # pylint: disable=import-outside-toplevel
  from input_pipelines.dataset import PreparedDataset  # pylint: disable=import-outside-toplevel

  run = Path(run_dir)
  for name in ("config.json", "metrics.json"):
    if not (run / name).is_file():
      raise FileNotFoundError(f"{run / name} not found: is {run} a training run directory?")
  best = run / "checkpoints" / "best"
  if not list(best.parent.glob("best*")):
    raise FileNotFoundError(f"no checkpoint {best}* in {run}")
  cfg = config_lib.Config.from_json((run / "config.json").read_text())
  metrics = json.loads((run / "metrics.json").read_text())
  ds = PreparedDataset.load(metrics["data"])
  max_len = int(metrics["max_len"])
  model = build_model(cfg, ds, max_len)
  model.queries(tf.zeros([1, max_len], tf.int64))  # create the variables before restoring
  restore_trained(model, str(best))
  exclusion = metrics.get("history_exclusion")
  if not isinstance(metrics.get("exclude_history"), bool):
    exclusion = resolve_history_exclusion(cfg.eval, ds)
  exclude = (exclusion or {}).get("exclude_history", metrics.get("exclude_history"))
  meta = {
    "config": cfg.to_dict(),
    "test_metrics": metrics.get("test"),
    "valid_metrics": metrics.get("valid"),
    "dataset": ds.meta,
    "run_dir": str(run),
    "history_exclusion": exclusion,
  }
  return export_model(
    model,
    ds.vocab,
    float(metrics["fusion_weight"]),
    export_base or cfg.export.export_base,
    model_name or cfg.export.model_name,
    top_k or cfg.export.top_k,
    metadata=meta,
    version=version,
    jit_compile=jit_compile,
    exclude_history=bool(exclude),
    table_dtype=table_dtype or cfg.export.table_dtype,
  )


JIT_REFUSAL = (
  "--jit-compile refused: stock tensorflow_model_server disables XLA unless it is started with "
  "--xla_cpu_compilation_enabled=true (a flag it marks EXPERIMENTAL); with its default flags "
  "this export's warmup fails with 'INTERNAL: XLA compilation disabled' and the version never "
  "becomes AVAILABLE (the previous version keeps serving). Add --xla-enabled-server if your "
  "server runs with that flag; otherwise export without --jit-compile."
)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m bivrec_tf.export",
    description="Re-export a training run's best checkpoint as a new SavedModel version.",
  )
  parser.add_argument(
    "--run",
    required=True,
    metavar="RUN_DIR",
    help="training run directory (config.json, metrics.json, checkpoints/best)",
  )
  parser.add_argument("--export-base", help="default: the run's export_base (saved_models)")
  parser.add_argument("--model-name", help="default: the run's model_name (bivrec)")
  parser.add_argument("--top-k", type=int, help="recommendations per row (default: the run's)")
  parser.add_argument("--version", type=int, help="default: next integer version")
  parser.add_argument(
    "--table-dtype",
    choices=TABLE_DTYPES,
    help="storage of the item tables (default: the run's, float32); half precision halves "
    "the bytes a request reads, scores stay float32",
  )
  parser.add_argument(
    "--jit-compile",
    action="store_true",
    help="XLA-compile the interest extractor; needs --xla-enabled-server",
  )
  parser.add_argument(
    "--xla-enabled-server",
    action="store_true",
    help="the export is for a tensorflow_model_server started with "
    "--xla_cpu_compilation_enabled=true (stock servers refuse XLA)",
  )
  args = parser.parse_args(argv)
  if args.top_k is not None and args.top_k < 1:
    parser.error("--top-k must be >= 1")
  if args.jit_compile and not args.xla_enabled_server:
    print(f"error: {JIT_REFUSAL}", file=sys.stderr)
    return 2
  try:
    path = export_run(
      args.run,
      args.export_base,
      args.model_name,
      args.top_k,
      args.version,
      args.jit_compile,
      args.table_dtype,
    )
  except (ValueError, FileNotFoundError, FileExistsError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(f"exported SavedModel: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
