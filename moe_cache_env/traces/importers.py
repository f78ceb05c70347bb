"""Import the routing that engines and libraries emit as v1 traces.

Formats (``import_trace(..., fmt=...)``, ``moe-cache-env import --format ...``; docs/importers.md has the
exact layouts and an example file of each):

* ``csv`` / ``jsonl``: per-token routing dumps, one row per (sequence, token, MoE layer), below;
* ``route-trace``: the ``# route_trace v1`` CSV of llama.cpp-based engines
  (``turn,phase,step,layer,slot,expert,weight,residency,expert_bytes[,dropped]``), :func:`read_route_trace`;
* ``vllm``: vLLM's routed-experts capture, an integer array ``[tokens, MoE layers, top_k]`` as ``.npy`` or
  ``.npz`` (one array per request, or one array with a sequence side array), :func:`read_vllm`;
* ``hf``: a Hugging Face transformers routing dump, the per-layer routing outputs stacked layer-first in a
  ``.npz`` (``selected_experts`` or ``router_logits``), :func:`read_hf`.

Every error names the file and the line (for arrays: the array and the index); limits are checked before
anything large is allocated: a text line (and so a field) of at most :data:`MAX_LINE_CHARS` characters, JSON
nested at most :data:`MAX_JSON_DEPTH` deep, every id and position within int32, and a trace of at most
``format.max_trace_cells()`` cells.

The per-token dumps:

Each row names a sequence, a token (its position in the sequence), a MoE layer and the experts that token was
routed to at that layer, optionally with their gate weights and the sequence's domain:

* CSV, a header row then one row per (sequence, token, layer). Experts go in one column as a list separated by
  spaces, ``|``, ``;`` or (inside a quoted field) commas, optionally in brackets: ``3 17`` or ``"[3, 17]"``;
  or one column per rank, ``expert_0 .. expert_{k-1}``. Weights likewise (``weights`` or ``weight_0 ..``).
* JSONL, one object per row with the same keys; lists may be JSON arrays.

Accepted column names (the first of each group is canonical; the others are used by public dumps):

==========  ===============================================================
sequence    sequence, seq, seq_id, sequence_id, request, request_id, doc_id
token       token, position, pos, token_idx, token_index, token_position
layer       layer, layer_id, layer_idx, moe_layer
experts     experts, expert_ids, topk_ids, topk_experts, selected_experts
weights     weights, expert_weights, topk_weights, gate_weights, routing_weights
domain      domain, dataset, source_domain
==========  ===============================================================

The trace keeps sequences in order of first appearance, tokens in increasing position and layers in increasing
index (their original indices go to the meta's ``moe_layer_indices``). Every sequence must hold consecutive
token positions, every token every layer, every row the same number of experts; the first violation is reported
with its line number.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np

from moe_cache_env.traces.format import (
    MAX_CELLS_ENV,
    TraceFormatError,
    npz_members,
    open_npz,
    read_npy,
    read_npz_member,
    PHASES,
    Trace,
    check_regular_file,
    check_trace_size,
    make_meta,
    max_trace_cells,
)

IMPORT_FORMATS = ("csv", "jsonl", "route-trace", "vllm", "hf")
#: Longest text line (and so field) an importer reads: 128 KiB. A row of routing is a few dozen characters.
MAX_LINE_CHARS = 128 * 1024
#: Deepest JSON nesting accepted in a JSONL row (a row holds lists of numbers: depth 2).
MAX_JSON_DEPTH = 16
#: Largest id, position or layer index accepted (int32).
MAX_ID = 2**31 - 1

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "sequence": ("sequence", "seq", "seq_id", "sequence_id", "request", "request_id", "doc_id"),
    "token": ("token", "position", "pos", "token_idx", "token_index", "token_position"),
    "layer": ("layer", "layer_id", "layer_idx", "moe_layer"),
    "experts": ("experts", "expert_ids", "topk_ids", "topk_experts", "selected_experts"),
    "weights": ("weights", "expert_weights", "topk_weights", "gate_weights", "routing_weights"),
    "domain": ("domain", "dataset", "source_domain"),
}
_RANK_COLUMN = {"experts": re.compile(r"^expert_(\d+)$"), "weights": re.compile(r"^weight_(\d+)$")}
_LIST_SPLIT = re.compile(r"[\s|;,]+")


class TraceImportError(ValueError):
    """A routing dump that cannot become a trace; the message names the file, the line and the problem."""


@dataclass
class _Row:
    line: int
    sequence: str
    token: int
    layer: int
    experts: list[int]
    weights: list[float] | None
    domain: str | None


class _Columns:
    """Which keys of a row hold each field (resolved once from the CSV header or each JSON object's keys)."""

    def __init__(self, keys: list[str], where: str) -> None:
        self.names: dict[str, str | None] = {}
        lowered = {k.strip().lower(): k for k in keys if k is not None}
        for field, aliases in FIELD_ALIASES.items():
            present = [lowered[a] for a in aliases if a in lowered]
            if len(present) > 1:
                raise TraceImportError(f"{where}: columns {present} all name the {field!r} field; keep one")
            self.names[field] = present[0] if present else None
        self.ranks: dict[str, list[str]] = {}
        for field, pattern in _RANK_COLUMN.items():
            numbered = sorted(
                ((int(m.group(1)), original) for key, original in lowered.items() if (m := pattern.match(key))),
            )
            if numbered:
                if [i for i, _ in numbered] != list(range(len(numbered))):
                    raise TraceImportError(
                        f"{where}: per-rank columns {[o for _, o in numbered]} must be numbered 0..k-1 without gaps"
                    )
                if self.names[field] is not None:
                    raise TraceImportError(
                        f"{where}: both a {self.names[field]!r} list and per-rank columns give the {field}; keep one"
                    )
                self.ranks[field] = [original for _, original in numbered]
        missing = [f for f in ("token", "layer") if self.names[f] is None]
        if self.names["experts"] is None and "experts" not in self.ranks:
            missing.append("experts")
        if missing:
            raise TraceImportError(
                f"{where}: missing column(s) {missing}; found {sorted(k for k in keys if k)}. Needed: token, "
                "layer and experts (a list column, or expert_0..expert_{k-1}), optionally sequence (without it, "
                "one sequence); aliases are listed in docs/importers.md"
            )


_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def _past_int32(value: int, what: str, where: str) -> TraceImportError:
    return TraceImportError(f"{where}: {what} {value} is past the int32 range (at most {MAX_ID}); ids, positions and "
                            "layer indices must fit in 32 bits")


def _parse_int(value: Any, what: str, where: str) -> int:
    if type(value) is str and value.isascii() and value.isdigit() and len(value) < 10:  # common and fast
        return int(value)
    if type(value) is int:
        if value < 0:
            raise TraceImportError(f"{where}: {what} must be non-negative, got {value}")
        if value > MAX_ID:
            raise _past_int32(value, what, where)
        return value
    if isinstance(value, bool):
        raise TraceImportError(f"{where}: {what} must be an integer, got {_short(value)}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
        result = int(value)
    else:
        raise TraceImportError(f"{where}: {what} must be an integer, got {_short(value)}")
    if result < 0:
        raise TraceImportError(f"{where}: {what} must be non-negative, got {result}")
    if result > MAX_ID:
        raise _past_int32(result, what, where)
    return result


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _plain_ints(values: list[Any]) -> list[int] | None:
    """The values as ints when all are non-negative ints or ASCII digit strings (the fast, common case)."""
    out = []
    for v in values:
        kind = type(v)
        if kind is int and 0 <= v <= MAX_ID:
            out.append(v)
        elif kind is str and v.isascii() and v.isdigit() and len(v) < 10:
            out.append(int(v))
        else:
            return None
    return out


def _parse_float(value: Any, what: str, where: str) -> float:
    if type(value) is float and math.isfinite(value) and value >= 0:
        return value
    try:
        result = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise TraceImportError(f"{where}: {what} must be a number, got {_short(value)}") from None
    if not math.isfinite(result) or result < 0:
        raise TraceImportError(f"{where}: {what} must be a finite, non-negative number, got {_short(value)}")
    return result


def _split_list(value: Any, what: str, where: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, str):
        raise TraceImportError(f"{where}: {what} must be a list, got {_short(value)}")
    text = value.strip().strip("[]()").strip()
    if not text:
        return []
    return [part for part in _LIST_SPLIT.split(text) if part]


def _field(record: dict[str, Any], columns: _Columns, field: str) -> Any:
    name = columns.names[field]
    return None if name is None else record.get(name)


def _parse_row(record: dict[str, Any], columns: _Columns, path: Path, line: int) -> _Row:
    where = f"{path}:{line}"
    if columns.names["sequence"] is None:
        sequence: Any = "0"  # no sequence column: the whole dump is one sequence
    else:
        sequence = _field(record, columns, "sequence")
    if sequence is None or (isinstance(sequence, str) and not sequence.strip()):
        raise TraceImportError(f"{where}: the sequence is empty")
    if isinstance(sequence, (list, dict)):
        raise TraceImportError(f"{where}: the sequence must be a name or a number, got {_short(sequence)}")
    token = _parse_int(_field(record, columns, "token"), "token", where)
    layer = _parse_int(_field(record, columns, "layer"), "layer", where)
    if "experts" in columns.ranks:
        raw_experts = [record.get(c) for c in columns.ranks["experts"]]
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in raw_experts):
            raise TraceImportError(f"{where}: an expert_i column is empty; every rank column needs an id")
    else:
        raw_experts = _split_list(_field(record, columns, "experts"), "experts", where)
    experts = _plain_ints(raw_experts)
    if experts is None:  # something unusual: check item by item for a precise message
        experts = [_parse_int(v, "expert id", where) for v in raw_experts]
    if not experts:
        raise TraceImportError(f"{where}: the row lists no expert")
    if len(set(experts)) != len(experts):
        raise TraceImportError(f"{where}: expert ids repeat within the row: {experts}")
    weights = None
    if "weights" in columns.ranks:
        raw_weights = [record.get(c) for c in columns.ranks["weights"]]
    else:
        raw = _field(record, columns, "weights")
        raw_weights = None if raw is None or (isinstance(raw, str) and not raw.strip()) else _split_list(
            raw, "weights", where
        )
    if raw_weights is not None:
        try:
            weights = [float(v) for v in raw_weights if type(v) is not bool]
        except (TypeError, ValueError):
            weights = []
        if len(weights) != len(raw_weights) or not all(math.isfinite(w) and w >= 0 for w in weights):
            weights = [_parse_float(v, "weight", where) for v in raw_weights]
        if len(weights) != len(experts):
            raise TraceImportError(f"{where}: {len(weights)} weights for {len(experts)} experts; give one per expert")
    domain = _field(record, columns, "domain")
    if domain is not None:
        domain = str(domain).strip() or None
    return _Row(line, str(sequence).strip(), token, layer, experts, weights, domain)


def _lines(handle: Any, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a file opened in binary mode, refusing a line over MAX_LINE_CHARS bytes before
    reading past it and bytes that are not UTF-8, each with the file and line."""
    line_no = 0
    while True:
        line_no += 1
        raw = handle.readline(MAX_LINE_CHARS + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_CHARS:
            raise TraceImportError(
                f"{path}:{line_no}: line longer than {MAX_LINE_CHARS:,} characters (a field over 128 KiB); a row of "
                "routing is short: is this the right file?"
            )
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TraceImportError(
                f"{path}:{line_no}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at column {exc.start + 1}); "
                "save the dump as UTF-8"
            ) from None
        if line_no == 1 and line.startswith("\ufeff"):
            line = line[1:]  # a byte-order mark
        yield line_no, line


def _json_depth(text: str) -> int:
    """Deepest nesting of brackets outside strings (only called on lines with many brackets)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _json_record(line: str, where: str) -> dict[str, Any]:
    if line.count("[") + line.count("{") > MAX_JSON_DEPTH and _json_depth(line) > MAX_JSON_DEPTH:
        raise TraceImportError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; a row is one flat object")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceImportError(f"{where}: not a JSON object ({exc.msg})") from None
    except RecursionError:
        raise TraceImportError(f"{where}: JSON nested too deeply; a row is one flat object") from None
    if not isinstance(record, dict):
        raise TraceImportError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _open_text(path: Path, what: str = "routing dump") -> Any:
    check_regular_file(path, what)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise TraceImportError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _csv_records(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV record; csv errors (unbalanced quotes) name the line."""
    numbers: list[int] = []

    def feed() -> Iterator[str]:
        for line_no, line in lines:
            numbers.append(line_no)
            yield line

    reader = csv.reader(feed())
    try:
        for fields in reader:
            yield (numbers[-1] if numbers else 1), fields  # a record's last line, as csv's line_num
    except csv.Error as exc:
        raise TraceImportError(f"{path}:{numbers[-1] if numbers else 1}: not valid CSV ({exc})") from None


def read_rows(path: str | os.PathLike, fmt: str) -> Iterator[_Row]:
    """Parse the rows of a CSV or JSONL dump (each a :class:`_Row` with its line number)."""
    path = Path(path)
    if fmt not in ("csv", "jsonl"):
        raise TraceImportError(f"unknown format {fmt!r}; choose one of {IMPORT_FORMATS}")
    with _open_text(path) as handle:
        lines = _lines(handle, path)
        if fmt == "csv":
            header: list[str] | None = None
            columns: _Columns | None = None
            for line_no, fields in _csv_records(path, lines):
                if header is None:
                    header = fields
                    columns = _Columns(list(header), f"{path}:{line_no}")
                    continue
                where = f"{path}:{line_no}"
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) > len(header):
                    raise TraceImportError(f"{where}: more fields than the header has; quote lists holding commas")
                record = dict(zip(header, fields))
                yield _parse_row(record, columns, path, line_no)  # type: ignore[arg-type]
            if header is None:
                raise TraceImportError(f"{path}: empty file; a CSV dump starts with a header row")
        else:
            columns_for: dict[tuple[str, ...], _Columns] = {}
            for line_no, line in lines:
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                record = _json_record(line, where)
                keys = tuple(sorted(record))
                if keys not in columns_for:
                    columns_for[keys] = _Columns(list(keys), where)
                yield _parse_row(record, columns_for[keys], path, line_no)


def rows_to_arrays(
    rows: Iterator[_Row], *, num_experts: int, source_name: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[int], list[str], list[str] | None]:
    """Validate rows and lay them out: (experts (T, L, K), weights or None, sequence (T,), layer indices,
    sequence labels, domains per sequence or None)."""
    seq_index: dict[str, int] = {}
    seq_domain: dict[int, tuple[str | None, int]] = {}
    cells: dict[tuple[int, int, int], tuple[int, list[int], list[float] | None]] = {}
    first_row: _Row | None = None
    cell_limit = max_trace_cells()
    for row in rows:
        where = f"{source_name}:{row.line}"
        if first_row is None:
            first_row = row
        if len(row.experts) != len(first_row.experts):
            raise TraceImportError(
                f"{where}: {len(row.experts)} experts, but line {first_row.line} has {len(first_row.experts)}; "
                "every row needs the same top-k (ragged rows)"
            )
        if (row.weights is None) != (first_row.weights is None):
            has, lacks = (row, first_row) if row.weights is not None else (first_row, row)
            raise TraceImportError(
                f"{source_name}:{lacks.line}: no weights, but line {has.line} has some; "
                "give weights on every row or none"
            )
        bad = [e for e in row.experts if e >= num_experts]
        if bad:
            raise TraceImportError(
                f"{where}: expert id {bad[0]} is outside [0, {num_experts}); ids are 0-based and below the model's "
                "number of experts (--num-experts)"
            )
        s = seq_index.setdefault(row.sequence, len(seq_index))
        if s in seq_domain:
            domain, line = seq_domain[s]
            if domain != row.domain:
                raise TraceImportError(
                    f"{where}: sequence {row.sequence!r} has domain {row.domain!r} here but {domain!r} on line {line}; "
                    "a sequence has one domain"
                )
        else:
            seq_domain[s] = (row.domain, row.line)
        key = (s, row.token, row.layer)
        if key in cells:
            raise TraceImportError(
                f"{where}: duplicate row for sequence {row.sequence!r}, token {row.token}, layer {row.layer} "
                f"(first on line {cells[key][0]})"
            )
        cells[key] = (row.line, row.experts, row.weights)
        if len(cells) * len(row.experts) > cell_limit:
            raise TraceImportError(
                f"{where}: the dump holds more than {cell_limit:,} cells (rows x top-k), past the trace size limit; "
                f"split it into smaller dumps (or raise ${MAX_CELLS_ENV})"
            )
    if first_row is None:
        raise TraceImportError(f"{source_name}: no data rows")

    labelled = [d for d, _ in seq_domain.values() if d is not None]
    if labelled and len(labelled) != len(seq_domain):
        unlabelled = next(line for d, line in seq_domain.values() if d is None)
        raise TraceImportError(
            f"{source_name}:{unlabelled}: this sequence has no domain but others do; label all or none"
        )

    layers = sorted({layer for _, _, layer in cells})
    layer_pos = {layer: i for i, layer in enumerate(layers)}
    tokens_of: dict[int, dict[int, set[int]]] = {}
    for s, token, layer in cells:
        tokens_of.setdefault(s, {}).setdefault(token, set()).add(layer)
    labels = list(seq_index)
    all_layers = set(layers)
    num_tokens = 0
    for s in range(len(labels)):
        tokens = sorted(tokens_of[s])
        for token in tokens:
            lacking = sorted(all_layers - tokens_of[s][token])
            if lacking:
                line = min(cells[(s, token, layer)][0] for layer in tokens_of[s][token])
                raise TraceImportError(
                    f"{source_name}:{line}: misaligned layers: sequence {labels[s]!r}, token {token} has no row for "
                    f"layer(s) {lacking} (other tokens have layers {layers})"
                )
        if tokens[-1] - tokens[0] + 1 != len(tokens):
            # positions are sorted and unique: the gaps lie between neighbours (never build the whole range)
            gaps: list[int] = []
            for before, after in zip(tokens, tokens[1:]):
                gaps.extend(range(before + 1, min(after, before + 1 + 11 - len(gaps))))
                if len(gaps) > 10:
                    break
            raise TraceImportError(
                f"{source_name}: missing rows: sequence {labels[s]!r} has tokens {tokens[0]}..{tokens[-1]} but none "
                f"for token(s) {gaps[:10]}{' ...' if len(gaps) > 10 else ''}"
            )
        num_tokens += len(tokens)

    top_k = len(first_row.experts)
    check_trace_size(num_tokens, len(layers), top_k, source_name)
    experts = np.empty((num_tokens, len(layers), top_k), dtype=np.int32)
    weights = None if first_row.weights is None else np.empty((num_tokens, len(layers), top_k), dtype=np.float32)
    sequence = np.empty(num_tokens, dtype=np.int32)
    offset = 0
    start_of: dict[int, int] = {}
    for s in range(len(labels)):
        tokens = sorted(tokens_of[s])
        start_of[s] = offset - tokens[0]
        sequence[offset : offset + len(tokens)] = s
        offset += len(tokens)
    for (s, token, layer), (_, ids, ws) in cells.items():
        t = start_of[s] + token
        experts[t, layer_pos[layer]] = ids
        if weights is not None:
            weights[t, layer_pos[layer]] = ws  # type: ignore[assignment]
    domains = [seq_domain[s][0] for s in range(len(labels))] if labelled else None
    return experts, weights, sequence, layers, labels, domains  # type: ignore[return-value]


# --- route_trace v1 (llama.cpp-based engines) ----------------------------------------------------------------

ROUTE_TRACE_MAGIC = "# route_trace v1"
ROUTE_TRACE_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert")
_KEY_VALUE = re.compile(r"(\w+)=(\S*)")
_PHASE_CODES = {"0": "prefill", "1": "decode"}


@dataclass
class RouteTrace:
    """What a ``route_trace v1`` file says besides its rows: the preamble, and counts for the provenance."""

    static: dict[str, str]
    expert_bytes_per_layer: dict[int, int]
    phases_present: list[str]
    residency_counts: dict[str, int]
    dropped_rows: int
    weights_missing: bool


def read_route_trace(
    path: str | os.PathLike, phase: str | None = None
) -> tuple[list[_Row], RouteTrace, str]:
    """Read a ``# route_trace v1`` CSV: the rows of one phase, regrouped one :class:`_Row` per (turn, step, layer).

    The file starts with ``# route_trace v1``, then ``# model=... arch=... n_layer=N n_expert=E
    n_expert_used=K`` and one ``# layer=i expert_bytes=B dense_bytes=D`` line per layer, then the header
    ``turn,phase,step,layer,slot,expert,weight,residency,expert_bytes[,dropped]`` and one row per routed expert.
    ``phase`` is 0 (prefill) or 1 (decode); ``step`` the token's absolute position in its context; ``slot`` the
    router rank; ``turn`` the turn of a session, which becomes the sequence. ``weight`` may be ``nan`` (the
    engine did not expose it): the trace then has no weights. ``residency``, the row's ``expert_bytes`` (bytes
    read for a miss) and ``dropped`` describe the engine's cache, not the routing; they are counted into the
    provenance only.

    ``phase`` picks the rows to keep (``"prefill"`` or ``"decode"``); by default the file's only phase, and an
    error when it holds both. Returns the rows, the file's facts and the phase kept.
    """
    path = Path(path)
    with _open_text(path, "route trace") as handle:
        lines = _lines(handle, path)
        first = next(lines, None)
        if first is None or first[1].strip() != ROUTE_TRACE_MAGIC:
            raise TraceImportError(
                f"{path}:1: not a route_trace v1 file (its first line must be {ROUTE_TRACE_MAGIC!r})"
            )
        static: dict[str, str] = {}
        layer_bytes: dict[int, int] = {}
        header: list[str] | None = None
        header_line = 0
        for line_no, line in lines:
            if not line.startswith("#"):
                header = next(csv.reader([line]))
                header_line = line_no
                break
            pairs = dict(_KEY_VALUE.findall(line))
            if "layer" in pairs:
                where = f"{path}:{line_no}"
                layer = _parse_int(pairs["layer"], "layer", where)
                layer_bytes[layer] = _parse_int(pairs.get("expert_bytes", ""), "expert_bytes", where)
            else:
                static.update(pairs)
        if header is None:
            raise TraceImportError(f"{path}: no header row after the preamble; the file holds no routing")
        names = [h.strip() for h in header]
        missing = [c for c in ROUTE_TRACE_COLUMNS if c not in names]
        if missing:
            raise TraceImportError(
                f"{path}:{header_line}: missing column(s) {missing}; route_trace v1 has "
                "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes[,dropped]"
            )
        index = {name: i for i, name in enumerate(names)}
        col = [index[c] for c in ROUTE_TRACE_COLUMNS]
        weight_col = index.get("weight")
        residency_col = index.get("residency")
        dropped_col = index.get("dropped")
        where_static = f"{path}:2"
        num_experts = _parse_int(static["n_expert"], "n_expert", where_static) if "n_expert" in static else None
        top_k = _parse_int(static["n_expert_used"], "n_expert_used", where_static) if "n_expert_used" in static else None
        wanted = None if phase is None else {"prefill": "0", "decode": "1"}.get(phase)
        if phase is not None and wanted is None:
            raise TraceImportError(f"phase must be one of {PHASES}, got {phase!r}")

        cells: dict[tuple[str, int, int], dict[int, tuple[int, float, int]]] = {}
        phases_seen: dict[str, int] = {}
        residency: dict[str, int] = {}
        dropped = 0
        weights_missing = False
        cell_limit = max_trace_cells()
        rows_kept = 0
        for line_no, fields in _csv_records(path, lines):
            where = f"{path}:{line_no}"
            if not any(f.strip() for f in fields):
                continue
            if fields[0].startswith("#"):
                continue  # a trailer such as '# summary'
            if len(fields) != len(names):
                raise TraceImportError(f"{where}: {len(fields)} fields, but the header has {len(names)}")
            turn, phase_code, step, layer, slot, expert = (fields[i].strip() for i in col)
            if phase_code not in _PHASE_CODES:
                raise TraceImportError(f"{where}: phase must be 0 (prefill) or 1 (decode), got {_short(phase_code)}")
            phases_seen.setdefault(phase_code, line_no)
            if wanted is not None and phase_code != wanted:
                continue
            if wanted is None and len(phases_seen) > 1:
                raise TraceImportError(
                    f"{where}: the file holds prefill and decode rows; import one phase (--phase prefill or decode)"
                )
            step_i = _parse_int(step, "step", where)
            layer_i = _parse_int(layer, "layer", where)
            slot_i = _parse_int(slot, "slot", where)
            expert_i = _parse_int(expert, "expert id", where)
            if top_k is not None and slot_i >= top_k:
                raise TraceImportError(f"{where}: slot {slot_i} is outside [0, {top_k}) (n_expert_used={top_k})")
            if num_experts is not None and expert_i >= num_experts:
                raise TraceImportError(f"{where}: expert id {expert_i} is outside [0, {num_experts}) (n_expert)")
            weight = math.nan
            if weight_col is not None:
                text = fields[weight_col].strip()
                if text.lower() in ("nan", "-nan", ""):
                    weights_missing = True
                else:
                    weight = _parse_float(text, "weight", where)
            else:
                weights_missing = True
            if residency_col is not None:
                code = fields[residency_col].strip()
                residency[code] = residency.get(code, 0) + 1
            if dropped_col is not None and fields[dropped_col].strip() not in ("", "0"):
                dropped += 1
            key = (turn, step_i, layer_i)
            cell = cells.setdefault(key, {})
            if slot_i in cell:
                raise TraceImportError(
                    f"{where}: slot {slot_i} of turn {turn}, step {step_i}, layer {layer_i} appears twice "
                    f"(first on line {cell[slot_i][2]})"
                )
            cell[slot_i] = (expert_i, weight, line_no)
            rows_kept += 1
            if rows_kept > cell_limit:
                raise TraceImportError(
                    f"{where}: more than {cell_limit:,} rows, past the trace size limit; split the file "
                    f"(or raise ${MAX_CELLS_ENV})"
                )
    if not cells:
        if phases_seen and wanted is not None:
            raise TraceImportError(f"{path}: no {phase} rows (the file holds "
                                   f"{', '.join(_PHASE_CODES[p] for p in phases_seen)})")
        raise TraceImportError(f"{path}: no data rows")
    kept_phase = phase if phase is not None else _PHASE_CODES[next(iter(phases_seen))]
    rows: list[_Row] = []
    for (turn, step_i, layer_i), cell in cells.items():
        line = min(entry[2] for entry in cell.values())
        slots = sorted(cell)
        if slots != list(range(len(slots))) or (top_k is not None and len(slots) != top_k):
            expected = top_k if top_k is not None else len(slots)
            raise TraceImportError(
                f"{path}:{line}: turn {turn}, step {step_i}, layer {layer_i} has slots {slots}; expected 0..{expected - 1}"
            )
        experts = [cell[k][0] for k in slots]
        if len(set(experts)) != len(experts):
            raise TraceImportError(f"{path}:{line}: expert ids repeat within turn {turn}, step {step_i}, "
                                   f"layer {layer_i}: {experts}")
        weights = None if weights_missing else [cell[k][1] for k in slots]
        rows.append(_Row(line, turn, step_i, layer_i, experts, weights, None))
    rows.sort(key=lambda r: r.line)
    facts = RouteTrace(
        static=static,
        expert_bytes_per_layer=layer_bytes,
        phases_present=[_PHASE_CODES[p] for p in sorted(phases_seen)],
        residency_counts=dict(sorted(residency.items())),
        dropped_rows=dropped,
        weights_missing=weights_missing,
    )
    return rows, facts, kept_phase


# --- arrays: vLLM routed experts and Hugging Face routing dumps --------------------------------------------------


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_arrays(path: Path, wanted: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (under the name ``""``) or ``.npz`` file, each size-checked before allocation."""

    def limit(shape: tuple[int, ...], dtype: np.dtype) -> None:
        cells = math.prod(shape)
        if cells > max_trace_cells() * 8:  # logits hold E values per cell: allow them some room
            raise TraceFormatError(
                f"{path}: an array of shape {shape} ({cells:,} values) is past the import size limit; split the "
                f"capture (or raise ${MAX_CELLS_ENV})"
            )

    check_regular_file(path, "routing capture")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise TraceImportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if magic == b"\x93NUMPY":
            with open(path, "rb") as handle:
                return {"": read_npy(handle, f"{path}", stored_bytes=os.fstat(handle.fileno()).st_size, check=limit)}
        if magic[:2] != b"PK":
            raise TraceImportError(f"{path}: neither a .npy array nor a .npz archive")
        with open_npz(path) as archive:
            members = npz_members(archive)
            return {
                name: read_npz_member(archive, info, f"{path}: array {name!r}", limit)
                for name, info in sorted(members.items(), key=lambda item: _natural_key(item[0]))
                if wanted is None or wanted(name)
            }
    except TraceFormatError as exc:
        raise TraceImportError(str(exc)) from None


def _check_ids(array: np.ndarray, num_experts: int, where: str, axes: tuple[str, ...]) -> None:
    """Integer dtype, ids in [0, num_experts), no id twice in a row (last axis); the first problem located."""
    if not np.issubdtype(array.dtype, np.integer):
        raise TraceImportError(f"{where}: expert ids must have an integer dtype, got {array.dtype}")
    bad = (array < 0) | (array >= num_experts)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        at = ", ".join(f"{a} {i}" for a, i in zip(axes, index))
        raise TraceImportError(
            f"{where}[{at}]: expert id {int(array[index])} is outside [0, {num_experts}); ids are 0-based and "
            "below the model's number of experts (--num-experts)"
        )
    if array.shape[-1] > 1:
        srt = np.sort(array, axis=-1)
        dup = (srt[..., 1:] == srt[..., :-1]).any(axis=-1)
        if dup.any():
            index = tuple(int(i) for i in np.argwhere(dup)[0])
            at = ", ".join(f"{a} {i}" for a, i in zip(axes, index))
            raise TraceImportError(f"{where}[{at}]: expert ids repeat within the row: {array[index].tolist()}")


def read_vllm(
    path: str | os.PathLike, *, num_experts: int, sequence_lengths: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a vLLM routed-experts capture: (experts (T, L, K), sequence (T,), sequence labels).

    vLLM (``--enable-return-routed-experts``) returns, per request, an integer array ``[tokens, MoE layers,
    top_k]`` (int16). Accepted files:

    * ``.npy``: one such array; one sequence, or several given by ``sequence_lengths`` (token counts in order);
    * ``.npz`` with one array ``routed_experts`` (or any single 3-D array) and optionally a side array
      ``sequence`` (T,) of sequence ids (contiguous), or ``sequence_lengths`` (S,) of token counts;
    * ``.npz`` with several 3-D arrays, one per request (``np.savez(f, req0=a, req1=b)``): each is a sequence,
      in natural order of the names (``req2`` before ``req10``).
    """
    path = Path(path)
    arrays = _read_arrays(path)
    side_names = ("sequence", "sequence_lengths", "seq_lens")
    blocks = {name: a for name, a in arrays.items() if name not in side_names}
    where = f"{path}"
    for name, a in blocks.items():
        if a.ndim != 3:
            label = f"array {name!r}" if name else "the array"
            raise TraceImportError(
                f"{where}: {label} has shape {a.shape}; a vLLM capture is [tokens, MoE layers, top_k]"
            )
    if not blocks:
        raise TraceImportError(f"{where}: no [tokens, MoE layers, top_k] array in the file")
    shapes = {a.shape[1:] for a in blocks.values()}
    if len(shapes) > 1:
        raise TraceImportError(f"{where}: the requests' arrays disagree on [layers, top_k]: {sorted(shapes)}")
    for name, a in blocks.items():
        if a.shape[0] == 0:
            raise TraceImportError(f"{where}: array {name!r} holds no token")
        _check_ids(a, num_experts, f"{where}: array {name!r}" if name else where, ("token", "layer", "rank"))
    side = {name: arrays[name] for name in side_names if name in arrays}
    if len(blocks) > 1:
        if side or sequence_lengths:
            raise TraceImportError(f"{where}: one array per request already gives the sequences; drop the side array")
        labels = list(blocks)
        experts = np.concatenate(list(blocks.values()), axis=0)
        sequence = np.repeat(np.arange(len(labels), dtype=np.int32), [a.shape[0] for a in blocks.values()])
        return experts, sequence, labels
    (name, experts), = blocks.items()
    tokens = experts.shape[0]
    if len(side) > 1 or (side and sequence_lengths):
        raise TraceImportError(f"{where}: give the sequences once (one of {side_names} or the option)")
    if "sequence" in side:
        sequence = side["sequence"]
        if sequence.shape != (tokens,) or not np.issubdtype(sequence.dtype, np.integer):
            raise TraceImportError(f"{where}: array 'sequence' must be ({tokens},) integers, got {sequence.shape} "
                                   f"{sequence.dtype}")
        if tokens and (sequence.min() < 0 or sequence.max() > MAX_ID):
            raise TraceImportError(f"{where}: array 'sequence' holds ids outside [0, {MAX_ID}]")
        sequence = sequence.astype(np.int32)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(sequence)) + 1))
        labels = [str(int(v)) for v in sequence[starts]]
        return experts, sequence, labels
    lengths: Any = sequence_lengths
    if side:
        lengths = next(iter(side.values()))
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
            raise TraceImportError(f"{where}: the sequence lengths must be a 1-D integer array, got {lengths.shape}")
        lengths = [int(v) for v in lengths]
    if lengths:
        if any(n < 1 for n in lengths):
            raise TraceImportError(f"{where}: sequence lengths must be positive, got {lengths[:10]}")
        if sum(lengths) != tokens:
            raise TraceImportError(f"{where}: sequence lengths sum to {sum(lengths)} but the capture holds {tokens} tokens")
        sequence = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        return experts, sequence, [str(i) for i in range(len(lengths))]
    return experts, np.zeros(tokens, dtype=np.int32), ["0"]


def read_hf(
    path: str | os.PathLike, *, num_experts: int | None = None, top_k: int | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str], int]:
    """Read a Hugging Face transformers routing dump: (experts (T, L, K), weights or None, sequence, labels, E).

    transformers returns MoE routing per layer (a tuple with one tensor per MoE layer); the dump is those
    tensors stacked layer-first (``np.stack([t.cpu().numpy() for t in out.router_logits])``) in a ``.npz``:

    * ``selected_experts``: integer ``(L, S, N, K)`` (layer, sequence = batch row, position, rank) or
      ``(L, N, K)`` for one sequence; optional ``routing_weights`` of the same shape;
    * or ``router_logits``: float ``(L, S, N, E)``, ``(L, N, E)`` or, as models return them flattened,
      ``(L, S * N, E)`` with an ``attention_mask``; the experts are the ``top_k`` largest logits (ties: the
      lower id), their weights the softmax over all ``E`` logits;
    * optional ``attention_mask`` ``(S, N)`` of 0 / 1: positions with 0 (padding) are left out.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    where = str(path)
    mask = arrays.get("attention_mask")
    if "selected_experts" in arrays:
        ids = arrays["selected_experts"]
        weights = arrays.get("routing_weights")
        if num_experts is None:
            raise TraceImportError(f"{where}: selected_experts does not say how many experts the model has; give "
                                   "--num-experts")
        if ids.ndim == 3:
            ids = ids[:, None]
            weights = None if weights is None else weights[:, None] if weights.ndim == 3 else weights
        if ids.ndim != 4:
            raise TraceImportError(f"{where}: array 'selected_experts' has shape {arrays['selected_experts'].shape}; "
                                   "expected (layers, sequences, positions, top_k) or (layers, positions, top_k)")
        _check_ids(ids, num_experts, f"{where}: array 'selected_experts'", ("layer", "sequence", "position", "rank"))
        if weights is not None:
            if weights.shape != ids.shape or not np.issubdtype(weights.dtype, np.floating):
                raise TraceImportError(f"{where}: array 'routing_weights' must be floats of the shape of "
                                       f"selected_experts {ids.shape}, got {weights.shape} {weights.dtype}")
            bad = ~np.isfinite(weights) | (weights < 0)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise TraceImportError(f"{where}: array 'routing_weights'{list(index)} is {weights[index]}; weights "
                                       "must be finite and non-negative")
        experts_e = num_experts
    elif "router_logits" in arrays:
        logits = arrays["router_logits"]
        if not np.issubdtype(logits.dtype, np.floating):
            raise TraceImportError(f"{where}: array 'router_logits' must be floats, got {logits.dtype}")
        if top_k is None:
            raise TraceImportError(f"{where}: router logits need the model's top-k to pick experts; give --top-k")
        if logits.ndim == 3 and mask is not None and mask.ndim == 2 and logits.shape[1] == mask.size:
            logits = logits.reshape(logits.shape[0], mask.shape[0], mask.shape[1], logits.shape[2])
        elif logits.ndim == 3:
            logits = logits[:, None]
        if logits.ndim != 4:
            raise TraceImportError(f"{where}: array 'router_logits' has shape {arrays['router_logits'].shape}; "
                                   "expected (layers, sequences, positions, experts) or (layers, tokens, experts)")
        experts_e = int(logits.shape[3])
        if num_experts is not None and num_experts != experts_e:
            raise TraceImportError(f"{where}: router_logits has {experts_e} experts but --num-experts is {num_experts}")
        if not 1 <= top_k <= experts_e:
            raise TraceImportError(f"{where}: --top-k {top_k} is outside [1, {experts_e}]")
        if not np.isfinite(logits).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(logits))[0])
            raise TraceImportError(f"{where}: array 'router_logits'{list(index)} is not finite")
        logits = logits.astype(np.float64)
        # Stable sort of the negated logits: equal logits keep id order, so ties go to the lower id.
        ids = np.argsort(-logits, axis=-1, kind="stable")[..., :top_k]
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        weights = np.take_along_axis(probs, ids, axis=-1)
    else:
        raise TraceImportError(f"{where}: neither 'selected_experts' nor 'router_logits' is in the archive "
                               f"(found {sorted(arrays)}); see docs/importers.md")
    layers, seqs, positions, k = ids.shape
    if mask is None:
        keep = np.ones((seqs, positions), dtype=bool)
    else:
        if mask.shape != (seqs, positions):
            raise TraceImportError(f"{where}: attention_mask has shape {mask.shape}, expected ({seqs}, {positions})")
        if not np.isin(mask, (0, 1)).all():
            raise TraceImportError(f"{where}: attention_mask must hold only 0 and 1")
        keep = mask.astype(bool)
    counts = keep.sum(axis=1)
    if (counts == 0).any():
        raise TraceImportError(f"{where}: sequence {int(np.flatnonzero(counts == 0)[0])} is all padding")
    # (L, S, N, K) -> tokens in sequence order, each (L, K)
    experts = ids.transpose(1, 2, 0, 3)[keep]
    out_weights = None if weights is None else weights.transpose(1, 2, 0, 3)[keep].astype(np.float32)
    sequence = np.repeat(np.arange(seqs, dtype=np.int32), counts)
    return experts, out_weights, sequence, [str(i) for i in range(seqs)], experts_e


def sniff_format(path: Path) -> str:
    """The import format of a file from its suffix and first bytes (``route-trace`` by its first line)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        try:
            check_regular_file(path, "routing dump")
            with open(path, "rb") as handle:
                first = handle.read(len(ROUTE_TRACE_MAGIC))
        except (OSError, TraceFormatError):
            return "csv"  # the reader reports the problem
        return "route-trace" if first == ROUTE_TRACE_MAGIC.encode() else "csv"
    if suffix == ".npy":
        return "vllm"
    if suffix == ".npz":
        try:
            check_regular_file(path, "routing capture")
            with open_npz(path) as archive:
                names = set(npz_members(archive))
        except (OSError, TraceFormatError):
            return "vllm"
        return "hf" if names & {"selected_experts", "router_logits"} else "vllm"
    raise TraceImportError(f"{path}: cannot tell the format from suffix {suffix!r}; give one of {IMPORT_FORMATS}")


def import_trace(
    path: str | os.PathLike,
    *,
    num_experts: int | None = None,
    expert_bytes: int | None = None,
    fmt: str | None = None,
    model: str | None = None,
    phase: str | None = None,
    source: str | None = None,
    name: str | None = None,
    top_k: int | None = None,
    sequence_lengths: list[int] | None = None,
) -> Trace:
    """Read a routing dump or capture and return it as a validated v1 trace.

    Args:
        path: the file.
        num_experts: routed experts per MoE layer (ids must lie in ``[0, num_experts)``); a route trace and
            router logits carry it (if given too, it must agree).
        expert_bytes: bytes of one expert's weights (the simulator's transfer size); a route trace carries it
            per layer (the trace takes the mean over its MoE layers, the meta keeps the per-layer list).
        fmt: one of :data:`IMPORT_FORMATS`; by default from the suffix (``.csv``: ``route-trace`` when the file
            starts with ``# route_trace v1``; ``.jsonl``/``.ndjson``; ``.npy``: vllm; ``.npz``: hf when it holds
            ``selected_experts`` or ``router_logits``, else vllm).
        model: the meta's model name (default: the route trace's model file, else the file's stem).
        phase: ``"prefill"`` or ``"decode"``; for a route trace, the rows to import (default: the file's only
            phase); otherwise the label stored (default prefill).
        source: the meta's source sentence (default: names the imported file).
        name: the trace's name in the meta (optional).
        top_k: experts per token to pick from router logits (``hf`` with ``router_logits`` only).
        sequence_lengths: token counts of the sequences of a single-array vLLM capture.
    """
    path = Path(path)
    if fmt is None:
        fmt = sniff_format(path)
    if fmt not in IMPORT_FORMATS:
        raise TraceImportError(f"unknown format {fmt!r}; choose one of {IMPORT_FORMATS}")
    for label, value in (("num_experts", num_experts), ("expert_bytes", expert_bytes), ("top_k", top_k)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            what = " (bytes of one expert)" if label == "expert_bytes" else ""
            raise TraceImportError(f"{label} must be a positive integer{what}, got {value!r}")
    if phase is not None and phase not in PHASES:
        raise TraceImportError(f"phase must be one of {PHASES}, got {phase!r}")
    extra: dict[str, Any] = {}
    provenance: dict[str, Any] = {"importer": "moe_cache_env.traces.importers", "format": fmt, "file": path.name}
    weights: np.ndarray | None
    if fmt in ("csv", "jsonl", "route-trace"):
        if fmt == "route-trace":
            rows, facts, phase = read_route_trace(path, phase)
            file_experts = int(facts.static["n_expert"]) if "n_expert" in facts.static else None
            if num_experts is None:
                num_experts = file_experts
            elif file_experts is not None and num_experts != file_experts:
                raise TraceImportError(f"{path}:2: n_expert={file_experts} but --num-experts is {num_experts}")
            if num_experts is None:
                raise TraceImportError(f"{path}: the preamble lacks n_expert; give --num-experts")
            row_source: Any = iter(rows)
        else:
            if num_experts is None:
                raise TraceImportError(f"{path}: give the model's number of experts (num_experts / --num-experts)")
            row_source = read_rows(path, fmt)
        try:
            experts, weights, sequence, layers, labels, domains = rows_to_arrays(
                row_source, num_experts=num_experts, source_name=str(path)
            )
        except TraceImportError as exc:
            if fmt == "route-trace" and "misaligned layers" in str(exc):
                raise TraceImportError(
                    f"{exc}. In prefill, llama.cpp computes only the last prompt token at the final layer, so "
                    "its prefill rows are incomplete there: import --phase decode"
                ) from None
            raise
        extra["moe_layer_indices"] = layers
        if fmt == "route-trace":
            per_layer = [facts.expert_bytes_per_layer.get(layer) for layer in layers]
            if expert_bytes is None:
                if any(b is None or b < 1 for b in per_layer):
                    raise TraceImportError(f"{path}: the preamble gives no expert size for every MoE layer; give "
                                           "--expert-bytes")
                expert_bytes = round(sum(per_layer) / len(per_layer))  # type: ignore[arg-type]
            if all(b is not None for b in per_layer):
                extra["expert_bytes_per_layer"] = per_layer
            provenance.update({
                "route_trace": {k: facts.static[k] for k in sorted(facts.static)},
                "phases_in_file": facts.phases_present,
                "engine_residency_counts": facts.residency_counts,
                "engine_dropped_rows": facts.dropped_rows,
                "weights": "absent (nan in the file)" if facts.weights_missing else "router weights as recorded",
            })
            if model is None and "model" in facts.static:
                model = Path(facts.static["model"]).name
    elif fmt == "vllm":
        if num_experts is None:
            raise TraceImportError(f"{path}: a vLLM capture does not say how many experts the model has; give "
                                   "--num-experts")
        experts, sequence, labels = read_vllm(path, num_experts=num_experts, sequence_lengths=sequence_lengths)
        weights, domains = None, None
        extra["moe_layer_indices"] = list(range(experts.shape[1]))
    else:
        experts, weights, sequence, labels, num_experts = read_hf(path, num_experts=num_experts, top_k=top_k)
        domains = None
        extra["moe_layer_indices"] = list(range(experts.shape[1]))
    if sequence_lengths is not None and fmt != "vllm":
        raise TraceImportError("sequence_lengths applies to vLLM captures only")
    if top_k is not None and fmt != "hf":
        raise TraceImportError("top_k applies to router logits (format hf) only; other formats give the experts")
    if expert_bytes is None:
        raise TraceImportError(f"{path}: give the size of one expert in bytes (expert_bytes / --expert-bytes)")
    check_trace_size(*experts.shape, where=str(path))
    extra["sequence_labels"] = labels
    extra["provenance"] = provenance
    if name:
        extra["name"] = name
    meta = make_meta(
        model=model or path.stem,
        num_experts=num_experts,
        top_k=int(experts.shape[2]),
        num_layers=int(experts.shape[1]),
        expert_bytes=expert_bytes,
        phase=phase or "prefill",
        source=source or f"imported from {path.name} ({fmt})",
        domains=domains,
        **extra,
    )
    ids_dtype = np.int16 if num_experts <= np.iinfo(np.int16).max else np.int32
    return Trace(experts=experts.astype(ids_dtype), sequence=sequence, meta=meta, weights=weights)
