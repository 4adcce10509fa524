"""The SavedModel export (DESIGN.md section 6): signatures, semantics, warmup, atomic versions.

Built on a tiny randomly initialized model (tests/serving/models.py): exporting does not need a
trained model, and every property checked here holds for any weights.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf import export as export_lib
from bivrec_tf.evaluate import Ranker
from bivrec_tf.model import FIRST_ITEM
from tests.serving import models as tiny

W = 0.6
# The console script, or the same tool as a module when the script is not on PATH.
SAVED_MODEL_CLI = (
  [shutil.which("saved_model_cli")]
  if shutil.which("saved_model_cli")
  else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  base = tmp_path_factory.mktemp("export")
  model = tiny.tiny_model(seed=0)
  path = export_lib.export_model(
    model, tiny.vocab(), W, str(base), "bivrec", tiny.TOP_K, metadata={"note": "test"}
  )
  return model, path, tf.saved_model.load(str(path))


def _reference_top_k(model, history, k, fusion="score"):
  """Brute force over the whole catalogue in numpy: fused score (score level, or interest level:
  max_k [W s_id,k + (1 - W) s_mm,k]), history and padding excluded."""
  index = {item: i for i, item in enumerate(tiny.vocab())}
  ids = [index[x] for x in history if x in index and index[x] >= FIRST_ITEM][-tiny.MAX_LEN :]
  row = np.array([[0] * (tiny.MAX_LEN - len(ids)) + ids], np.int64)
  queries = {v: q.numpy()[0] for v, q in model.queries(row).items()}
  tau = model.config.model.tau_rec
  per_interest = {v: queries[v] @ model.item_table(v).numpy().T / tau for v in queries}  # [K, V]
  s = {v: p.max(axis=0) for v, p in per_interest.items()}
  cold = np.asarray(model.cold)
  if fusion == "interest":
    warm = (W * per_interest["id"] + (1 - W) * per_interest["mm"]).max(axis=0)
  else:
    warm = W * s["id"] + (1 - W) * s["mm"]
  fused = np.where(cold, s["mm"], warm)
  fused[:FIRST_ITEM] = -np.inf
  fused[ids] = -np.inf
  order = np.argsort(-fused, kind="stable")[:k]
  return tiny.vocab()[order], fused[order]


def _serve(loaded, histories, signature="serving_default"):
  out = loaded.signatures[signature](history=tf.constant(histories))
  return {k: v.numpy() for k, v in out.items()}


def _assert_in_process_top_k(model, histories, out):
  """The served top-k ids and scores of each history are the in-process full ranking's."""
  for row, history in enumerate(histories):
    ids, scores = _reference_top_k(model, history, tiny.TOP_K)
    np.testing.assert_array_equal(out["item_ids"][row].astype(str), ids)
    np.testing.assert_allclose(out["scores"][row], scores, rtol=1e-5, atol=1e-5)


def test_served_top_k_equals_brute_force_full_ranking(exported):
  model, _, loaded = exported
  histories = [
    ["item-3", "item-9", "item-12", "item-30"],
    ["item-1", "item-1", "item-2", "item-7"],
    ["item-39", "", "", ""],
  ]
  out = _serve(loaded, histories)
  assert out["item_ids"].shape == (3, tiny.TOP_K) and out["scores"].shape == (3, tiny.TOP_K)
  _assert_in_process_top_k(model, histories, out)


def test_adaptive_interest_counts_serve_as_in_process(tmp_path):
  # K = 2: a history of 1-3 items has K_u = 1 (the second slot copies the first), 4+ items 2.
  model = tiny.tiny_model(seed=1, adaptive_interests=True)
  path = export_lib.export_model(model, tiny.vocab(), W, str(tmp_path), "bivrec", tiny.TOP_K)
  histories = [["item-39", "", "", ""], ["item-3", "item-9", "item-12", "item-30"]]
  out = _serve(tf.saved_model.load(str(path)), histories)
  _assert_in_process_top_k(model, histories, out)


def test_own_interest_counts_and_a_global_query_serve_as_in_process(tmp_path):
  # ID view K = 2, MM view K = 1: each view's max runs over its own interests, each adding g.
  model = tiny.tiny_model(seed=2, mm_num_interests=1, global_query=True)
  for view in ("id", "mm"):  # a global query that changes the ranking
    model.views[view].global_query.assign(np.linspace(-1, 1, tiny.DIM).astype(np.float32))
  queries = model.queries(tf.zeros([1, tiny.MAX_LEN], tf.int64))
  assert queries["id"].shape[1] == 2 and queries["mm"].shape[1] == 1
  path = export_lib.export_model(model, tiny.vocab(), W, str(tmp_path), "bivrec", tiny.TOP_K)
  loaded = tf.saved_model.load(str(path))
  histories = [["item-3", "item-9", "item-12", "item-30"], ["item-7", "item-2", "", ""]]
  out = _serve(loaded, histories)
  _assert_in_process_top_k(model, histories, out)
  interests = _serve(loaded, histories, "user_interests")
  assert interests["id_interests"].shape == (2, 2, tiny.DIM)
  assert interests["mm_interests"].shape == (2, 1, tiny.DIM)


def test_an_mm_view_with_its_own_dim_serves_as_in_process(tmp_path):
  model = tiny.tiny_model(seed=3, mm_dim=tiny.DIM // 2)
  path = export_lib.export_model(
    model, tiny.vocab(), W, str(tmp_path), "bivrec", tiny.TOP_K, item_chunk=7
  )
  loaded = tf.saved_model.load(str(path))
  histories = [["item-3", "item-9", "item-12", "item-30"], ["item-7", "item-2", "", ""]]
  out = _serve(loaded, histories)
  _assert_in_process_top_k(model, histories, out)
  interests = _serve(loaded, histories, "user_interests")
  assert interests["id_interests"].shape[-1] == tiny.DIM
  assert interests["mm_interests"].shape[-1] == tiny.DIM // 2


def test_interest_level_fusion_serves_as_the_ranker_and_brute_force_rank(tmp_path):
  # ModelConfig.fusion "interest": interest k of both views scores an item together.
  model = tiny.tiny_model(seed=2, fusion="interest", interest_init="orthogonal")
  path = export_lib.export_model(
    model, tiny.vocab(), W, str(tmp_path), "bivrec", tiny.TOP_K, item_chunk=7
  )
  loaded = tf.saved_model.load(str(path))
  assert json.loads((path / "assets.extra" / export_lib.METADATA_FILE).read_text())["fusion"] == (
    "interest"
  )
  histories = [
    ["item-3", "item-9", "item-12", "item-30"],
    ["item-1", "item-20", "item-2", "item-7"],
    ["item-39", "", "", ""],
  ]
  out = _serve(loaded, histories)
  differs = False
  for row, history in enumerate(histories):
    ids, scores = _reference_top_k(model, history, tiny.TOP_K, fusion="interest")
    np.testing.assert_array_equal(out["item_ids"][row].astype(str), ids)
    np.testing.assert_allclose(out["scores"][row], scores, rtol=1e-5, atol=1e-5)
    score_level, _ = _reference_top_k(model, history, tiny.TOP_K)
    differs |= list(score_level) != list(ids)
  assert differs  # the rule is not the score-level one in disguise
  np.testing.assert_array_equal(
    _offline_top_k(model, histories, exclude=True), out["item_ids"].astype(str)
  )


def test_chunked_scoring_matches_single_chunk(exported, tmp_path):
  model, _, loaded = exported
  chunked = tf.saved_model.load(
    str(
      export_lib.export_model(
        model, tiny.vocab(), W, str(tmp_path), "chunked", tiny.TOP_K, item_chunk=7
      )
    )
  )
  histories = [["item-3", "item-9"], ["item-20", "item-21"], ["", "nope"]]
  a, b = _serve(loaded, histories), _serve(chunked, histories)
  np.testing.assert_array_equal(a["item_ids"], b["item_ids"])
  np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-6)


def test_xla_export_answers_as_the_plain_export(exported, tmp_path):
  model, _, loaded = exported
  jit = tf.saved_model.load(
    str(
      export_lib.export_model(
        model, tiny.vocab(), W, str(tmp_path), "jit", tiny.TOP_K, jit_compile=True
      )
    )
  )
  histories = [["", "item-3", "item-9"], ["item-20", "item-21", "item-33"]]
  a, b = _serve(loaded, histories), _serve(jit, histories)
  np.testing.assert_array_equal(a["item_ids"], b["item_ids"])
  np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)


def test_unknown_ids_and_padding_are_ignored(exported):
  _, _, loaded = exported
  clean = _serve(loaded, [["item-3", "item-9", "item-12"]])
  noisy = _serve(loaded, [["", "never-seen", "item-3", "", "item-9", "[OOV]", "item-12", "x"]])
  np.testing.assert_array_equal(clean["item_ids"], noisy["item_ids"])
  np.testing.assert_allclose(clean["scores"], noisy["scores"], rtol=1e-6)


def test_history_items_are_never_recommended(exported):
  _, _, loaded = exported
  histories = [[f"item-{i}" for i in range(j, j + 8)] for j in range(0, 32, 4)]
  out = _serve(loaded, histories)
  for row, history in zip(out["item_ids"].astype(str), histories):
    assert not set(row) & set(history)
    assert not set(row) & {"[PAD]", "[OOV]", ""}


@pytest.fixture(scope="module")
def exported_kept(exported, tmp_path_factory):
  """The same model exported with history exclusion off."""
  model, _, _ = exported
  path = export_lib.export_model(
    model,
    tiny.vocab(),
    W,
    str(tmp_path_factory.mktemp("kept")),
    "bivrec",
    tiny.TOP_K,
    exclude_history=False,
  )
  return model, path, tf.saved_model.load(str(path))


def test_history_longer_than_max_len_keeps_the_most_recent_items(exported_kept):
  # Without exclusion the older items can change nothing: the model reads the last max_len.
  _, _, loaded = exported_kept
  recent = [f"item-{i}" for i in range(10, 10 + tiny.MAX_LEN)]
  long = _serve(loaded, [["item-30", "item-31", "item-32"] + recent])
  short = _serve(loaded, [recent])
  np.testing.assert_array_equal(long["item_ids"], short["item_ids"])
  np.testing.assert_allclose(long["scores"], short["scores"], rtol=1e-6)


def test_exclusion_covers_the_request_history_older_than_max_len(exported, exported_kept):
  # 35 of the 40 items in the history (max_len 8): with exclusion the top 5 are exactly the 5
  # others; masking only the last max_len items would let older history items in.
  history = [f"item-{i}" for i in range(35)]
  rest = {f"item-{i}" for i in range(35, 40)}
  excluded = _serve(exported[2], [history])
  assert set(excluded["item_ids"][0].astype(str)) == rest
  assert np.all(np.isfinite(excluded["scores"]))
  kept = _serve(exported_kept[2], [history])
  assert set(kept["item_ids"][0].astype(str)) - rest  # a repeat can be recommended


def _offline_top_k(model, histories, exclude):
  """The evaluation Ranker on the same string histories: the model reads the last max_len known
  items, exclusion masks every known item of the history."""
  index = {item: i for i, item in enumerate(tiny.vocab())}
  known = [[index[x] for x in h if index.get(x, 0) >= FIRST_ITEM] for h in histories]
  rows = np.array([[0] * max(0, tiny.MAX_LEN - len(k)) + k[-tiny.MAX_LEN :] for k in known])
  width = max(len(k) for k in known)
  seen = np.array([k + [0] * (width - len(k)) for k in known])
  ranker = Ranker(model, tiny.TOP_K, exclude_history=exclude)
  return tiny.vocab()[ranker.topk(rows, [W], seen=seen)[f"fused@{W:.2f}"]]


@pytest.mark.parametrize("exclude", [True, False])
def test_offline_ranker_and_serving_rank_identically(exported, exported_kept, exclude):
  model, _, loaded = exported if exclude else exported_kept
  rows = [
    [f"item-{i}" for i in range(5, 17)],  # longer than max_len
    [f"item-{i}" for i in range(35)],  # all but 5 items
    ["item-3", "", "nope", "item-9", "item-12", "item-3", "item-30", "item-31"],
    ["item-39"],
  ]
  histories = [[""] * (35 - len(h)) + h for h in rows]  # "" = padding
  offline = _offline_top_k(model, histories, exclude)
  served = _serve(loaded, histories)["item_ids"].astype(str)
  np.testing.assert_array_equal(served, offline)
  examples = [
    tf.train.Example(
      features=tf.train.Features(
        feature={
          "history": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[x.encode() for x in h if x])
          )
        }
      )
    ).SerializeToString()
    for h in histories
  ]
  by_example = loaded.signatures["predict_examples"](examples=tf.constant(examples))
  np.testing.assert_array_equal(by_example["item_ids"].numpy().astype(str), offline)


def test_metadata_records_the_history_setting(exported, exported_kept):
  for (_, path, _), expected in ((exported, True), (exported_kept, False)):
    meta = json.loads((path / "assets.extra" / export_lib.METADATA_FILE).read_text())
    assert meta["exclude_history"] is expected


def test_history_without_known_items_gets_the_most_popular(exported):
  _, _, loaded = exported
  out = _serve(loaded, [["nope", ""], ["", ""]])
  expected = [f"item-{i}" for i in range(tiny.TOP_K)]  # counts decrease with the index
  for row in out["item_ids"].astype(str):
    assert list(row) == expected
  empty = loaded.signatures["serving_default"](history=tf.zeros([2, 0], tf.string))
  assert list(empty["item_ids"].numpy()[0].astype(str)) == expected


def test_predict_examples_answers_as_serving_default(exported):
  _, _, loaded = exported
  histories = [["item-3", "item-9"], ["item-5"], []]
  examples = [
    tf.train.Example(
      features=tf.train.Features(
        feature={
          "history": tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.encode() for x in h]))
        }
      )
    ).SerializeToString()
    for h in histories
  ]
  by_example = loaded.signatures["predict_examples"](examples=tf.constant(examples))
  dense = _serve(loaded, [["", "item-3", "item-9"], ["", "", "item-5"], ["", "", ""]])
  np.testing.assert_array_equal(by_example["item_ids"].numpy(), dense["item_ids"])


def test_user_interests_and_item_embeddings_have_documented_shapes(exported):
  model, _, loaded = exported
  out = _serve(loaded, [["item-1", "item-2"], ["item-3", ""]], "user_interests")
  for key in ("id_interests", "mm_interests"):
    assert out[key].shape == (2, tiny.NUM_INTERESTS, tiny.DIM)
  emb = loaded.signatures["item_embeddings"](item_ids=tf.constant(["item-4", "unknown"]))
  for key, view in (("id_embedding", "id"), ("mm_embedding", "mm")):
    value = emb[key].numpy()
    assert value.shape == (2, tiny.DIM)
    np.testing.assert_allclose(value[0], model.item_table(view).numpy()[FIRST_ITEM + 4], rtol=1e-6)
    np.testing.assert_array_equal(value[1], 0.0)  # unknown id -> zero vector


def test_saved_model_cli_show_lists_every_signature_with_names_dtypes_shapes(exported):
  _, path, _ = exported
  text = subprocess.run(
    SAVED_MODEL_CLI + ["show", "--dir", str(path), "--all"],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  ).stdout
  blocks = {}
  for chunk in text.split("signature_def['")[1:]:
    blocks[chunk.split("']", 1)[0]] = chunk
  assert set(export_lib.SIGNATURES) <= set(blocks)
  k, kk, d = tiny.TOP_K, tiny.NUM_INTERESTS, tiny.DIM
  expected = {
    "serving_default": [
      ("history", "DT_STRING", "(-1, -1)"),
      ("item_ids", "DT_STRING", f"(-1, {k})"),
      ("scores", "DT_FLOAT", f"(-1, {k})"),
    ],
    "predict_examples": [
      ("examples", "DT_STRING", "(-1)"),
      ("item_ids", "DT_STRING", f"(-1, {k})"),
      ("scores", "DT_FLOAT", f"(-1, {k})"),
    ],
    "user_interests": [
      ("history", "DT_STRING", "(-1, -1)"),
      ("id_interests", "DT_FLOAT", f"(-1, {kk}, {d})"),
      ("mm_interests", "DT_FLOAT", f"(-1, {kk}, {d})"),
    ],
    "item_embeddings": [
      ("item_ids", "DT_STRING", "(-1)"),
      ("id_embedding", "DT_FLOAT", f"(-1, {d})"),
      ("mm_embedding", "DT_FLOAT", f"(-1, {d})"),
    ],
  }
  for sig, tensors in expected.items():
    block = blocks[sig]
    assert "Method name is: tensorflow/serving/predict" in block
    for name, dtype, shape in tensors:
      entry = block.split(f"['{name}'] tensor_info:", 1)[1]
      assert f"dtype: {dtype}" in entry.split("name:", 1)[0], (sig, name)
      assert f"shape: {shape}" in entry.split("name:", 1)[0], (sig, name)


def test_saved_model_cli_run_serving_default(exported):
  _, path, _ = exported
  proc = subprocess.run(
    SAVED_MODEL_CLI
    + [
      "run",
      "--dir",
      str(path),
      "--tag_set",
      "serve",
      "--signature_def",
      "serving_default",
      "--input_exprs",
      "history=[['item-3', 'nope', 'item-9']]",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Result for output key item_ids" in proc.stdout
  assert "Result for output key scores" in proc.stdout
  assert "item-" in proc.stdout


def test_warmup_file_parses_as_prediction_logs_and_replays_through_the_model(exported):
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel

  _, path, loaded = exported
  records = list(tf.data.TFRecordDataset(str(path / "assets.extra" / export_lib.WARMUP_FILE)))
  assert 1 <= len(records) <= 1000  # TF Serving replays at most 1000
  seen = set()
  for record in records:
    entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    assert entry.WhichOneof("log_type") == "predict_log"
    request = entry.predict_log.request
    assert request.model_spec.name == "bivrec"
    signature = request.model_spec.signature_name
    seen.add(signature)
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = loaded.signatures[signature](**inputs)
    assert all(v.shape[0] == next(iter(inputs.values())).shape[0] for v in outputs.values())
  assert seen == set(export_lib.SIGNATURES)


def test_metadata_and_versions(exported, tmp_path):
  model, path, _ = exported
  meta = json.loads((path / "assets.extra" / export_lib.METADATA_FILE).read_text())
  assert meta["fusion_weight"] == W and meta["top_k"] == tiny.TOP_K
  assert meta["max_len"] == tiny.MAX_LEN and meta["note"] == "test"
  assert meta["signatures"] == list(export_lib.SIGNATURES)
  assert path.name == "1"
  for name in ("1", "2", "10", ".tmp-11-123", "notes"):
    (tmp_path / "m" / name).mkdir(parents=True)
  assert export_lib.next_version(tmp_path / "m") == 11  # integers only, not lexicographic
  with pytest.raises(FileExistsError):
    export_lib.export_model(model, tiny.vocab(), W, str(tmp_path), "m", 3, version=2)


def test_export_does_not_carry_the_optimizer(exported):
  _, path, _ = exported
  names = [name for name, _ in tf.train.list_variables(str(path / "variables" / "variables"))]
  assert not [n for n in names if "optimizer" in n.lower()]


@pytest.mark.parametrize("where", ["saved_model.save", "_write_warmup", "os.rename"])
def test_interrupted_export_leaves_no_version_directory(exported, tmp_path, monkeypatch, where):
  model, _, _ = exported

  def partial_save(obj, export_dir, **kwargs):  # a fast stand-in that leaves a partial SavedModel
    os.makedirs(os.path.join(export_dir, "variables"))
    with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
      f.write(b"partial")
    if where == "saved_model.save":
      raise KeyboardInterrupt("interrupted while writing the SavedModel")

  def boom(*args, **kwargs):
    raise KeyboardInterrupt("interrupted mid-export")

  monkeypatch.setattr(tf.saved_model, "save", partial_save)
  if where == "_write_warmup":
    monkeypatch.setattr(export_lib, "_write_warmup", boom)
  elif where == "os.rename":
    monkeypatch.setattr(export_lib.os, "rename", boom)
  with pytest.raises(KeyboardInterrupt):
    export_lib.export_model(model, tiny.vocab(), W, str(tmp_path), "m", 3)
  assert os.listdir(tmp_path / "m") == []


def test_reexport_from_a_run_directory(tmp_path):
  from bivrec_tf.builders import build_model  # pylint: disable=import-outside-toplevel
  from bivrec_tf.config import Config  # pylint: disable=import-outside-toplevel
  from input_pipelines.dataset import PreparedDataset  # pylint: disable=import-outside-toplevel
  from input_pipelines.synthetic import generate  # pylint: disable=import-outside-toplevel

  data = generate(tmp_path / "data", seed=1, num_items=30, num_users=40, num_topics=3)
  cfg = Config().replace(
    data={"data": str(data)},
    model=dict(tiny.MODEL_FIELDS),
    export={"export_base": str(tmp_path / "exports"), "top_k": 4},
  )
  ds = PreparedDataset.load(data)
  model = build_model(cfg, ds, 6)
  model.queries(tf.zeros([1, 6], tf.int64))
  run = tmp_path / "run"
  model.save_weights(str(run / "checkpoints" / "best"))
  (run / "config.json").write_text(cfg.to_json())
  (run / "metrics.json").write_text(
    json.dumps({"data": str(data), "max_len": 6, "fusion_weight": 0.3, "test": {}, "valid": {}})
  )

  assert export_lib.main(["--run", str(run), "--top-k", "3"]) == 0
  exported = tmp_path / "exports" / "bivrec" / "1"
  meta = json.loads((exported / "assets.extra" / export_lib.METADATA_FILE).read_text())
  assert meta["fusion_weight"] == 0.3 and meta["top_k"] == 3 and meta["run_dir"] == str(run)
  # The checkpoint was restored (a fresh build_model has other random weights).
  ids = tf.constant([str(x) for x in ds.vocab[FIRST_ITEM : FIRST_ITEM + 5]])
  emb = tf.saved_model.load(str(exported)).signatures["item_embeddings"](item_ids=ids)
  for key, view in (("id_embedding", "id"), ("mm_embedding", "mm")):
    np.testing.assert_allclose(
      emb[key].numpy(),
      model.item_table(view).numpy()[FIRST_ITEM : FIRST_ITEM + 5],
      rtol=1e-5,
      atol=1e-6,
    )


def test_reexport_cli_reports_a_missing_run_directory(tmp_path, capsys):
  assert export_lib.main(["--run", str(tmp_path / "missing")]) == 2
  assert "config.json" in capsys.readouterr().err


def test_plain_copy_serves_the_same_recommendations(exported):
  model, _, loaded = exported
  copy = export_lib.plain_copy(model)
  assert copy is not model
  history = np.array([[0, 0, 0, 0, 5, 9, 12, 30]], np.int64)
  for view, q in model.queries(history).items():
    np.testing.assert_allclose(copy.queries(history)[view].numpy(), q.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
      copy.item_table(view).numpy(), model.item_table(view).numpy(), rtol=1e-6
    )


@pytest.mark.slow
def test_parameter_server_trained_model_exports_a_loadable_saved_model(tmp_path):
  """PS variables (the ID and feature tables are sharded over 2 parameter servers here) are
  copied to plain ones before saving; saved as they are, the SavedModel does not load."""
  from input_pipelines.synthetic import generate  # pylint: disable=import-outside-toplevel

  data = generate(tmp_path / "data", seed=5, num_items=400, num_users=500, num_topics=10)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "bivrec_tf.train",
      "--data",
      str(data),
      "--run-dir",
      str(tmp_path / "run"),
      "--epochs",
      "1",
      "--batch-size",
      "128",
      "--num-negatives",
      "64",
      "--dim",
      "64",
      "--dropout",
      "0",
      "--seed",
      "7",
      "--strategy",
      "parameter_server",
      "--local-cluster",
      "2,2",
      "--export-base",
      str(tmp_path / "models"),
    ],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  loaded = tf.saved_model.load(str(tmp_path / "models" / "bivrec" / "1"))
  out = loaded.signatures["serving_default"](history=tf.constant([["item_00005", "item_00009"]]))
  assert out["item_ids"].shape == (1, 10)
  assert metrics.get("id_embedding_shards", 2) == 2
