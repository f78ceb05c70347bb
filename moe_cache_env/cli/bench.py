"""Measure the simulator's throughput: routing events (token x layer) simulated per second on one core.

Runs the default timeline model with the cross-layer predictor and the static thresholds (0.7 / 0.3) on a
bundled trace, with per-layer tiers holding 40% of the experts (as ``evaluate`` by default), after one warm-up
run (which also loads or compiles the kernel), and prints JSON. A progress line goes to stderr when it is a
terminal (not with --quiet or --json).

``--env ID`` measures an environment instead: the native vector environment (``envs/vector.py``) with random
actions at each ``--num-envs`` (windows and routing events per second, and the share of CPU time inside the
compiled kernel), beside CartPole-v1's vector environment and a plain-Python LRU cache measured in the same run.
``--train`` measures PPO end to end (environment steps per second of ``model.learn``) on ``--env`` (default
MoECache-v0) with the native vector environment, beside PPO on CartPole-v1 with the same settings.

Every figure is CPU time of this process (throughput per core when other work shares the machine) and wall time,
best and median of ``--repeats`` timed runs after a warm-up, with ``os.cpu_count()``.

Examples:
  moe-cache-env bench
  moe-cache-env bench --trace qwen1.5-moe --window 8 --repeats 5 --json
  moe-cache-env bench --env MoECache-v0 --num-envs 1 64 --repeats 5 --json
  moe-cache-env bench --train --train-steps 20000 --num-envs 16 --json
"""

from __future__ import annotations

import argparse
import json
import time

from moe_cache_env.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", default="qwen1.5-moe", help="trace file or bundled name (default: %(default)s)")
    parser.add_argument("--predictor", default="cross-layer")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--window", type=int, default=0,
                        help="replay in windows of this many steps (as the environment does); 0 = one call")
    parser.add_argument("--env", default=None, metavar="ID",
                        help="measure this environment's native vector env instead of the simulator")
    parser.add_argument("--num-envs", type=int, nargs="+", default=None,
                        help="vector sizes for --env (default: 1 64) or the one for --train (default: 16)")
    parser.add_argument("--windows", type=int, default=1024,
                        help="--env: windows per timed run, over all environments (default: %(default)s)")
    parser.add_argument("--train", action="store_true", help="measure PPO training steps per second end to end")
    parser.add_argument("--train-steps", type=int, default=20_000,
                        help="--train: environment steps per timed run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="--env / --train: numba threads replaying the environments' windows (default: 1)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from moe_cache_env.sim.config import Controls, SimConfig
    from moe_cache_env.sim.evaluate import default_capacity, split_capacity
    from moe_cache_env.sim.simulator import Simulator
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.cli._progress import Progress

    if args.repeats < 1:
        raise CommandError(f"--repeats must be >= 1, got {args.repeats}")
    if args.num_envs is not None and args.env is None and not args.train:
        raise CommandError("--num-envs goes with --env ID or --train (the simulator benchmark has no environments)")
    if args.threads != 1:
        from moe_cache_env.cli._common import check_env_threads

        if args.env is None and not args.train:
            raise CommandError("--threads goes with --env ID or --train (the simulator benchmark is one replay)")
        check_env_threads(args.threads, "--threads")
    if args.train:
        from moe_cache_env.cli._bench_env import bench_train

        print(json.dumps(bench_train(args), sort_keys=True))
        return 0
    if args.env is not None:
        from moe_cache_env.cli._bench_env import bench_env

        print(json.dumps(bench_env(args), sort_keys=True))
        return 0
    trace = load_named_trace(args.trace)
    cache = split_capacity(default_capacity(trace.num_experts, trace.top_k), trace.top_k)
    config = SimConfig(predictor=args.predictor, cache=cache)
    controls = Controls()
    # CPU time of this (single-threaded) process measures throughput per core even when other work shares the
    # machine; wall time is reported beside it.
    timings = []
    walls = []
    progress = Progress(args.repeats + 1, "bench", quiet=args.quiet or args.json)
    for attempt in range(args.repeats + 1):
        sim = Simulator(trace, config, rng=np.random.default_rng(0))
        start_cpu = time.process_time()
        start_wall = time.perf_counter()
        while not sim.done:
            sim.run(args.window or None, controls)
        elapsed = time.process_time() - start_cpu
        wall = time.perf_counter() - start_wall
        if attempt > 0:  # the first run is the warm-up
            timings.append(elapsed)
            walls.append(wall)
        progress.update(1, "warm-up" if attempt == 0 else f"run {attempt}/{args.repeats}")
    progress.close()
    events = trace.num_tokens * trace.num_layers
    best = min(timings)
    result = {
        "benchmark": "simulator-throughput",
        "trace": trace.name,
        "predictor": args.predictor,
        "timing": config.timing,
        "window_steps": args.window,
        "tiers": [cache.l1_slots, cache.l2_slots, cache.l3_slots],
        "routing_events": events,
        "cpu_seconds_best": round(best, 6),
        "cpu_seconds_median": round(float(np.median(timings)), 6),
        "wall_seconds_best": round(min(walls), 6),
        "events_per_s_wall": round(events / min(walls)),
        "events_per_s": round(events / best),
        "events_per_s_median": round(events / float(np.median(timings))),
    }
    if not args.json:
        print(f"{events} routing events in {best:.3f} s of CPU time (best of {args.repeats})")
    print(json.dumps(result, sort_keys=True))
    return 0
