#!/usr/bin/env bash
# Regenerate the bundled synthetic traces, byte-identically (same code, same seeds -> same files).
# Run from anywhere: bash traces/synthetic/make.sh
set -euo pipefail
cd "$(dirname "$0")/../../moe_cache_env/traces/bundled/synthetic"
moe-cache-env synth --preset qwen1.5-moe      --tokens 20000 --seed 0 -o qwen1.5-moe.npz --name synthetic/qwen1.5-moe
moe-cache-env synth --preset olmoe            --tokens 10000 --seed 0 -o olmoe.npz --name synthetic/olmoe
moe-cache-env synth --preset mixtral          --tokens 10000 --seed 0 -o mixtral.npz --name synthetic/mixtral
moe-cache-env synth --preset deepseek-v2-lite --tokens 10000 --seed 0 -o deepseek-v2-lite.npz --name synthetic/deepseek-v2-lite
