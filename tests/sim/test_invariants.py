"""Invariants of the cache simulator on random small traces and settings (property tests)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.config import CacheConfig, Controls, SimConfig, WorkloadConfig
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace, make_meta


def random_trace(rng, tokens, layers, num_experts, top_k, sequences):
    experts = np.stack([
        np.stack([rng.choice(num_experts, top_k, replace=False) for _ in range(layers)]) for _ in range(tokens)
    ])
    cuts = np.sort(rng.choice(np.arange(1, tokens), size=min(sequences - 1, tokens - 1), replace=False))
    sequence = np.zeros(tokens, dtype=np.int32)
    for c in cuts:
        sequence[c:] += 1
    n_seq = int(sequence[-1]) + 1
    meta = make_meta(model="random", num_experts=num_experts, top_k=top_k, num_layers=layers,
                     expert_bytes=1 << 20, phase="decode", source="test",
                     domains=[["a", "b"][i % 2] for i in range(n_seq)])
    return Trace(experts=experts, sequence=sequence, meta=meta)


settings_strategy = st.fixed_dictionaries({
    "seed": st.integers(0, 10**6),
    "tokens": st.integers(2, 60),
    "layers": st.integers(1, 4),
    "num_experts": st.integers(2, 10),
    "l1": st.integers(1, 3),
    "l2": st.integers(0, 4),
    "l3": st.integers(0, 4),
    "scope": st.sampled_from(["per-layer", "global"]),
    "predictor": st.sampled_from(["noisy-oracle", "popularity", "previous-token", "cross-layer", "perfect"]),
    "timing": st.sampled_from(["timeline", "seed"]),
    "batch_max": st.integers(1, 4),
    "kv_max": st.sampled_from([0.0, 0.5, 0.9]),
    "l3_threshold": st.floats(0.0, 0.6),
    "gap": st.floats(0.0, 0.4),
    "lookahead": st.sampled_from([1, 2]),
    "budget": st.integers(0, 4),
    "overtake": st.booleans(),
    "window": st.integers(1, 7),
})


def build(p):
    rng = np.random.default_rng(p["seed"])
    # a cache that can serve the trace (L1 holds a token's experts) and does not hold all of it
    top_k = int(rng.integers(1, min(p["l1"], p["num_experts"]) + 1))
    pool_experts = p["num_experts"] * (p["layers"] if p["scope"] == "global" else 1)
    assume(p["l1"] + p["l2"] + p["l3"] < pool_experts)
    trace = random_trace(rng, p["tokens"], p["layers"], p["num_experts"], top_k, sequences=3)
    config = SimConfig(
        cache=CacheConfig(p["l1"], p["l2"], p["l3"], scope=p["scope"]),
        workload=WorkloadConfig(batch_min=1, batch_max=p["batch_max"], kv_max=p["kv_max"], background_max=0.5,
                                domain_shift=True, segment_steps=3),
        timing=p["timing"],
        profile="rtx3090-seed" if p["timing"] == "seed" else "h100",
        predictor=p["predictor"],
    )
    controls = Controls(l2_threshold=min(1.0, p["l3_threshold"] + p["gap"]), l3_threshold=p["l3_threshold"],
                        lookahead=p["lookahead"], prefetch_budget=p["budget"], demand_overtakes=p["overtake"])
    return trace, config, controls


@settings(max_examples=80, deadline=None)
@given(p=settings_strategy)
def test_accounting_and_capacity_invariants(p):
    trace, config, controls = build(p)
    sim = Simulator(trace, config, rng=np.random.default_rng(p["seed"]))
    while not sim.done:
        sim.run(p["window"], controls)
        # the speculative tiers never exceed their (possibly shrunk) capacity
        caps = sim.schedule.tier_caps[sim.position - 1]
        assert (sim.state.tiers.cnt[:, 1] <= caps[1]).all()
        assert (sim.state.tiers.cnt[:, 2] <= caps[2]).all()
    c = sim.counters
    m = sim.metrics()
    # every request is a hit, a late prefetch or a miss
    assert c[K.C_HIT_L1] + c[K.C_HIT_L2] + c[K.C_HIT_L3] + c[K.C_LATE] + c[K.C_MISS] == c[K.C_REQUESTS]
    # every issued prefetch was cancelled, started, or is still queued
    queued = sum(1 for i in range(sim.state.link.qht[0], sim.state.link.qht[1]) if sim.state.link.q_key[i % len(sim.state.link.q_key)] >= 0)
    assert c[K.C_PREFETCH_ISSUED] == c[K.C_PREFETCH_CANCELLED] + c[K.C_PREFETCH_LOADS] + queued
    # a prefetch is used or wasted at most once
    assert c[K.C_PREFETCH_USED] + c[K.C_WASTED_LOADS] <= c[K.C_PREFETCH_LOADS] + c[K.C_PREFETCH_CANCELLED]
    # every token ran exactly once; coverage fractions are consistent
    assert m["tokens"] == trace.num_tokens
    assert m["perfect_coverage"] + m["partial_coverage"] + m["zero_coverage"] == pytest.approx(1.0)
    assert 0.0 <= m["hit_rate"] <= 1.0
    # steps are never faster than their compute
    assert sim.step_latency_ms.sum() >= c[K.C_COMPUTE_MS] - 1e-9


@settings(max_examples=40, deadline=None)
@given(p=settings_strategy)
def test_windows_do_not_change_results(p):
    """Replaying in windows gives exactly the numbers of one long call with the same controls."""
    trace, config, controls = build(p)
    whole = Simulator(trace, config, rng=np.random.default_rng(p["seed"]))
    whole.run(None, controls)
    parts = Simulator(trace, config, rng=np.random.default_rng(p["seed"]))
    while not parts.done:
        parts.run(p["window"], controls)
    assert np.array_equal(whole.counters, parts.counters)
    assert np.array_equal(whole.step_latency_ms, parts.step_latency_ms)


@settings(max_examples=30, deadline=None)
@given(p=settings_strategy)
def test_same_seed_same_numbers(p):
    trace, config, controls = build(p)
    a = Simulator(trace, config, rng=np.random.default_rng(p["seed"]))
    b = Simulator(trace, config, rng=np.random.default_rng(p["seed"]))
    a.run(None, controls)
    b.run(None, controls)
    assert a.metrics() == b.metrics()


def test_batch_deduplicates_experts():
    # two sequences run side by side and always choose the same expert: one request per step-layer
    experts = np.zeros((8, 1, 1), dtype=np.int64)
    meta = make_meta(model="dup", num_experts=4, top_k=1, num_layers=1, expert_bytes=1 << 20, phase="decode",
                     source="test")
    trace = Trace(experts=experts, sequence=np.repeat(np.arange(2), 4).astype(np.int32), meta=meta)
    config = SimConfig(workload=WorkloadConfig(batch_min=2, batch_max=2), predictor="popularity")
    sim = Simulator(trace, config, rng=np.random.default_rng(0))
    sim.run()
    m = sim.metrics()
    assert m["steps"] == 4
    assert m["routing_events"] == 8
    assert m["expert_requests"] == 4
    assert m["miss_rate"] == pytest.approx(0.25)
