"""Compare kernels from several source trees on a shared, noisy machine: alternating replays, chunked timings.

Each tree (a checkout or ``git archive`` of the package, given by its root directory) gets a worker process
that imports *its* ``moe_cache_env`` and replays the bundled default trace (``qwen1.5-moe``, default cache, as
``moe-cache-env bench``) on request. The driver asks the workers in turn (order reversed every other round), so
load from other jobs falls on every tree alike. Each replay is timed (CPU time) in chunks of ``--chunk`` steps;
besides the best and median whole replay, the sum over chunks of each chunk's minimum across runs estimates the
replay's cost on a quiet machine: short chunks often fall between other jobs' bursts when whole replays do not.

  python experiments/perf/ab.py --runs 20 /tmp/kernel-before .

``--variant env`` times the registered ``MoECache-v0`` instead: 64 environments of the native vector environment
stepped with one fixed sequence of random actions from ``reset(seed=0)`` (``--env-steps`` vector steps per run,
``--chunk`` vector steps per timed chunk), Python included, as a learner would step them; the events are those
the environments replayed, so both trees must replay the same ones (they do when their numbers are identical).

prints one JSON line per tree: ns per routing event (chunk minima, best run, median run). Numba compiles each
tree's kernel on its first use (its cache lives in that tree), before timing starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

#: the simulator's replays, each a SimConfig override; ``env`` is the vector environment's workload (env_worker)
VARIANTS = {"cross-layer": {}, "uncalibrated": {"calibrate_confidence": False}, "none": {"predictor": "none"}}
ENV_ID, ENV_COUNT = "MoECache-v0", 64


def env_worker(chunk: int, steps: int) -> None:
    """Step the vector environment on each line read from stdin; answer with the chunks' CPU seconds and the
    routing events replayed, as JSON."""
    import warnings

    import gymnasium as gym

    import moe_cache_env.envs as envs

    warnings.filterwarnings("ignore")
    with envs.kept_versions_quiet():
        venv = gym.make_vec(ENV_ID, num_envs=ENV_COUNT, vectorization_mode="vector_entry_point")
    venv.action_space.seed(0)
    actions = [venv.action_space.sample() for _ in range(steps)]
    venv.reset(seed=0)
    for action in actions[:2]:
        venv.step(action)  # warm-up (and compile)
    print(json.dumps({"events": None}), flush=True)
    for _ in sys.stdin:
        venv.reset(seed=0)
        events0 = venv.unwrapped.routing_events
        times = []
        for first in range(0, steps, chunk):
            start = time.process_time()
            for action in actions[first:first + chunk]:
                venv.step(action)
            times.append(time.process_time() - start)
        print(json.dumps({"times": times, "events": venv.unwrapped.routing_events - events0}), flush=True)


def worker(variant: str, chunk: int) -> None:
    """Replay on each line read from stdin; answer with the chunks' CPU seconds as a JSON list."""
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.sim.config import Controls, SimConfig
    from moe_cache_env.sim.evaluate import default_capacity, split_capacity
    from moe_cache_env.sim.simulator import Simulator

    trace = load_named_trace("qwen1.5-moe")
    cache = split_capacity(default_capacity(trace.num_experts, trace.top_k), trace.top_k)
    config = SimConfig(cache=cache, **VARIANTS[variant])
    Simulator(trace, config, rng=np.random.default_rng(0)).run(None, Controls())  # warm-up (and compile)
    print(json.dumps({"events": trace.num_tokens * trace.num_layers}), flush=True)
    for _ in sys.stdin:
        sim = Simulator(trace, config, rng=np.random.default_rng(0))
        controls = Controls()
        times = []
        while not sim.done:
            start = time.process_time()
            sim.run(chunk, controls)
            times.append(time.process_time() - start)
        print(json.dumps(times), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="root directories of the package sources to compare")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=500, help="steps per timed chunk (vector steps with env)")
    parser.add_argument("--env-steps", type=int, default=40, help="vector steps per run of --variant env")
    parser.add_argument("--variant", default="cross-layer", choices=[*sorted(VARIANTS), "env"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 1 or args.chunk < 1 or args.env_steps < 1:
        print("ab: --runs, --chunk and --env-steps must be >= 1", file=sys.stderr)
        return 2
    if args.worker:
        if args.variant == "env":
            env_worker(args.chunk, args.env_steps)
        else:
            worker(args.variant, args.chunk)
        return 0
    missing = [t for t in args.trees if not os.path.isdir(os.path.join(t, "moe_cache_env"))]
    if missing:
        print(f"ab: no moe_cache_env package under {', '.join(missing)}; give the root of a source tree",
              file=sys.stderr)
        return 2
    procs = []
    for tree in args.trees:
        root = os.path.abspath(tree)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--variant", args.variant, "--chunk",
             str(args.chunk), "--env-steps", str(args.env_steps), root],
            cwd=root, env=dict(os.environ, PYTHONPATH=root), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    events = [json.loads(p.stdout.readline())["events"] for p in procs]
    runs: list[list[list[float]]] = [[] for _ in procs]
    for r in range(args.runs):
        order = list(range(len(procs)))
        if r % 2:
            order.reverse()
        for i in order:
            procs[i].stdin.write("go\n")
            procs[i].stdin.flush()
            answer = json.loads(procs[i].stdout.readline())
            if isinstance(answer, dict):  # the env workload: its events are counted per run
                events[i] = answer["events"]
                answer = answer["times"]
            runs[i].append(answer)
    for p in procs:
        p.stdin.close()
        p.wait()
    for tree, n_events, times in zip(args.trees, events, runs):
        a = np.array(times)  # runs x chunks
        per_event = 1e9 / n_events
        print(json.dumps({
            "tree": tree, "variant": args.variant, "runs": args.runs, "chunk_steps": args.chunk,
            "cpu_count": os.cpu_count(),
            "ns_per_event_chunk_minima": round(float(a.min(axis=0).sum()) * per_event, 1),
            "ns_per_event_best": round(float(a.sum(axis=1).min()) * per_event, 1),
            "ns_per_event_median": round(float(np.median(a.sum(axis=1))) * per_event, 1),
        }, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
