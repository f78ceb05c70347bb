"""Train a Stable-Baselines3 agent on an expert-cache environment.

Training environments replay the train split of the suite's traces; an evaluation callback scores the agent on
the validation split and keeps the best model. The output directory gets model.zip (the final model),
best/best_model.zip, checkpoints/, tb/ (TensorBoard), eval/evaluations.npz and run.json.

Examples:
  moe-cache-env train --algo ppo --env MoECache-v0 --timesteps 200000 --seed 0 --out runs/ppo
  moe-cache-env train --algo dqn --env MoECache-Discrete-v0 --timesteps 50000 --out runs/dqn
  tensorboard --logdir runs/ppo/tb
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from moe_cache_env.cli import CommandError


def parse_env_config(text: str | None) -> dict[str, Any]:
    """``--env-config``: a JSON object, or the path of a JSON file holding one."""
    if not text:
        return {}
    source = text
    path = Path(text)
    if not text.lstrip().startswith("{") and path.exists():
        source = path.read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--env-config is neither a JSON object nor a JSON file: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError(f"--env-config must be a JSON object, got {type(value).__name__}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c", "sac", "dqn"], help="SB3 algorithm")
    parser.add_argument("--env", default="MoECache-v0", help="registered environment id (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, default=None,
                        help="environment steps (windows) in all; default: the hyperparameter file's n_timesteps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default: runs/ALGO-ENV-sSEED)")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel training environments (default: YAML)")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="validate every this many steps")
    parser.add_argument("--eval-episodes", type=int, default=5, help="validation episodes per evaluation")
    parser.add_argument("--checkpoint-freq", type=int, default=50_000, help="checkpoint every this many steps")
    parser.add_argument("--hyperparams", default=None, help="YAML file (default: agents/hyperparams/ALGO.yml)")
    parser.add_argument("--env-config", default=None,
                        help='JSON object (or file) of env config keys replacing the variant\'s, e.g. \'{"episode_tokens": 4096}\'')
    parser.add_argument("--no-progress-bar", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2])


def run(args: argparse.Namespace) -> int:
    from moe_cache_env.agents.sb3 import train
    from moe_cache_env.envs import VARIANTS

    if args.env not in VARIANTS:
        raise CommandError(f"unknown environment {args.env!r}; registered: {', '.join(sorted(VARIANTS))}")
    if args.timesteps is not None and args.timesteps < 1:
        raise CommandError(f"--timesteps must be >= 1, got {args.timesteps}")
    out = args.out or f"runs/{args.algo}-{args.env}-s{args.seed}"
    record = train(
        args.algo,
        args.env,
        args.timesteps,
        args.seed,
        out,
        n_envs=args.n_envs,
        eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes,
        checkpoint_freq=args.checkpoint_freq,
        hyperparams_path=args.hyperparams,
        overrides=parse_env_config(args.env_config),
        progress_bar=not args.no_progress_bar,
        verbose=args.verbose,
    )
    validation = record["validation"].get("mean_reward") or []
    last = f", last validation reward {validation[-1]:.3f}" if validation else ""
    print(f"trained {args.algo} on {args.env} for {record['timesteps']} steps in {record['train_wall_s']} s{last}")
    print(f"model: {record['model']}  (compare with: moe-cache-env compare --agents static,dynamic,{args.algo}:{record['model']})")
    return 0
