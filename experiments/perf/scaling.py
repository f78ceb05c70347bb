"""How the simulator's cost grows with experts, layers, batch size and cache size; writes JSON.

One factor at a time is varied around the default (the qwen1.5-moe geometry: 24 layers, 60 experts, top-4,
batch 1, per-layer tiers holding 40% of a layer's experts, cross-layer predictor, static thresholds 0.7 / 0.3).
Traces come from the synthetic router (``traces/synth.py``) with the preset's geometry replaced, each long enough
for about ``--events`` routing events. Each point is the best CPU time of ``--repeats`` replays after a warm-up
(the kernel's compilation and the trace generation are not timed), reported as nanoseconds per routing event
(token x layer) and per expert request (distinct experts a step needs at a layer).

  python experiments/perf/scaling.py --out experiments/perf/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace

import numpy as np

from moe_cache_env._io import atomic_write_json
from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.config import Controls, SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces import synth

BASE = {"experts": 60, "layers": 24, "top_k": 4, "batch": 1, "cache_share": 0.4}
FACTORS = {
    "experts": [16, 32, 60, 128],
    "layers": [6, 12, 24, 48],
    "batch": [1, 4, 16, 64],
    "cache_share": [0.15, 0.25, 0.4, 0.7],
}


def _point(point: dict, events: int, repeats: int) -> dict:
    E, L, k = point["experts"], point["layers"], point["top_k"]
    preset = replace(synth.get_preset("qwen1.5-moe"), num_experts=E, num_layers=L, top_k=k)
    tokens = max(64, events // L)
    trace = synth.generate(preset, tokens, np.random.default_rng(0), seed=0, name=f"scaling-{E}x{L}")
    capacity = max(k + 2, min(E - 1, int(round(point["cache_share"] * E))))
    cache = split_capacity(capacity, k)
    batch = point["batch"]
    config = SimConfig(predictor="cross-layer", cache=cache,
                       workload=WorkloadConfig(batch_min=batch, batch_max=batch))
    best = float("inf")
    requests = 0
    for attempt in range(repeats + 1):
        sim = Simulator(trace, config, rng=np.random.default_rng(0))
        start = time.process_time()
        sim.run(None, Controls())
        elapsed = time.process_time() - start
        requests = int(sim.counters[K.C_REQUESTS])
        if attempt > 0:
            best = min(best, elapsed)
    n_events = tokens * L
    return {**point, "tiers": [cache.l1_slots, cache.l2_slots, cache.l3_slots], "routing_events": n_events,
            "expert_requests": requests, "cpu_seconds_best": round(best, 6),
            "ns_per_event": round(best * 1e9 / n_events, 1), "ns_per_request": round(best * 1e9 / requests, 1),
            "events_per_s": round(n_events / best)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/perf/scaling.json")
    parser.add_argument("--events", type=int, default=200_000, help="routing events per replay (about)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for factor, values in FACTORS.items():
        for value in values:
            point = dict(BASE, **{factor: value})
            row = {"factor": factor, **_point(point, args.events, args.repeats)}
            rows.append(row)
            print(json.dumps(row, sort_keys=True), flush=True)
    atomic_write_json(args.out, {"benchmark": "simulator-scaling", "base": BASE, "cpu_count": os.cpu_count(),
                                 "machine": platform.machine(), "python": platform.python_version(),
                                 "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
