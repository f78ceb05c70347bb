"""Best fixed thresholds per serving regime: a grid of (L2, L3) thresholds evaluated with the simulator.

Run:  python experiments/regimes/sweep.py [--tokens N] [--out experiments/regimes]

For each regime the grid of static thresholds is replayed on the same trace, beside no prefetching and the
perfect predictor, and the best setting by mean per-token latency (ties: perfect coverage) is reported. Writes
``results.json`` and ``results.md`` (the table quoted in docs/simulator.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from moe_cache_env._io import atomic_write_json, atomic_write_text
from moe_cache_env.profiles import load_profile
from moe_cache_env.sim.config import Controls, SimConfig, WorkloadConfig
from moe_cache_env.sim.evaluate import split_capacity
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace

L2_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)
L3_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)

#: NVLink-C2C (Grace Hopper): 450 GB/s per direction, NVIDIA GH200 datasheet. A nominal profile, not measured:
#: the measured h100 profile with its host link replaced.
NVLINK_C2C_GBPS = 450.0


def regimes(trace: Trace) -> dict[str, dict]:
    per_layer = split_capacity(int(round(0.4 * trace.num_experts)), trace.top_k)
    return {
        "batch-1 decode, PCIe (h100)": dict(profile="h100", batch=1, kv=0.0, cache=per_layer),
        "batch-1 decode, seed link (rtx3090-seed)": dict(profile="rtx3090-seed", batch=1, kv=0.0, cache=per_layer),
        "batched serving, 16 sequences (h100)": dict(profile="h100", batch=16, kv=0.0, cache=per_layer),
        "batch-1, NVLink-C2C host link (nominal)": dict(profile="nvlink-c2c", batch=1, kv=0.0, cache=per_layer),
        "batched 16, high memory pressure (h100, KV 60%)": dict(profile="h100", batch=16, kv=0.6, cache=per_layer),
        "batch-1, high memory pressure (h100, KV 60%)": dict(profile="h100", batch=1, kv=0.6, cache=per_layer),
    }


def profile_for(name: str):
    if name == "nvlink-c2c":
        return dataclasses.replace(load_profile("h100"), name="nvlink-c2c-nominal", h2d_gbps=NVLINK_C2C_GBPS)
    return load_profile(name)


def run_one(trace, regime, controls, predictor="cross-layer", seed=0):
    config = SimConfig(
        cache=regime["cache"],
        workload=WorkloadConfig(batch_min=regime["batch"], batch_max=regime["batch"], kv_min=regime["kv"],
                                kv_max=regime["kv"]),
        predictor=predictor,
    )
    sim = Simulator(trace, config, rng=np.random.default_rng(seed), profile=profile_for(regime["profile"]))
    sim.run(None, controls)
    return sim.metrics()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="qwen1.5-moe")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    from moe_cache_env.traces.catalog import resolve as load_named_trace

    trace = load_named_trace(args.trace)
    keep = ("mean_latency_ms", "p95_latency_ms", "perfect_coverage", "hit_rate", "wasted_prefetch_bytes",
            "link_utilization", "compute_ms_per_token", "stall_ms_per_token")
    results = {"trace": trace.name, "tokens": trace.num_tokens, "regimes": {}}
    rows = []
    for name, regime in regimes(trace).items():
        grid = []
        for l2 in L2_GRID:
            for l3 in L3_GRID:
                if l3 > l2:
                    continue
                m = run_one(trace, regime, Controls(l2_threshold=l2, l3_threshold=l3))
                grid.append({"l2": l2, "l3": l3, **{k: m[k] for k in keep}})
        best = min(grid, key=lambda r: (r["mean_latency_ms"], -r["perfect_coverage"]))
        worst = max(grid, key=lambda r: r["mean_latency_ms"])
        none = run_one(trace, regime, Controls(l2_threshold=1.01, l3_threshold=1.01))
        perfect = run_one(trace, regime, Controls(), predictor="perfect")
        results["regimes"][name] = {
            "settings": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in regime.items()},
            "grid": grid,
            "best": best,
            "worst": worst,
            "no_prefetch": {k: none[k] for k in keep},
            "perfect_predictor": {k: perfect[k] for k in keep},
        }
        rows.append((name, best, worst, none, perfect))
        print(f"{name}: best L2={best['l2']} L3={best['l3']} {best['mean_latency_ms']:.3f} ms/token", file=sys.stderr)

    lines = [
        f"Trace `{trace.name}` ({trace.num_tokens} tokens), cross-layer predictor learned online, per-layer tiers "
        f"{rows[0][1] and regimes(trace)[rows[0][0]]['cache'].l1_slots}/"
        f"{regimes(trace)[rows[0][0]]['cache'].l2_slots}/{regimes(trace)[rows[0][0]]['cache'].l3_slots}. "
        "Latency is per token (ms).",
        "",
        "| regime | best L2 / L3 | best ms | worst grid ms | no prefetch ms | perfect predictor ms | compute ms | "
        "best perfect cov | best wasted GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, best, worst, none, perfect in rows:
        lines.append(
            f"| {name} | {best['l2']} / {best['l3']} | {best['mean_latency_ms']:.3f} | {worst['mean_latency_ms']:.3f} "
            f"| {none['mean_latency_ms']:.3f} | {perfect['mean_latency_ms']:.3f} | {best['compute_ms_per_token']:.3f} "
            f"| {best['perfect_coverage']:.3f} | {best['wasted_prefetch_bytes'] / 1e9:.1f} |"
        )
    out = Path(args.out)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
