"""BivRec in a TFX pipeline, on the local DAG runner:

  ImportExampleGen -> ImportSchemaGen -> Trainer (bivrec_tf.tfx.trainer.run_fn)
                   -> [Evaluator (SetMatchRecall on predict_examples)] -> Pusher -> saved_models/

Where TFX 1.21 installs (`pip install -r requirements-tfx.txt`; not on our machines: its
ml-metadata 1.21 has no wheel in our registries), from the repository root:

  python -m input_pipelines.tfx_layout --from-prepared my_data --out my_tfx
  python examples/tfx_pipeline.py --tfx-data my_tfx --pipeline-root tfx_root \
      --serving-dir saved_models/bivrec [--train-steps 2000] [--evaluator --min-recall 0.1]

`--tfx-data` is the ExampleGen-ready layout (`Split-train/`, `Split-eval/`, `Split-test/`,
`schema.pbtxt`, `items/`) that `python -m input_pipelines.prepare ... --tfx-out` or
`python -m input_pipelines.tfx_layout` writes. ImportExampleGen re-imports its three splits as
they are (input patterns, no re-splitting), the Trainer validates on `eval` and reports `test`,
Pusher copies the Trainer's `Format-Serving` SavedModel to `<serving-dir>/<unix time>/` (with
`--evaluator`, only when the Evaluator blessed it). Pipeline state (ML Metadata, artifacts)
goes under `--pipeline-root`.
"""

import argparse
import json
import os
import sys
from pathlib import Path

# tf.keras must be Keras 2 in every component that runs in this process (TFRS needs it); the
# variable only works before TensorFlow is first imported, which importing tfx does.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bivrec_tf  # noqa: E402,F401  (Keras-2 guard before TensorFlow)

RUN_FN = "bivrec_tf.tfx.trainer.run_fn"  # how the Trainer finds the module (udf_utils.get_fn)
SPLITS = ("train", "eval", "test")


def create_pipeline(
  tfx_data: str,
  pipeline_root: str,
  serving_dir: str,
  metadata_path: str,
  config: dict = None,
  train_steps: int = 0,
  evaluator: bool = False,
  ks=(10,),
  min_recall: float = None,
):
  """The pipeline (a `tfx.dsl.Pipeline`); `config` = the Trainer's Config sections (JSON)."""
  from tfx import v1 as tfx

  tfx_data = os.path.abspath(tfx_data)
  example_gen = tfx.components.ImportExampleGen(
    input_base=tfx_data,
    input_config=tfx.proto.Input(
      splits=[tfx.proto.Input.Split(name=s, pattern=f"Split-{s}/*") for s in SPLITS]
    ),
  )
  schema_gen = tfx.components.ImportSchemaGen(schema_file=os.path.join(tfx_data, "schema.pbtxt"))
  trainer = tfx.components.Trainer(
    run_fn=RUN_FN,
    examples=example_gen.outputs["examples"],
    schema=schema_gen.outputs["schema"],
    train_args=tfx.proto.TrainArgs(num_steps=train_steps),  # 0: the config's epochs
    eval_args=tfx.proto.EvalArgs(splits=["eval", "test"]),  # validation, then held-out test
    custom_config={"items": os.path.join(tfx_data, "items"), "config": config or {}},
  )
  components = [example_gen, schema_gen, trainer]
  blessing = None
  if evaluator:
    from google.protobuf import text_format
    from tensorflow_model_analysis.proto import config_pb2  # (TFMA 0.52: no tfma.EvalConfig)

    from bivrec_tf.tfx.evaluator import eval_config_text

    check = tfx.components.Evaluator(
      examples=example_gen.outputs["examples"],
      model=trainer.outputs["model"],
      example_splits=["eval"],
      eval_config=text_format.Parse(eval_config_text(ks, min_recall), config_pb2.EvalConfig()),
    )
    components.append(check)
    blessing = check.outputs["blessing"]
  components.append(
    tfx.components.Pusher(
      model=trainer.outputs["model"],
      model_blessing=blessing,
      push_destination=tfx.proto.PushDestination(
        filesystem=tfx.proto.PushDestination.Filesystem(base_directory=os.path.abspath(serving_dir))
      ),
    )
  )
  return tfx.dsl.Pipeline(
    pipeline_name="bivrec",
    pipeline_root=os.path.abspath(pipeline_root),
    components=components,
    metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
      os.path.abspath(metadata_path)
    ),
  )


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tfx-data", required=True, help="the ExampleGen-ready layout directory")
  p.add_argument("--pipeline-root", default="tfx_root", help="artifacts and metadata")
  p.add_argument("--serving-dir", default="saved_models/bivrec", help="Pusher's destination")
  p.add_argument("--config", help="JSON file of Config sections for the Trainer")
  p.add_argument("--train-steps", type=int, default=0, help="0: the config's epochs")
  p.add_argument("--evaluator", action="store_true", help="add TFX's Evaluator (needs TFMA)")
  p.add_argument("--ks", default="10", help="Evaluator: recall@k for each k (<= export top_k)")
  p.add_argument("--min-recall", type=float, help="Evaluator: bless only above this recall@k")
  args = p.parse_args(argv)
  from tfx import v1 as tfx

  config = json.loads(Path(args.config).read_text()) if args.config else None
  pipeline = create_pipeline(
    args.tfx_data,
    args.pipeline_root,
    args.serving_dir,
    os.path.join(args.pipeline_root, "metadata.sqlite"),
    config=config,
    train_steps=args.train_steps,
    evaluator=args.evaluator,
    ks=[int(k) for k in args.ks.split(",")],
    min_recall=args.min_recall,
  )
  tfx.orchestration.LocalDagRunner().run(pipeline)
  return 0


if __name__ == "__main__":
  sys.exit(main())
