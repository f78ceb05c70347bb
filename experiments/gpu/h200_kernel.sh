#!/usr/bin/env bash
# One call on the H200 (run from the repository root): replay the simulator kernel's own decisions (the logs that
# experiments/gpu/kernel_logs.py wrote on the CPU, committed under experiments/gpu/results/kernel-logs) with
# replay-gpu, and print the kernel's estimate beside the GPU's measurement. One replay-gpu call per trace and
# batch (one device set-up each). Writes $OUT/kernel-<trace>-b<batch>$SUFFIX.json and $OUT/kernel$SUFFIX.log.
# BATCHES="1" replays only the batch-1 logs, NAMES="qwen" only one trace; SUFFIX=-repeat names a repeat run's files.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=experiments/gpu/results/kernel-logs
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
for name in ${NAMES:-qwen learned}; do
    for b in ${BATCHES:-1 8}; do
        logs=$(ls $L/$name-b$b-*-*.npz | grep -v -- -trace.npz | paste -sd, -)
        python3 -m moe_cache_env replay-gpu --log "$logs" --order fused,per-expert --batch $b --model qwen1.5-moe \
            --profile h200 --warmup-steps ${WARMUP:-4} --json $OUT/kernel-$name-b$b${SUFFIX:-}.json 2>&1 | tee -a $OUT/kernel${SUFFIX:-}.log
    done
done
