"""Training rate (steps/s, one torch thread, no evaluation) of each algorithm on each leaderboard environment.

  python experiments/leaderboard/rates.py --steps 4000 --jobs 13 > experiments/leaderboard/rates.jsonl

Each (environment, algorithm) pair trains in its own spawned process (``--jobs`` at a time, so with as many jobs
as pairs every core is busy, as in a leaderboard run), first a short warm-up run (imports, compiled kernels,
model set-up), then ``--steps`` steps timed. One JSON line per pair on stdout; the leaderboard's ``BUDGET`` is
chosen from these rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from leaderboard import ACTION_KIND, ALGOS, ENVS, env_overrides, warm_kernels  # noqa: E402


def measure(env_id: str, algo: str, steps: int) -> dict:
    """Train ``algo`` on ``env_id`` for ``steps`` steps after a warm-up; the timed run's steps per second."""
    import torch

    from moe_cache_env.agents.sb3 import train

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="rates-")
    overrides = env_overrides(env_id, {})
    kwargs = dict(eval_freq=10**9, eval_episodes=1, checkpoint_freq=10**9, progress_bar=False, overrides=overrides)
    train(algo, env_id, 128, 0, f"{folder}/warm", **kwargs)
    start = time.perf_counter()
    info = train(algo, env_id, steps, 0, f"{folder}/timed", **kwargs)
    wall_s = time.perf_counter() - start
    return {"env": env_id, "algo": algo, "steps": info["timesteps_done"], "wall_s": round(wall_s, 2),
            "steps_per_s": round(info["timesteps_done"] / wall_s, 1), "cpus": os.cpu_count()}


def main() -> int:
    import multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--envs", default=",".join(ENVS))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    print(f"# kernels compiled or loaded in {warm_kernels(args.envs.split(',')):.0f} s", file=sys.stderr, flush=True)
    pairs = [(e, a) for e in args.envs.split(",") for a in ALGOS if ACTION_KIND[e] in ALGOS[a]]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for row in pool.starmap(measure, [(e, a, args.steps) for e, a in pairs]):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
