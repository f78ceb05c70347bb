"""Trace format v1: every malformed case is refused with a TraceFormatError naming the problem and its place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from moe_cache_env.traces import Trace, TraceFormatError, load_trace, make_meta, save_trace


def _meta(**overrides):
    base = dict(model="tiny", num_experts=6, top_k=2, num_layers=3, expert_bytes=1024, phase="decode", source="test")
    base.update(overrides)
    return make_meta(**base)


def _arrays(tokens: int = 5):
    rng = np.random.default_rng(7)
    experts = np.stack(
        [np.stack([rng.choice(6, size=2, replace=False) for _ in range(3)]) for _ in range(tokens)]
    ).astype(np.int16)
    sequence = np.array([0, 0, 1, 1, 1][:tokens], dtype=np.int32)
    weights = rng.random((tokens, 3, 2)).astype(np.float32)
    return experts, sequence, weights


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)  # object arrays are pickled by numpy: the loader must refuse them
    return path


def _meta_array(meta) -> np.ndarray:
    return np.array(json.dumps(meta))


def test_round_trip_keeps_arrays_and_meta(tmp_path):
    experts, sequence, weights = _arrays()
    meta = _meta(domains=["code", "prose"])
    trace = Trace(experts=experts, sequence=sequence, meta=meta, weights=weights)
    path = save_trace(trace, tmp_path / "t.npz")
    loaded = load_trace(path)
    np.testing.assert_array_equal(loaded.experts, experts)
    np.testing.assert_array_equal(loaded.sequence, sequence)
    np.testing.assert_array_equal(loaded.weights, weights)
    assert dict(loaded.meta) == meta
    assert loaded.domains() == ["code", "prose"]
    assert loaded.sequence_bounds().tolist() == [[0, 2], [2, 5]]


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    experts, sequence, _ = _arrays()
    trace = Trace(experts=experts, sequence=sequence, meta=_meta())
    target = tmp_path / "t.npz"
    save_trace(trace, target)
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    # A write that fails half-way leaves the old file as it was and no temporary file behind.
    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_trace(trace, target)
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e, s, w: e.__setitem__((3, 1, 0), 6), r"out of range \[0, 6\) at token 3, layer 1, rank 0"),
        (lambda e, s, w: e.__setitem__((2, 2, 1), -1), r"at token 2, layer 2, rank 1"),
        (lambda e, s, w: e.__setitem__((4, 0, 1), e[4, 0, 0]), r"duplicate expert id in row at token 4, layer 0"),
        (lambda e, s, w: w.__setitem__((1, 2, 0), np.nan), r"at token 1, layer 2, rank 0 is NaN"),
        (lambda e, s, w: w.__setitem__((0, 1, 1), -0.5), r"at token 0, layer 1, rank 1 .*negative"),
        (lambda e, s, w: s.__setitem__(slice(None), [0, 1, 0, 2, 2]), r"sequence 0 is not contiguous: it resumes at token 2"),
    ],
    ids=["id-too-large", "id-negative", "duplicate-id", "nan-weight", "negative-weight", "non-contiguous-sequence"],
)
def test_bad_content_is_located(tmp_path, mutate, message):
    experts, sequence, weights = _arrays()
    mutate(experts, sequence, weights)
    path = _write_npz(
        tmp_path / "bad.npz", experts=experts, sequence=sequence, weights=weights, meta=_meta_array(_meta())
    )
    with pytest.raises(TraceFormatError, match=message):
        load_trace(path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (lambda e, s, w: dict(experts=e.astype(np.float32), sequence=s, weights=w), r"experts must have an integer dtype"),
        (lambda e, s, w: dict(experts=e, sequence=s, weights=w.astype(np.float64)), r"weights must be float32"),
        (lambda e, s, w: dict(experts=e, sequence=s.astype(np.float32), weights=w), r"sequence must have an integer dtype"),
        (lambda e, s, w: dict(experts=e[:, :2], sequence=s, weights=w[:, :2]), r"experts has 2 layers but meta.num_layers=3"),
        (lambda e, s, w: dict(experts=e, sequence=s[:4], weights=w), r"sequence must have shape \(5,\)"),
        (lambda e, s, w: dict(experts=e, weights=w), r"missing array 'sequence'"),
        (lambda e, s, w: dict(sequence=s, weights=w), r"missing array 'experts'"),
    ],
    ids=["float-experts", "float64-weights", "float-sequence", "layer-count", "sequence-length", "no-sequence", "no-experts"],
)
def test_bad_arrays_are_refused(tmp_path, arrays, message):
    experts, sequence, weights = _arrays()
    path = _write_npz(tmp_path / "bad.npz", meta=_meta_array(_meta()), **arrays(experts, sequence, weights))
    with pytest.raises(TraceFormatError, match=message):
        load_trace(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("expert_bytes"), r"missing required keys \['expert_bytes'\]"),
        (lambda m: m.update(format="moe-trace/0"), r"meta.format is 'moe-trace/0'"),
        (lambda m: m.update(phase="training"), r"meta.phase must be one of"),
        (lambda m: m.update(top_k=7), r"meta.top_k=7 exceeds meta.num_experts=6"),
        (lambda m: m.update(num_experts="6"), r"meta.num_experts must be a positive integer"),
        (lambda m: m.update(source=""), r"meta.source must be a non-empty string"),
        (lambda m: m.update(domains=["only-one"]), r"meta.domains has 1 entries but the trace has 2 sequences"),
    ],
    ids=["missing-key", "wrong-format", "bad-phase", "top-k-too-large", "string-count", "empty-source", "domain-count"],
)
def test_bad_meta_is_refused(tmp_path, edit, message):
    experts, sequence, _ = _arrays()
    meta = _meta()
    edit(meta)
    path = _write_npz(tmp_path / "bad.npz", experts=experts, sequence=sequence, meta=_meta_array(meta))
    with pytest.raises(TraceFormatError, match=message):
        load_trace(path)


def test_meta_that_is_not_json_is_refused(tmp_path):
    experts, sequence, _ = _arrays()
    path = _write_npz(tmp_path / "bad.npz", experts=experts, sequence=sequence, meta=np.array("{not json"))
    with pytest.raises(TraceFormatError, match="meta is not a JSON string"):
        load_trace(path)


def test_object_meta_is_refused(tmp_path):
    experts, sequence, _ = _arrays()
    meta = np.array([json.dumps(_meta())], dtype=object)
    path = _write_npz(tmp_path / "bad.npz", experts=experts, sequence=sequence, meta=meta)
    with pytest.raises(TraceFormatError, match="allow_pickle=False"):
        load_trace(path)


@pytest.mark.parametrize("which", ["experts", "weights"])
def test_object_array_is_refused(tmp_path, which):
    experts, sequence, weights = _arrays()
    arrays = dict(experts=experts, sequence=sequence, weights=weights, meta=_meta_array(_meta()))
    arrays[which] = arrays[which].astype(object)
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TraceFormatError, match=which):
        load_trace(path)


def test_not_an_archive_is_refused(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(TraceFormatError, match="garbage.npz: not a .npz"):
        load_trace(path)


def test_in_memory_trace_is_validated():
    experts, sequence, _ = _arrays()
    experts[0, 0, 0] = 99
    with pytest.raises(TraceFormatError, match="token 0, layer 0, rank 0"):
        Trace(experts=experts, sequence=sequence, meta=_meta())


# ---- row selections of a validated trace ------------------------------------------------------------------------------
def test_a_selection_of_a_valid_trace_is_checked_for_what_a_selection_can_break():
    experts, sequence, weights = _arrays()
    trace = Trace(experts=experts, sequence=sequence, meta=_meta(), weights=weights)
    # the same rows, validated from scratch, make the same trace
    part = trace.take_rows(np.array([2, 3, 4]), _meta(name="second"))
    fresh = Trace(experts=experts[2:], sequence=sequence[2:], meta=_meta(name="second"), weights=weights[2:])
    np.testing.assert_array_equal(part.experts, fresh.experts)
    np.testing.assert_array_equal(part.sequence, fresh.sequence)
    np.testing.assert_array_equal(part.weights, fresh.weights)
    assert part.meta == fresh.meta
    # a selection that interleaves two sequences is still refused
    with pytest.raises(TraceFormatError, match="sequence 0 is not contiguous"):
        trace.take_rows(np.array([0, 2, 1]), _meta())
    # so is a meta whose domains do not match the selection's sequences
    with pytest.raises(TraceFormatError, match="meta.domains has 2 entries"):
        trace.take_rows(np.array([2, 3]), _meta(domains=["a", "b"]))
    # a meta that changes the geometry re-checks every row: ids 3..5 are out of range for 3 experts
    assert experts[2:].max() >= 3
    with pytest.raises(TraceFormatError, match="out of range"):
        trace.take_rows(np.array([2, 3, 4]), _meta(num_experts=3))
