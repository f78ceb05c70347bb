"""Trace format v1 (``moe-trace/1``): routing decisions of a MoE model, one row per token and layer.

See ``docs/trace-format.md`` for the specification. A trace is a ``.npz`` archive read with
``allow_pickle=False`` holding ``experts`` (T, L, K), optional ``weights`` (T, L, K), ``sequence`` (T,)
and ``meta`` (a JSON string).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import zipfile
import zlib
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import numpy as np

from moe_cache_env._io import atomic_write

FORMAT_ID = "moe-trace/1"
#: Format 1.1: format 1 plus the optional speculative routing arrays (``speculative_experts`` and
#: ``speculative_weights``). A trace without them is still written as ``moe-trace/1``, so readers of format 1
#: read it; one with them is ``moe-trace/1.1``, which a format-1 reader refuses by name.
FORMAT_ID_SPECULATIVE = "moe-trace/1.1"
READABLE_FORMATS = (FORMAT_ID, FORMAT_ID_SPECULATIVE)
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
        speculative_experts: optional int array (T, L, D, M) (format 1.1): the top-M experts that the router
            of layer ``l + d + 1`` picks from token ``t``'s hidden state at layer ``l``, by descending probability;
            entries with ``l + d + 1 >= L`` hold 0 and mean nothing.
        speculative_weights: optional float16/float32 array (T, L, D, M) of those experts' router probabilities
            (softmax of the router's logits); 0 where there is no prediction. Present with the ids or not at all.
    """

    experts: np.ndarray
    sequence: np.ndarray
    meta: Mapping[str, Any]
    weights: np.ndarray | None = None
    path: str | None = field(default=None, compare=False)
    speculative_experts: np.ndarray | None = field(default=None, compare=False)
    speculative_weights: np.ndarray | None = field(default=None, compare=False)
    #: the rows are a selection of an already validated trace of the same geometry (``take_rows``): only what a
    #: selection can break is checked again (meta, shapes, sequence contiguity, domain count)
    _rows_checked: InitVar[bool] = False

    def __post_init__(self, _rows_checked: bool) -> None:
        validate_arrays(self.experts, self.sequence, self.meta, self.weights, rows_checked=_rows_checked)
        validate_speculative(self.experts, self.meta, self.speculative_experts, self.speculative_weights,
                             rows_checked=_rows_checked)

    @property
    def has_speculation(self) -> bool:
        """Whether the trace holds recorded speculative routing (format 1.1)."""
        return self.speculative_experts is not None

    def take_rows(self, rows: np.ndarray, meta: Mapping[str, Any]) -> "Trace":
        """A new trace of the given token rows (whole sequences) with ``meta``, every optional array kept."""

        def cut(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[rows]

        # rows of this (validated) trace keep their ids in range, distinct and their weights valid as long as the
        # new meta keeps the geometry; re-checking them cost most of an environment's reset
        same_geometry = all(meta.get(key) == self.meta.get(key) for key in ("num_experts", "num_layers", "top_k"))
        return Trace(
            experts=self.experts[rows],
            sequence=self.sequence[rows],
            meta=meta,
            weights=cut(self.weights),
            path=self.path,
            speculative_experts=cut(self.speculative_experts),
            speculative_weights=cut(self.speculative_weights),
            _rows_checked=same_geometry,
        )

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

    def head(self, tokens: int) -> "Trace":
        """The first ``tokens`` tokens (the sequence they end in is cut short); named ``NAME[:tokens]``."""
        tokens = max(1, min(int(tokens), self.num_tokens))
        rows = np.arange(tokens)
        meta = dict(self.meta)
        domains = self.domains()
        if domains is not None:
            meta["domains"] = domains[: len(self.sequence_bounds()[self.sequence_bounds()[:, 0] < tokens])]
        meta["name"] = f"{self.name}[:{tokens}]"
        return self.take_rows(rows, meta)

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
        return self.take_rows(idx, meta)


def _fail(message: str) -> None:
    raise TraceFormatError(message)


def validate_meta(meta: Mapping[str, Any]) -> None:
    """Check the meta dictionary alone (required keys, types, ranges)."""
    if not isinstance(meta, Mapping):
        _fail(f"meta must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        _fail(f"meta is missing required keys {missing}; format v1 needs {list(REQUIRED_META)}")
    if meta["format"] not in READABLE_FORMATS:
        _fail(f"meta.format is {meta['format']!r}; this reader understands {' and '.join(map(repr, READABLE_FORMATS))}")
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
    *,
    rows_checked: bool = False,
) -> None:
    """Validate a trace's arrays against its meta; raise :class:`TraceFormatError` at the first problem.

    ``rows_checked``: the rows come from a validated trace of this geometry, so the per-row checks (ids in range
    and distinct, weights finite and non-negative) are skipped; shapes, dtypes, the meta and the sequences are
    still checked."""
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
    if not rows_checked:
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
        if not rows_checked:
            bad_w = ~np.isfinite(weights) | (weights < 0)
            if bad_w.any():
                t, l, k = (int(i) for i in np.argwhere(bad_w)[0])
                _fail(f"weight {weights[t, l, k]} at token {t}, layer {l}, rank {k} is NaN, infinite or negative")


def validate_speculative(
    experts: np.ndarray,
    meta: Mapping[str, Any],
    spec_experts: np.ndarray | None,
    spec_weights: np.ndarray | None,
    *,
    rows_checked: bool = False,
) -> None:
    """Validate the optional speculative routing arrays (format 1.1) against the trace they belong to
    (``rows_checked``: as :func:`validate_arrays`, the per-row value checks are skipped)."""
    fmt = meta["format"]
    if spec_experts is None:
        if spec_weights is not None:
            _fail("speculative_weights without speculative_experts; store both or neither")
        if fmt != FORMAT_ID:
            _fail(f"meta.format is {fmt!r} but the trace holds no speculative routing; write {FORMAT_ID!r}")
        return
    if fmt != FORMAT_ID_SPECULATIVE:
        _fail(f"the trace holds speculative routing, so meta.format must be {FORMAT_ID_SPECULATIVE!r}, not {fmt!r}")
    if spec_weights is None:
        _fail("speculative_experts without speculative_weights; store both or neither")
    T, L, _ = experts.shape
    if not isinstance(spec_experts, np.ndarray) or spec_experts.ndim != 4 or spec_experts.shape[:2] != (T, L):
        _fail(f"speculative_experts must have shape ({T}, {L}, depth, top_m), got {getattr(spec_experts, 'shape', None)}")
    if not np.issubdtype(spec_experts.dtype, np.integer):
        _fail(f"speculative_experts must have an integer dtype, got {spec_experts.dtype}")
    D, M = spec_experts.shape[2:]
    E = meta["num_experts"]
    if D < 1 or M < 1 or M > E:
        _fail(f"speculative_experts has depth {D} and top_m {M}; both must be >= 1 and top_m <= {E}")
    if not rows_checked:
        bad = (spec_experts < 0) | (spec_experts >= E)
        if bad.any():
            t, l, d, m = (int(i) for i in np.argwhere(bad)[0])
            _fail(f"speculative expert id {int(spec_experts[t, l, d, m])} out of range [0, {E}) at token {t}, "
                  f"layer {l}, distance {d + 1}, rank {m}")
    if not isinstance(spec_weights, np.ndarray) or spec_weights.shape != spec_experts.shape:
        _fail(f"speculative_weights must have the shape of speculative_experts {spec_experts.shape}, got "
              f"{getattr(spec_weights, 'shape', None)}")
    if spec_weights.dtype not in (np.float16, np.float32):
        _fail(f"speculative_weights must be float16 or float32, got {spec_weights.dtype}")
    if not rows_checked:
        bad_w = ~np.isfinite(spec_weights) | (spec_weights < 0) | (spec_weights > 1)
        if bad_w.any():
            t, l, d, m = (int(i) for i in np.argwhere(bad_w)[0])
            _fail(f"speculative weight {spec_weights[t, l, d, m]} at token {t}, layer {l}, distance {d + 1}, "
                  f"rank {m} is not a probability in [0, 1]")


#: Most cells (tokens x layers x top_k) a trace may hold: 2**30, 2 GiB of int16 expert ids. Readers, importers
#: and the generator refuse larger traces before allocating anything; ``$MOE_CACHE_ENV_MAX_TRACE_CELLS`` raises it.
MAX_TRACE_CELLS = 2**30
MAX_CELLS_ENV = "MOE_CACHE_ENV_MAX_TRACE_CELLS"
#: Most bytes of the meta JSON string (64 MiB: per-sequence labels of millions of sequences fit).
MAX_META_BYTES = 64 * 2**20
#: Most experts per layer that the statistics and predictors build (E x E) tables for: 4,096 (a 128 MiB table).
MAX_TABLE_EXPERTS = 4096


def max_trace_cells() -> int:
    """The cell limit in force: :data:`MAX_TRACE_CELLS`, or ``$MOE_CACHE_ENV_MAX_TRACE_CELLS`` when set."""
    text = os.environ.get(MAX_CELLS_ENV, "").strip()
    if not text:
        return MAX_TRACE_CELLS
    try:
        value = int(text)
    except ValueError:
        raise TraceFormatError(f"${MAX_CELLS_ENV}={text!r} is not an integer number of cells") from None
    if value < 1:
        raise TraceFormatError(f"${MAX_CELLS_ENV}={value} must be positive")
    return value


def check_trace_size(tokens: int, layers: int, top_k: int, where: str) -> None:
    """Refuse a trace of more than :func:`max_trace_cells` cells, before anything of that size is allocated."""
    cells = int(tokens) * int(layers) * int(top_k)
    limit = max_trace_cells()
    if cells > limit:
        raise TraceFormatError(
            f"{where}: {tokens:,} tokens x {layers} layers x top-{top_k} = {cells:,} cells, past the limit of "
            f"{limit:,} cells; split the trace into smaller files (or raise ${MAX_CELLS_ENV})"
        )


def check_table_experts(num_experts: int, where: str) -> None:
    """Refuse a trace whose (E x E) co-occurrence tables would be too large, before allocating them."""
    if num_experts > MAX_TABLE_EXPERTS:
        table_gib = num_experts * num_experts * 8 / 2**30
        raise TraceFormatError(
            f"{where}: {num_experts:,} experts per layer would need {num_experts:,} x {num_experts:,} tables "
            f"({table_gib:,.0f} GiB); statistics and predictors support at most {MAX_TABLE_EXPERTS:,} experts"
        )


def check_regular_file(path: Path, what: str = "file") -> None:
    """Refuse, without opening it, a path that is missing, a directory or not a regular file (a FIFO would
    block the reader forever); raise FileNotFoundError or TraceFormatError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise TraceFormatError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket or device"
        raise TraceFormatError(f"{path}: is {kind}, not a regular {what}; save the data to a file first")


def _read_npy_header(handle: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` stream at ``handle`` (its header only)."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise TraceFormatError(f"{where}: damaged data ({exc})") from None
    except (ValueError, SyntaxError, EOFError, OSError) as exc:
        raise TraceFormatError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise TraceFormatError(
            f"{where}: an object array, which reading would need pickle for (readers use allow_pickle=False); "
            "v1 arrays are plain integer or float arrays and a JSON string"
        )
    if any(n < 0 for n in shape):
        raise TraceFormatError(f"{where}: negative dimension in shape {shape}")
    return tuple(int(n) for n in shape), bool(fortran), dtype


def read_npy(
    handle: IO[bytes],
    where: str,
    *,
    stored_bytes: int | None,
    check: Callable[[tuple[int, ...], np.dtype], None] | None = None,
) -> np.ndarray:
    """Read one ``.npy`` array, checking its declared size before allocating it.

    ``stored_bytes`` is the size of the whole ``.npy`` stream when known (a zip member's or a file's size):
    the header's shape must account for exactly the bytes after the header, so a header that declares 10**12
    tokens in a small file is refused at once. ``check(shape, dtype)`` may refuse the shape (size limits) before
    the array is allocated. A truncated stream or a zip member with a bad CRC raises TraceFormatError.
    """
    shape, fortran, dtype = _read_npy_header(handle, where)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if stored_bytes is not None:
        header_bytes = handle.tell()
        if header_bytes + nbytes != stored_bytes:
            raise TraceFormatError(
                f"{where}: the header declares shape {shape} of {dtype} ({nbytes:,} bytes) but the stored array "
                f"holds {max(stored_bytes - header_bytes, 0):,} bytes; the file is damaged or was not written by numpy"
            )
    if check is not None:
        check(shape, dtype)
    array = np.empty(count, dtype=dtype)
    view = memoryview(array).cast("B") if nbytes else memoryview(b"")
    done = 0
    chunk = 1 << 24
    try:
        while done < nbytes:
            got = handle.readinto(view[done : done + chunk])  # type: ignore[attr-defined]
            if not got:
                raise TraceFormatError(f"{where}: truncated: {done:,} of {nbytes:,} bytes of data")
            done += got
        if handle.read(1):  # also reaches the end of a zip member, where its CRC is checked
            raise TraceFormatError(f"{where}: data past the end of the array")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise TraceFormatError(f"{where}: damaged data ({exc})") from None
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def open_npz(path: Path) -> zipfile.ZipFile:
    """Open a ``.npz`` archive for :func:`read_npz_member`, after checking that it is a regular, readable zip."""
    check_regular_file(path, "trace file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if magic[:2] != b"PK":
        raise TraceFormatError(f"{path}: not a .npz (zip) archive; write traces with save_trace or numpy.savez")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise TraceFormatError(f"{path}: not a readable .npz archive ({exc})") from None


def npz_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Array name -> zip member of an ``.npz`` archive (``name.npy`` members)."""
    return {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}


def read_npz_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    where: str,
    check: Callable[[tuple[int, ...], np.dtype], None] | None = None,
) -> np.ndarray:
    """Read one array of an ``.npz`` archive through :func:`read_npy` (sizes checked before allocating)."""
    try:
        handle = archive.open(info)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, ValueError) as exc:
        raise TraceFormatError(f"{where}: cannot open the archive member ({exc})") from None
    with handle:
        return read_npy(handle, where, stored_bytes=info.file_size, check=check)


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate a v1 trace file.

    Everything is checked before it is allocated: the path is a regular file (a directory or a FIFO is
    refused without opening it), each array's header matches its stored size, the trace holds at most
    :func:`max_trace_cells` cells, and a damaged member (bad CRC, truncated) is reported. Errors are
    :class:`TraceFormatError` (or FileNotFoundError) naming the file.
    """
    path = Path(path)
    archive = open_npz(path)
    with archive:
        members = npz_members(archive)
        for required in ("experts", "sequence", "meta"):
            if required not in members:
                raise TraceFormatError(f"{path}: missing array {required!r}; v1 needs experts, sequence and meta")

        def meta_size(shape: tuple[int, ...], dtype: np.dtype) -> None:
            if dtype.kind not in "US" or shape != ():
                raise TraceFormatError(f"{path}: meta is not a JSON string (a {dtype} array of shape {shape})")
            if dtype.itemsize > MAX_META_BYTES * 4:
                raise TraceFormatError(f"{path}: meta is larger than {MAX_META_BYTES // 2**20} MiB")

        meta_raw = read_npz_member(archive, members["meta"], f"{path}: meta", meta_size)
        try:
            meta = json.loads(str(meta_raw[()]))
        except (ValueError, RecursionError) as exc:
            raise TraceFormatError(f"{path}: meta is not a JSON string ({str(exc)[:200]})") from None

        def experts_size(shape: tuple[int, ...], dtype: np.dtype) -> None:
            if len(shape) == 3:
                check_trace_size(*shape, where=str(path))

        experts = read_npz_member(archive, members["experts"], f"{path}: array 'experts'", experts_size)
        tokens = int(experts.shape[0]) if experts.ndim else 0

        def same_tokens(shape: tuple[int, ...], dtype: np.dtype) -> None:
            # validate_arrays names a wrong shape; here only refuse what would be large to allocate
            if math.prod(shape) > max(experts.size, tokens, 1):
                raise TraceFormatError(f"{path}: array of shape {shape} does not fit experts {experts.shape}")

        sequence = read_npz_member(archive, members["sequence"], f"{path}: array 'sequence'", same_tokens)
        weights = None
        if "weights" in members:
            weights = read_npz_member(archive, members["weights"], f"{path}: array 'weights'", same_tokens)
        spec: dict[str, np.ndarray] = {}

        def spec_size(shape: tuple[int, ...], dtype: np.dtype) -> None:
            # (T, L, D, M) with M <= E and D at most L: never more than T * L * L * E cells
            limit = max(experts.size, 1) * max(experts.shape[1] if experts.ndim == 3 else 1, 1) * int(
                meta.get("num_experts", 1) if isinstance(meta.get("num_experts"), int) else 1)
            if math.prod(shape) > limit:
                raise TraceFormatError(f"{path}: speculative array of shape {shape} does not fit experts {experts.shape}")

        for name in ("speculative_experts", "speculative_weights"):
            if name in members:
                spec[name] = read_npz_member(archive, members[name], f"{path}: array {name!r}", spec_size)
    try:
        return Trace(experts=experts, sequence=sequence, meta=meta, weights=weights, path=str(path), **spec)
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
    if trace.speculative_experts is not None:
        arrays["speculative_experts"] = np.ascontiguousarray(trace.speculative_experts)
        arrays["speculative_weights"] = np.ascontiguousarray(trace.speculative_weights)

    def write(handle: Any) -> None:
        buffer = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buffer, **arrays)
        handle.write(buffer.getvalue())

    return atomic_write(path, write)
