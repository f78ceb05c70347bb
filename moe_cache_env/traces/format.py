"""Trace format v1 (``moe-trace/1``): routing decisions of a MoE model, one row per token and layer.

See ``docs/trace-format.md`` for the specification. A trace is a ``.npz`` archive read with
``allow_pickle=False`` holding ``experts`` (T, L, K), optional ``weights`` (T, L, K), ``sequence`` (T,)
and ``meta`` (a JSON string).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from moe_cache_env._io import atomic_write

FORMAT_ID = "moe-trace/1"
PHASES = ("prefill", "decode")
REQUIRED_META = ("format", "model", "num_experts", "top_k", "num_layers", "expert_bytes", "phase", "source")


class TraceFormatError(ValueError):
    """A trace file or array that does not follow format v1; the message names the problem and its location."""


@dataclass(frozen=True)
class Trace:
    """An in-memory, validated v1 trace.

    Attributes:
        experts: int array (T, L, K), routed expert ids of each token at each MoE layer, in router rank order.
        sequence: int32 array (T,), the sequence (request) each token belongs to; contiguous per sequence.
        meta: the trace's metadata (see ``docs/trace-format.md``).
        weights: optional float32 array (T, L, K) of gate weights.
    """

    experts: np.ndarray
    sequence: np.ndarray
    meta: Mapping[str, Any]
    weights: np.ndarray | None = None
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate_arrays(self.experts, self.sequence, self.meta, self.weights)

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def num_experts(self) -> int:
        return int(self.meta["num_experts"])

    @property
    def expert_bytes(self) -> int:
        return int(self.meta["expert_bytes"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or (Path(self.path).stem if self.path else self.meta["model"]))

    def sequence_bounds(self) -> np.ndarray:
        """(S, 2) array of [start, end) token indices, one row per sequence, in file order."""
        change = np.flatnonzero(np.diff(self.sequence)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [self.num_tokens]))
        return np.stack([starts, ends], axis=1).astype(np.int64)

    def domains(self) -> list[str] | None:
        """The domain of each sequence (in sequence-bounds order), when the meta records them."""
        domains = self.meta.get("domains")
        return list(domains) if domains is not None else None

    def select_sequences(self, sequence_ids: np.ndarray | list[int]) -> "Trace":
        """A new trace holding only the given sequences (by value of ``sequence``), in the given order."""
        bounds = self.sequence_bounds()
        seq_values = self.sequence[bounds[:, 0]]
        index_of = {int(v): i for i, v in enumerate(seq_values)}
        rows: list[np.ndarray] = []
        domains = self.domains()
        kept_domains: list[str] = []
        for sid in sequence_ids:
            if int(sid) not in index_of:
                raise KeyError(f"sequence {sid} is not in trace {self.name!r}")
            i = index_of[int(sid)]
            rows.append(np.arange(bounds[i, 0], bounds[i, 1]))
            if domains is not None:
                kept_domains.append(domains[i])
        idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        meta = dict(self.meta)
        if domains is not None:
            meta["domains"] = kept_domains
        return Trace(
            experts=self.experts[idx],
            sequence=self.sequence[idx],
            meta=meta,
            weights=None if self.weights is None else self.weights[idx],
            path=self.path,
        )


def _fail(message: str) -> None:
    raise TraceFormatError(message)


def validate_meta(meta: Mapping[str, Any]) -> None:
    """Check the meta dictionary alone (required keys, types, ranges)."""
    if not isinstance(meta, Mapping):
        _fail(f"meta must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        _fail(f"meta is missing required keys {missing}; format v1 needs {list(REQUIRED_META)}")
    if meta["format"] != FORMAT_ID:
        _fail(f"meta.format is {meta['format']!r}; this reader understands {FORMAT_ID!r}")
    for key in ("num_experts", "top_k", "num_layers", "expert_bytes"):
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(f"meta.{key} must be a positive integer, got {value!r}")
    if meta["top_k"] > meta["num_experts"]:
        _fail(f"meta.top_k={meta['top_k']} exceeds meta.num_experts={meta['num_experts']}")
    if meta["phase"] not in PHASES:
        _fail(f"meta.phase must be one of {PHASES}, got {meta['phase']!r}")
    for key in ("model", "source"):
        if not isinstance(meta[key], str) or not meta[key]:
            _fail(f"meta.{key} must be a non-empty string, got {meta[key]!r}")
    domains = meta.get("domains")
    if domains is not None and (not isinstance(domains, list) or not all(isinstance(d, str) for d in domains)):
        _fail("meta.domains must be a list of strings, one per sequence")


def validate_arrays(
    experts: np.ndarray,
    sequence: np.ndarray,
    meta: Mapping[str, Any],
    weights: np.ndarray | None = None,
) -> None:
    """Validate a trace's arrays against its meta; raise :class:`TraceFormatError` at the first problem."""
    validate_meta(meta)
    if not isinstance(experts, np.ndarray) or experts.ndim != 3:
        _fail(f"experts must be a 3-D array (tokens, layers, top_k), got shape {getattr(experts, 'shape', None)}")
    if not np.issubdtype(experts.dtype, np.integer):
        _fail(f"experts must have an integer dtype, got {experts.dtype}")
    T, L, K = experts.shape
    if T == 0:
        _fail("experts holds no token (shape[0] == 0)")
    if L != meta["num_layers"]:
        _fail(f"experts has {L} layers but meta.num_layers={meta['num_layers']}")
    if K != meta["top_k"]:
        _fail(f"experts has {K} experts per row but meta.top_k={meta['top_k']}")
    E = meta["num_experts"]
    bad = (experts < 0) | (experts >= E)
    if bad.any():
        t, l, k = (int(i) for i in np.argwhere(bad)[0])
        _fail(
            f"expert id {int(experts[t, l, k])} out of range [0, {E}) at token {t}, layer {l}, rank {k}; "
            "ids must be 0-based and below meta.num_experts"
        )
    if K > 1:
        srt = np.sort(experts, axis=2)
        dup = (srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2)
        if dup.any():
            t, l = (int(i) for i in np.argwhere(dup)[0])
            _fail(f"duplicate expert id in row at token {t}, layer {l}: {experts[t, l].tolist()}")
    if not isinstance(sequence, np.ndarray) or sequence.shape != (T,):
        _fail(f"sequence must have shape ({T},), got {getattr(sequence, 'shape', None)}")
    if not np.issubdtype(sequence.dtype, np.integer):
        _fail(f"sequence must have an integer dtype, got {sequence.dtype}")
    change = np.flatnonzero(np.diff(sequence)) + 1
    starts = np.concatenate(([0], change))
    seen = sequence[starts]
    if len(np.unique(seen)) != len(seen):
        values, counts = np.unique(seen, return_counts=True)
        sid = int(values[counts > 1][0])
        where = int(starts[seen == sid][1])
        _fail(f"sequence {sid} is not contiguous: it resumes at token {where}; a sequence's tokens must be adjacent")
    domains = meta.get("domains")
    if domains is not None and len(domains) != len(starts):
        _fail(f"meta.domains has {len(domains)} entries but the trace has {len(starts)} sequences")
    if weights is not None:
        if not isinstance(weights, np.ndarray) or weights.shape != experts.shape:
            _fail(f"weights must have the shape of experts {experts.shape}, got {getattr(weights, 'shape', None)}")
        if weights.dtype != np.float32:
            _fail(f"weights must be float32, got {weights.dtype}")
        bad_w = ~np.isfinite(weights) | (weights < 0)
        if bad_w.any():
            t, l, k = (int(i) for i in np.argwhere(bad_w)[0])
            _fail(f"weight {weights[t, l, k]} at token {t}, layer {l}, rank {k} is NaN, infinite or negative")


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate a v1 trace file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file {path} does not exist")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] != b"PK":
        raise TraceFormatError(f"{path}: not a .npz (zip) archive; write traces with save_trace or numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle: refuse them
        raise TraceFormatError(f"{path}: {exc}; v1 traces hold only numeric arrays and a JSON string") from exc
    except Exception as exc:
        raise TraceFormatError(f"{path}: not a readable .npz archive ({exc})") from exc
    with archive:
        names = set(archive.files)
        for required in ("experts", "sequence", "meta"):
            if required not in names:
                raise TraceFormatError(f"{path}: missing array {required!r}; v1 needs experts, sequence and meta")
        try:
            meta_raw = archive["meta"]
            meta = json.loads(str(meta_raw[()] if meta_raw.shape == () else meta_raw.item()))
        except (ValueError, json.JSONDecodeError) as exc:
            raise TraceFormatError(f"{path}: meta is not a JSON string ({exc})") from exc
        arrays: dict[str, np.ndarray] = {}
        for name in ("experts", "sequence", "weights"):
            if name not in names:
                continue
            try:
                arrays[name] = archive[name]
            except ValueError as exc:  # an object array would need pickle: refuse it
                raise TraceFormatError(
                    f"{path}: array {name!r} is an object array ({exc}); v1 arrays are plain integer or float "
                    "arrays, written without pickle"
                ) from None
        experts = arrays["experts"]
        sequence = arrays["sequence"]
        weights = arrays.get("weights")
    try:
        return Trace(experts=experts, sequence=sequence, meta=meta, weights=weights, path=str(path))
    except TraceFormatError as exc:
        raise TraceFormatError(f"{path}: {exc}") from None


def make_meta(
    *,
    model: str,
    num_experts: int,
    top_k: int,
    num_layers: int,
    expert_bytes: int,
    phase: str,
    source: str,
    domains: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a v1 meta dictionary; extra keys (e.g. ``name``, ``provenance``) are kept as given."""
    meta: dict[str, Any] = {
        "format": FORMAT_ID,
        "model": model,
        "num_experts": int(num_experts),
        "top_k": int(top_k),
        "num_layers": int(num_layers),
        "expert_bytes": int(expert_bytes),
        "phase": phase,
        "source": source,
    }
    if domains is not None:
        meta["domains"] = list(domains)
    meta.update(extra)
    validate_meta(meta)
    return meta


def save_trace(trace: Trace, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``trace`` atomically as a v1 ``.npz`` file (compressed by default)."""
    arrays: dict[str, np.ndarray] = {
        "experts": np.ascontiguousarray(trace.experts),
        "sequence": np.ascontiguousarray(trace.sequence, dtype=np.int32),
        "meta": np.array(json.dumps(dict(trace.meta), sort_keys=True)),
    }
    if trace.weights is not None:
        arrays["weights"] = np.ascontiguousarray(trace.weights, dtype=np.float32)

    def write(handle: Any) -> None:
        buffer = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buffer, **arrays)
        handle.write(buffer.getvalue())

    return atomic_write(path, write)
