#!/usr/bin/env bash
# One call on an H100 (run from the repository root): the h100-full profile by the real calibrate command, then
# the reference sim-to-real table with it (as experiments/gpu/h200_all.sh does on the H200): replay-gpu,
# demand-only LRU and LRU + perfect next-layer prefetch, 12 and 36 slots per layer, both execution orders,
# batch 1, the first 1500 tokens of the bundled default trace. Writes $OUT/h100-full.json, $OUT/calibrate.log,
# $OUT/replay-h100.json, $OUT/replay.log.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
python3 -m moe_cache_env calibrate --model qwen1.5-moe --dtype bf16 --name h100-full -o $OUT/h100-full.json \
    > $OUT/calibrate.log 2>&1 || { tail -30 $OUT/calibrate.log; exit 1; }
tail -22 $OUT/calibrate.log
python3 -m moe_cache_env replay-gpu --trace synthetic/qwen1.5-moe --profile $OUT/h100-full.json \
    --policy lru,lru-prefetch --slots 12,36 --order fused,per-expert --tokens 1500 --batch 1 \
    --json $OUT/replay-h100.json 2>&1 | tee $OUT/replay.log
