"""Where a routing event's time goes: the default replay with parts of the work switched off, ns per event.

Replays a bundled trace (default ``qwen1.5-moe``, as ``moe-cache-env bench``) in one call per run, at the
default cache, under several configurations that differ in one feature each (predictor, calibration,
thresholds, eviction rule), and prints one JSON object: for each configuration, CPU nanoseconds per routing
event, best and median of ``--repeats`` runs after a warm-up. The differences between rows are what each
feature costs, e.g. ``cross-layer`` minus ``none`` is the predicting path.

  python experiments/perf/breakdown.py --repeats 5

The machine is usually shared: compare two kernels by running this alternately on each, several times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

#: name -> (SimConfig overrides, Controls overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "cross-layer": ({}, {}),
    "cross-layer-uncalibrated": ({"calibrate_confidence": False}, {}),
    "cross-layer-no-prefetch": ({}, {"l2_threshold": 1.01, "l3_threshold": 1.01}),
    "popularity": ({"predictor": "popularity"}, {}),
    "none": ({"predictor": "none"}, {}),
    "none-lru": ({"predictor": "none", "eviction": "lru"}, {}),
}


def measure(trace_name: str, names: list[str], repeats: int) -> dict:
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.sim.config import Controls, SimConfig
    from moe_cache_env.sim.evaluate import default_capacity, split_capacity
    from moe_cache_env.sim.simulator import Simulator

    trace = load_named_trace(trace_name)
    cache = split_capacity(default_capacity(trace.num_experts, trace.top_k), trace.top_k)
    events = trace.num_tokens * trace.num_layers
    rows = {}
    for name in names:
        sim_kw, ctl_kw = VARIANTS[name]
        config = SimConfig(cache=cache, **sim_kw)
        controls = Controls(**ctl_kw)
        times = []
        for attempt in range(repeats + 1):
            sim = Simulator(trace, config, rng=np.random.default_rng(0))
            start = time.process_time()
            sim.run(None, controls)
            elapsed = time.process_time() - start
            if attempt > 0:  # the first run is the warm-up (and may compile)
                times.append(elapsed)
        rows[name] = {"ns_per_event_best": round(min(times) / events * 1e9, 1),
                      "ns_per_event_median": round(float(np.median(times)) / events * 1e9, 1)}
    return {"trace": trace.name, "routing_events": events, "repeats": repeats, "cpu_count": os.cpu_count(),
            "variants": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="qwen1.5-moe")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or args.repeats < 1:
        print(f"breakdown: unknown variant(s) {unknown} or --repeats < 1; choose from {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    print(json.dumps(measure(args.trace, names, args.repeats), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
