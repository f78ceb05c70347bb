#!/usr/bin/env bash
# A first look on the GPU machine: CUDA tests, a quick calibration, a short replay. Writes under $OUT.
set -x
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current,clocks.sm,clocks.mem --format=csv
free -g | head -2
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -x tests/profiles/test_calibrate_cuda.py tests/profiles/test_layer.py tests/gpu -p no:cacheprovider 2>&1 | tail -15
time python3 -m moe_cache_env calibrate --quick -o $OUT/quick.json 2>&1 | tail -70
time python3 -m moe_cache_env replay-gpu --profile $OUT/quick.json --tokens 150 --host-memory-gib 8 --json $OUT/replay-smoke.json 2>&1 | tail -30
