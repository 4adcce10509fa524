"""The TFX Trainer module (`bivrec_tf.tfx.trainer.run_fn`) driven as TFX 1.21's GenericExecutor
drives it, on the default dataset in ExampleGen's layout.

TFX cannot be installed here (its ml-metadata 1.21 has no wheel in our registries), so
`executor_fn_args` fills an object with exactly FnArgs' fields the way the executor does
(github.com/tensorflow/tfx v1.21.0: `tfx/components/trainer/executor.py` `_GetFnArgs`,
`tfx/components/trainer/fn_args_utils.py` `get_common_fn_args`, `tfx/utils/path_utils.py`
`serving_model_dir`, `tfx/types/standard_artifact_utils.py` `get_split_uris`).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf import export as export_lib
from bivrec_tf.tfx import trainer
from bivrec_tf.train import StepBudget, step_plan
from input_pipelines import tfx_layout
from input_pipelines.synthetic import generate
from tests.serving import models as tiny

# tfx.components.trainer.fn_args_utils.FnArgs (v1.21.0), every attribute, in order.
FN_ARGS_FIELDS = (
  "working_dir",
  "train_files",
  "eval_files",
  "train_steps",
  "eval_steps",
  "schema_path",
  "schema_file",
  "transform_graph_path",
  "transform_output",
  "data_accessor",
  "serving_model_dir",
  "eval_model_dir",
  "model_run_dir",
  "base_model",
  "hyperparameters",
  "custom_config",
)


class FnArgs:
  """FnArgs' fields and nothing else: run_fn reading any other attribute fails."""

  __slots__ = FN_ARGS_FIELDS

  def __init__(self, **fields):
    for name in FN_ARGS_FIELDS:
      setattr(self, name, fields.pop(name, None))
    assert not fields, fields


def executor_fn_args(
  examples_uri, model_uri, model_run_uri, train_args=None, eval_args=None, custom_config=None,
  schema_uri=None,
):  # fmt: skip
  """FnArgs as GenericExecutor._GetFnArgs fills them for one Examples artifact of the current
  split format (`Split-<name>`); `train_args` / `eval_args` as the protos' JSON dicts."""
  train_args, eval_args = dict(train_args or {}), dict(eval_args or {})
  train_splits = train_args.get("splits") or ["train"]  # default when TrainArgs.splits is empty
  eval_splits = eval_args.get("splits") or ["eval"]
  schema_path = None
  if schema_uri:  # io_utils.get_only_uri_in_dir: exactly one file in the artifact's directory
    (only,) = os.listdir(schema_uri)
    schema_path = os.path.join(schema_uri, only)
  return FnArgs(
    train_files=[os.path.join(examples_uri, f"Split-{s}", "*") for s in train_splits],
    eval_files=[os.path.join(examples_uri, f"Split-{s}", "*") for s in eval_splits],
    train_steps=train_args.get("num_steps") or None,  # 0 (proto default) -> None
    eval_steps=eval_args.get("num_steps") or None,
    schema_path=schema_path,
    schema_file=schema_path,
    serving_model_dir=os.path.join(model_uri, "Format-Serving"),
    eval_model_dir=os.path.join(model_uri, "Format-TFMA"),
    model_run_dir=model_run_uri,
    # the component json_utils.dumps it, the executor json_utils.loads it
    custom_config=json.loads(json.dumps(custom_config)),
  )


TINY = {
  "model": {"dim": 32},
  "loss": {"num_negatives": 64},
  "train": {"batch_size": 256, "learning_rate": 0.01, "jit_compile": False, "seed": 3},
  "eval": {"eval_batch_size": 500},
}
# four passes over the default data's 21,315 train examples (83 steps each) and 18 steps of a fifth
# (100 steps until lambda_sem 3 became the default: its first steps learn more slowly)
TRAIN_STEPS = 350


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  """The default dataset (input_pipelines.synthetic defaults) in ExampleGen's layout, as
  ImportExampleGen would hand it to the Trainer."""
  root = tmp_path_factory.mktemp("tfx")
  prepared = generate(root / "prepared", seed=0)
  uri = tfx_layout.write_tfx_layout(prepared, root / "ImportExampleGen" / "examples" / "1")
  schema_uri = root / "ImportSchemaGen" / "schema" / "2"
  schema_uri.mkdir(parents=True)
  (schema_uri / "schema.pbtxt").write_text((uri / "schema.pbtxt").read_text())
  return root, uri, schema_uri


@pytest.fixture(scope="module")
def trained(examples):
  root, uri, schema_uri = examples
  fn_args = executor_fn_args(
    uri,
    root / "Trainer" / "model" / "3",
    root / "Trainer" / "model_run" / "3",
    train_args={"num_steps": TRAIN_STEPS},
    eval_args={"splits": ["eval", "test"], "num_steps": 2},
    custom_config={"items": str(uri / "items"), "config": TINY},
    schema_uri=schema_uri,
  )
  summary = trainer.run_fn(fn_args)
  return fn_args, summary, tf.saved_model.load(fn_args.serving_model_dir)


@pytest.mark.slow
def test_run_fn_trains_the_asked_steps_and_learns(trained):
  _, summary, _ = trained
  assert summary["train_steps"] == TRAIN_STEPS
  assert summary["table_split"] == "test"
  rows = summary["test"]
  fused = next(v for k, v in rows.items() if k.startswith("BivRec"))
  # Measured with this fixture (350 steps, 2 evaluation batches, lambda_sem 3): test NDCG@20
  # popularity 0.0126, fused 0.0728 (5.8x popularity); 100 steps gave 0.0143 at lambda_sem 3 and
  # 0.0540 at lambda_sem 1; the untrained model ranks below popularity.
  assert fused["ndcg@20"] > 3 * rows["Popularity"]["ndcg@20"], rows
  assert summary["epochs_run"] == 5  # 4 x 83 steps, then 18 of the fifth pass


@pytest.mark.slow
def test_serving_model_dir_holds_the_four_signature_saved_model_with_warmup(trained):
  fn_args, _, loaded = trained
  model_dir = fn_args.serving_model_dir
  assert os.path.isfile(os.path.join(model_dir, "saved_model.pb"))  # directly, no version dir
  assert sorted(os.listdir(os.path.dirname(model_dir))) == ["Format-Serving"]  # no temporary
  assert set(loaded.signatures) == set(export_lib.SIGNATURES)
  extra = os.path.join(model_dir, "assets.extra")
  warmup = list(tf.data.TFRecordDataset(os.path.join(extra, export_lib.WARMUP_FILE)))
  assert len(warmup) == len(export_lib.SIGNATURES)
  meta = json.loads(open(os.path.join(extra, export_lib.METADATA_FILE)).read())
  assert meta["version"] is None and meta["signatures"] == list(export_lib.SIGNATURES)
  assert meta["test_metrics"] and meta["valid_metrics"]


@pytest.mark.slow
def test_served_answers_are_real_item_ids_and_examples_answer_alike(trained, examples):
  _, uri, _ = examples
  _, _, loaded = trained
  vocab = (uri / "items" / "item_vocab.txt").read_text().splitlines()
  eval_file = str(uri / "Split-eval" / tfx_layout.shard_file(0, 1))
  serialized = list(tf.data.TFRecordDataset(eval_file, "GZIP").take(8).as_numpy_iterator())
  parsed = tf.io.parse_example(serialized, {"history": tf.io.RaggedFeature(tf.string)})
  history = parsed["history"].to_tensor("")
  out = loaded.signatures["serving_default"](history=history)
  ids = out["item_ids"].numpy().astype(str)
  assert ids.shape == (8, 10) and set(ids.ravel()) <= set(vocab[2:])  # no [PAD] / [OOV]
  for row, hist in zip(ids, history.numpy().astype(str)):
    assert not set(row) & set(hist)  # the history is excluded (default data: auto -> on)
  # predict_examples reads ExampleGen's eval examples as they are (TFMA's input)
  by_examples = loaded.signatures["predict_examples"](examples=tf.constant(serialized))
  np.testing.assert_array_equal(by_examples["item_ids"].numpy(), out["item_ids"].numpy())


@pytest.mark.slow
def test_model_run_dir_is_a_run_directory_that_re_exports(trained, tmp_path):
  fn_args, summary, loaded = trained
  run = fn_args.model_run_dir
  for name in ("config.json", "metrics.json", "tensorboard", "checkpoints", "data"):
    assert os.path.exists(os.path.join(run, name)), name
  config = json.loads(open(os.path.join(run, "config.json")).read())
  assert config["model"]["dim"] == 32 and config["train"]["run_dir"] == str(run)
  assert json.loads(open(os.path.join(run, "metrics.json")).read())["train_steps"] == TRAIN_STEPS
  # python -m bivrec_tf.export --run <model_run_dir> rebuilds the same served model
  again = tf.saved_model.load(str(export_lib.export_run(run, export_base=str(tmp_path))))
  history = tf.constant([["item_00017", "item_00042", "item_00005"], ["item_02999", "", ""]])
  answers = [m.signatures["serving_default"](history=history) for m in (loaded, again)]
  np.testing.assert_array_equal(answers[0]["item_ids"].numpy(), answers[1]["item_ids"].numpy())


# --- the contract without training ---------------------------------------------------------------


def test_eval_splits_follow_the_executor_patterns():
  files = ["/a/Split-eval/*", "/b/Split-eval/*", "/a/Split-test/*"]
  assert trainer.eval_splits(files) == {
    "valid": ["/a/Split-eval/*", "/b/Split-eval/*"],
    "test": ["/a/Split-test/*"],
  }
  with pytest.raises(ValueError, match="3 splits"):
    trainer.eval_splits(["/a/Split-eval/*", "/a/Split-test/*", "/a/Split-x/*"])


@pytest.mark.parametrize(
  "custom, message",
  [
    (None, "key 'items' is required"),
    ({"items": "x", "epochs": 3}, "unknown key 'epochs'"),
    ({"items": "x", "config": {"train": {"epoch": 3}}}, "`train.epoch` is unknown"),
    ({"items": "x", "config": {"trainer": {}}}, "section `trainer` is unknown"),
    ({"items": "x", "config": {"train": {"epochs": 0}}}, "epochs"),
    ({"items": "x", "config": "{not json"}, "'config' is not JSON"),
    ({"items": "x", "preset": "nope"}, "preset 'nope' is unknown"),
  ],
)
def test_bad_custom_config_is_one_clear_error(custom, message):
  with pytest.raises(ValueError, match=message):
    trainer.parse_custom_config(custom)


def test_custom_config_sets_the_config_as_json_or_string():
  cfg, items = trainer.parse_custom_config({"items": "it", "config": json.dumps(TINY)})
  assert items == "it" and cfg.model.dim == 32 and cfg.train.batch_size == 256
  assert cfg.model.num_interests == trainer.config_lib.Config().model.num_interests  # kept
  preset, _ = trainer.parse_custom_config({"items": "it", "preset": "id_only"})
  assert preset.model.views == ("id",)


def test_unsupported_inputs_are_refused_before_any_work(tmp_path):
  args = executor_fn_args(tmp_path, tmp_path / "m", tmp_path / "r", custom_config={"items": "x"})
  args.base_model = str(tmp_path / "base")
  with pytest.raises(ValueError, match="base_model"):
    trainer.run_fn(args)
  args.base_model, args.hyperparameters = None, {"values": {"dim": 8}}
  with pytest.raises(ValueError, match="hyperparameters"):
    trainer.run_fn(args)
  assert not (tmp_path / "r").exists()


def test_schema_must_declare_bytes_features(tmp_path):
  from google.protobuf import text_format
  from tensorflow_metadata.proto.v0 import schema_pb2

  good = tmp_path / "schema.pbtxt"
  good.write_text(text_format.MessageToString(tfx_layout.make_schema(1)))
  trainer.check_schema(str(good))
  schema = tfx_layout.make_schema(1)
  schema.feature[0].type = schema_pb2.INT
  bad = tmp_path / "int.pbtxt"
  bad.write_text(text_format.MessageToString(schema))
  with pytest.raises(ValueError, match=r"int.pbtxt: feature 'history' is INT"):
    trainer.check_schema(str(bad))


@pytest.mark.parametrize(
  "train_steps, ps, expected",
  [
    (None, False, (20, 83, 0)),  # the config's epochs
    (60, False, (1, 60, 1)),
    (200, False, (3, 83, 1)),  # 83 + 83 + 34, the last pass cut by StepBudget
    (200, True, (3, 67, 0)),  # no batch callbacks: 3 x 67 = 201
  ],
)
def test_step_plan_covers_train_steps(train_steps, ps, expected):
  epochs, per_epoch, callbacks = step_plan(20, 83, train_steps, ps)
  assert (epochs, per_epoch, len(callbacks)) == expected
  assert all(isinstance(c, StepBudget) for c in callbacks)


def test_export_into_a_given_directory(tmp_path, monkeypatch):
  """The real SavedModel is checked on the trained fixture; here where it goes (a fast stand-in
  for tf.saved_model.save)."""

  def fake_save(obj, export_dir, **kwargs):
    os.makedirs(os.path.join(export_dir, "variables"))
    open(os.path.join(export_dir, "saved_model.pb"), "wb").close()

  monkeypatch.setattr(tf.saved_model, "save", fake_save)
  model = tiny.tiny_model(seed=0)
  target = tmp_path / "model" / "Format-Serving"
  target.mkdir(parents=True)  # an existing empty directory is replaced
  path = export_lib.export_model(model, tiny.vocab(), 0.5, "unused", target_dir=str(target))
  assert path == target and (target / "saved_model.pb").is_file()
  assert (target / "assets.extra" / export_lib.WARMUP_FILE).is_file()
  assert sorted(os.listdir(tmp_path / "model")) == ["Format-Serving"]  # no temporary left
  assert not (tmp_path / "unused").exists()
  with pytest.raises(FileExistsError, match="not empty"):
    export_lib.export_model(model, tiny.vocab(), 0.5, "unused", target_dir=str(target))


@pytest.mark.slow
def test_tfma_set_match_recall_on_predict_examples_is_the_trainers_recall(trained, examples):
  """What TFX's Evaluator computes with `evaluator.eval_config_text`, done by hand: TFMA feeds the
  eval split's serialized examples to the signature's single string input and micro-averages
  target hits in the returned `item_ids` (SetMatchRecall). On one target per example that is the
  Trainer's own Recall@10 of the fused model on the same examples."""
  from bivrec_tf.tfx import evaluator

  _, uri, _ = examples
  _, summary, loaded = trained
  text = evaluator.eval_config_text((10,))
  assert f'signature_name: "{evaluator.SIGNATURE}"' in text and '"top_k": 10' in text
  signature = loaded.signatures[evaluator.SIGNATURE]
  (spec,) = signature.structured_input_signature[1].values()  # one string input: raw records
  assert spec.dtype == tf.string and spec.shape.rank == 1
  assert {"item_ids", "scores"} <= set(signature.structured_outputs)
  eval_file = str(uri / "Split-eval" / tfx_layout.shard_file(0, 1))
  # the Trainer evaluated eval_steps = 2 batches of 500 users
  records = list(tf.data.TFRecordDataset(eval_file, "GZIP").take(1000).as_numpy_iterator())
  out = signature(examples=tf.constant(records))["item_ids"].numpy()
  hits = targets = 0
  for record, ids in zip(records, out):
    label = set(tf.train.Example.FromString(record).features.feature["target"].bytes_list.value)
    hits += len(label & set(ids[:10]))
    targets += len(label)
  w = summary["fusion_weight"]
  trainer_recall = summary["valid"][f"fused@{w:.2f}"]["recall@10"]
  assert targets == 1000  # loo: one target per example, micro = per-user average
  assert hits / targets == pytest.approx(trainer_recall, abs=1.5e-3)  # ties may order apart


def test_pipeline_names_a_run_fn_the_executor_can_import():
  """examples/tfx_pipeline.py gives the Trainer `run_fn=RUN_FN`; TFX's udf_utils.get_fn imports
  it as module path + function name."""
  import ast
  import importlib
  from pathlib import Path

  source = Path(__file__).resolve().parents[2] / "examples" / "tfx_pipeline.py"
  tree = ast.parse(source.read_text())
  (value,) = [
    node.value.value
    for node in tree.body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RUN_FN"
  ]
  module, _, name = value.rpartition(".")
  assert getattr(importlib.import_module(module), name) is trainer.run_fn
