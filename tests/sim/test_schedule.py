"""The schedule builder (``moe_cache_env/sim/schedule.py``) against hand-computed layouts and properties.

A schedule says which tokens run together in each step. The hand cases below lay out small traces lane by lane
as docs/simulator.md describes: every active lane contributes its sequence's next chunk; a lane whose sequence
ended takes the next sequence in serving order; a lane with nothing left to take stays empty.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_cache_env.sim.config import CacheConfig, WorkloadConfig
from moe_cache_env.sim.schedule import build_schedule, chunk_tokens, sequence_serving_order, tier_capacities
from moe_cache_env.traces.format import Trace, make_meta


def trace_of(lengths: list[int], phase: str = "decode", domains: list[str] | None = None, top_k: int = 1) -> Trace:
    """A trace of sequences of the given lengths (routing is irrelevant to the layout: every token -> expert 0..)."""
    tokens = sum(lengths)
    experts = np.tile(np.arange(top_k, dtype=np.int64), (tokens, 2, 1))
    meta = make_meta(model="schedule-test", num_experts=8, top_k=top_k, num_layers=2, expert_bytes=1000,
                     phase=phase, source="tests", domains=domains)
    sequence = np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)
    return Trace(experts=experts, sequence=sequence, meta=meta)


def schedule_of(trace: Trace, workload: WorkloadConfig, cache: CacheConfig = CacheConfig(4, 2, 2), seed: int = 0):
    return build_schedule(trace, workload, cache, np.random.default_rng(seed))


def rows(schedule) -> list[list[int]]:
    return [[int(t) for t in row if t >= 0] for row in schedule.step_tokens]


# ---- hand-computed layouts ----------------------------------------------------------------------------------------
def test_decode_batch_2_lanes_by_hand():
    # sequences A = tokens 0-2, B = 3-4, C = 5-8; two lanes, one token each per step, served in file order.
    #   step 0: lane 0 A0, lane 1 B0 -> [0, 3]
    #   step 1: A1, B1             -> [1, 4]
    #   step 2: A2, B ended: lane 1 takes C -> [2, 5]
    #   step 3: A ended, nothing left for lane 0; lane 1 C1 -> [6]
    #   steps 4, 5: C2, C3         -> [7], [8]
    sch = schedule_of(trace_of([3, 2, 4]), WorkloadConfig(batch_min=2, batch_max=2))
    assert rows(sch) == [[0, 3], [1, 4], [2, 5], [6], [7], [8]]
    assert sch.step_tokens.shape == (6, 2)
    assert sch.step_tokens[3].tolist() == [6, -1]  # tokens first, then -1 padding
    assert sch.step_ntokens.tolist() == [2, 2, 2, 1, 1, 1]
    assert sch.step_of_token.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert sch.prev_token.tolist() == [-1, 0, 1, -1, 3, -1, 5, 6, 7]
    assert sch.batch.tolist() == [2] * 6
    assert sch.sequence_order.tolist() == [0, 1, 2]  # a stationary workload serves the file order
    assert sch.num_steps == 6


def test_decode_batch_1_is_the_file_order():
    sch = schedule_of(trace_of([2, 3]), WorkloadConfig())
    assert rows(sch) == [[0], [1], [2], [3], [4]]
    assert sch.prev_token.tolist() == [-1, 0, -1, 2, 3]


def test_prefill_runs_each_prompt_as_one_chunk_at_batch_2():
    # prompts of 5, 7 and 3 tokens; the chunk is the longest prompt (7), so each prompt runs whole:
    #   step 0: lane 0 prompt A (0-4), lane 1 prompt B (5-11); step 1: lane 0 prompt C (12-14)
    trace = trace_of([5, 7, 3], phase="prefill")
    workload = WorkloadConfig(batch_min=2, batch_max=2)
    assert chunk_tokens(trace, workload) == 7
    sch = schedule_of(trace, workload)
    assert rows(sch) == [list(range(0, 12)), [12, 13, 14]]
    assert sch.step_tokens.shape == (2, 14)  # width = lanes x chunk
    assert sch.step_of_token.tolist() == [0] * 12 + [1] * 3


def test_chunked_prefill_by_hand():
    # chunk_tokens=4, two lanes, prompts A = 0-4 (5), B = 5-11 (7), C = 12-14 (3):
    #   step 0: A0-A3 | B0-B3 -> [0 1 2 3 5 6 7 8]
    #   step 1: A4 | B4-B6    -> [4 9 10 11]
    #   step 2: lane 0 takes C whole (3 < 4) | lane 1: nothing left -> [12 13 14]
    trace = trace_of([5, 7, 3], phase="prefill")
    workload = WorkloadConfig(batch_min=2, batch_max=2, chunk_tokens=4)
    assert chunk_tokens(trace, workload) == 4
    sch = schedule_of(trace, workload)
    assert rows(sch) == [[0, 1, 2, 3, 5, 6, 7, 8], [4, 9, 10, 11], [12, 13, 14]]
    assert sch.step_ntokens.tolist() == [8, 4, 3]
    assert sch.step_of_token.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    # a decode trace runs one token per lane per step whatever its lengths
    assert chunk_tokens(trace_of([5, 7, 3]), WorkloadConfig()) == 1


def test_constant_link_share_and_kv_fraction():
    workload = WorkloadConfig(kv_min=0.25, kv_max=0.25, background_min=0.4, background_max=0.4)
    sch = schedule_of(trace_of([3, 3]), workload, cache=CacheConfig(4, 4, 8))
    assert sch.link_share.tolist() == pytest.approx([0.6] * 6)
    assert sch.kv_fraction.tolist() == [0.25] * 6
    # 16 slots, a quarter to the KV cache: 12 left = L1 4 + L2 4 + L3 4
    assert sch.tier_caps.tolist() == [[4, 4, 4]] * 6


# ---- tier capacities under the KV cache -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cache, kv, top_k, expected",
    [
        # 20 slots 4/6/10: floor(20 x 0.7) = 14 left -> L3 gives up 6 first
        (CacheConfig(4, 6, 10), 0.3, 2, [4, 6, 4]),
        # floor(20 x 0.4) = 8 -> L3 empty, L2 gives up 2
        (CacheConfig(4, 6, 10), 0.6, 2, [4, 4, 0]),
        # floor(20 x 0.1) = 2: L1 shrinks, down to top_k = 2
        (CacheConfig(4, 6, 10), 0.9, 2, [2, 0, 0]),
        # floor(20 x 0.05) = 1 < top_k = 3: L1 keeps a token's 3 experts
        (CacheConfig(4, 6, 10), 0.95, 3, [3, 0, 0]),
        # no KV cache: every slot
        (CacheConfig(4, 6, 10), 0.0, 2, [4, 6, 10]),
        # 30 x (1 - 0.8) is 5.999999999999998 in binary floating point; the slots left are 6, not 5
        (CacheConfig(4, 8, 18), 0.8, 2, [4, 2, 0]),
        # a flat (one-tier) cache of the same 20 slots holds the same number of experts at each KV share
        (CacheConfig(20, 0, 0), 0.3, 2, [14, 0, 0]),
        (CacheConfig(20, 0, 0), 0.6, 2, [8, 0, 0]),
        (CacheConfig(20, 0, 0), 0.9, 2, [2, 0, 0]),
        (CacheConfig(20, 0, 0), 0.95, 3, [3, 0, 0]),
        # an L1 smaller than top_k never grows to it (the geometry check refuses such caches elsewhere)
        (CacheConfig(1, 2, 2), 0.9, 2, [1, 0, 0]),
    ],
)
def test_tier_capacities_by_hand(cache, kv, top_k, expected):
    caps = tier_capacities(cache, np.array([kv]), top_k)
    assert caps.tolist() == [expected]


@settings(max_examples=60, deadline=None)
@given(top_k=st.integers(1, 8), l1_extra=st.integers(0, 4), l2=st.integers(0, 20), l3=st.integers(0, 40),
       kv=st.floats(0.0, 0.95))
def test_three_tier_and_flat_caches_hold_the_same_experts(top_k, l1_extra, l2, l3, kv):
    # a cache the simulator accepts: L1 holds at least a token's experts (check_geometry)
    l1 = top_k + l1_extra
    cache = CacheConfig(l1, l2, l3)
    caps = tier_capacities(cache, np.array([kv]), top_k)[0]
    flat = tier_capacities(cache.flattened(), np.array([kv]), top_k)[0]
    assert caps.sum() == flat[0] and flat[1] == flat[2] == 0
    assert 0 <= caps[2] <= l3 and 0 <= caps[1] <= l2 and top_k <= caps[0] <= l1
    # the speculative tiers give up their slots first: L2 is cut only once L3 is empty, L1 once L2 is
    assert caps[1] == l2 or caps[2] == 0
    assert caps[0] == l1 or caps[1] == 0
    left = int(np.floor(cache.total_slots * (1.0 - kv) + 1e-9))
    assert caps.sum() == max(left, top_k)


# ---- serving order and properties of any schedule ----------------------------------------------------------------
def test_domain_shift_serves_blocks_of_one_domain():
    domains = ["code", "chat", "code", "math", "chat", "math", "code"]
    trace = trace_of([2] * 7, domains=domains)
    for seed in range(5):
        order = sequence_serving_order(trace, WorkloadConfig(domain_shift=True), np.random.default_rng(seed))
        assert sorted(order.tolist()) == list(range(7))
        served = [domains[i] for i in order]
        # each domain's sequences are contiguous: the number of domain changes is (domains - 1)
        changes = sum(a != b for a, b in zip(served, served[1:]))
        assert changes == 2, served


def test_non_stationary_order_is_a_seeded_permutation():
    trace = trace_of([1] * 12)
    workload = WorkloadConfig(batch_min=1, batch_max=3)
    a = sequence_serving_order(trace, workload, np.random.default_rng(7))
    b = sequence_serving_order(trace, workload, np.random.default_rng(7))
    assert sorted(a.tolist()) == list(range(12)) and a.tolist() == b.tolist()
    assert any(sequence_serving_order(trace, workload, np.random.default_rng(s)).tolist() != list(range(12))
               for s in range(3))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=8),
       batch_min=st.integers(1, 3), extra=st.integers(0, 3), chunk=st.integers(0, 4),
       phase=st.sampled_from(["decode", "prefill"]), segment=st.integers(1, 5))
def test_every_schedule_serves_every_token_once_in_sequence_order(seed, lengths, batch_min, extra, chunk, phase,
                                                                   segment):
    trace = trace_of(lengths, phase=phase)
    workload = WorkloadConfig(batch_min=batch_min, batch_max=batch_min + extra, chunk_tokens=chunk,
                              segment_steps=segment, kv_min=0.0, kv_max=0.5)
    sch = schedule_of(trace, workload, seed=seed)
    T = trace.num_tokens
    served = [t for row in rows(sch) for t in row]
    assert sorted(served) == list(range(T))  # every token exactly once
    assert sch.step_ntokens.tolist() == [len(r) for r in rows(sch)]
    assert all(n > 0 for n in sch.step_ntokens)
    for s, row in enumerate(sch.step_tokens):  # -1 padding only at the end of a row
        n = sch.step_ntokens[s]
        assert (row[:n] >= 0).all() and (row[n:] == -1).all()
    width = sch.step_tokens.shape[1]
    per_lane = chunk if chunk > 0 else (max(lengths) if phase == "prefill" else 1)
    assert width == (batch_min + extra) * per_lane
    for s in range(sch.num_steps):
        assert batch_min <= sch.batch[s] <= batch_min + extra
        assert sch.step_ntokens[s] <= sch.batch[s] * per_lane
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    for t in range(T):
        assert sch.step_tokens[sch.step_of_token[t]].tolist().count(t) == 1
        if t in starts:
            assert sch.prev_token[t] == -1
        else:
            # a token's predecessor runs before it, or in the same step as part of the same chunk
            assert sch.prev_token[t] == t - 1
            assert sch.step_of_token[t - 1] <= sch.step_of_token[t]
            if per_lane == 1:
                assert sch.step_of_token[t - 1] < sch.step_of_token[t]
    # sequences start in serving order
    first_step = [sch.step_of_token[starts[i]] for i in sch.sequence_order]
    assert first_step == sorted(first_step)
    assert sch.tier_caps.shape == (sch.num_steps, 3)
    assert ((0.0 <= sch.kv_fraction) & (sch.kv_fraction <= 0.5)).all()


def test_long_schedules_grow_past_the_first_buffer():
    # the compiled layout starts with room for 64 steps and doubles it: 3 sequences of 100 tokens at batch 1 take
    # 300 steps, one token each, in file order
    schedule = schedule_of(trace_of([100, 100, 100]), WorkloadConfig(batch_min=1, batch_max=1))
    assert schedule.step_tokens.shape == (300, 1)
    np.testing.assert_array_equal(schedule.step_tokens[:, 0], np.arange(300))
    np.testing.assert_array_equal(schedule.batch, np.ones(300, dtype=np.int64))
