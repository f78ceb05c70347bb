#!/usr/bin/env bash
# The sim-to-real table of docs/sim-to-real.md: replay-gpu on the H200 with the shipped h200 profile, demand-only
# LRU and LRU + perfect next-layer prefetch, 12 and 36 slots per layer, both execution orders, batch 1, the
# first 1500 tokens of the bundled default trace. Writes $OUT/replay-h200.json and $OUT/replay.log.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -m moe_cache_env replay-gpu --trace synthetic/qwen1.5-moe --profile h200 --policy lru,lru-prefetch \
    --slots 12,36 --order fused,per-expert --tokens 1500 --batch 1 --json $OUT/replay-h200.json 2>&1 | tee $OUT/replay.log
