"""Splitting a trace by sequence: disjoint, complete, stratified by domain, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.traces.format import Trace, make_meta
from moe_cache_env.traces.splits import split_sequence_ids, split_trace


def _trace(num_sequences: int, domains: list[str] | None) -> Trace:
    lengths = np.arange(num_sequences) % 5 + 2
    sequence = np.repeat(np.arange(num_sequences, dtype=np.int32), lengths)
    rng = np.random.default_rng(0)
    experts = np.stack([rng.permutation(8)[:2] for _ in range(len(sequence))])[:, None, :].astype(np.int16)
    meta = make_meta(model="m", num_experts=8, top_k=2, num_layers=1, expert_bytes=1024, phase="decode",
                     source="test", domains=domains)
    return Trace(experts=experts, sequence=sequence, meta=meta)


def test_splits_are_disjoint_complete_and_deterministic():
    domains = ["a"] * 20 + ["b"] * 10 + ["c"] * 4
    trace = _trace(34, domains)
    parts = split_sequence_ids(trace, seed=1)
    ids = np.concatenate(list(parts.values()))
    assert sorted(ids.tolist()) == list(range(34))
    again = split_sequence_ids(trace, seed=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_sequence_ids(trace, seed=2)
    assert any(not np.array_equal(parts[k], other[k]) for k in parts)
    for name, part in split_trace(trace, seed=1).items():
        assert set(part.domains()) == {"a", "b", "c"}, f"{name} misses a domain"
        assert part.name.endswith(f"#{name}")
    assert len(parts["train"]) == 14 + 7 + 2  # per domain: 20 -> 14, 10 -> 7, 4 -> 2 (largest remainders)


def test_bad_fractions_and_tiny_traces_are_rejected():
    trace = _trace(10, None)
    with pytest.raises(ValueError, match="sum to 1"):
        split_trace(trace, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="> 0"):
        split_trace(trace, (1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="at least 3"):
        split_trace(_trace(2, None))
