"""Golden metrics for the kernel's speed work: every policy on every bundled trace, stored as JSON, to diff.

The kernel may be made faster but must not change a single number. This script runs ``moe-cache-env evaluate
--json`` (in-process, through the console script's entry point) for every policy of ``sim/evaluate.py`` on every
bundled trace at the default cache, with batch 1 and batch 8, and a windowed replay (8-step windows whose
thresholds change every window, as an agent drives the environment), and writes one JSON file per case into a
directory. Run it on the code before a change and after it, then compare the two directories:

  python experiments/perf/golden.py write /tmp/golden-before
  python experiments/perf/golden.py write /tmp/golden-after
  python experiments/perf/golden.py diff /tmp/golden-before /tmp/golden-after

``diff`` prints every file whose JSON differs (after parsing, so only numbers count, compared exactly) and exits
1 if any does. ``--traces`` restricts the traces (comma-separated bundled names) for a quicker check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

BATCHES = (1, 8)


def _windowed(trace_name: str, batch: int) -> dict:
    """A replay in 8-step windows whose thresholds and lookahead change every window (a fixed, seeded sequence)."""
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.sim.config import Controls, SimConfig, WorkloadConfig, default_capacity, split_capacity
    from moe_cache_env.sim.simulator import Simulator

    trace = load_named_trace(trace_name)
    cache = split_capacity(default_capacity(trace.num_experts, trace.top_k, trace.num_layers), trace.top_k)
    # a changing KV-cache share and background link traffic also exercise the tiers' shrinking and the link
    workload = WorkloadConfig(batch_min=batch, batch_max=batch, kv_min=0.0, kv_max=0.3, background_min=0.0,
                              background_max=0.3, segment_steps=64)
    config = SimConfig(cache=cache, workload=workload)
    sim = Simulator(trace, config, rng=np.random.default_rng(0))
    pick = np.random.default_rng(1)
    windows = []
    while not sim.done:
        l2, l3 = sorted(pick.uniform(0.05, 0.95, size=2))[::-1]
        w = sim.run(8, Controls(l2_threshold=float(l2), l3_threshold=float(l3), lookahead=int(pick.integers(1, 3))))
        windows.append({"metrics": w.metrics, "counters": w.counters.tolist(),
                        "step_latency_ms": w.step_latency_ms.tolist()})
    return {"windows": windows, "total": sim.metrics()}


def write(out: Path, traces: list[str]) -> None:
    from moe_cache_env.cli import main
    from moe_cache_env.sim.evaluate import POLICIES

    out.mkdir(parents=True, exist_ok=True)
    for name in traces:
        slug = name.replace("/", "_")
        for batch in BATCHES:
            path = out / f"{slug}-b{batch}-evaluate.json"
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(["evaluate", "--trace", name, "--policy", ",".join(POLICIES), "--batch", str(batch),
                           "--json", str(path), "--quiet"])
            if rc != 0:
                raise SystemExit(f"evaluate failed on {name} batch {batch} (exit {rc})")
            (out / f"{slug}-b{batch}-windowed.json").write_text(json.dumps(_windowed(name, batch), sort_keys=True))
            print(f"{name} batch {batch}: done", file=sys.stderr, flush=True)


def diff(a: Path, b: Path) -> int:
    names = sorted({p.name for p in a.glob("*.json")} | {p.name for p in b.glob("*.json")})
    bad = 0
    for name in names:
        pa, pb = a / name, b / name
        if not pa.exists() or not pb.exists():
            print(f"{name}: only in {'the second' if not pa.exists() else 'the first'} directory")
            bad += 1
            continue
        if json.loads(pa.read_text()) != json.loads(pb.read_text()):
            print(f"{name}: differs")
            bad += 1
    print(f"{len(names) - bad} of {len(names)} files identical")
    return 1 if bad else 0


def main() -> int:
    from moe_cache_env.traces.suite import list_bundled_traces

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("out", type=Path)
    w.add_argument("--traces", default="", help="comma-separated bundled names (default: all)")
    d = sub.add_parser("diff")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "diff":
        return diff(args.a, args.b)
    traces = [t for t in args.traces.split(",") if t] or list(list_bundled_traces())
    write(args.out, traces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
