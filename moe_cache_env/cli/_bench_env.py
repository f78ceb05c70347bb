"""``bench --env`` and ``bench --train``: environment and training throughput (see ``cli/bench.py``).

Every timed run is measured twice, as CPU time of this process (``time.process_time``: throughput per core, even
when other work shares the machine) and as wall time; the first run of each configuration is a warm-up (it loads
the compiled code) and is not reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from moe_cache_env.cli import CommandError


def _timed(run: Callable[[], int], repeats: int, warm_up: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run ``warm_up`` (default: ``run``) once, then ``run`` (returns how many units it did) ``repeats`` times."""
    (warm_up or run)()
    cpu, wall, units = [], [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        units.append(run())
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    rates_cpu = [u / max(c, 1e-9) for u, c in zip(units, cpu)]
    rates_wall = [u / max(w, 1e-9) for u, w in zip(units, wall)]
    return {
        "units_per_run": units[0],
        "cpu_seconds": [round(c, 6) for c in cpu],
        "wall_seconds": [round(w, 6) for w in wall],
        "per_s_cpu_best": max(rates_cpu),
        "per_s_cpu_median": statistics.median(rates_cpu),
        "per_s_wall_best": max(rates_wall),
        "per_s_wall_median": statistics.median(rates_wall),
    }


def _rates(prefix: str, timing: dict[str, Any], scale: float = 1.0) -> dict[str, float]:
    """``timing``'s per-second figures renamed ``<prefix>_per_s[_median][_wall...]``, times ``scale``."""
    return {
        f"{prefix}_per_s": round(timing["per_s_cpu_best"] * scale, 1),
        f"{prefix}_per_s_median": round(timing["per_s_cpu_median"] * scale, 1),
        f"{prefix}_per_s_wall": round(timing["per_s_wall_best"] * scale, 1),
        f"{prefix}_per_s_wall_median": round(timing["per_s_wall_median"] * scale, 1),
    }


# ---- bench --env -------------------------------------------------------------------------------------------------
def _native_env_run(env_id: str, num_envs: int, windows: int, seed: int, threads: int = 1) -> dict[str, Any]:
    import gymnasium as gym

    import moe_cache_env.envs  # noqa: F401

    start = time.perf_counter()
    with moe_cache_env.envs.kept_versions_quiet():
        venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", threads=threads)
    inner = venv.unwrapped
    venv.action_space.seed(seed)
    venv.reset(seed=seed)
    first_reset_s = time.perf_counter() - start
    steps = max(1, windows // num_envs)
    counts = {}

    def run() -> int:
        events0, kernel0 = inner.routing_events, inner.kernel_cpu_s
        c0 = time.process_time()
        for _ in range(steps):
            venv.step(venv.action_space.sample())
        counts["events"] = inner.routing_events - events0
        counts["kernel_cpu_s"] = inner.kernel_cpu_s - kernel0
        counts["cpu_s"] = time.process_time() - c0
        return steps * num_envs

    return {"run": run, "counts": counts, "first_reset_s": first_reset_s, "steps": steps}


def bench_env(args: argparse.Namespace) -> dict[str, Any]:
    """Windows and routing events per second of the native vector environment with random actions."""
    from moe_cache_env.envs import resolve_env_id

    try:
        env_id = resolve_env_id(args.env)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    sizes = args.num_envs or [1, 64]
    if any(n < 1 for n in sizes) or args.windows < 1:
        raise CommandError(f"--num-envs and --windows must be >= 1, got {sizes} and {args.windows}")
    results = []
    for n in sizes:
        bench = _native_env_run(env_id, n, args.windows, seed=0, threads=args.threads)
        timing = _timed(bench["run"], args.repeats)
        counts = bench["counts"]  # of the last timed run
        windows = timing["units_per_run"]
        events_per_window = counts["events"] / windows
        row = {
            "num_envs": n,
            "steps_per_run": bench["steps"],
            "windows_per_run": windows,
            "routing_events_per_window": round(events_per_window, 1),
            **_rates("windows", timing),
            **_rates("events", timing, events_per_window),
            # of the last timed run: CPU time inside the one compiled call per step vs everything else
            "kernel_cpu_share": round(counts["kernel_cpu_s"] / max(counts["cpu_s"], 1e-9), 4),
            "kernel_ms_per_window": round(1e3 * counts["kernel_cpu_s"] / windows, 4),
            "python_ms_per_window": round(1e3 * (counts["cpu_s"] - counts["kernel_cpu_s"]) / windows, 4),
            "first_reset_s": round(bench["first_reset_s"], 4),
            "cpu_seconds": timing["cpu_seconds"],
            "wall_seconds": timing["wall_seconds"],
        }
        results.append(row)
    return {
        "benchmark": "env-throughput",
        "env": env_id,
        "actions": "random (action_space.sample, seeded)",
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "results": results,
        "cartpole": [_cartpole(n, args.windows, args.repeats) for n in sizes],
        "python_lru_reference": _python_lru(args.repeats),
    }


def _cartpole(num_envs: int, windows: int, repeats: int) -> dict[str, Any]:
    """CartPole-v1's own vector environment (NumPy over all environments) with random actions."""
    import gymnasium as gym

    venv = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point")
    venv.action_space.seed(0)
    venv.reset(seed=0)
    steps = max(1, 8 * windows // num_envs)

    def run() -> int:
        for _ in range(steps):
            venv.step(venv.action_space.sample())
        return steps * num_envs

    timing = _timed(run, repeats)
    return {"env": "CartPole-v1", "num_envs": num_envs, **_rates("steps", timing)}


def _python_lru(repeats: int, trace_name: str = "qwen1.5-moe", max_tokens: int = 2048) -> dict[str, Any]:
    """A per-layer LRU demand cache in plain Python (``OrderedDict``) over a bundled trace's routing events.

    It does far less per event than the kernel (no prefetch, no predictor, no timing model, no batching): a floor
    for what pure Python costs per routing event, not a second simulator.
    """
    from moe_cache_env.cli._common import load_named_trace

    trace = load_named_trace(trace_name)
    experts = trace.experts[:max_tokens].tolist()  # (T, L, K) as lists: plain Python from here on
    num_layers = trace.num_layers
    slots = max(trace.top_k, int(0.4 * trace.num_experts))
    hits = [0]

    def run() -> int:
        pools = [OrderedDict() for _ in range(num_layers)]
        h = 0
        for token in experts:
            for layer, chosen in enumerate(token):
                pool = pools[layer]
                for e in chosen:
                    if e in pool:
                        pool.move_to_end(e)
                        h += 1
                    else:
                        pool[e] = True
                        if len(pool) > slots:
                            pool.popitem(last=False)
        hits[0] = h
        return len(experts) * num_layers

    timing = _timed(run, repeats)
    return {
        "reference": "per-layer LRU demand cache in plain Python (no prefetch, predictor or timing)",
        "trace": trace.name,
        "tokens": len(experts),
        "slots_per_layer": slots,
        "hit_rate": round(hits[0] / (len(experts) * num_layers * trace.top_k), 6),
        **_rates("events", timing),
    }


# ---- bench --train -----------------------------------------------------------------------------------------------
def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """PPO environment steps per second end to end (``model.learn``) on the native vector env and on CartPole."""
    try:
        import stable_baselines3  # noqa: F401
        import torch
    except ImportError:
        raise CommandError("bench --train needs the 'rl' extra: pip install 'moe-cache-env[rl]'") from None
    from moe_cache_env.agents.sb3 import load_hyperparams
    from moe_cache_env.envs import resolve_env_id

    try:
        env_id = resolve_env_id(args.env or "MoECache-v0")
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    sizes = args.num_envs or [16]
    if len(sizes) != 1 or sizes[0] < 1:
        raise CommandError(f"--train takes one --num-envs >= 1, got {sizes}")
    if args.train_steps < 1:
        raise CommandError(f"--train-steps must be >= 1, got {args.train_steps}")
    n_envs = sizes[0]
    torch.set_num_threads(1)
    params = load_hyperparams("ppo", env_id)
    kwargs = {k: v for k, v in params.items() if k not in ("n_envs", "n_timesteps", "policy")}
    # the YAML's rollout size (n_steps x n_envs), spread over this many environments
    rollout = int(kwargs.get("n_steps", 512)) * int(params.get("n_envs", 1))
    kwargs["n_steps"] = max(8, rollout // n_envs)
    kwargs["batch_size"] = min(int(kwargs.get("batch_size", 64)), kwargs["n_steps"] * n_envs)
    steps = int(args.train_steps)

    def moe_venv():
        from stable_baselines3.common.vec_env import VecMonitor

        from moe_cache_env.agents.vec_adapter import make_native_vec_env

        venv = VecMonitor(make_native_vec_env(env_id, "train", n_envs, threads=args.threads))
        venv.seed(0)
        return venv, venv.venv.venv  # the SB3 wrappers, and the MoECacheVectorEnv that counts its CPU time

    def cartpole_venv():
        from stable_baselines3.common.env_util import make_vec_env

        return make_vec_env("CartPole-v1", n_envs=n_envs, seed=0), None

    rows = {}
    for name, make in ((env_id, moe_venv), ("CartPole-v1", cartpole_venv)):
        rows[name] = _ppo_rate(make, kwargs, steps, args.repeats)
    return {
        "benchmark": "ppo-train-throughput",
        "env": env_id,
        "vec_backend": "native",
        "env_threads": args.threads,
        "num_envs": n_envs,
        "train_steps": steps,
        "ppo_kwargs": {k: v for k, v in kwargs.items() if k != "policy_kwargs"},
        "policy_kwargs": str(kwargs.get("policy_kwargs", {})),
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "torch_threads": 1,
        "results": rows[env_id],
        "cartpole": rows["CartPole-v1"],
    }


def _ppo_rate(make_venv: Callable[[], tuple[Any, Any]], kwargs: dict[str, Any], steps: int,
              repeats: int) -> dict[str, Any]:
    """PPO's environment steps per second; ``make_venv`` gives the SB3 VecEnv and, for the native vector
    environment, the ``MoECacheVectorEnv`` inside it, whose CPU counters split each run's time per step."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    venv, native = make_venv()
    split: dict[str, list[float]] = {"kernel": [], "env_python": [], "learner": []}

    def learn(total: int) -> int:
        model = PPO("MlpPolicy", venv, seed=0, device="cpu", verbose=0, **kwargs)
        # a logger with no outputs: SB3's default one makes an empty SB3-<time> folder in the temp dir per run
        model.set_logger(Logger(folder=None, output_formats=[]))
        if native is not None:
            cpu0, kernel0, env0 = time.process_time(), native.kernel_cpu_s, native.step_cpu_s
        model.learn(total_timesteps=total, progress_bar=False)
        if native is not None:
            kernel = native.kernel_cpu_s - kernel0
            env = native.step_cpu_s - env0
            ms_per_step = 1e3 / max(int(model.num_timesteps), 1)
            split["kernel"].append(round(kernel * ms_per_step, 4))
            split["env_python"].append(round((env - kernel) * ms_per_step, 4))
            split["learner"].append(round((time.process_time() - cpu0 - env) * ms_per_step, 4))
        return int(model.num_timesteps)

    # warm-up: one rollout and update (loads the compiled code, builds torch's kernels)
    timing = _timed(lambda: learn(steps), repeats, warm_up=lambda: learn(1))
    venv.close()
    row = {"steps_per_run": timing["units_per_run"], **_rates("steps", timing),
           "cpu_seconds": timing["cpu_seconds"], "wall_seconds": timing["wall_seconds"]}
    if native is not None:
        # per timed run (the warm-up left out), CPU ms per environment step: the compiled replay, the rest of the
        # environment's step (observations, rewards, resets), and everything else (SB3's rollout, the policy,
        # the updates)
        row["cpu_ms_per_step"] = {part: values[1:] for part, values in split.items()}
    return row
