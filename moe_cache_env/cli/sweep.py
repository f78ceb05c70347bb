"""Run a grid of evaluations from a YAML file and append one row per cell to a JSONL table.

Each cell is one (trace, profile, workload, cache size, policy or agent, seed) evaluation, as `evaluate` runs
it. A row holds the cell's full resolved configuration (`config`), its metrics (`metrics`) and, apart, how
long it took where (`timing`). Rows are keyed by a hash of their configuration: run the same command again
after an interruption and only the missing cells run. The grid file's format: moe_cache_env/experiments/sweep.py
and experiments/sweeps/README.md.

Backends: `local` runs the cells in --workers processes on this machine; `ray` runs them as Ray Tune trials,
on a local Ray instance started for the sweep, or on a running cluster given by --address (start one with
`ray start --head` on the head node and `ray start --address HEAD:6379` on the others; every node needs the
same moe-cache-env installed, and traces given by path must exist at that path on every node). Both backends
write the same rows, `timing` aside.

Examples:
  moe-cache-env sweep experiments/sweeps/smoke.yml --out results/smoke.jsonl
  moe-cache-env sweep experiments/sweeps/smoke.yml --backend local --workers 2 --out results/smoke.jsonl
  moe-cache-env sweep experiments/sweeps/smoke.yml --backend ray --out results/smoke.jsonl
  moe-cache-env sweep grid.yml --backend ray --address 10.0.0.1:6379 --out results/grid.jsonl
"""

from __future__ import annotations

import argparse
import os

from moe_cache_env.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", metavar="GRID.yml", help="the grid file (YAML)")
    parser.add_argument("--out", required=True, metavar="PATH", help="results table (JSONL); rows are appended")
    parser.add_argument("--backend", default="local", choices=["local", "ray"], help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="cells run at once (default: this machine's CPU count; with --address: the cluster's)")
    parser.add_argument("--address", default=None,
                        help="with --backend ray: the address of a running Ray cluster (HEAD:6379, or 'auto')")
    parser.add_argument("--list", action="store_true", help="print the cells (key and settings) and run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def run(args: argparse.Namespace) -> int:
    from moe_cache_env._io import check_output_not_input, check_output_path
    from moe_cache_env.cli._progress import Progress
    from moe_cache_env.experiments.sweep import SweepError, expand_grid, load_grid, load_table, run_sweep

    if args.address and args.backend != "ray":
        raise CommandError("--address is for --backend ray; add --backend ray or drop --address")
    if args.workers is not None and args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if args.backend == "ray":
        try:
            import ray  # noqa: F401
        except ModuleNotFoundError:
            raise CommandError("--backend ray needs Ray Tune, which is not installed; install it with: "
                               "pip install 'moe-cache-env[sweep]'") from None
    try:
        grid = load_grid(args.grid)
        check_output_not_input(args.out, args.grid, *{c[k] for c in grid.cells for k in ("trace", "fit_trace")
                                                      if c[k] is not None})
        check_output_path(args.out)
        if args.list:
            done = load_table(args.out, repair=False) if os.path.exists(args.out) else {}
            for cell in expand_grid(grid):
                print(f"{cell.key}  {'done' if cell.key in done else 'todo'}  {cell.label()}")
            return 0
        progress: list[Progress] = []

        def start(total: int) -> None:
            progress.append(Progress(total, f"sweep ({args.backend})", quiet=args.quiet))

        try:
            summary = run_sweep(args.grid, args.out, backend=args.backend, workers=workers, address=args.address,
                                on_start=start, progress=lambda label: progress[0].update(1, label))
        finally:
            if progress:
                progress[0].close()
    except SweepError as exc:
        raise CommandError(str(exc)) from None
    print(f"{grid.name}: {summary.cells} cells; {summary.already} already in {args.out}, {summary.ran} run now "
          f"({args.backend}); {args.out} holds one row per cell")
    return 0
