"""TFMA on a BivRec export, as TFX's Evaluator runs it: SetMatchRecall@k on `predict_examples`.

Needs `tensorflow-model-analysis` (0.52, the release of TFX 1.21; see requirements-tfx.txt),
which the project's requirements do not install. Runs `tfma.run_model_analysis` with
`bivrec_tf.tfx.evaluator.eval_config_text` on a SavedModel (the Trainer's `serving_model_dir`)
and eval examples (ExampleGen's `Split-eval/*`), prints TFMA's recall@k next to the Trainer's
Recall@k of the fused model on the same split (`valid_metrics` in the export's metadata), and
writes both to `--out`/recall.json.

  TF_USE_LEGACY_KERAS=1 python examples/tfma_recall.py --model MODEL_DIR \
      --examples 'TFX_DIR/Split-eval/*' --ks 10,20,50 --out tfma_out
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bivrec_tf  # noqa: E402,F401  (Keras-2 guard before TensorFlow)
from bivrec_tf.tfx.evaluator import eval_config_text  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", required=True, help="the SavedModel directory")
  p.add_argument("--examples", required=True, help="file pattern of the eval examples")
  p.add_argument("--ks", default="10", help="comma-separated k (each <= the export's top_k)")
  p.add_argument("--out", required=True, help="TFMA output directory")
  args = p.parse_args(argv)
  import tensorflow_model_analysis as tfma
  from google.protobuf import text_format
  from tensorflow_model_analysis.proto import config_pb2  # (TFMA 0.52: no tfma.EvalConfig)

  ks = [int(k) for k in args.ks.split(",")]
  eval_config = text_format.Parse(eval_config_text(ks), config_pb2.EvalConfig())
  model = tfma.default_eval_shared_model(eval_saved_model_path=args.model, eval_config=eval_config)
  result = tfma.run_model_analysis(
    eval_shared_model=model,
    eval_config=eval_config,
    data_location=args.examples,
    file_format="tfrecords",
    output_path=args.out,
  )
  ((_, metrics),) = result.slicing_metrics  # the one overall slice
  values = {
    name: value.get("doubleValue") for name, value in metrics[""][""].items()
  }  # {"recall@10": ..., "example_count": ...}
  meta = json.loads((Path(args.model) / "assets.extra" / "bivrec_metadata.json").read_text())
  w = meta["fusion_weight"]
  trainer = meta["valid_metrics"].get(f"fused@{w:.2f}") or next(
    iter(meta["valid_metrics"].values())
  )
  rows = {
    f"recall@{k}": {"tfma": values[f"recall@{k}"], "trainer": trainer[f"recall@{k}"]} for k in ks
  }
  out = {"example_count": values.get("example_count"), "recall": rows, "fusion_weight": w}
  Path(args.out, "recall.json").write_text(json.dumps(out, indent=2))
  print(f"examples: {out['example_count']:.0f}")
  print("| metric | TFMA SetMatchRecall | Trainer (full ranking, same split) |")
  print("|---|---|---|")
  for name, row in rows.items():
    print(f"| {name} | {row['tfma']:.4f} | {row['trainer']:.4f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
