"""What TFX's Evaluator (TensorFlow Model Analysis) needs to score the export: an `EvalConfig`.

TFMA feeds the `eval` split's serialized tf.Examples to the `predict_examples` signature (one
string input, so TFMA passes the raw records: `tensorflow_model_analysis/utils/model_util.py`,
`get_inputs` / `_batch_reducible_process`), reads the label from the examples' `target`
feature, and scores the answer (`item_ids` string [B, k], `scores` float [B, k]) with
`SetMatchRecall` (`tensorflow_model_analysis/metrics/set_match_confusion_matrix_metrics.py`):
the share of target ids among the first `top_k` returned ids, **micro-averaged** (all hits over
all targets). For one target per example (the default `loo` protocol) that is the Trainer's
Recall@k; for several (`user_split`) the Trainer's per-user average differs.

NDCG@k (and the full-ranking Recall / HitRate / MRR at 10, 20, 50) stay the Trainer's own
evaluation: TFMA's NDCG (`tensorflow_model_analysis/metrics/ndcg.py`) is a query metric over
examples that are one candidate each (grouped by a `query_key`, with a gain per candidate),
not over a ranked list of ids that the model returns per example. The Trainer computes them on
the validation and test splits over the whole catalogue (`<model_run_dir>/metrics.json`, and
`valid_metrics` / `test_metrics` in the export's `assets.extra/bivrec_metadata.json`).

`k` must not exceed the export's `top_k` (ExportConfig.top_k, default 10: export with
`"export": {"top_k": 50}` in the Trainer's custom_config for Recall@50).
"""

from typing import Optional, Sequence

SIGNATURE = "predict_examples"
LABEL_KEY = "target"


def eval_config_text(ks: Sequence[int] = (10,), min_recall: Optional[float] = None) -> str:
  """A `tfma.EvalConfig` in protobuf text format: `SetMatchRecall` at each k (named
  `recall@<k>`) and `ExampleCount` on the `predict_examples` signature, over the whole eval
  split. `min_recall`: a value threshold on recall@<first k> (the Evaluator then blesses only a
  model that reaches it, and Pusher pushes only a blessed model).

  Use: `text_format.Parse(eval_config_text((10, 20)), config_pb2.EvalConfig())` with
  `from tensorflow_model_analysis.proto import config_pb2` (TFMA 0.52 no longer exports
  `tfma.EvalConfig` at its top level).
  """
  metrics = ['    metrics { class_name: "ExampleCount" }']
  for i, k in enumerate(ks):
    config = (
      f'"name": "recall@{k}", "top_k": {int(k)}, '
      '"prediction_class_key": "item_ids", "prediction_score_key": "scores"'
    )
    threshold = ""
    if min_recall is not None and i == 0:
      threshold = "\n      threshold { value_threshold { lower_bound { value: %r } } }" % float(
        min_recall
      )
    metrics.append(
      f'    metrics {{\n      class_name: "SetMatchRecall"\n      config: {config!r}{threshold}\n'
      "    }"
    )
  return (
    f'model_specs {{ signature_name: "{SIGNATURE}" label_key: "{LABEL_KEY}" }}\n'
    "metrics_specs {\n" + "\n".join(metrics) + "\n}\nslicing_specs {}\n"
  )
