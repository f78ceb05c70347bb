"""The bundled traces: find a trace by name (``qwen1.5-moe``, ``synthetic/qwen1.5-moe``) or by path.

Bundled traces live in the repository's ``traces/`` folder, beside the package
(``Path(moe_cache_env.__file__).parents[1] / "traces"``); the environment variable ``MOE_CACHE_ENV_TRACES``
points elsewhere. A trace's name is its path under that folder without ``.npz``
(``synthetic/qwen1.5-moe``); the file name alone (``qwen1.5-moe``) works too when no other bundled trace has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import moe_cache_env

TRACES_ENV = "MOE_CACHE_ENV_TRACES"
DEFAULT_TRACE = "synthetic/qwen1.5-moe"


def traces_root() -> Path:
    """The folder holding the bundled traces (``$MOE_CACHE_ENV_TRACES`` or the repository's ``traces/``)."""
    override = os.environ.get(TRACES_ENV)
    if override:
        return Path(override).expanduser()
    return Path(moe_cache_env.__file__).resolve().parents[1] / "traces"


def list_bundled_traces() -> dict[str, Path]:
    """Bundled trace names (path under the traces folder, without ``.npz``) -> file, sorted by name."""
    root = traces_root()
    if not root.is_dir():
        return {}
    found = {p.relative_to(root).with_suffix("").as_posix(): p for p in root.rglob("*.npz") if p.is_file()}
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
    available = ", ".join(bundled) if bundled else f"none (no .npz under {traces_root()})"
    raise FileNotFoundError(
        f"no trace file or bundled trace named {text!r}; bundled traces: {available} "
        f"(root {traces_root()}, set ${TRACES_ENV} to use another folder)"
    )
