"""SavedModel export for TensorFlow Serving (DESIGN.md section 6).

`saved_models/<model_name>/<version>/` with integer versions, written to a temporary sibling
directory and renamed, so TF Serving never sees a half-written version. Signatures
(`tensorflow/serving/predict`):

  serving_default   history string [B, None] (most recent last, "" = padding)
                    -> item_ids string [B, k], scores float [B, k]   (history items excluded)
  user_interests    history -> id_interests, mm_interests float [B, K, d]
  item_embeddings   item_ids string [B] -> id_embedding, mm_embedding float [B, d]
  predict_examples  examples: serialized tf.Example string [B] (feature `history`) -> as default

Unknown ids are ignored (dropped, the remaining items stay right-aligned); a history with no known
item gets the most popular items. Item tables are precomputed at export time, so serving scores
one matrix product per view. `assets.extra/` carries `bivrec_metadata.json` and
`tf_serving_warmup_requests`.
"""

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from bivrec_tf.model import FIRST_ITEM, BivRecModel, fuse_scores, view_scores

SIGNATURES = ("serving_default", "user_interests", "item_embeddings", "predict_examples")
METADATA_FILE = "bivrec_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"


class ServingModule(tf.Module):
  """String ids in, recommendations out; everything a served version needs.

  Args:
    model: a trained BivRecModel.
    vocab: str `[V]` raw item ids by index (rows 0 and 1 = padding / out-of-vocabulary).
    fusion_weight: w of the fused score.
    top_k: number of recommendations per request row.
  """

  def __init__(self, model: BivRecModel, vocab: np.ndarray, fusion_weight: float, top_k: int):
    super().__init__(name="bivrec_serving")
    self.model = model
    vocab = np.asarray(vocab).astype(str)
    self.top_k = int(min(top_k, len(vocab) - FIRST_ITEM))
    self.tau_rec = float(model.config.model.tau_rec)
    self.id_lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(vocab[FIRST_ITEM:]),
            tf.range(FIRST_ITEM, len(vocab), dtype=tf.int64)),
        default_value=1)
    self.vocab = tf.Variable(vocab, trainable=False, name="vocab")
    self.tables = {v: tf.Variable(model.item_table(v), trainable=False, name=f"{v}_items")
                   for v in model.view_names}
    self.fusion_weight = tf.Variable(float(fusion_weight), trainable=False, name="fusion_weight")
    self.cold = tf.Variable(model.cold, trainable=False, name="cold_items")
    popularity = model.popularity.numpy().copy()
    popularity[:FIRST_ITEM] = -1.0
    self.popularity = tf.Variable(popularity, trainable=False, name="popularity")

  def _indices(self, history):
    """string `[B, L]` -> int64 `[B, L]`: known items right-aligned, unknown/"" dropped (0)."""
    ids = self.id_lookup.lookup(history)
    known = ids >= FIRST_ITEM
    pos = tf.range(1, tf.shape(ids)[1] + 1, dtype=tf.int64)[None, :]
    order = tf.argsort(tf.where(known, pos, 0), axis=1, stable=True)
    ids = tf.gather(ids, order, batch_dims=1)
    return tf.where(tf.gather(known, order, batch_dims=1), ids, tf.zeros_like(ids))

  def _recommend(self, history):
    ids = self._indices(history)
    queries = self.model.queries(ids)
    scores = {v: view_scores(q, self.tables[v], self.tau_rec) for v, q in queries.items()}
    if len(scores) == 2:
      s = fuse_scores(scores["id"], scores["mm"], self.fusion_weight, self.cold)
    else:
      s = next(iter(scores.values()))
    empty = tf.reduce_all(ids < FIRST_ITEM, axis=1)
    s = tf.where(empty[:, None], self.popularity[None, :], s)
    # Padding / OOV columns and the user's own history are never recommended.
    banned = tf.concat([tf.ones([FIRST_ITEM], tf.bool),
                        tf.zeros([tf.shape(s)[1] - FIRST_ITEM], tf.bool)], 0)
    s = tf.where(banned[None, :], -np.inf, s)
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0], dtype=tf.int64)[:, None], tf.shape(ids))
    s = tf.tensor_scatter_nd_update(
        s, tf.reshape(tf.stack([rows, ids], -1), [-1, 2]),
        tf.fill([tf.size(ids)], tf.constant(-np.inf, s.dtype)))
    top_s, top_i = tf.math.top_k(s, k=self.top_k)
    return {"item_ids": tf.gather(self.vocab, top_i), "scores": top_s}

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
  def serving_default(self, history):
    return self._recommend(history)

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
  def user_interests(self, history):
    queries = self.model.queries(self._indices(history))
    zeros = tf.zeros_like(next(iter(queries.values())))
    return {"id_interests": queries.get("id", zeros), "mm_interests": queries.get("mm", zeros)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
  def item_embeddings(self, item_ids):
    idx = self.id_lookup.lookup(item_ids)
    out = {f"{v}_embedding": tf.gather(t, idx) for v, t in self.tables.items()}
    zeros = tf.zeros_like(next(iter(out.values())))
    return {"id_embedding": out.get("id_embedding", zeros),
            "mm_embedding": out.get("mm_embedding", zeros)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def predict_examples(self, examples):
    parsed = tf.io.parse_example(examples, {"history": tf.io.RaggedFeature(tf.string)})
    return self._recommend(parsed["history"].to_tensor(default_value=""))

  def signatures(self):
    return {name: getattr(self, name) for name in SIGNATURES}


def next_version(model_dir: Path) -> int:
  """1 + the largest integer version directory under model_dir (1 if none)."""
  versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
  return max(versions, default=0) + 1


def _write_warmup(path: Path, model_name: str, histories) -> None:
  """TF Serving warmup: PredictionLog records replaying `serving_default` requests."""
  from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # pylint: disable=import-outside-toplevel

  with tf.io.TFRecordWriter(str(path)) as writer:
    for history in histories:
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
      request.inputs["history"].CopyFrom(tf.make_tensor_proto([history], dtype=tf.string))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())


def export_model(model: BivRecModel, vocab: np.ndarray, fusion_weight: float, base_dir: str,
                 model_name: str = "bivrec", top_k: int = 10, metadata: Optional[dict] = None,
                 version: Optional[int] = None) -> Path:
  """Writes a new integer version atomically and returns its path."""
  model_dir = Path(base_dir) / model_name
  model_dir.mkdir(parents=True, exist_ok=True)
  version = version or next_version(model_dir)
  final = model_dir / str(version)
  if final.exists():
    raise FileExistsError(f"export version already exists: {final}")
  tmp = model_dir / f".tmp-{version}-{os.getpid()}"
  try:
    module = ServingModule(model, vocab, fusion_weight, top_k)
    tf.saved_model.save(module, str(tmp), signatures=module.signatures())
    extra = tmp / "assets.extra"
    extra.mkdir()
    known = [str(v) for v in np.asarray(vocab)[FIRST_ITEM:FIRST_ITEM + 3]]
    _write_warmup(extra / WARMUP_FILE, model_name, [known, known[:1] + ["", "unknown-item"]])
    meta = {"model_name": model_name, "version": version, "fusion_weight": float(fusion_weight),
            "top_k": module.top_k, "views": list(model.view_names), "max_len": model.max_len,
            "vocab_size": model.vocab_size, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "signatures": list(SIGNATURES), **(metadata or {})}
    (extra / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final
