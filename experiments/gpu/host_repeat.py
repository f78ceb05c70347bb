"""The host part of ``calibrate`` several times in a row on one GPU (H200 machine): how much the host's per-layer
costs move within one call. Prints one JSON line per repeat: the decision time by copies issued and its fit (the
per-copy cost), the all-resident layer's time and the launch time per expert (medians).

    PYTHONPATH=. python experiments/gpu/host_repeat.py --repeats 3 > host-repeat.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from moe_cache_env.gpu.replay import fit_decision_by_copies
from moe_cache_env.profiles.calibrate import CalibrationPlan, CudaBackend
from moe_cache_env.profiles.shapes import MODEL_LAYER_SHAPES, ExpertShape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="qwen1.5-moe")
    args = parser.parse_args()
    # the 28 MiB expert of the sim-to-real replays (docs/sim-to-real.md)
    backend = CudaBackend(ExpertShape(hidden=2048, intermediate=2368), "bf16", CalibrationPlan())
    layer = MODEL_LAYER_SHAPES[args.model]
    for i in range(args.repeats):
        started = time.time()
        host = backend.host_samples_ms(layer, 1, 512, layers=24, repeats=20, warmup=4)
        print(json.dumps({"repeat": i, "seconds": round(time.time() - started, 1), "copies": host["copies"],
                          "fit": fit_decision_by_copies(host["copies"]),
                          "synced_ms": statistics.median(host["synced"]),
                          "expert_launch_ms": statistics.median(host["expert_launch"])}), flush=True)


if __name__ == "__main__":
    main()
