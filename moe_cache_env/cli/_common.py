"""Helpers shared by several subcommands."""

from __future__ import annotations

from pathlib import Path

from moe_cache_env.traces.format import Trace, load_trace


def load_named_trace(name_or_path: str) -> Trace:
    """Load a trace file, or a bundled trace by name (``moe_cache_env.traces.suite``)."""
    path = Path(name_or_path)
    if path.suffix == ".npz" or path.exists():
        return load_trace(path)
    from moe_cache_env.traces.suite import resolve_trace

    return load_trace(resolve_trace(name_or_path))
