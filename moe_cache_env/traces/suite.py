"""The bundled traces by name: kept for callers of ``resolve_trace``; the catalog (``traces.catalog``) does the work.

Bundled traces are package data (``moe_cache_env/traces/bundled/``), found through ``importlib.resources`` so
that an installed wheel has them. The environment variable ``MOE_CACHE_ENV_TRACES`` adds a folder of your own
(searched first; several folders separated by ``os.pathsep``). A trace's name is its path under its folder
without ``.npz`` (``synthetic/qwen1.5-moe``); the file name alone (``qwen1.5-moe``) works too when no other
trace has it. Every other way of naming a trace (``bundled://``, ``synth://``, a suite folder) is in
:mod:`moe_cache_env.traces.catalog`.
"""

from __future__ import annotations

from moe_cache_env.traces.catalog import (
    DEFAULT_TRACE,
    TRACES_ENV,
    bundled_root,
    list_bundled_traces,
    resolve_path,
    trace_roots,
)

#: the file of a trace named by path, bundled name or any other catalog form (``catalog.resolve_path``)
resolve_trace = resolve_path

__all__ = ["DEFAULT_TRACE", "TRACES_ENV", "bundled_root", "list_bundled_traces", "resolve_trace", "trace_roots"]
