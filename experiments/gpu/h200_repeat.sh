#!/usr/bin/env bash
# A second, later call on the H200 (a fresh machine): a second full calibration (kept beside the shipped profile,
# for its spread) and the same replay-gpu table against the shipped h200 profile. Writes $OUT/h200-repeat.json,
# $OUT/replay-h200-repeat.json and their logs.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -m moe_cache_env calibrate --model qwen1.5-moe --dtype bf16 --name h200-repeat -o $OUT/h200-repeat.json \
    > $OUT/calibrate-repeat.log 2>&1 || { tail -30 $OUT/calibrate-repeat.log; exit 1; }
tail -3 $OUT/calibrate-repeat.log
python3 -m moe_cache_env replay-gpu --trace synthetic/qwen1.5-moe --profile h200 --policy lru,lru-prefetch \
    --slots 12,36 --order fused,per-expert --tokens 1500 --batch 1 --json $OUT/replay-h200-repeat.json 2>&1 | tee $OUT/replay-repeat.log
