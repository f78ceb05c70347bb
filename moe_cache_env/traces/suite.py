"""The bundled traces: find a trace by name (``qwen1.5-moe``, ``synthetic/qwen1.5-moe``) or by path.

Bundled traces are package data (``moe_cache_env/traces/bundled/``), found through ``importlib.resources`` so
that an installed wheel has them. The environment variable ``MOE_CACHE_ENV_TRACES`` adds a folder of your own
(searched first; several folders separated by ``os.pathsep``). A trace's name is its path under its folder
without ``.npz`` (``synthetic/qwen1.5-moe``); the file name alone (``qwen1.5-moe``) works too when no other
trace has it.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

TRACES_ENV = "MOE_CACHE_ENV_TRACES"
DEFAULT_TRACE = "synthetic/qwen1.5-moe"


def bundled_root() -> Path:
    """The package folder that holds the bundled traces."""
    return Path(str(resources.files("moe_cache_env.traces") / "bundled"))


def trace_roots() -> list[Path]:
    """Folders searched for named traces: ``$MOE_CACHE_ENV_TRACES`` (if set), then the bundled folder."""
    roots = [Path(p).expanduser() for p in os.environ.get(TRACES_ENV, "").split(os.pathsep) if p]
    return roots + [bundled_root()]


def list_bundled_traces() -> dict[str, Path]:
    """Trace names (path under a traces folder, without ``.npz``) -> file; a user folder's names win."""
    found: dict[str, Path] = {}
    for root in reversed(trace_roots()):
        if root.is_dir():
            found.update({p.relative_to(root).with_suffix("").as_posix(): p for p in root.rglob("*.npz") if p.is_file()})
    return dict(sorted(found.items()))


def resolve_trace(name_or_path: str | os.PathLike) -> Path:
    """The file of a trace given as a path or a bundled name; a clear error lists the names available."""
    text = os.fspath(name_or_path)
    as_path = Path(text).expanduser()
    if as_path.is_file():
        return as_path
    bundled = list_bundled_traces()
    key = text[:-4] if text.endswith(".npz") else text
    if key in bundled:
        return bundled[key]
    by_stem = [path for name, path in bundled.items() if name.rsplit("/", 1)[-1] == key]
    if len(by_stem) == 1:
        return by_stem[0]
    if len(by_stem) > 1:
        names = [name for name in bundled if name.rsplit("/", 1)[-1] == key]
        raise ValueError(f"trace name {text!r} is ambiguous: it matches {names}; give the full name")
    available = ", ".join(bundled) if bundled else "none"
    raise FileNotFoundError(
        f"no trace file or bundled trace named {text!r}; bundled traces: {available} "
        f"(set ${TRACES_ENV} to add a folder of your own)"
    )
