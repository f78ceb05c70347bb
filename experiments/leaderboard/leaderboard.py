"""The leaderboard: algorithms over training seeds, evaluated on the same held-out episodes, with paired 95% CIs.

Run (the budget each table was made with is written into it):
  python experiments/leaderboard/leaderboard.py --jobs 16          # the default budget (BUDGET below)
  python experiments/leaderboard/leaderboard.py --report-only      # README, leaderboard.json and plots from cells/
  python experiments/leaderboard/leaderboard.py --only MoECache-v2:ppo:3   # one cell again: reproduces its row
  python experiments/leaderboard/leaderboard.py --tiny --jobs 2    # a smoke budget, written under tiny/

For each environment, the strategies (the hand-written ones and ``static-tuned``, fixed thresholds tuned on the
train split; on ``MoECache-Evict-v0`` the environment's own rules: ``lru``, ``belady``, ``random``) are played
on the held-out episodes ``reset(seed=EVAL_SEED + i)`` of the test split, once per environment; each algorithm
is trained once per seed (``agents.sb3.train``: train split, validation-split evaluation curve) and its final
model played on the very same episodes. The table gives, per agent, the mean episode reward and the paired
difference to the reference (``static-tuned``; ``lru`` on the eviction environment) on the same episode, with a
95% confidence interval:

- a deterministic strategy: a t-interval over the episodes' paired differences;
- a trained algorithm: a t-interval over the seeds of each seed's mean paired difference (the training seed is
  the unit that varies; the episodes are shared by all).

Work is split in cells, one (environment, algorithm, seed) training run or one environment's strategies, run in
a pool of ``--jobs`` processes (spawned, one torch thread each). Each finished cell is written atomically to
``cells/`` with the configuration it was computed under; a rerun skips cells whose file matches the current
configuration (resumable), so a run cut short by ``--budget-s`` or a kill continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the checkout's package when run as a script from anywhere

from moe_cache_env._io import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402

EVAL_SEED = 1_000
#: the validation episodes of every run's learning curve (the same for all seeds: the curves are paired)
VALIDATION_SEED = 500_000
EVICT = "MoECache-Evict-v0"
ENVS = ("MoECache-v3", "MoECache-v2", "MoECache-Extended-v0", EVICT)
STRATEGIES = ("static", "conservative", "aggressive", "balanced", "dynamic")
EVICT_STRATEGIES = ("lru", "belady", "random")
#: algorithm -> the action spaces it fits ("box", "discrete"; "mask": needs action_masks(), the eviction env)
ALGOS: dict[str, tuple[str, ...]] = {"ppo": ("box", "discrete", "mask"), "a2c": ("box", "discrete", "mask"),
                                     "sac": ("box",), "dqn": ("discrete", "mask"),
                                     "recurrentppo": ("box", "discrete", "mask"), "maskableppo": ("mask",)}
#: the action space of each environment the leaderboard knows
ACTION_KIND = {"MoECache-v0": "box", "MoECache-v2": "box", "MoECache-v3": "box", "MoECache-Extended-v0": "box",
               EVICT: "mask"}
#: the eviction environment's episodes: one whole sequence each (1,000-3,000 decisions; the default 8 sequences
#: are 10,000-20,000, too long to evaluate often at this budget). Whole sequences, not a number of decisions: a
#: policy that misses less decides less often, so a cut after N decisions would charge it more of the trace
EVICT_OVERRIDES: dict[str, Any] = {"episode_sequences": 1}
#: training steps per (environment, algorithm) at the default budget, chosen from RATE so that each cell fits well
#: inside one run of 9 minutes on 16 cores (the longest, PPO on MoECache-v2 or -v3, about 350 s; budget_text prints
#: the cells and core-seconds the estimates give); PPO on the threshold environments gets the most
BUDGET: dict[str, dict[str, int]] = {
    "MoECache-v3": {"ppo": 40_000, "a2c": 12_000, "sac": 4_000, "recurrentppo": 8_000},
    "MoECache-v2": {"ppo": 40_000, "a2c": 12_000, "sac": 4_000, "recurrentppo": 8_000},
    "MoECache-v0": {"ppo": 40_000, "a2c": 12_000, "sac": 4_000, "recurrentppo": 8_000},
    "MoECache-Extended-v0": {"ppo": 15_000, "a2c": 10_000, "sac": 4_000, "recurrentppo": 8_000},
    EVICT: {"ppo": 25_000, "a2c": 25_000, "dqn": 15_000, "recurrentppo": 10_000, "maskableppo": 25_000},
}
#: one-thread training rates (steps/s, no evaluation) measured with rates.py on a loaded 2-core machine (two
#: measurements at a time, load average about 4.5: each got well under a core), in ``rates.jsonl``:
#: v1 ppo 72, a2c 74, sac 24, recurrentppo 41; Extended 71, 82, 32, 58; Evict ppo 234, a2c 299, dqn 138,
#: recurrentppo 101, maskableppo 175. A core of one's own is assumed twice as fast (RATE below); the estimates
#: order the cells (longest first) and keep a run from starting a cell it cannot finish inside --budget-s
MEASURED_RATE: dict[str, dict[str, float]] = {
    "MoECache-v2": {"ppo": 71.7, "a2c": 74.1, "sac": 23.9, "recurrentppo": 41.1},
    "MoECache-Extended-v0": {"ppo": 70.6, "a2c": 82.3, "sac": 32.2, "recurrentppo": 57.8},
    EVICT: {"ppo": 234.4, "a2c": 299.2, "dqn": 138.0, "recurrentppo": 100.9, "maskableppo": 175.3},
}
#: environments that do the same simulator work per step as one whose rates were measured (v3 and v0 differ from
#: v2 only in timing constants and rules): their estimates (RATE, WINDOW_S) are that one's
RATES_OF = {"MoECache-v0": "MoECache-v2", "MoECache-v3": "MoECache-v2"}
RATE: dict[str, dict[str, float]] = {env: {a: 2.0 * r for a, r in algos.items()} for env, algos in MEASURED_RATE.items()}
RATE.update({env: RATE[like] for env, like in RATES_OF.items()})
#: estimated seconds of one evaluation episode (one environment, one core): 250 windows at the single-environment
#: rate measured (54 windows/s on MoECache-v2, 70 on Extended, under load) x 2 for a core of one's own; an
#: eviction episode's 1,000-3,000 decisions cost the policy's forward passes (the replay runs 9,000 a second)
WINDOW_S: dict[str, float] = {"MoECache-v2": 2.4, "MoECache-Extended-v0": 1.8, EVICT: 1.5}
WINDOW_S.update({env: WINDOW_S[like] for env, like in RATES_OF.items()})
#: points of the validation curve, validation episodes per point, train-split episodes per grid point of the
#: static-tuned search (29 threshold pairs)
EVAL_POINTS, EVAL_EPISODES, TUNE_EPISODES = 5, 2, 2
#: generalisation: PPO trained at batch 1 and tested at batch 8 (the other serving conditions as MoECache-v2's;
#: its cells were made on v2, whose PPO cells carry the batch-8 test)
GEN_ENV, GEN_ALGO = "MoECache-v2", "ppo"
GEN_TRAIN, GEN_TEST = {"batch_min": 1, "batch_max": 1}, {"batch_min": 8, "batch_max": 8}
#: two-sided 95% t quantiles by degrees of freedom (Student's t table); beyond 30 the normal 1.96
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}
TINY = {"timesteps": 256, "seeds": "0,1", "episodes": 3,
        "env_config": {"traces": ["synth:qwen1.5-moe:4096:0"], "episode_tokens": 384, "predictor_fit_tokens": 512}}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table; conservative between entries)."""
    if df < 1:
        return math.nan
    if df > 30:
        return 1.96
    return _T975.get(df) or _T975[max(k for k in _T975 if k <= df)]  # fewer df: a wider interval


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean and the half-width of its two-sided 95% t-interval (None with fewer than two values)."""
    a = np.asarray(values, dtype=np.float64)
    half = t975(len(a) - 1) * float(a.std(ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else None
    return {"mean": float(a.mean()), "ci95": half, "n": int(len(a))}


# ---- configuration ------------------------------------------------------------------------------------------
def env_overrides(env_id: str, user: dict[str, Any]) -> dict[str, Any]:
    """The env config overrides a cell of ``env_id`` uses (the eviction env has its own keys)."""
    if env_id == EVICT:
        return {**EVICT_OVERRIDES, **user.get(EVICT, {})}
    return dict(user.get("threshold", {}))


def workload_overrides(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with its ``workload`` replaced by GEN_ENV's whole workload with ``change`` applied (a config
    override replaces the workload block as a whole, so it must carry every field)."""
    from moe_cache_env.envs import variant_config

    workload = {**variant_config(GEN_ENV)["workload"], **base.get("workload", {}), **change}
    return {**base, "workload": workload}


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell of the board: its kind, key, file name and the configuration its result depends on."""
    cells: list[dict[str, Any]] = []
    common = {"episodes": args.episodes, "eval_seed": EVAL_SEED}
    for env_id in args.envs:
        ov = env_overrides(env_id, args.user_overrides)
        cells.append({"kind": "strategies", "key": f"{env_id}:strategies", "file": f"{env_id}_strategies.json",
                      "env": env_id, "config": {**common, "overrides": ov},
                      "cost_s": 20.0 if env_id == EVICT else 5 * args.episodes * WINDOW_S[env_id]})
        if env_id != EVICT:  # the reference: its own cell, as the grid search is the longer part
            cells.append({"kind": "static_tuned", "key": f"{env_id}:static-tuned", "file": f"{env_id}_static-tuned.json",
                          "env": env_id, "config": {**common, "overrides": ov, "tune_episodes": TUNE_EPISODES},
                          "cost_s": (29 * TUNE_EPISODES + args.episodes) * WINDOW_S[env_id]})
        for algo in args.algos:
            if ACTION_KIND.get(env_id, "box") not in ALGOS[algo]:
                continue
            steps = args.timesteps or BUDGET.get(env_id, BUDGET["MoECache-v2"]).get(algo, 20_000)
            rate = RATE.get(env_id, RATE["MoECache-v2"]).get(algo, 100.0)
            gen_test = workload_overrides(ov, GEN_TEST) if (env_id == GEN_ENV and algo == GEN_ALGO
                                                              and args.generalisation) else None
            for seed in args.seeds:
                cells.append({"kind": "train", "key": f"{env_id}:{algo}:{seed}", "file": f"{env_id}_{algo}_s{seed}.json",
                              "env": env_id, "algo": algo, "seed": seed,
                              "config": {**common, "overrides": ov, "timesteps": steps, "gen_test": gen_test},
                              "cost_s": steps / rate + _eval_cost(env_id, args.episodes, gen_test is not None, algo)})
    if args.generalisation and GEN_ENV in args.envs:
        ov = env_overrides(GEN_ENV, args.user_overrides)
        train_ov, test_ov = workload_overrides(ov, GEN_TRAIN), workload_overrides(ov, GEN_TEST)
        steps = args.timesteps or BUDGET[GEN_ENV][GEN_ALGO]
        for regime, tune_ov in (("test", test_ov), ("train", train_ov)):
            cells.append({"kind": "gen_tuned", "key": f"gen:static-tuned@{regime}", "file": f"gen_static-tuned_{regime}.json",
                          "env": GEN_ENV, "config": {**common, "tune_overrides": tune_ov, "test_overrides": test_ov,
                                                      "tune_episodes": TUNE_EPISODES},
                          "cost_s": (29 * TUNE_EPISODES + args.episodes) * WINDOW_S[GEN_ENV]})
        for seed in args.seeds:
            cells.append({"kind": "gen_train", "key": f"gen:{GEN_ALGO}:{seed}", "file": f"gen_{GEN_ALGO}_s{seed}.json",
                          "env": GEN_ENV, "algo": GEN_ALGO, "seed": seed,
                          "config": {**common, "overrides": train_ov, "timesteps": steps, "gen_test": test_ov},
                          "cost_s": steps / RATE[GEN_ENV][GEN_ALGO] + _eval_cost(GEN_ENV, args.episodes, False)})
    return cells


def _eval_cost(env_id: str, episodes: int, gen_test: bool, algo: str = "ppo") -> float:
    """Estimated seconds of a training cell's evaluations: the validation curve (EVAL_POINTS x EVAL_EPISODES
    episodes), the held-out episodes (twice with the generalisation test) and the process's set-up."""
    n = EVAL_POINTS * EVAL_EPISODES + episodes * (2 if gen_test else 1)
    # an eviction episode is thousands of forward passes: the LSTM's cost about three times the MLP's (measured
    # in the tiny run: 7 s per episode under load)
    slower = 3.0 if env_id == EVICT and algo == "recurrentppo" else 1.0
    return 10.0 + n * slower * WINDOW_S.get(env_id, WINDOW_S["MoECache-v2"])


def cell_done(out: Path, cell: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of ``cell`` if it was computed under the same configuration, else None."""
    path = out / "cells" / cell["file"]
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # cannot happen with atomic writes; recompute rather than trust it
    return record if record.get("config") == json.loads(json.dumps(cell["config"])) else None


# ---- cells (run in the worker processes) ----------------------------------------------------------------------
def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one core per cell: --jobs cells at a time fill --jobs cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the pool stops


def _rewards(result: dict[str, Any], agent: str) -> list[float]:
    rows = sorted((r for r in result["episodes_detail"] if r["agent"] == agent), key=lambda r: r["episode"])
    return [float(r["reward"]) for r in rows]


def run_cell(cell: dict[str, Any], out_s: str) -> str:
    """Compute one cell and write ``cells/FILE`` atomically; returns its key."""
    from moe_cache_env.agents.compare import compare

    out = Path(out_s)
    cfg = cell["config"]
    start = time.time()
    record: dict[str, Any] = {"cell": cell["key"], "config": cfg}
    if cell["kind"] in ("strategies", "static_tuned"):
        if cell["kind"] == "static_tuned":
            agents = ["static-tuned"]
        else:
            agents = list(EVICT_STRATEGIES) if cell["env"] == EVICT else list(STRATEGIES)
        result = compare(cell["env"], agents, cfg["episodes"], cfg["eval_seed"], split="test",
                         overrides=cfg["overrides"], with_bounds=False, tune_episodes=cfg.get("tune_episodes", 3))
        record["rewards"] = {a: _rewards(result, a) for a in result["agent_order"]}
        if result.get("static_tuned"):
            record["static_tuned_thresholds"] = result["static_tuned"]["thresholds"]
    elif cell["kind"] == "gen_tuned":
        record.update(_gen_tuned(cell["env"], cfg))
    else:
        from moe_cache_env.agents.sb3 import train

        run_dir = out / "runs" / cell["env"] / f"{cell['algo']}_s{cell['seed']}"
        if cell["kind"] == "gen_train":
            run_dir = out / "runs" / "gen" / f"{cell['algo']}_s{cell['seed']}"
        steps = cfg["timesteps"]
        info = train(cell["algo"], cell["env"], steps, cell["seed"], run_dir, overrides=cfg["overrides"],
                     eval_freq=max(steps // EVAL_POINTS, 1), eval_episodes=EVAL_EPISODES, checkpoint_freq=10**9,
                     progress_bar=False, eval_seed=VALIDATION_SEED)
        spec = [f"{cell['algo']}:{run_dir / 'model.zip'}"]
        eval_start = time.time()
        if cell["kind"] == "train":
            result = compare(cell["env"], spec, cfg["episodes"], cfg["eval_seed"], split="test",
                             overrides=cfg["overrides"], with_bounds=False)
            record["rewards"] = _rewards(result, cell["algo"])
        if cfg.get("gen_test") is not None:
            result = compare(cell["env"], spec, cfg["episodes"], cfg["eval_seed"], split="test",
                             overrides=cfg["gen_test"], with_bounds=False)
            record["gen_rewards"] = _rewards(result, cell["algo"])
        record.update({"train_wall_s": info["train_wall_s"], "steps": info["timesteps_done"],
                       "steps_per_s": round(info["timesteps_done"] / max(info["train_wall_s"], 1e-9), 1),
                       "eval_wall_s": round(time.time() - eval_start, 1),
                       "curve": info["validation"]})
    record["cell_wall_s"] = round(time.time() - start, 1)
    atomic_write_json(out / "cells" / cell["file"], record)
    return cell["key"]


def _gen_tuned(env_id: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Fixed thresholds tuned (train split) under ``tune_overrides``, played on the held-out episodes of the
    generalisation test regime: tuned in the test regime itself, the reference; tuned in the training regime."""
    from moe_cache_env.agents.baselines import StaticAgent
    from moe_cache_env.agents.evaluation import make_env, run_agent, tune_static

    tuned, _ = tune_static(env_id, cfg["tune_episodes"], cfg["eval_seed"] + 10_000, overrides=cfg["tune_overrides"])
    env = make_env(env_id, "test", cfg["test_overrides"])
    rewards = [r.reward for r in run_agent(env, StaticAgent(*tuned), cfg["episodes"], cfg["eval_seed"])]
    env.close()
    return {"rewards": rewards, "thresholds": list(tuned)}


def warm_kernels(envs: Sequence[str]) -> float:
    """Compile (or load from numba's cache) the simulator's kernels in this process before workers start: each
    spawned worker then loads them from the cache instead of compiling its own copy at the same time. Returns
    the seconds it took."""
    from moe_cache_env.agents.evaluation import make_env
    from moe_cache_env.agents.vec_adapter import make_native_vec_env

    start = time.time()
    for env_id in envs:
        env = make_env(env_id, "test", env_overrides(env_id, {}))
        _, info = env.reset(seed=0)
        env.step(info["lru_action"] if "lru_action" in info else env.action_space.sample())
        env.close()
        if env_id != EVICT:  # training steps threshold envs through the native vector form
            venv = make_native_vec_env(env_id, "train", 2, {})
            venv.reset()
            venv.step_async(np.stack([venv.action_space.sample()] * 2))
            venv.step_wait()
            venv.close()
    return time.time() - start


# ---- the pool -------------------------------------------------------------------------------------------------
def run_cells(cells: list[dict[str, Any]], out: Path, jobs: int, budget_s: float | None) -> None:
    """Run ``cells`` (longest first) in ``jobs`` spawned processes; with ``budget_s``, start no cell that its
    estimated cost would carry past the budget and stop the pool at the budget (finished cells are kept)."""
    import multiprocessing as mp

    start = time.time()
    todo = sorted(cells, key=lambda c: -c["cost_s"])  # longest first: the pool ends with the short cells
    if not todo:
        return
    if jobs <= 1:
        for cell in todo:
            if budget_s is not None and time.time() - start + cell["cost_s"] > budget_s:
                print(f"skip {cell['key']} (estimated {cell['cost_s']:.0f} s, past --budget-s)", flush=True)
                continue
            run_cell(cell, str(out))
            print(f"done {cell['key']} at {time.time() - start:.0f} s", flush=True)
        return
    ctx = mp.get_context("spawn")  # no forked torch/numba state; the same on every platform
    pool = ctx.Pool(processes=jobs, initializer=_worker_init)
    running: dict[str, Any] = {}
    free = jobs
    try:
        while todo or running:
            now = time.time() - start
            while free > 0 and todo:
                cell = todo.pop(0)
                if budget_s is not None and now + cell["cost_s"] > budget_s:
                    print(f"skip {cell['key']} (estimated {cell['cost_s']:.0f} s, past --budget-s)", flush=True)
                    continue
                running[cell["key"]] = pool.apply_async(run_cell, (cell, str(out)))
                free -= 1
            for key in [k for k, r in running.items() if r.ready()]:
                result = running.pop(key)
                free += 1
                try:
                    result.get()
                    print(f"done {key} at {time.time() - start:.0f} s", flush=True)
                except Exception as exc:  # one failed cell does not stop the others; it is rerun next time
                    print(f"FAILED {key}: {type(exc).__name__}: {exc}", flush=True)
            if budget_s is not None and time.time() - start > budget_s and running:
                print(f"--budget-s {budget_s:.0f} reached: stopping {len(running)} running cell(s); "
                      "a rerun continues them", flush=True)
                break
            time.sleep(0.5)
    finally:
        pool.terminate()
        pool.join()


# ---- the board ------------------------------------------------------------------------------------------------
def board_from_cells(out: Path, args: argparse.Namespace, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The leaderboard (leaderboard.json) from the cells done; missing cells are listed, not invented."""
    done = {c["key"]: rec for c in cells if (rec := cell_done(out, c)) is not None}
    missing = [c["key"] for c in cells if c["key"] not in done]
    board: dict[str, Any] = {"budget": args.label, "seeds": list(args.seeds), "episodes": args.episodes,
                             "eval_seed": EVAL_SEED, "user_overrides": args.user_overrides, "envs": {},
                             "generalisation": None, "missing_cells": missing}
    for env_id in args.envs:
        base = done.get(f"{env_id}:strategies")
        ref_name = "lru" if env_id == EVICT else "static-tuned"
        tuned = done.get(f"{env_id}:static-tuned")
        if base is None or (env_id != EVICT and tuned is None):
            continue  # no reference yet: the env's rows wait for its strategy cells
        strategy_rewards = {**base["rewards"], **(tuned["rewards"] if tuned else {})}
        ref = strategy_rewards[ref_name]
        rows: dict[str, Any] = {}
        for agent, rewards in strategy_rewards.items():
            rows[agent] = {"kind": _strategy_kind(env_id, agent), "reward": mean_ci(rewards),
                           "minus_ref": mean_ci([r - t for r, t in zip(rewards, ref)]),
                           "per_episode_diff": [r - t for r, t in zip(rewards, ref)],
                           "train_wall_s": None, "steps": 0, "seeds": 0}
        for algo in args.algos:
            records = [done[c["key"]] for c in cells if c["kind"] == "train" and c["env"] == env_id
                       and c["algo"] == algo and c["key"] in done]
            if not records:
                continue
            diffs = np.array([[r - t for r, t in zip(rec["rewards"], ref)] for rec in records])
            rows[algo] = {"kind": "trained", "reward": mean_ci([float(np.mean(rec["rewards"])) for rec in records]),
                          "minus_ref": mean_ci(diffs.mean(axis=1).tolist()),
                          "per_episode_diff": diffs.mean(axis=0).tolist(),
                          "train_wall_s": float(np.mean([rec["train_wall_s"] for rec in records])),
                          "steps": int(np.mean([rec["steps"] for rec in records])),
                          "steps_per_s": float(np.mean([rec["steps_per_s"] for rec in records])),
                          "seeds": len(records),
                          "curves": [rec["curve"] for rec in records]}
        board["envs"][env_id] = {"reference": ref_name, "overrides": base["config"]["overrides"], "rows": rows,
                                 "static_tuned_thresholds": tuned.get("static_tuned_thresholds") if tuned else None}
    gen_test, gen_train = done.get("gen:static-tuned@test"), done.get("gen:static-tuned@train")
    if gen_test is not None:
        ref = gen_test["rewards"]
        named = {"static-tuned": gen_test} | ({"static-tuned@train-regime": gen_train} if gen_train else {})
        rows = {name: {"kind": "strategy", "reward": mean_ci(rec["rewards"]),
                       "minus_ref": mean_ci([a - b for a, b in zip(rec["rewards"], ref)]), "seeds": 0}
                for name, rec in named.items()}
        for label, kind in ((f"{GEN_ALGO} trained at batch 1", "gen_train"),
                            (f"{GEN_ALGO} trained on {GEN_ENV} (batch 1-8)", "train")):
            records = [done[c["key"]] for c in cells if c["kind"] == kind and c.get("algo") == GEN_ALGO
                       and c["env"] == GEN_ENV and c["key"] in done and "gen_rewards" in done[c["key"]]]
            if records:
                diffs = np.array([[a - b for a, b in zip(rec["gen_rewards"], ref)] for rec in records])
                rows[label] = {"kind": "trained", "reward": mean_ci([float(np.mean(rec["gen_rewards"]))
                                                                      for rec in records]),
                               "minus_ref": mean_ci(diffs.mean(axis=1).tolist()), "seeds": len(records),
                               "steps": int(np.mean([rec["steps"] for rec in records]))}
        board["generalisation"] = {"train": GEN_TRAIN, "test": GEN_TEST,
                                   "thresholds": {name: rec["thresholds"] for name, rec in named.items()},
                                   "rows": rows}
    return board


def _strategy_kind(env_id: str, agent: str) -> str:
    if env_id == EVICT:
        return {"lru": "rule (reference)", "belady": "clairvoyant bound", "random": "rule"}.get(agent, "rule")
    return "strategy"


def _ci_cell(d: dict[str, Any]) -> tuple[str, str]:
    ci = "-" if d["ci95"] is None else f"± {d['ci95']:.3f}"
    excludes = "-" if d["ci95"] is None else ("yes" if abs(d["mean"]) > d["ci95"] else "no")
    return f"{d['mean']:+.3f} {ci}", excludes


def markdown(board: dict[str, Any], budget_rows: list[str]) -> str:
    lines = ["# Leaderboard (generated by `experiments/leaderboard/leaderboard.py`)", "",
             f"**Budget: {board['budget']}** (training steps per run in each table's `steps` column; seeds "
             f"{board['seeds']}; {board['episodes']} held-out test episodes `reset(seed={board['eval_seed']} + i)`).", "",
             "Paired difference: an agent's episode reward minus the reference's on the same episode (`static-tuned`, "
             "fixed thresholds tuned on the train split; on `MoECache-Evict-v0` fixed thresholds have no meaning and "
             "the reference is `lru`). The 95% interval is a t-interval over episodes for a strategy and over training "
             "seeds (each seed's mean over the episodes) for a trained algorithm. `train wall s` and `steps/s` "
             "include the validation evaluations. Learning curves: the validation "
             "split's mean episode reward during training (mean ± 95% CI over seeds).", "",
             "Regenerate: `python experiments/leaderboard/leaderboard.py --jobs N` (resumable; `--only ENV:ALGO:SEED` "
             "reruns one cell and says whether it reproduces), or on a 16-core machine without the RL packages "
             "`OUT=... experiments/leaderboard/device.sh` (twice: each call stops before 9 minutes and packs its cells "
             "into `leaderboard-cells.tgz`; unpack them here and call again), then `--report-only`.", ""]
    if board["missing_cells"]:
        lines += [f"**Incomplete:** {len(board['missing_cells'])} cell(s) not computed yet "
                  f"({', '.join(board['missing_cells'][:12])}{' ...' if len(board['missing_cells']) > 12 else ''}); "
                  "rerun the script to continue.", ""]
    lines += target_lines(board)
    for env_id, env in board["envs"].items():
        ref = env["reference"]
        lines += [f"## {env_id}", ""]
        if env["overrides"]:
            lines += [f"Env config overrides: `{json.dumps(env['overrides'])}`.", ""]
        if env.get("static_tuned_thresholds"):
            lines += [f"`static-tuned` thresholds (l2, l3), tuned on the train split ({TUNE_EPISODES} episodes per grid "
                      f"point): {env['static_tuned_thresholds']}.", ""]
        lines += [f"| agent | kind | episode reward | minus {ref} (95% CI) | CI excludes 0 | seeds | steps "
                  "| train wall s | steps/s |", "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        if env_id == EVICT:
            lines[-2:-2] = ["`belady` evicts the resident expert used farthest in the future (the hit-rate bound of "
                            "this cache, not a latency bound); MaskablePPO's validation curve is measured without "
                            "masks (an invalid slot falls back to LRU's choice), its held-out episodes with them.", ""]
        for name, r in env["rows"].items():
            diff, excl = _ci_cell(r["minus_ref"])
            if name == ref:
                excl = "-"
            wall = "-" if r["train_wall_s"] is None else f"{r['train_wall_s']:.0f}"
            rate = f"{r['steps_per_s']:.0f}" if r.get("steps_per_s") else "-"
            lines.append(f"| {name} | {r['kind']} | {r['reward']['mean']:.2f} | {diff} | {excl} | {r['seeds'] or '-'} "
                         f"| {r['steps']} | {wall} | {rate} |")
        lines += ["", f"![learning curves]({_slug(env_id)}_curves.png) ![paired differences]({_slug(env_id)}_paired.png)",
                  ""]
    gen = board.get("generalisation")
    if gen:
        lines += ["## Generalisation: trained at batch 1, tested at batch 8", "",
                  f"`{GEN_ENV}` with the workload's batch fixed at 1 for training (`{json.dumps(gen['train'])}`) and at "
                  f"8 for the test episodes (`{json.dumps(gen['test'])}`), other serving conditions as `{GEN_ENV}`'s. "
                  "Reference: `static-tuned` tuned at batch 8 (thresholds "
                  f"{gen['thresholds']['static-tuned']}); `static-tuned@train-regime` is the pair tuned at batch 1 "
                  f"({gen['thresholds'].get('static-tuned@train-regime', 'not computed yet')}) played at batch 8.", "",
                  "| agent | kind | episode reward | minus static-tuned (95% CI) | CI excludes 0 | seeds | steps |",
                  "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
        for name, r in gen["rows"].items():
            diff, excl = _ci_cell(r["minus_ref"])
            if name == "static-tuned":
                excl = "-"
            lines.append(f"| {name} | {r['kind']} | {r['reward']['mean']:.2f} | {diff} | {excl} | {r['seeds'] or '-'} "
                         f"| {r.get('steps', 0)} |")
        lines.append("")
    lines += ["## Budget", ""] + budget_rows + [""]
    return "\n".join(lines)


def target_lines(board: dict[str, Any]) -> list[str]:
    """The summary against the targets: per environment, the best trained agent's paired difference to the
    reference and, where the table has a bound (Belady on the eviction environment), the share of the
    reference-to-bound gap it closes; plus the longer PPO run of ``long/`` where one was made."""
    lines = ["## Against the targets", ""]
    for env_id, env in board["envs"].items():
        trained = {n: r for n, r in env["rows"].items() if r["kind"] == "trained"}
        if not trained:
            continue
        name, best = max(trained.items(), key=lambda kv: kv[1]["minus_ref"]["mean"])
        d = best["minus_ref"]
        beats = d["ci95"] is not None and d["mean"] > d["ci95"]
        text = (f"- `{env_id}`: the best trained agent is {name}, {d['mean']:+.3f}"
                + (f" ± {d['ci95']:.3f}" if d["ci95"] is not None else "")
                + f" against `{env['reference']}` per episode: "
                + ("it beats the reference (the 95% CI excludes 0)" if beats else "it does **not** beat the reference"))
        bounds = [r for r in env["rows"].values() if r["kind"] == "clairvoyant bound"]
        if bounds and bounds[0]["minus_ref"]["mean"] > 0:
            share = d["mean"] / bounds[0]["minus_ref"]["mean"]
            text += f"; it closes {share:+.1%} of the gap to the bound ({bounds[0]['minus_ref']['mean']:+.3f})"
        lines.append(text + ".")
    long_board = HERE / "long" / "leaderboard.json"
    if long_board.exists() and board.get("out") != str(long_board.parent):
        extra = json.loads(long_board.read_text())
        for env_id, env in extra.get("envs", {}).items():
            for name, r in env["rows"].items():
                if r["kind"] != "trained":
                    continue
                d = r["minus_ref"]
                ci = f" ± {d['ci95']:.3f}" if d["ci95"] is not None else ""
                lines.append(f"- Longer run ([`long/`](long/README.md), `leaderboard.py --envs {env_id} --algos {name} "
                             f"--timesteps {extra['budget'].split()[0]} --out experiments/leaderboard/long`): {name} on "
                             f"`{env_id}` at {r['steps']} steps, {d['mean']:+.3f}{ci} against `{env['reference']}`.")
    return lines + [""]


def budget_text() -> list[str]:
    """How the default budget was chosen (the measured rates behind ``RATE`` and ``BUDGET``)."""
    rows = ["Training steps per run at the default budget, and the one-thread training rates (steps/s, no "
            "evaluation) they were chosen from (`experiments/leaderboard/rates.py`, `rates.jsonl`; measured on a "
            "loaded 2-core machine, so a core of one's own is assumed twice as fast). The tables' `steps/s` column "
            "is the rate of the leaderboard's own runs, evaluations included:", "",
            "| env | algo | steps | steps/s (1 thread) |", "| --- | --- | ---: | ---: |"]
    def measured(env_id: str, algo: str) -> str:
        like = RATES_OF.get(env_id, env_id)
        return f"{MEASURED_RATE[like][algo]:.0f}" + (f" (as {like})" if like != env_id else "")

    for env_id, algos in BUDGET.items():
        if env_id == "MoECache-v0":
            continue
        for algo, steps in algos.items():
            rows.append(f"| {env_id} | {algo} | {steps} | {measured(env_id, algo)} |")
    rows.append(f"| {GEN_ENV} at batch 1 (generalisation) | {GEN_ALGO} | {BUDGET[GEN_ENV][GEN_ALGO]} | "
                f"{measured(GEN_ENV, GEN_ALGO)} |")
    cells = plan(parse([]))
    rows += ["", f"Each run also plays {EVAL_POINTS} x {EVAL_EPISODES} validation episodes (its learning curve) and "
             f"the held-out episodes; the cell estimates (`RATE`, `WINDOW_S`) add up to about "
             f"{sum(c['cost_s'] for c in cells):,.0f} core-seconds for the {len(cells)} cells, against about 420 s "
             "of pool time per 16-core run (9 minutes less installing, compiling the kernels and packing); the "
             "cells are resumable, so the board is made in as many runs as that takes."]
    return rows


def _slug(env_id: str) -> str:
    return env_id.replace("MoECache-", "").lower()


def plots(board: dict[str, Any], out: Path) -> list[Path]:
    """Per environment: learning curves (validation reward vs steps, mean ± 95% CI over seeds) and the paired
    per-episode differences (box and points per agent)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for env_id, env in board["envs"].items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, r in env["rows"].items():
            curves = [c for c in r.get("curves", []) if c and c.get("timesteps")]
            if not curves:
                continue
            n = min(len(c["timesteps"]) for c in curves)
            x = np.asarray(curves[0]["timesteps"][:n], dtype=float)
            y = np.asarray([c["mean_reward"][:n] for c in curves], dtype=float)
            mean = y.mean(axis=0)
            half = (t975(len(y) - 1) * y.std(axis=0, ddof=1) / math.sqrt(len(y))) if len(y) > 1 else np.zeros(n)
            ax.plot(x, mean, marker=".", label=f"{name} ({len(y)} seeds)")
            ax.fill_between(x, mean - half, mean + half, alpha=0.2)
        ax.set_xlabel("training steps")
        ax.set_ylabel("validation episode reward")
        ax.set_title(f"{env_id}: learning curves (mean ± 95% CI over seeds)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / f"{_slug(env_id)}_curves.png", io, plt))
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(env["rows"])), 4.2))
        names = [n for n in env["rows"] if n != env["reference"]]
        data = [env["rows"][n]["per_episode_diff"] for n in names]
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data, start=1):
            jitter = np.linspace(-0.15, 0.15, len(d)) if len(d) > 1 else np.zeros(len(d))
            ax.scatter(i + jitter, d, s=10, alpha=0.6)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_ylabel(f"episode reward minus {env['reference']}'s")
        ax.set_title(f"{env_id}: per held-out episode, minus {env['reference']}\n(trained: mean over seeds)",
                     fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out / f"{_slug(env_id)}_paired.png", io, plt))
    return written


def _save(fig: Any, path: Path, io: Any, plt: Any) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return path


# ---- command line ---------------------------------------------------------------------------------------------
def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default=",".join(ENVS), help=f"comma-separated, of {list(ACTION_KIND)}")
    parser.add_argument("--algos", default=",".join(ALGOS), help="comma-separated; each runs where it fits")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--timesteps", type=int, default=None, help="one budget for every run (default: BUDGET)")
    parser.add_argument("--episodes", type=int, default=10, help="held-out test episodes")
    parser.add_argument("--env-config", default=None,
                        help='JSON {"threshold": {...}, "MoECache-Evict-v0": {...}}: env config overrides')
    parser.add_argument("--no-generalisation", dest="generalisation", action="store_false")
    parser.add_argument("--jobs", type=int, default=1, help="cells at a time, one process (one core) each")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop after this many seconds (finished cells are kept; a rerun continues)")
    parser.add_argument("--tiny", action="store_true", help="a smoke budget, written under tiny/ (labelled)")
    parser.add_argument("--only", default=None, help="ENV:ALGO:SEED (or ENV:strategies): run this one cell again "
                        "and say whether it reproduces the stored one")
    parser.add_argument("--report-only", action="store_true", help="README, leaderboard.json, plots from cells/")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="run the cells only (device.sh: the report is made where the cells are gathered)")
    parser.add_argument("--out", default=None, help="output folder (default: this folder; tiny/ with --tiny)")
    args = parser.parse_args(argv)
    try:
        args.user_overrides = json.loads(args.env_config) if args.env_config else {}
        if not isinstance(args.user_overrides, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        parser.error(f"--env-config is not a JSON object ({exc}); give e.g. '{{\"threshold\": {{\"episode_tokens\": 512}}}}'")
    args.label = "default (BUDGET)" if args.timesteps is None else f"{args.timesteps} steps per run"
    if args.tiny:
        args.timesteps, args.seeds, args.episodes = TINY["timesteps"], TINY["seeds"], TINY["episodes"]
        args.user_overrides = {"threshold": TINY["env_config"], **args.user_overrides}
        args.label = f"TINY SMOKE BUDGET ({TINY['timesteps']} steps per run): says nothing about the algorithms"
    args.out = Path(args.out) if args.out else (HERE / "tiny" if args.tiny else HERE)
    args.envs = [e for e in args.envs.split(",") if e]
    args.algos = [a for a in args.algos.split(",") if a]
    unknown = [e for e in args.envs if e not in ACTION_KIND] + [a for a in args.algos if a not in ALGOS]
    if unknown:
        parser.error(f"unknown environment(s)/algorithm(s) {unknown}; environments {list(ACTION_KIND)}, "
                     f"algorithms {list(ALGOS)}")
    try:
        args.seeds = [int(s) for s in str(args.seeds).split(",") if s != ""]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2,3,4")
    if args.episodes < 2 or args.jobs < 1 or (args.timesteps is not None and args.timesteps < 1):
        parser.error("--episodes must be >= 2 (a CI needs two), --jobs and --timesteps >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # inherited by the spawned workers: one core per cell
    out: Path = args.out
    cells = plan(args)
    start = time.time()
    if args.only is not None:
        match = [c for c in cells if c["key"] == args.only]
        if not match:
            print(f"leaderboard: --only {args.only}: no such cell; cells are e.g. {cells[1]['key']}, "
                  f"{cells[0]['key']}", file=sys.stderr)
            return 2
        cell = match[0]
        before = cell_done(out, cell)
        run_cell(cell, str(out))
        after = cell_done(out, cell)
        if before is not None and after is not None:
            same = before.get("rewards") == after.get("rewards") and before.get("gen_rewards") == after.get("gen_rewards")
            print(f"{cell['key']}: held-out rewards {'reproduced exactly' if same else 'DIFFER from the stored cell'}")
    elif not args.report_only:
        todo = [c for c in cells if cell_done(out, c) is None]
        print(f"{len(cells) - len(todo)} of {len(cells)} cells done; running {len(todo)} with --jobs {args.jobs}",
              flush=True)
        if todo and args.jobs > 1:
            print(f"kernels compiled or loaded in {warm_kernels(args.envs):.0f} s", flush=True)
        run_cells(todo, out, args.jobs,
                  None if args.budget_s is None else args.budget_s - (time.time() - start))
    if not args.report:
        return 0
    board = board_from_cells(out, args, cells)
    board["wall_s"] = round(time.time() - start, 1)
    atomic_write_json(out / "leaderboard.json", board)
    text = markdown({**board, "out": str(out.resolve())}, budget_text())
    atomic_write_text(out / "README.md", text)
    plots(board, out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
