#!/usr/bin/env bash
# The shipped h200 profile: the CUDA tests, then the real calibrate command. Run from the repository root on
# the GPU machine; writes $OUT/h200.json (-> moe_cache_env/profiles/data/h200.json) and $OUT/calibrate.log.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current,clocks.sm,clocks.mem --format=csv
python3 -m pytest -q -x tests/profiles/test_calibrate_cuda.py tests/profiles/test_layer.py tests/gpu -p no:cacheprovider 2>&1 | tail -5
python3 -m moe_cache_env calibrate --model qwen1.5-moe --dtype bf16 --name h200 -o $OUT/h200.json 2>&1 | tee $OUT/calibrate.log
python3 -m moe_cache_env replay-gpu --profile $OUT/h200.json --tokens 120 --slots 36 --host-memory-gib 4 2>&1 | tail -8
