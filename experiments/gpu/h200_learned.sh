#!/usr/bin/env bash
# One call on the H200 (run from the repository root, the corpus at .dev/learned/corpus.npz, built here by
# traces/learned/prepare_corpus.py): retrain the tiny OLMoE of traces/learned/ and re-record the two bundled
# learned traces with speculative routing (record --speculate 2, top-8). Writes to $OUT: the two traces,
# learned-meta.tar.gz (cards, train_run.json, loss.csv, train.log) and record.log.
set -o pipefail
export PYTHONUNBUFFERED=1
test -f .dev/learned/corpus.npz || { echo "no corpus at .dev/learned/corpus.npz"; exit 2; }
WORK=/tmp/learned-out
mkdir -p $WORK
STEPS=${STEPS:-2000} PREFILL_PER_DOMAIN=48 DECODE_PER_DOMAIN=16 \
    TRAIN_ARGS="--eval-every 200 --log-every 10 --time-limit-s ${TIME_LIMIT_S:-420}" \
    RECORD_ARGS="--speculate 2 --speculate-top 8" OUT=$WORK PY=python3 \
    bash traces/learned/run_gpu.sh > $OUT/record.log 2>&1
rc=$?
tail -25 $OUT/record.log
cp $WORK/traces/*.npz $OUT/ 2>/dev/null
(cd $WORK && tar czf $OUT/learned-meta.tar.gz train.log loss.csv train_run.json traces/*.card.json) 2>/dev/null
ls -la $OUT
exit $rc
