#!/usr/bin/env bash
# Train the learned-routing MoE on a CUDA machine and record its traces, in one go.
#
# Run from the repository root with the corpus built by prepare_corpus.py at $CORPUS. Results go to
# $OUT (default ./.dev/learned/gpu-out): train.log, loss.csv, train_run.json, the two traces and their cards.
# The trained model stays in $RUN_DIR (about 0.6 GB; it is not bundled).
#   STEPS=2000 bash traces/learned/run_gpu.sh
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-.dev/learned/gpu-out}
CORPUS=${CORPUS:-.dev/learned/corpus.npz}
RUN_DIR=${RUN_DIR:-/tmp/learned-run}
STEPS=${STEPS:-2000}
PREFILL_PER_DOMAIN=${PREFILL_PER_DOMAIN:-48}
DECODE_PER_DOMAIN=${DECODE_PER_DOMAIN:-16}
mkdir -p "$OUT/traces"
PY=${PY:-python3}
# Recording imports moe_cache_env, whose package import pulls in its dependencies (gymnasium among them). On a
# machine without them, put their wheels in .whl/ (pip download --no-deps ...): they are installed under /tmp.
if ! $PY -c "import gymnasium" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/learned-site .whl/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/learned-site
fi
# Fail before training, not after.
$PY -c "import moe_cache_env.traces.record" || { echo "moe_cache_env does not import here: install its dependencies"; exit 2; }
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") | tee "$OUT/train.log"
$PY traces/learned/train_moe.py --corpus "$CORPUS" --out-dir "$RUN_DIR" --steps "$STEPS" \
    ${TRAIN_ARGS:-} 2>&1 | tee -a "$OUT/train.log"
cp "$RUN_DIR/loss.csv" "$RUN_DIR/train_run.json" "$OUT/"
$PY traces/learned/record_traces.py --run-dir "$RUN_DIR" --corpus "$CORPUS" --out-dir "$OUT/traces" \
    --prefill-per-domain "$PREFILL_PER_DOMAIN" --decode-per-domain "$DECODE_PER_DOMAIN" ${RECORD_ARGS:-} 2>&1 | tee -a "$OUT/train.log"
