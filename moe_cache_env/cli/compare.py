"""Run agents on the same held-out episodes and compare them: a table, CSV, JSON and a figure.

Agents: static, conservative, aggressive, balanced, dynamic (the seed's strategies), random, static-tuned
(fixed thresholds grid-searched on the train split), and saved SB3 models as ALGO:PATH (e.g. ppo:runs/ppo/model.zip).
The simulator's bounds (lru, belady, perfect prediction) are reported beside them.

On MoECache-Evict-v0 the agents are lru (the reference), belady (the clairvoyant hit-rate bound), random and
saved models (e.g. maskableppo:runs/evict/model.zip); the default there is lru,belady,random.

Examples:
  moe-cache-env compare --agents static,conservative,aggressive,balanced,dynamic --episodes 3 --out results/
  moe-cache-env compare --env MoECache-Evict-v0 --agents lru,belady,random --episodes 3
  moe-cache-env compare --agents static-tuned,dynamic,ppo:runs/ppo/model.zip --episodes 10 --seed 100 --out results/
"""

from __future__ import annotations

import argparse

from moe_cache_env.cli import CommandError

DEFAULT_AGENTS = "static,conservative,aggressive,balanced,dynamic"
DEFAULT_EVICT_AGENTS = "lru,belady,random"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="MoECache-v0",
                        help="environment id in any form gym.make accepts, e.g. moe_cache_env:MoECache-v0 "
                             "(default: %(default)s)")
    parser.add_argument("--agents", default=None,
                        help=f"comma-separated agents (default: {DEFAULT_AGENTS}; on MoECache-Evict-v0: "
                             f"{DEFAULT_EVICT_AGENTS})")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per agent (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset(seed=SEED+i)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--out", default=None, help="write compare.json, compare.csv, summary.csv, compare.png here")
    parser.add_argument("--tune-episodes", type=int, default=3, help="train episodes per grid point of static-tuned")
    parser.add_argument("--oracle", action="store_true",
                        help="also run the per-window hindsight oracle (tries 27 thresholds per window: slow)")
    parser.add_argument("--no-bounds", action="store_true", help="skip the lru / belady / perfect bounds")
    parser.add_argument("--env-config", default=None, help="JSON object (or file) of env config keys to replace")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def run(args: argparse.Namespace) -> int:
    from moe_cache_env.agents.compare import compare, format_evict_table, format_table, work_units
    from moe_cache_env.agents.sb3 import is_evict_env
    from moe_cache_env.cli._progress import Progress
    from moe_cache_env.cli.train import parse_env_config
    from moe_cache_env.envs import EVICT_ID, resolve_env_id

    evict = is_evict_env(args.env.strip()) if isinstance(args.env, str) else False
    env_id = EVICT_ID if evict else resolve_env_id(args.env)  # an unknown id is a one-line ValueError
    agents = args.agents if args.agents is not None else (DEFAULT_EVICT_AGENTS if evict else DEFAULT_AGENTS)
    specs = [s.strip() for s in agents.split(",") if s.strip()]
    if not specs:
        raise CommandError("--agents is empty")
    if args.episodes < 1:
        raise CommandError(f"--episodes must be >= 1, got {args.episodes}")
    overrides = parse_env_config(args.env_config)
    if evict:
        with Progress(len(specs) * args.episodes, "compare", quiet=args.quiet) as progress:
            result = compare(env_id, specs, args.episodes, args.seed, args.out, split=args.split,
                             overrides=overrides, progress=progress.update)
        print(format_evict_table(result))
        if args.out:
            print(f"wrote {args.out}/compare.json")
        return 0
    units = work_units(specs, args.episodes, with_bounds=not args.no_bounds, oracle=args.oracle)
    with Progress(units, "compare", quiet=args.quiet) as progress:
        result = compare(
            env_id, specs, args.episodes, args.seed, args.out,
            split=args.split, overrides=overrides, tune_episodes=args.tune_episodes,
            with_bounds=not args.no_bounds, oracle=args.oracle, progress=progress.update,
        )
    print(format_table(result))
    if result["static_tuned"]:
        print(f"static-tuned thresholds (grid search on the train split): L2 {result['static_tuned']['thresholds'][0]}, "
              f"L3 {result['static_tuned']['thresholds'][1]}")
    if args.out:
        print(f"wrote {args.out}/compare.json, compare.csv, summary.csv, compare.png")
    return 0
