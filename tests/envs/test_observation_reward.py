"""Observation encoding and the demand-all reference latency, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.envs.observation import (
    FEATURE_NAMES,
    NUM_FEATURES,
    decode_observation,
    encode_observation,
    expert_shares,
    expert_shares_of_windows,
    observation_space,
    popularity_entropies,
    popularity_entropy,
    popularity_shift,
    popularity_shifts,
)
from moe_cache_env.envs.reward import DemandAllReference, reward_terms
from moe_cache_env.profiles import load_profile
from moe_cache_env.traces.format import Trace, make_meta


def test_encode_decode_round_trip_and_bounds():
    raw = {name: 0.25 for name in FEATURE_NAMES}
    raw["layer_latency"] = 10.0
    raw["latency_ratio"] = 0.8
    obs = encode_observation(raw)
    assert obs.dtype == np.float32 and obs.shape == (NUM_FEATURES,)
    assert observation_space().contains(obs)
    back = decode_observation(obs)
    assert back["layer_latency"] == pytest.approx(10.0, rel=1e-6)
    assert back["latency_ratio"] == pytest.approx(0.8, rel=1e-6)
    raw["latency_ratio"] = 50.0  # clipped into the space
    assert observation_space().contains(encode_observation(raw))
    with pytest.raises(KeyError, match="perfect_coverage"):
        encode_observation({k: v for k, v in raw.items() if k != "perfect_coverage"})


def test_popularity_statistics():
    uniform = np.full((2, 4), 0.25)
    single = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert popularity_entropy(uniform) == pytest.approx(1.0)
    assert popularity_entropy(single) == pytest.approx(0.0)
    assert popularity_shift(single, uniform) == pytest.approx(0.75)
    assert popularity_shift(single, None) == 0.0
    experts = np.array([[[0, 1]], [[1, 2]]])  # 2 tokens, 1 layer, top-2
    assert expert_shares(experts, 4).tolist() == [[0.25, 0.5, 0.25, 0.0]]


def _tiny_trace() -> Trace:
    experts = np.array([[[0, 1], [2, 3]], [[1, 2], [2, 3]], [[3, 0], [0, 1]]], dtype=np.int16)  # T=3, L=2, K=2
    meta = make_meta(model="tiny", num_experts=4, top_k=2, num_layers=2, expert_bytes=28 * 2**20, phase="decode",
                     source="hand-made")
    return Trace(experts=experts, sequence=np.zeros(3, dtype=np.int32), meta=meta)


def test_demand_all_reference_timeline_by_hand():
    trace = _tiny_trace()
    profile = load_profile("h100")
    ref = DemandAllReference(trace, profile, trace.expert_bytes, "timeline", width=2)
    step_tokens = np.array([[0, 1], [2, -1]])
    share = np.array([0.5, 1.0])
    lat = ref.step_latency_ms(step_tokens, share)
    t = profile.transfer_ms(trace.expert_bytes)
    c = profile.compute_table(trace.expert_bytes, 2)
    o = profile.layer_overhead_ms
    # step 0, layer 0: experts {0:1, 1:2, 2:1}; layer 1: {2:2, 3:2}
    step0 = (3 * t / 0.5 + c[1] + c[2] + c[1] + o) + (2 * t / 0.5 + c[2] + c[2] + o)
    # step 1 (token 2): layer 0 {3, 0}, layer 1 {0, 1}
    step1 = (2 * t + 2 * c[1] + o) + (2 * t + 2 * c[1] + o)
    assert lat == pytest.approx([step0, step1])
    mean = ref.mean_latency_ms(step_tokens, np.array([2, 1]), share)
    assert mean == pytest.approx((2 * step0 + step1) / 3)


def test_demand_all_reference_seed_table_by_hand():
    trace = _tiny_trace()
    profile = load_profile("rtx3090-seed")
    table = profile.seed_table
    ref = DemandAllReference(trace, profile, trace.expert_bytes, "seed", width=1)
    lat = ref.step_latency_ms(np.array([[2]]), np.array([1.0]))
    two_misses = table["h2d_1_expert_ms"] + (table["h2d_4_experts_ms"] - table["h2d_1_expert_ms"]) / 3.0
    compute = table["compute_1_expert_ms"] + (table["compute_4_experts_ms"] - table["compute_1_expert_ms"]) / 3.0
    layer = two_misses + compute + 2 * table["alloc_ms"]
    assert lat == pytest.approx([2 * layer])


def test_reward_terms():
    terms = reward_terms({"perfect_coverage": 0.4, "mean_latency_ms": 30.0}, 60.0, coverage_weight=1.0, latency_weight=2.0)
    assert terms["latency_ratio"] == pytest.approx(0.5)
    assert terms["reward"] == pytest.approx(0.4 - 1.0)
    # each term by hand: 1.0 * 0.4 and -2.0 * (30 / 60)
    assert terms["coverage_term"] == pytest.approx(0.4)
    assert terms["latency_term"] == pytest.approx(-1.0)
    assert terms["perfect_coverage"] == 0.4 and terms["reference_latency_ms"] == 60.0
    # weights scale their own term only: coverage 3 x 0.25, latency 0.5 x 45 / 30
    other = reward_terms({"perfect_coverage": 0.25, "mean_latency_ms": 45.0}, 30.0, coverage_weight=3.0,
                         latency_weight=0.5)
    assert (other["coverage_term"], other["latency_term"], other["reward"]) == pytest.approx((0.75, -0.75, 0.0))
    # no reference latency (an empty window): the latency term is 0, not a division by zero
    assert reward_terms({"perfect_coverage": 1.0, "mean_latency_ms": 5.0}, 0.0, 1.0, 1.0)["reward"] == 1.0


def _demand_all_by_hand(trace: Trace, profile, step_tokens: np.ndarray, share: np.ndarray) -> list[float]:
    """Each step's demand-all latency in plain Python: per layer, every distinct expert copied, then computed."""
    t = profile.transfer_ms(trace.expert_bytes)
    c = profile.compute_table(trace.expert_bytes, step_tokens.shape[1])
    o = profile.layer_overhead_ms
    out = []
    for s, row in enumerate(step_tokens):
        tokens = [int(x) for x in row if x >= 0]
        total = 0.0
        for layer in range(trace.num_layers):
            counts: dict[int, int] = {}
            for tok in tokens:
                for e in trace.experts[tok, layer]:
                    counts[int(e)] = counts.get(int(e), 0) + 1
            total += len(counts) * t / share[s] + sum(c[n] for n in counts.values()) + o
        out.append(total)
    return out


def test_step_reference_computes_chunks_as_windows_reach_them(monkeypatch):
    # the reference of an episode is computed in chunks of steps when a window first needs them; windows asked
    # in any order, across chunk edges, get each step's own latency
    from moe_cache_env.envs.reward import StepReference

    monkeypatch.setattr(StepReference, "CHUNK_STEPS", 2)
    trace = _tiny_trace()
    profile = load_profile("h100")
    ref = DemandAllReference(trace, profile, trace.expert_bytes, "timeline", width=2)
    step_tokens = np.array([[0, 1], [2, -1], [1, -1], [0, 2], [2, 1], [1, -1], [0, -1]])
    share = np.array([0.5, 1.0, 0.25, 1.0, 0.75, 0.5, 1.0])
    expected = _demand_all_by_hand(trace, profile, step_tokens, share)
    steps = ref.steps(step_tokens, share)
    assert steps._ready == 0  # nothing computed before a window asks
    assert steps.window(0, 1) == pytest.approx(expected[0:1])
    assert steps._ready == 2  # one chunk
    assert steps.window(3, 6) == pytest.approx(expected[3:6])
    assert steps._ready == 6
    assert steps.window(1, 3) == pytest.approx(expected[1:3])  # already computed: read back
    assert steps.window(6, 7) == pytest.approx(expected[6:7])
    assert steps._ready == 7  # the last chunk stops at the schedule's end
    assert ref.step_latency_ms(step_tokens, share) == pytest.approx(expected)


def _shares_by_counting(experts: np.ndarray, tokens: list[int], num_experts: int) -> list[list[float]]:
    """Plain Python: each expert's count among a layer's choices of ``tokens`` over the layer's choices."""
    rows = []
    for layer in range(experts.shape[1]):
        counts = [0] * num_experts
        for t in tokens:
            for e in experts[t, layer]:
                counts[int(e)] += 1
        total = sum(counts)
        rows.append([c / total if total else 0.0 for c in counts])
    return rows


def test_expert_shares_of_windows_count_each_window():
    rng = np.random.default_rng(5)
    routing = [rng.integers(0, 6, (20, 3, 2)).astype(np.int16), rng.integers(0, 6, (9, 3, 2)).astype(np.int32)]
    # steps x width, -1 padded; the second window has no tokens at all
    windows = [np.array([[4, 7, -1], [0, -1, -1], [19, 3, 3]]), np.full((2, 3), -1)]
    shares = expert_shares_of_windows(routing, windows, 3, 6)
    assert shares[0].tolist() == _shares_by_counting(routing[0], [4, 7, 0, 19, 3, 3], 6)
    assert shares[1].tolist() == [[0.0] * 6] * 3


def test_popularity_of_many_windows_is_each_windows_own():
    """The batched entropy and shift give each window the bits of the masked-log, row-sum formulation, one window
    at a time (a reordered sum or another log would change the last bits)."""
    rng = np.random.default_rng(9)
    counts = rng.integers(0, 5, (12, 7, 16)).astype(np.float64)
    counts[:, :, 0] += 1.0
    shares = counts / counts.sum(axis=2, keepdims=True)
    previous = shares[::-1].copy()
    entropies = popularity_entropies(shares)
    shifts = popularity_shifts(shares, previous)
    for i in range(shares.shape[0]):
        s = shares[i]
        logs = np.log(s, out=np.zeros_like(s), where=s > 0)
        h = -(s * logs).sum(axis=1)
        assert entropies[i] == float(np.add.reduce(h) / h.shape[0]) / np.log(16)
        assert shifts[i] == 0.5 * float(np.add.reduce(np.abs(s - previous[i]).sum(axis=1)) / 7)
