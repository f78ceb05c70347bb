"""Train a Stable-Baselines3 agent on an expert-cache environment.

Training environments replay the train split of the suite's traces; an evaluation callback scores the agent on
the validation split and keeps the best model. The output directory gets model.zip (the final model),
best/best_model.zip, checkpoints/, tb/ (TensorBoard), eval/evaluations.npz and run.json.

A resumable checkpoint is written every --checkpoint-freq steps; --resume DIR continues the run in DIR from
its newest one with the same random streams (the settings come from the checkpoint). Ctrl-C saves the model
and run.json and exits with status 130; resume from the last checkpoint afterwards.

Examples:
  moe-cache-env train --algo ppo --env MoECache-v0 --timesteps 200000 --seed 0 --out runs/ppo
  moe-cache-env train --algo dqn --env moe_cache_env:MoECache-Discrete-v0 --timesteps 50000 --out runs/dqn
  moe-cache-env train --algo sac --env MoECache-v0 --timesteps 100000 --out runs/sac
  moe-cache-env train --resume runs/ppo
  tensorboard --logdir runs/ppo/tb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from moe_cache_env.cli import CommandError
from moe_cache_env.cli._common import check_env_threads


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
    parser.add_argument("--algo", default=None, choices=["ppo", "a2c", "sac", "dqn", "recurrentppo", "maskableppo"],
                        help="SB3 algorithm (default: ppo); recurrentppo and maskableppo (MoECache-Evict-v0) from sb3-contrib")
    parser.add_argument("--env", default=None,
                        help="environment id in any form gym.make accepts, e.g. MoECache-v0 or "
                             "moe_cache_env:MoECache-v0 (default: MoECache-v0)")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="continue the run in DIR from its newest checkpoint (its settings are reused; "
                             "--timesteps may raise the total)")
    parser.add_argument("--timesteps", type=int, default=None,
                        help="environment steps (windows) in all; default: the hyperparameter file's n_timesteps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default: runs/ALGO-ENV-sSEED)")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel training environments (default: YAML)")
    parser.add_argument("--vec-backend", default=None, choices=["native", "subproc", "dummy"],
                        help="how training environments are stepped: native (default; all windows in one compiled "
                             "call), subproc (a worker process per environment) or dummy (one after another)")
    parser.add_argument("--env-threads", type=int, default=None,
                        help="native backend: numba threads replaying the environments' windows (default 1; the "
                             "numbers are the same for any count)")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="validate every this many steps")
    parser.add_argument("--eval-episodes", type=int, default=5, help="validation episodes per evaluation")
    parser.add_argument("--checkpoint-freq", type=int, default=50_000, help="checkpoint every this many steps")
    parser.add_argument("--hyperparams", default=None, help="YAML file (default: agents/hyperparams/ALGO.yml)")
    parser.add_argument("--env-config", default=None,
                        help='JSON object (or file) of env config keys replacing the variant\'s, e.g. \'{"episode_tokens": 4096}\'')
    parser.add_argument("--no-progress-bar", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2])


def run(args: argparse.Namespace) -> int:
    from moe_cache_env.agents.sb3 import resume, train
    from moe_cache_env.envs import resolve_env_id

    if args.timesteps is not None and args.timesteps < 1:
        raise CommandError(f"--timesteps must be >= 1, got {args.timesteps}")
    if args.env_threads is not None:
        check_env_threads(args.env_threads, "--env-threads")
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in ("algo", "env", "out", "n_envs", "hyperparams", "env_config",
                                                               "vec_backend", "env_threads")
                 if getattr(args, name) is not None]
        if given:
            raise CommandError(f"--resume takes the run's settings from its checkpoint; drop {', '.join(given)}")
        record = resume(args.resume, timesteps=args.timesteps, progress_bar=not args.no_progress_bar,
                        verbose=args.verbose)
    else:
        algo = args.algo or "ppo"
        from moe_cache_env.agents.sb3 import resolve_any_env

        env_id = resolve_any_env(args.env or "MoECache-v0")  # the threshold envs or MoECache-Evict-v0
        out = args.out or f"runs/{algo}-{env_id}-s{args.seed}"
        record = train(
            algo,
            env_id,
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
            vec_backend=args.vec_backend or "native",
            env_threads=args.env_threads or 1,
        )
    validation = record["validation"].get("mean_reward") or []
    last = f", last validation reward {validation[-1]:.3f}" if validation else ""
    algo = record["algo"]
    if record["interrupted"]:
        where = record["resume_checkpoint"]
        then = (f"; resume from the last checkpoint with: moe-cache-env train --resume {Path(where).parent.parent}"
                if where else "; no checkpoint was written yet, so a new run starts from scratch")
        print(f"interrupted after {record['timesteps_done']} of {record['timesteps']} steps: saved {record['model']} "
              f"and run.json{then}", file=sys.stderr)
        return 130
    print(f"trained {algo} on {record['env']} for {record['timesteps_done']} steps in {record['train_wall_s']} s{last}")
    print(f"model: {record['model']}  (compare with: moe-cache-env compare --agents static,dynamic,{algo}:{record['model']})")
    return 0
