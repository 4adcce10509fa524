#!/usr/bin/env bash
# The whole TFX pipeline of examples/tfx_pipeline.py on this machine, as far as our package
# registries allow (docs/tfx.md, "What ran here"): TFX 1.21 with ml-metadata 1.17.1 (TFX 1.21
# requires 1.21, which has no wheel here) and an empty stand-in for tensorflow-data-validation
# (no 1.21 wheel; imported for statistics only), in a virtualenv over the system site packages,
# so requirements.txt's environment stays untouched. On the default dataset: ImportExampleGen
# -> ImportSchemaGen -> Trainer (100 steps) -> Evaluator (SetMatchRecall@10,20,50, blessing at
# recall@10 >= 0.05) -> Pusher, then TFMA on the export against the Trainer's own Recall@k.
#   bash examples/tfx_local/run.sh        (VENV=.venv-tfx OUT=tfx_local_run by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-tfx}
OUT=${OUT:-tfx_local_run}
if [ ! -x "$VENV/bin/python" ]; then
  python -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install tensorflow-model-analysis==0.52.0
  "$VENV/bin/pip" install --no-deps tfx==1.21.0 ml-pipelines-sdk==1.21.0 ml-metadata==1.17.1 \
    keras-tuner==1.4.8 kt-legacy==1.0.5 portpicker==1.6.0
fi
export TF_USE_LEGACY_KERAS=1 PYTHONPATH="$PWD:$PWD/examples/tfx_local"
data=$(python -c "from input_pipelines.synthetic import ensure_synthetic; print(ensure_synthetic())" | tail -1)
rm -rf "$OUT" && mkdir -p "$OUT"
python -m input_pipelines.tfx_layout --from-prepared "$data" --out "$OUT/tfx_data"
cat > "$OUT/config.json" <<'JSON'
{"model": {"dim": 32}, "loss": {"num_negatives": 64}, "eval": {"eval_batch_size": 500},
 "train": {"batch_size": 256, "learning_rate": 0.01, "jit_compile": false, "seed": 3},
 "export": {"top_k": 50}}
JSON
"$VENV/bin/python" examples/tfx_pipeline.py --tfx-data "$OUT/tfx_data" --pipeline-root "$OUT/root" \
  --serving-dir "$OUT/saved_models/bivrec" --config "$OUT/config.json" --train-steps 100 \
  --evaluator --ks 10,20,50 --min-recall 0.05
ls "$OUT/saved_models/bivrec"
"$VENV/bin/python" examples/tfma_recall.py --model "$(ls -d "$OUT"/root/Trainer/model/*/Format-Serving)" \
  --examples "$OUT/tfx_data/Split-eval/*" --ks 10,20,50 --out "$OUT/tfma"
