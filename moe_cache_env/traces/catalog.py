"""The trace catalog: one resolver for every way of naming a trace.

A trace is named in one of these forms (:func:`resolve` turns any of them into a :class:`Trace`):

==================================================  ============================================================
``path/to/trace.npz``, ``file:///abs/trace.npz``    a trace file
``synthetic/qwen1.5-moe``, ``qwen1.5-moe``,         a bundled trace (package data) or one in a folder of
``bundled://synthetic/qwen1.5-moe``                 ``$MOE_CACHE_ENV_TRACES``: its path under the folder without
                                                    ``.npz``; the file name alone works when no other trace has it
``synth://qwen1.5-moe?tokens=65536&seed=0``,        a synthetic trace: ``synth.generate(PRESET, TOKENS,
``synth:qwen1.5-moe:65536:0``                       numpy.random.default_rng(SEED), seed=SEED)``, generated once
                                                    and then read from the on-disk cache
``path/to/folder``, ``bundled://learned``           a suite, not one trace: :func:`expand_suite` lists every
                                                    ``.npz`` under the folder
==================================================  ============================================================

Synthetic traces are cached in ``$MOE_CACHE_ENV_CACHE`` (else ``$XDG_CACHE_HOME/moe-cache-env``, else
``~/.cache/moe-cache-env``), one uncompressed ``.npz`` per (preset, tokens, seed) at
``synth/KEY/PRESET-tTOKENS-sSEED.npz``, where KEY is a hash of those and of the generator (the source of
``synth.py`` and ``format.py``, the routing data file, numpy's version): changing the generator changes every
key, so a stale trace is never read. A cache file is written atomically
(concurrent writers each rename a complete file into place) and is re-validated on every read (zip CRC-32 of
each array, the format checks, the generator record in its meta); one that fails any check is regenerated.
A cache folder that cannot be written only costs the time of generating the trace again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from moe_cache_env.traces.format import FORMAT_ID, Trace, load_trace, save_trace

TRACES_ENV = "MOE_CACHE_ENV_TRACES"
CACHE_ENV = "MOE_CACHE_ENV_CACHE"
DEFAULT_TRACE = "synthetic/qwen1.5-moe"

#: the URI schemes the catalog understands
SCHEMES = ("file", "bundled", "synth")
#: a synthetic trace's token count must lie in this range (below: too short to split; above: > 1 GB of ids)
SYNTH_TOKEN_RANGE = (64, 2**22)
#: files whose content defines the synthetic generator (package-relative); their bytes enter every cache key
GENERATOR_FILES = ("synth.py", "format.py", "data/routing_popularity.json")

_FORMS = (
    "a .npz path, file://PATH, a bundled name (NAME or bundled://NAME), "
    "synth://PRESET?tokens=N&seed=S or synth:PRESET:TOKENS:SEED"
)


# ------------------------------------------------------------------------------------------- bundled names


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
            files = (p for p in root.rglob("*.npz") if p.is_file())
            found.update({p.relative_to(root).with_suffix("").as_posix(): p for p in files})
    return dict(sorted(found.items()))


#: short names of bundled traces that the docs and the issues use; a full or file name works as well
ALIASES = {
    "learned-decode": "learned/tiny-olmoe-12L-64E-decode",
    "learned-prefill": "learned/tiny-olmoe-12L-64E-prefill",
}


def _bundled_file(text: str, bundled: dict[str, Path]) -> Path | None:
    """The file of a bundled name (full, file name only, or an alias), None when there is none; ambiguity is an
    error."""
    key = text[:-4] if text.endswith(".npz") else text
    if key not in bundled and key in ALIASES:
        key = ALIASES[key]
    if key in bundled:
        return bundled[key]
    matches = [name for name in bundled if name.rsplit("/", 1)[-1] == key]
    if len(matches) > 1:
        raise ValueError(f"trace name {text!r} is ambiguous: it matches {matches}; give the full name")
    return bundled[matches[0]] if matches else None


def _not_found(text: str, bundled: dict[str, Path]) -> FileNotFoundError:
    from moe_cache_env.traces.synth import PRESETS

    available = ", ".join(bundled) if bundled else "none"
    return FileNotFoundError(
        f"no trace file or bundled trace named {text!r}; bundled traces: {available}; synthetic traces: "
        f"synth://PRESET?tokens=N&seed=S with PRESET one of {', '.join(sorted(PRESETS))} "
        f"(set ${TRACES_ENV} to add a folder of your own)"
    )


# ------------------------------------------------------------------------------------------ synthetic specs


@dataclass(frozen=True)
class SynthSpec:
    """A synthetic trace: ``synth.generate(preset, num_tokens, numpy.random.default_rng(seed), seed=seed)``."""

    preset: str
    num_tokens: int
    seed: int

    @property
    def uri(self) -> str:
        """The canonical name, ``synth://PRESET?tokens=N&seed=S``."""
        return f"synth://{self.preset}?tokens={self.num_tokens}&seed={self.seed}"


def is_synth(name: str) -> bool:
    """Whether ``name`` is written as a synthetic trace (``synth:...`` or ``synth://...``)."""
    return name.startswith("synth:")


def parse_synth(name: str) -> SynthSpec:
    """Parse ``synth://PRESET?tokens=N&seed=S`` or ``synth:PRESET:TOKENS:SEED``; a ValueError names the problem."""
    if name.startswith("synth://"):
        parts = urlsplit(name)
        preset = parts.netloc
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise ValueError(f"synthetic trace {name!r}: the query must be tokens=N&seed=S") from None
        keys = [key for key, _ in query]
        unknown = sorted(set(keys) - {"tokens", "seed"})
        if unknown or len(keys) != len(set(keys)) or parts.path or parts.fragment:
            raise ValueError(
                f"synthetic trace {name!r} must look like synth://PRESET?tokens=N&seed=S"
                + (f" (unknown key(s) {unknown})" if unknown else "")
            )
        values = dict(query)
        missing = [key for key in ("tokens", "seed") if key not in values]
        if missing:
            raise ValueError(
                f"synthetic trace {name!r} lacks {' and '.join(missing)}; write synth://PRESET?tokens=N&seed=S"
            )
        tokens, seed = values["tokens"], values["seed"]
    else:
        fields = name.split(":")
        if len(fields) != 4 or fields[0] != "synth":
            raise ValueError(
                f"synthetic trace name {name!r} must look like synth:PRESET:TOKENS:SEED "
                "or synth://PRESET?tokens=N&seed=S"
            )
        _, preset, tokens, seed = fields
    try:
        num_tokens, seed_value = int(tokens), int(seed)
    except ValueError:
        raise ValueError(f"synthetic trace name {name!r}: TOKENS and SEED must be integers") from None
    low, high = SYNTH_TOKEN_RANGE
    if not low <= num_tokens <= high:
        raise ValueError(f"synthetic trace name {name!r}: TOKENS must be in [{low}, {high}], got {num_tokens}")
    if seed_value < 0:
        raise ValueError(f"synthetic trace name {name!r}: SEED must be a non-negative integer, got {seed_value}")
    from moe_cache_env.traces.synth import PRESETS

    if preset not in PRESETS:
        raise ValueError(
            f"synthetic trace name {name!r}: unknown preset {preset!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    return SynthSpec(preset, num_tokens, seed_value)


# ------------------------------------------------------------------------------------------ the synth cache


def cache_dir() -> Path:
    """The cache folder: ``$MOE_CACHE_ENV_CACHE``, else ``$XDG_CACHE_HOME/moe-cache-env``, else ``~/.cache``'s."""
    own = os.environ.get(CACHE_ENV)
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # the XDG base-directory rules say a relative value is to be ignored
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "moe-cache-env"
    return Path.home() / ".cache" / "moe-cache-env"


def fingerprint(files: Iterable[Path], versions: Iterable[str]) -> str:
    """A hex sha256 over the bytes of ``files`` (name and content, in order) and the ``versions`` strings."""
    digest = hashlib.sha256()
    for path in files:
        data = Path(path).read_bytes()
        digest.update(f"{Path(path).name}:{len(data)}\n".encode())
        digest.update(data)
    for version in versions:
        digest.update(f"{version}\n".encode())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """The fingerprint of the synthetic generator as installed: its source, data, format id and numpy version.

    numpy only promises a ``Generator``'s stream within a version, so its version is part of the key too.
    """
    from moe_cache_env.traces.synth import GENERATOR_ID

    package = resources.files("moe_cache_env.traces")
    files = [Path(str(package.joinpath(name))) for name in GENERATOR_FILES]
    return fingerprint(files, [GENERATOR_ID, FORMAT_ID, f"numpy {np.__version__}"])


def cache_key(spec: SynthSpec) -> str:
    """The content address of a synthetic trace: a hex sha256 of the spec and the generator's fingerprint."""
    payload = {
        "preset": spec.preset,
        "tokens": spec.num_tokens,
        "seed": spec.seed,
        "generator": generator_fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def synth_cache_path(spec: SynthSpec) -> Path:
    """Where the cache keeps the trace of ``spec`` (whether or not it is there yet)."""
    # the key names the folder, so the file's stem (a loaded trace's default name) stays readable
    return cache_dir() / "synth" / cache_key(spec)[:32] / f"{spec.preset}-t{spec.num_tokens}-s{spec.seed}.npz"


def _generate(spec: SynthSpec) -> Trace:
    # looked up on the module at call time, so that a test can count the calls
    from moe_cache_env.traces import synth

    return synth.generate(spec.preset, spec.num_tokens, np.random.default_rng(spec.seed), seed=spec.seed)


def _read_cached(path: Path, spec: SynthSpec) -> Trace | None:
    """The cached trace of ``spec`` at ``path``, or None when it is absent or fails any check."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"][()]))
            # reading a whole member checks its zip CRC-32: a flipped bit fails here
            experts, sequence = archive["experts"], archive["sequence"]
            weights = archive["weights"] if "weights" in archive.files else None
        # built without a path, as generate() returns it, so the trace's name is the same either way
        trace = Trace(experts=experts, sequence=sequence, meta=meta, weights=weights)
    except Exception:  # noqa: BLE001 - whatever went wrong (missing, truncated, garbled), the file is not used
        return None
    generator = meta.get("generator") if isinstance(meta, dict) else None
    if (
        trace.num_tokens != spec.num_tokens
        or not isinstance(generator, dict)
        or generator.get("preset") != spec.preset
        or generator.get("seed") != spec.seed
    ):
        return None
    return trace


def load_synthetic(spec: SynthSpec) -> Trace:
    """The trace of ``spec``: read from the cache when a valid copy is there, else generated and cached."""
    return _cached_synthetic(spec)[0]


def _cached_synthetic(spec: SynthSpec) -> tuple[Trace, bool]:
    """The trace of ``spec`` and whether the cache now holds a valid copy of it."""
    path = synth_cache_path(spec)
    trace = _read_cached(path, spec)
    if trace is not None:
        return trace, True
    trace = _generate(spec)
    try:
        save_trace(trace, path, compress=False)  # uncompressed: reading it back is ~6x faster than inflating
    except OSError as exc:
        warnings.warn(
            f"could not cache synthetic trace {spec.uri} in {path.parent} ({exc.strerror or exc}); "
            f"it will be generated again next time (set ${CACHE_ENV} to a writable folder)",
            RuntimeWarning,
            stacklevel=3,
        )
        return trace, False
    return trace, True


# ------------------------------------------------------------------------------------------------- resolve


def _file_uri_path(name: str) -> Path:
    parts = urlsplit(name)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValueError(f"trace {name!r}: a file URI must look like file:///absolute/path.npz")
    return Path(unquote(parts.path)).expanduser()


def _bundled_key(name: str) -> str:
    """The name after ``bundled://``; a ``..`` part would leave the traces folders, so it is refused."""
    key = name[len("bundled://"):].strip("/")
    if ".." in key.split("/"):
        raise ValueError(f"trace {name!r}: a bundled name may not contain '..'")
    return key


def _scheme(name: str) -> str | None:
    head, sep, _ = name.partition("://")
    if not sep:
        return None
    if head not in SCHEMES:
        raise ValueError(f"trace {name!r}: unknown scheme {head + '://'!r}; a trace is named as {_FORMS}")
    return head


def _locate(name: str) -> Path | SynthSpec:
    """A file or folder path for a file or bundled name, or the spec of a synthetic name."""
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"a trace name must be a string or path, got {type(name).__name__}: {name!r}")
    text = os.fspath(name)
    if not text:
        raise ValueError(f"a trace name must not be empty; a trace is named as {_FORMS}")
    if is_synth(text):
        return parse_synth(text)
    scheme = _scheme(text)
    if scheme == "file":
        path = _file_uri_path(text)
        if not path.exists():
            raise FileNotFoundError(f"trace file {path} (from {text!r}) does not exist")
        return path
    if scheme == "bundled":
        key = _bundled_key(text)
        bundled = list_bundled_traces()
        found = _bundled_file(key, bundled) if key else None
        if found is not None:
            return found
        folders = [root / key for root in trace_roots() if key and (root / key).is_dir()]
        if folders:
            return folders[0]
        raise _not_found(text, bundled)
    path = Path(text).expanduser()
    if path.exists():
        return path
    bundled = list_bundled_traces()
    found = _bundled_file(text, bundled)
    if found is None:
        raise _not_found(text, bundled)
    return found


def _folder_error(name: str, folder: Path) -> ValueError:
    count = len(list(folder.rglob("*.npz")))
    return ValueError(
        f"trace {name!r} is a folder of {count} trace file(s), not one trace; name one of its files, "
        "or give the folder as an environment's suite (traces=[...]), which replays every .npz in it"
    )


def resolve_path(name: str | os.PathLike) -> Path:
    """The file of a named trace; for a synthetic name, its cache file (generated and cached first if needed).

    Raises:
        FileNotFoundError: no such file or bundled trace (the message lists the bundled names and presets).
        ValueError: a malformed or ambiguous name, or a folder.
    """
    where = _locate(name)
    if isinstance(where, SynthSpec):
        path = synth_cache_path(where)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the error below says it, in one line
            _, cached = _cached_synthetic(where)
        if not cached:
            raise ValueError(
                f"synthetic trace {where.uri} has no file: the cache folder {path.parent} is not writable "
                f"(set ${CACHE_ENV} to a writable folder, or write one with `moe-cache-env synth`)"
            )
        return path
    if where.is_dir():
        raise _folder_error(os.fspath(name), where)
    return where


def resolve(name: str | os.PathLike) -> Trace:
    """The trace of any name the catalog understands (see the module docstring).

    A synthetic trace comes from the on-disk cache when it holds a valid copy; it equals the generator's output
    (same arrays and meta, no path). A file or bundled trace is read and validated with ``load_trace``.

    Raises:
        FileNotFoundError: no such file or bundled trace (the message lists the bundled names and presets).
        ValueError: a malformed or ambiguous name, a folder, or a file that is not a valid v1 trace.
    """
    where = _locate(name)
    if isinstance(where, SynthSpec):
        return load_synthetic(where)
    if where.is_dir():
        raise _folder_error(os.fspath(name), where)
    return load_trace(where)


def _suite_folder(text: str) -> Path | None:
    """The folder a suite entry names (a directory path or ``bundled://FOLDER``), or None; opens no file."""
    if is_synth(text):
        return None
    _scheme(text)  # an unknown scheme fails now, not at the first episode
    if text.startswith("bundled://"):
        key = _bundled_key(text)
        folders = [root / key for root in trace_roots() if key and (root / key).is_dir()]
        return folders[0] if folders else None
    path = _file_uri_path(text) if text.startswith("file://") else Path(text).expanduser()
    return path if path.is_dir() else None


def expand_suite(names: Sequence[str]) -> list[str]:
    """A suite's trace names with every folder replaced by the ``.npz`` files under it (sorted by path).

    Synthetic names are checked here (so a typo fails before any episode); files are opened only when used.
    A folder of ``bundled://`` expands to ``bundled://`` names, any other folder to file paths.

    Raises:
        ValueError: an empty suite, a non-string entry, a malformed synthetic name, or a folder with no trace.
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) == 0:
        raise ValueError(f"traces must be a non-empty list of trace names, got {names!r}")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"traces: every entry must be a non-empty string, got {name!r}")
        if is_synth(name):
            parse_synth(name)
            out.append(name)
            continue
        folder = _suite_folder(name)
        if folder is None:
            out.append(name)
            continue
        files = sorted(
            (p for p in folder.rglob("*.npz") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()
        )
        if not files:
            raise ValueError(f"traces: folder {name!r} holds no .npz trace file")
        if name.startswith("bundled://"):
            prefix = name.rstrip("/")
            out.extend(f"{prefix}/{p.relative_to(folder).with_suffix('').as_posix()}" for p in files)
        else:
            out.extend(str(p) for p in files)
    return out
