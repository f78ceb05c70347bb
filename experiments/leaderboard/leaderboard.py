"""The leaderboard: algorithms over training seeds, evaluated on the same held-out episodes, with paired 95% CIs.

Run (the budget the README table was made with is written into it):
  python experiments/leaderboard/leaderboard.py --timesteps 200000 --seeds 0,1,2,3,4 --episodes 20
  python experiments/leaderboard/leaderboard.py --tiny      # a smoke budget; its table says so

For each environment: the hand-written strategies and ``static-tuned`` (fixed thresholds tuned on the train
split) are played on the held-out episodes ``reset(seed=EVAL_SEED + i)`` of the test split; each algorithm is
trained once per seed (``agents.sb3.train``: train split, validation-split model selection) and its final model
played on the very same episodes. The table gives, per agent, the mean episode reward and the paired
difference to ``static-tuned`` on the same episode with a 95% confidence interval:

- a deterministic strategy: a t-interval over the episodes' paired differences;
- a trained algorithm: a t-interval over the seeds of each seed's mean paired difference (the training seed is
  the unit that varies; the episodes are shared by all).

Each (environment, algorithm, seed) run writes ``runs/ENV/ALGO_sSEED/`` (model, run.json) and its evaluation
to ``cells/``; a rerun skips cells whose evaluation exists (resumable), and ``--only ENV:ALGO:SEED`` reruns one
cell, which reproduces its row (training and evaluation are seeded).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from moe_cache_env._io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
EVAL_SEED = 1_000
STRATEGIES = ("static", "conservative", "aggressive", "balanced", "dynamic")
#: algorithm -> the environments whose action space it fits
ALGOS = {"ppo": None, "a2c": None, "sac": ("box",), "dqn": ("discrete",)}
#: two-sided 95% t quantiles by degrees of freedom (Student's t table); beyond 30 the normal 1.96
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}
TINY = {"timesteps": 256, "seeds": "0,1", "episodes": 3, "algos": "ppo,a2c",
        "env_config": {"traces": ["synth:qwen1.5-moe:4096:0"], "episode_tokens": 384, "predictor_fit_tokens": 512}}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table; conservative between entries)."""
    if df < 1:
        return math.nan
    if df > 30:
        return 1.96
    return _T975.get(df) or _T975[max(k for k in _T975 if k <= df)]  # fewer df: a wider interval


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and the half-width of its two-sided 95% t-interval (None with fewer than two values)."""
    a = np.asarray(values, dtype=np.float64)
    half = t975(len(a) - 1) * float(a.std(ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else None
    return {"mean": float(a.mean()), "ci95": half, "n": int(len(a))}


def _episode_rewards(result: dict[str, Any], agent: str) -> list[float]:
    rows = sorted((r for r in result["episodes_detail"] if r["agent"] == agent), key=lambda r: r["episode"])
    return [float(r["reward"]) for r in rows]


def _action_kind(env_id: str, overrides: dict[str, Any]) -> str:
    from moe_cache_env.agents.evaluation import make_env

    env = make_env(env_id, "test", overrides)
    kind = "discrete" if env.action_space.__class__.__name__ == "Discrete" else "box"
    env.close()
    return kind


def run(envs: Sequence[str], algos: Sequence[str], seeds: Sequence[int], timesteps: int, episodes: int,
        out: Path, overrides: dict[str, Any], only: str | None, budget_label: str) -> dict[str, Any]:
    from moe_cache_env.agents.compare import compare
    from moe_cache_env.agents.sb3 import train

    board: dict[str, Any] = {"budget": budget_label, "timesteps": timesteps, "seeds": list(seeds),
                             "episodes": episodes, "eval_seed": EVAL_SEED, "env_overrides": overrides, "envs": {}}
    for env_id in envs:
        base = compare(env_id, list(STRATEGIES) + ["static-tuned"], episodes, EVAL_SEED, split="test",
                       overrides=overrides, with_bounds=False)
        tuned = _episode_rewards(base, "static-tuned")
        rows: dict[str, Any] = {}
        for agent in list(STRATEGIES) + ["static-tuned"]:
            rewards = _episode_rewards(base, agent)
            rows[agent] = {"kind": "strategy", "reward": mean_ci(rewards),
                           "minus_static_tuned": mean_ci([r - t for r, t in zip(rewards, tuned)]),
                           "train_wall_s": None, "steps": 0}
        kind = _action_kind(env_id, overrides)
        for algo in algos:
            if ALGOS[algo] is not None and kind not in ALGOS[algo]:
                continue
            per_seed_diff, per_seed_reward, walls, steps = [], [], [], []
            for seed in seeds:
                cell = f"{env_id}:{algo}:{seed}"
                cell_file = out / "cells" / f"{env_id}_{algo}_s{seed}.json"
                if cell_file.exists() and only != cell:
                    record = json.loads(cell_file.read_text())
                elif only is not None and only != cell:
                    continue
                else:
                    run_dir = out / "runs" / env_id / f"{algo}_s{seed}"
                    info = train(algo, env_id, timesteps, seed, run_dir, overrides=overrides,
                                 eval_freq=max(timesteps // 4, 1), eval_episodes=2, checkpoint_freq=10**9,
                                 progress_bar=False)
                    result = compare(env_id, [f"{algo}:{run_dir / 'model.zip'}"], episodes, EVAL_SEED,
                                     split="test", overrides=overrides, with_bounds=False)
                    record = {"cell": cell, "rewards": _episode_rewards(result, algo),
                              "train_wall_s": info["train_wall_s"], "steps": info["timesteps_done"]}
                    atomic_write_json(cell_file, record)
                per_seed_reward.append(float(np.mean(record["rewards"])))
                per_seed_diff.append(float(np.mean([r - t for r, t in zip(record["rewards"], tuned)])))
                walls.append(record["train_wall_s"])
                steps.append(record["steps"])
            if per_seed_diff:
                rows[algo] = {"kind": "trained", "reward": mean_ci(per_seed_reward),
                              "minus_static_tuned": mean_ci(per_seed_diff),
                              "train_wall_s": float(np.mean(walls)), "steps": int(np.mean(steps))}
        board["envs"][env_id] = rows
    return board


def markdown(board: dict[str, Any]) -> str:
    lines = ["# Leaderboard (generated by `experiments/leaderboard/leaderboard.py`)", "",
             f"**Budget: {board['budget']}** ({board['timesteps']} training steps per run, seeds "
             f"{board['seeds']}, {board['episodes']} held-out test episodes from seed {board['eval_seed']}"
             + (f", env overrides `{json.dumps(board['env_overrides'])}`" if board["env_overrides"] else "")
             + "). The numbers below say nothing about these algorithms at a real budget.", "",
             "Paired difference: an agent's episode reward minus `static-tuned`'s on the same episode; the 95% "
             "interval is over episodes for a strategy and over training seeds for a trained algorithm.", ""]
    for env_id, rows in board["envs"].items():
        lines += [f"## {env_id}", "", "| agent | kind | episode reward | minus static-tuned (95% CI) | CI excludes 0 "
                  "| train wall s | steps |", "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
        for name, r in rows.items():
            d = r["minus_static_tuned"]
            ci = "-" if d["ci95"] is None else f"± {d['ci95']:.3f}"
            excludes = "-" if d["ci95"] is None or name == "static-tuned" else \
                ("yes" if abs(d["mean"]) > d["ci95"] else "no")
            wall = "-" if r["train_wall_s"] is None else f"{r['train_wall_s']:.0f}"
            lines.append(f"| {name} | {r['kind']} | {r['reward']['mean']:.2f} | {d['mean']:+.3f} {ci} | {excludes} | "
                         f"{wall} | {r['steps']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="MoECache-v0")
    parser.add_argument("--algos", default="ppo,a2c,sac,dqn")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--timesteps", type=int, default=200_000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--env-config", default=None, help="JSON object of env config overrides")
    parser.add_argument("--tiny", action="store_true", help="a smoke budget (labelled as such in the table)")
    parser.add_argument("--only", default=None, help="ENV:ALGO:SEED: (re)run this one cell")
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    overrides = json.loads(args.env_config) if args.env_config else {}
    algos, seeds, timesteps, episodes = args.algos, args.seeds, args.timesteps, args.episodes
    label = "full"
    if args.tiny:
        algos, seeds, timesteps, episodes = TINY["algos"], TINY["seeds"], TINY["timesteps"], TINY["episodes"]
        overrides = {**TINY["env_config"], **overrides}
        label = "TINY SMOKE BUDGET"
    unknown = [a for a in algos.split(",") if a not in ALGOS]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {list(ALGOS)}")
    start = time.time()
    out = Path(args.out)
    board = run(args.envs.split(","), algos.split(","), [int(s) for s in seeds.split(",")], timesteps, episodes,
                out, overrides, args.only, label)
    board["wall_s"] = round(time.time() - start, 1)
    atomic_write_json(out / "leaderboard.json", board)
    atomic_write_text(out / "README.md", markdown(board))
    print(markdown(board))
    return 0


if __name__ == "__main__":
    sys.exit(main())
