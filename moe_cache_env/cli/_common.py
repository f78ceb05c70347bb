"""Helpers shared by several subcommands."""

from __future__ import annotations

from moe_cache_env.traces.catalog import resolve as load_named_trace

__all__ = ["load_named_trace"]
