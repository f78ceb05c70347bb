"""Routing traces: the v1 file format, synthetic generation, statistics and the bundled suite."""

from moe_cache_env.traces.format import (
    FORMAT_ID,
    Trace,
    TraceFormatError,
    load_trace,
    make_meta,
    save_trace,
    validate_arrays,
)

__all__ = ["FORMAT_ID", "Trace", "TraceFormatError", "load_trace", "make_meta", "save_trace", "validate_arrays"]
