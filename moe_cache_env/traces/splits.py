"""Split a trace by sequence into train / validation / test parts, deterministically.

Sequences (requests) are the unit: a sequence never straddles two splits, so no context leaks from training
into evaluation. When the trace records a domain per sequence the split is stratified: every domain is divided
in the same proportions, so each split sees every domain (and a domain-shift workload stays possible in each).
The assignment depends only on the trace's sequence ids, their domains, the fractions and ``seed``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from moe_cache_env.traces.format import Trace

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: the default proportions of train / validation / test sequences
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"split fractions must be three numbers (train, validation, test), got {list(fractions)}")
    values = tuple(float(f) for f in fractions)
    if any(not np.isfinite(f) or f <= 0 for f in values):
        raise ValueError(f"split fractions must all be > 0, got {list(fractions)}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)} (sum {sum(values):.6f})")
    return values  # type: ignore[return-value]


def _allocate(count: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Sequences per split for a group of ``count``: largest remainders, at least one each when count >= 3."""
    raw = np.asarray(fractions) * count
    sizes = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - sizes), kind="stable")[: count - int(sizes.sum())]:
        sizes[i] += 1
    if count >= 3:
        # a small group still gives every split one sequence, taken from the largest split
        for i in range(3):
            if sizes[i] == 0:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[i] = 1
    return sizes


def split_sequence_ids(trace: Trace, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> dict[str, np.ndarray]:
    """The sequence ids (values of ``trace.sequence``) of each split, in the trace's order.

    Raises:
        ValueError: the fractions are invalid or the trace has fewer than three sequences.
    """
    fractions = _check_fractions(fractions)
    bounds = trace.sequence_bounds()
    ids = trace.sequence[bounds[:, 0]].astype(np.int64)
    if len(ids) < 3:
        raise ValueError(
            f"trace {trace.name!r} has {len(ids)} sequence(s); a train/validation/test split needs at least 3"
        )
    domains = trace.domains() or ["all"] * len(ids)
    rng = np.random.default_rng(seed)
    member = np.empty(len(ids), dtype=np.int64)
    groups = [d for d in sorted(set(domains))]
    # a group too small to give every split a sequence is pooled, so that small domains are not all in train
    small = [d for d in groups if domains.count(d) < 3]
    pooled = {d: ("__pooled__" if d in small else d) for d in groups}
    keys = sorted(set(pooled.values()))
    for key in keys:
        index = np.array([i for i, d in enumerate(domains) if pooled[d] == key], dtype=np.int64)
        index = index[rng.permutation(len(index))]
        sizes = _allocate(len(index), fractions)
        start = 0
        for split_number, size in enumerate(sizes):
            member[index[start : start + size]] = split_number
            start += size
    return {name: ids[member == number] for number, name in enumerate(SPLITS)}


def split_trace(trace: Trace, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> dict[str, Trace]:
    """Split ``trace`` into ``{"train", "validation", "test"}`` traces by sequence (see the module docstring).

    Each split keeps the sequences in their original order and their domains; its meta ``name`` gets a
    ``#train`` / ``#validation`` / ``#test`` suffix so results name the part they came from.
    """
    parts = split_sequence_ids(trace, fractions, seed)
    out: dict[str, Trace] = {}
    for name, ids in parts.items():
        part = trace.select_sequences(ids)
        meta = dict(part.meta)
        meta["name"] = f"{trace.name}#{name}"
        out[name] = part.take_rows(np.arange(part.num_tokens), meta)
    return out
