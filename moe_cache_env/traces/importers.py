"""Import per-token routing dumps (CSV or JSONL, one row per sequence, token and MoE layer) as v1 traces.

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
from collections.abc import Iterator

import numpy as np

from moe_cache_env.traces.format import PHASES, Trace, make_meta

IMPORT_FORMATS = ("csv", "jsonl")

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
        missing = [f for f in ("sequence", "token", "layer") if self.names[f] is None]
        if self.names["experts"] is None and "experts" not in self.ranks:
            missing.append("experts")
        if missing:
            raise TraceImportError(
                f"{where}: missing column(s) {missing}; found {sorted(k for k in keys if k)}. Needed: sequence, "
                "token, layer and experts (a list column, or expert_0..expert_{k-1}); aliases are listed in "
                "docs/recording.md"
            )


_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def _parse_int(value: Any, what: str, where: str) -> int:
    if type(value) is str and value.isascii() and value.isdigit():  # the common case, fast: dumps are long
        return int(value)
    if type(value) is int:
        if value < 0:
            raise TraceImportError(f"{where}: {what} must be non-negative, got {value}")
        return value
    if isinstance(value, bool):
        raise TraceImportError(f"{where}: {what} must be an integer, got {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
        result = int(value)
    else:
        raise TraceImportError(f"{where}: {what} must be an integer, got {value!r}")
    if result < 0:
        raise TraceImportError(f"{where}: {what} must be non-negative, got {result}")
    return result


def _plain_ints(values: list[Any]) -> list[int] | None:
    """The values as ints when all are non-negative ints or ASCII digit strings (the fast, common case)."""
    out = []
    for v in values:
        kind = type(v)
        if kind is int and v >= 0:
            out.append(v)
        elif kind is str and v.isascii() and v.isdigit():
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
        raise TraceImportError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(result) or result < 0:
        raise TraceImportError(f"{where}: {what} must be a finite, non-negative number, got {value!r}")
    return result


def _split_list(value: Any, what: str, where: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, str):
        raise TraceImportError(f"{where}: {what} must be a list, got {value!r}")
    text = value.strip().strip("[]()").strip()
    if not text:
        return []
    return [part for part in _LIST_SPLIT.split(text) if part]


def _field(record: dict[str, Any], columns: _Columns, field: str) -> Any:
    name = columns.names[field]
    return None if name is None else record.get(name)


def _parse_row(record: dict[str, Any], columns: _Columns, path: Path, line: int) -> _Row:
    where = f"{path}:{line}"
    sequence = _field(record, columns, "sequence")
    if sequence is None or (isinstance(sequence, str) and not sequence.strip()):
        raise TraceImportError(f"{where}: the sequence is empty")
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


def read_rows(path: str | os.PathLike, fmt: str) -> Iterator[_Row]:
    """Parse the rows of a CSV or JSONL dump (each a :class:`_Row` with its line number)."""
    path = Path(path)
    if fmt not in IMPORT_FORMATS:
        raise TraceImportError(f"unknown format {fmt!r}; choose one of {IMPORT_FORMATS}")
    if not path.is_file():
        raise FileNotFoundError(f"routing dump {path} does not exist")
    with open(path, newline="" if fmt == "csv" else None, encoding="utf-8") as handle:
        if fmt == "csv":
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise TraceImportError(f"{path}: empty file; a CSV dump starts with a header row")
            columns = _Columns(list(reader.fieldnames), f"{path}:1")
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record:
                    raise TraceImportError(f"{where}: more fields than the header has; quote lists holding commas")
                if all(v is None or not str(v).strip() for v in record.values()):
                    continue
                yield _parse_row(record, columns, path, reader.line_num)
        else:
            columns_for: dict[tuple[str, ...], _Columns] = {}
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceImportError(f"{where}: not a JSON object ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise TraceImportError(f"{where}: expected a JSON object, got {type(record).__name__}")
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
        gaps = sorted(set(range(tokens[0], tokens[-1] + 1)) - set(tokens))
        if gaps:
            raise TraceImportError(
                f"{source_name}: missing rows: sequence {labels[s]!r} has tokens {tokens[0]}..{tokens[-1]} but none "
                f"for token(s) {gaps[:10]}{' ...' if len(gaps) > 10 else ''}"
            )
        num_tokens += len(tokens)

    top_k = len(first_row.experts)
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


def import_trace(
    path: str | os.PathLike,
    *,
    num_experts: int,
    expert_bytes: int,
    fmt: str | None = None,
    model: str | None = None,
    phase: str = "prefill",
    source: str | None = None,
    name: str | None = None,
) -> Trace:
    """Read a CSV or JSONL routing dump and return it as a validated v1 trace.

    Args:
        path: the dump.
        num_experts: routed experts per MoE layer of the model (ids must lie in ``[0, num_experts)``).
        expert_bytes: bytes of one expert's weights (the simulator's transfer size).
        fmt: ``"csv"`` or ``"jsonl"``; by default from the file's suffix (``.csv``, ``.jsonl``/``.ndjson``).
        model: the meta's model name (default: the file's stem).
        phase: ``"prefill"`` or ``"decode"``.
        source: the meta's source sentence (default: names the imported file).
        name: the trace's name in the meta (optional).
    """
    path = Path(path)
    if fmt is None:
        suffix = path.suffix.lower()
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
        if fmt is None:
            raise TraceImportError(f"{path}: cannot tell the format from suffix {suffix!r}; give csv or jsonl")
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise TraceImportError(f"num_experts must be a positive integer, got {num_experts!r}")
    if isinstance(expert_bytes, bool) or not isinstance(expert_bytes, int) or expert_bytes < 1:
        raise TraceImportError(f"expert_bytes must be a positive integer (bytes of one expert), got {expert_bytes!r}")
    if phase not in PHASES:
        raise TraceImportError(f"phase must be one of {PHASES}, got {phase!r}")
    experts, weights, sequence, layers, labels, domains = rows_to_arrays(
        read_rows(path, fmt), num_experts=num_experts, source_name=str(path)
    )
    extra: dict[str, Any] = {
        "moe_layer_indices": layers,
        "sequence_labels": labels,
        "provenance": {"importer": "moe_cache_env.traces.importers", "format": fmt, "file": path.name},
    }
    if name:
        extra["name"] = name
    meta = make_meta(
        model=model or path.stem,
        num_experts=num_experts,
        top_k=int(experts.shape[2]),
        num_layers=int(experts.shape[1]),
        expert_bytes=expert_bytes,
        phase=phase,
        source=source or f"imported from {path.name} ({fmt} routing dump)",
        domains=domains,
        **extra,
    )
    ids_dtype = np.int16 if num_experts <= np.iinfo(np.int16).max else np.int32
    return Trace(experts=experts.astype(ids_dtype), sequence=sequence, meta=meta, weights=weights)
