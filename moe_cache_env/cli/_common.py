"""Helpers shared by several subcommands."""

from __future__ import annotations

from moe_cache_env.traces.catalog import resolve as load_named_trace

__all__ = ["check_env_threads", "load_named_trace", "oracle_accuracy_arg"]


def check_env_threads(threads: int, flag: str) -> None:
    """A thread count for the native vector environment's replay (``sim.batch.check_threads``), else one line."""
    import numba

    from moe_cache_env.cli import CommandError
    from moe_cache_env.sim.batch import check_threads

    try:
        check_threads(threads)
    except ValueError:
        raise CommandError(f"{flag} must be in 1..{numba.config.NUMBA_NUM_THREADS} (numba's threads: "
                           f"NUMBA_NUM_THREADS, by default the machine's cores), got {threads}") from None


def oracle_accuracy_arg(text: str) -> float | tuple[float, ...]:
    """``--oracle-accuracy``: one accuracy, or one per lookahead distance (``0.8,0.7``)."""
    import argparse

    try:
        values = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or numbers per lookahead (0.8,0.7), got {text!r}") from None
    return values[0] if len(values) == 1 else values
