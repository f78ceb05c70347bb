"""The ``moe-cache-env`` command line: one module per subcommand, each with ``add_arguments`` and ``run``.

Subcommand modules import their heavy dependencies (torch, transformers, stable-baselines3) inside ``run``,
so ``moe-cache-env --help`` and the light commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: subcommand -> (module under moe_cache_env.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": ("evaluate", "replay a trace under a policy and print its metrics"),
    "bench": ("bench", "measure simulator throughput (routing events per second)"),
    "predictors": ("predictors", "report each predictor's top-1 accuracy and top-k recall on a trace"),
    "synth": ("synth", "write a synthetic trace from a model preset"),
    "trace-stats": ("trace_stats", "print a trace's routing statistics"),
    "profiles": ("profiles", "list the hardware profiles or show one"),
    "calibrate": ("calibrate", "measure this machine's CUDA GPU and write a hardware profile"),
    "replay-gpu": ("replay_gpu", "execute a policy's decisions on a CUDA GPU and compare with the estimate"),
    "train": ("train", "train a Stable-Baselines3 agent on an expert-cache environment"),
    "compare": ("compare", "run agents on the same held-out episodes and compare their rewards and metrics"),
    "record": ("record", "record the routing of a local Hugging Face MoE model as traces"),
    "import": ("import_trace", "import a CSV or JSONL per-token routing dump as a trace"),
    "sweep": ("sweep", "run a grid of evaluations (local processes or Ray) into a resumable JSONL table"),
}


class CommandError(Exception):
    """A user error that the CLI reports as one line and exit code 2."""


#: top-level module -> the extra of ``moe-cache-env`` that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    "stable_baselines3": "rl",
    "sb3_contrib": "rl",
    "torch": "rl",
    "tensorboard": "rl",
    "rich": "rl",
    "tqdm": "rl",
    "yaml": "rl",
    "matplotlib": "plot",
    "transformers": "record",
    "ray": "sweep",
}


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The one-line advice for a missing optional dependency, or None if the module is not an extra's."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"this command needs {top!r}, which is not installed; install it with: pip install 'moe-cache-env[{extra}]'"


EPILOG = """examples:
  moe-cache-env evaluate --trace qwen1.5-moe --policy static,lru,belady
  moe-cache-env train --algo ppo --env moe_cache_env:MoECache-v0 --timesteps 200000 --out runs/ppo
  moe-cache-env compare --agents static,dynamic,ppo:runs/ppo/model.zip --episodes 10 --out results/
  moe-cache-env COMMAND --help    (each command's options and examples)
"""


def build_parser() -> argparse.ArgumentParser:
    from moe_cache_env import __version__

    # RawDescriptionHelpFormatter keeps the module docstrings' example lines one per line
    parser = argparse.ArgumentParser(
        prog="moe-cache-env",
        description="Simulate, evaluate and learn Mixture-of-Experts GPU expert caches.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"moe_cache_env.cli.{module_name}")
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moe-cache-env`` console script; returns the exit code."""
    from moe_cache_env.profiles import ProfileError
    from moe_cache_env.traces import TraceFormatError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as exc:
        advice = missing_extra_message(exc)
        if advice is None:
            raise
        print(f"moe-cache-env {args.command}: error: {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: one line and the shell's status for SIGINT (128 + 2), not a traceback
        print(f"\nmoe-cache-env {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CommandError, TraceFormatError, ProfileError, FileNotFoundError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"moe-cache-env {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
