"""A one-line note on stderr when the simulator's kernel is about to be compiled rather than loaded.

The kernel is ``numba.njit(cache=True)``: its first use on a machine (or after the kernel's source changed)
compiles it for tens of seconds and writes the result to numba's on-disk cache; later processes load it in a
fraction of a second. Without a note, that first run looks like a hang.

:func:`note_if_compiling` decides from numba's cache index for the kernel: a process that has not compiled or
loaded the kernel yet, and whose cache has no index for it matching the current source, is about to compile.
It prints at most once per process; ``MOE_CACHE_ENV_QUIET=1`` silences it.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

_noted = False


def kernel_is_cached(dispatcher: Any) -> bool | None:
    """Whether numba can load ``dispatcher`` from its on-disk cache (None when that cannot be told).

    Compiled or loaded in this process already counts as cached. The index is numba's own
    (``<cache dir>/<module>.<function>-<line>.pyXY.nbi``); it is read through numba's cache object, which
    rejects an index written for another version of the source, as loading would.
    """
    if getattr(dispatcher, "signatures", None):
        return True
    cache = getattr(dispatcher, "_cache", None)
    cache_file = getattr(cache, "_cache_file", None)
    if cache_file is None:  # not a cache=True dispatcher, or numba's layout changed
        return None
    try:
        return bool(cache_file._load_index())
    except Exception:  # an unreadable or foreign index: numba itself would recompile
        index = getattr(cache_file, "_index_path", None)
        return bool(index and os.path.exists(index)) if index else None


def note_if_compiling(dispatcher: Any, stream: IO[str] | None = None) -> bool:
    """Print the note once per process if ``dispatcher`` is about to be compiled; returns whether it printed."""
    global _noted
    if _noted or os.environ.get("MOE_CACHE_ENV_QUIET") or os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return False
    if kernel_is_cached(dispatcher) is not False:
        return False
    _noted = True
    print("moe-cache-env: compiling the simulator kernel (first run on this machine, about a minute; "
          "the result is cached for later runs)", file=stream or sys.stderr, flush=True)
    return True
