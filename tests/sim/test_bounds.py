"""Bounds that bound and ratios that add up (docs/simulator.md, "Reference policies and bounds").

The demand-only references replay the same schedule as the cache policies; their hit rates are checked
against a plain-Python cache written from the definition (``flat_reference.py``), and the bounds against
every policy on the bundled traces and on random small traces.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_cache_env.sim.config import CacheConfig, ConfigError, Controls, SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.evaluate import POLICIES, UNBOUNDED_POLICIES, EvaluationRequest, evaluate
from moe_cache_env.sim.simulator import Simulator, check_geometry
from moe_cache_env.traces import load_trace
from moe_cache_env.traces.format import Trace, make_meta
from moe_cache_env.traces.suite import resolve_trace

from .flat_reference import flat_cache_hits

#: the policies the bounds claim to bound: every policy with the bounds' cache (docs/policies.md)
BOUNDED = [p for p in POLICIES if p not in UNBOUNDED_POLICIES]

RATIOS = ("hit_rate", "hit_rate_l1", "hit_rate_l2", "hit_rate_l3", "late_prefetch_rate", "miss_rate",
          "perfect_coverage", "zero_coverage", "partial_coverage", "avg_coverage", "prefetch_precision",
          "link_utilization", "memory_pressure", "predictor_top1_accuracy", "predictor_topk_recall")


def random_trace(rng: np.random.Generator, layers: int, experts: int, top_k: int, lengths: list[int],
                 phase: str = "decode") -> Trace:
    tokens = sum(lengths)
    chosen = np.stack([np.stack([rng.choice(experts, top_k, replace=False) for _ in range(layers)])
                       for _ in range(tokens)]).astype(np.int64)
    sequence = np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)
    meta = make_meta(model="random", num_experts=experts, top_k=top_k, num_layers=layers, expert_bytes=4_000_000,
                     phase=phase, source="tests")
    return Trace(experts=chosen, sequence=sequence, meta=meta)


def head(name: str, tokens: int) -> Trace:
    trace = load_trace(resolve_trace(name))
    bounds = trace.sequence_bounds()
    keep = [int(trace.sequence[s]) for s, e in bounds if e <= tokens]
    return trace.select_sequences(keep)


def run(trace: Trace, policy: str, cache: CacheConfig, workload: WorkloadConfig, seed: int = 0,
        predictor: str = "cross-layer", controls: Controls = Controls()) -> dict:
    config = SimConfig(cache=cache, workload=workload, predictor=predictor, profile="h100")
    return evaluate(trace, EvaluationRequest(policy=policy, config=config, controls=controls, seed=seed))["metrics"]


# ---- 1. a split never leaves an unusable tier, and demotion skips empty tiers ---------------------------------
@pytest.mark.parametrize("top_k", [1, 2, 4, 6, 8])
def test_split_leaves_no_tier_empty_while_a_slot_is_free(top_k):
    for capacity in range(top_k, top_k + 12):
        cache = split_capacity(capacity, top_k)
        assert cache.total_slots == capacity and cache.l1_slots == top_k
        spare = capacity - top_k
        assert cache.l2_slots >= (1 if spare >= 1 else 0)
        assert cache.l3_slots >= (1 if spare >= 2 else 0)
    assert (split_capacity(4, 2).l2_slots, split_capacity(4, 2).l3_slots) == (1, 1)


def test_demotion_skips_an_empty_tier():
    # tiers 2 / 0 / 2: keys leaving L1 must land in L3, so the segmented cache keeps 4 experts like a flat LRU
    rng = np.random.default_rng(3)
    trace = random_trace(rng, layers=2, experts=8, top_k=2, lengths=[40, 30])
    workload = WorkloadConfig()
    m = run(trace, "no-prefetch", CacheConfig(2, 0, 2), workload)
    sim = Simulator(trace, SimConfig(cache=CacheConfig(4, 0, 0)), rng=np.random.default_rng(0))
    hits, requests = flat_cache_hits(trace.experts, 8, sim.schedule.step_tokens, np.full(sim.num_steps, 4), "lru")
    assert m["expert_requests"] == requests
    assert m["hit_rate"] == pytest.approx(hits / requests)


# ---- 4. lru / belady on the evaluation's own schedule ------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), batch=st.integers(1, 8), kv=st.floats(0.0, 0.6), top_k=st.integers(1, 3),
       experts=st.integers(5, 10), scope=st.sampled_from(["per-layer", "global"]))
def test_references_match_the_definition_and_belady_bounds_demand_only_hits(seed, batch, kv, top_k, experts, scope):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 4))
    lengths = [int(n) for n in rng.integers(1, 12, size=int(rng.integers(1, 7)))]
    trace = random_trace(rng, layers, experts, top_k, lengths)
    per_layer = int(rng.integers(top_k, experts))
    capacity = per_layer * (layers if scope == "global" else 1)
    workload = WorkloadConfig(batch_min=1, batch_max=batch, kv_min=0.0, kv_max=kv, segment_steps=3)
    cache = split_capacity(capacity, top_k, scope)
    results = {p: run(trace, p, cache, workload, seed=seed) for p in ("lru", "belady", "no-prefetch")}
    # the schedule every policy replayed (the same seed draws the same schedule)
    sim = Simulator(trace, SimConfig(cache=cache.flattened(), workload=workload), rng=np.random.default_rng(seed))
    step_capacity = sim.schedule.tier_caps.sum(axis=1)
    for policy in ("lru", "belady"):
        hits, requests = flat_cache_hits(trace.experts, experts, sim.schedule.step_tokens, step_capacity, policy, scope)
        assert results[policy]["expert_requests"] == requests
        assert results[policy]["hit_rate"] == pytest.approx(hits / requests, abs=1e-12)
    # other demand-only caches of the same slots: the segmented LRU and confidence-free weighted scores
    others = [results["lru"]["hit_rate"], results["no-prefetch"]["hit_rate"]]
    for w_frequency in (0.5, 2.0):
        controls = Controls(w_recency=1.0, w_frequency=w_frequency, w_confidence=0.0)
        others.append(run(trace, "static", cache, workload, seed=seed, predictor="none", controls=controls)["hit_rate"])
    assert results["belady"]["hit_rate"] >= max(others) - 1e-12


def test_belady_beats_lru_at_batch_8_on_the_deepseek_geometry():
    trace = head("deepseek-v2-lite", 1500)
    cache = split_capacity(26, trace.top_k)
    workload = WorkloadConfig(batch_min=8, batch_max=8)
    m = {p: run(trace, p, cache, workload) for p in ("belady", "lru", "no-prefetch")}
    assert m["belady"]["hit_rate"] >= m["lru"]["hit_rate"]
    assert m["belady"]["hit_rate"] >= m["no-prefetch"]["hit_rate"]
    # batching is part of the schedule now: at batch 8 a step's distinct experts are fewer than its requests
    batch1 = run(trace, "lru", cache, WorkloadConfig())
    assert m["lru"]["expert_requests"] < batch1["expert_requests"]


def test_no_prefetch_on_a_four_slot_mixtral_cache_is_lru():
    trace = head("mixtral", 1200)
    cache = split_capacity(4, trace.top_k)
    a = run(trace, "no-prefetch", cache, WorkloadConfig())
    b = run(trace, "lru", cache, WorkloadConfig())
    assert a["hit_rate"] >= b["hit_rate"]


# ---- 5. the clairvoyant latency bound -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen1.5-moe", "deepseek-v2-lite", "mixtral", "olmoe",
                                  "tiny-olmoe-12L-64E-decode", "tiny-olmoe-12L-64E-prefill"])
@pytest.mark.parametrize("batch", [1, 4])
def test_clairvoyant_latency_is_below_every_policy_on_bundled_traces(name, batch):
    trace = head(name, 1200 if "prefill" not in name else 2600)
    cache = split_capacity(max(trace.top_k + 2, int(round(0.4 * trace.num_experts))), trace.top_k)
    workload = WorkloadConfig(batch_min=batch, batch_max=batch)
    results = {p: run(trace, p, cache, workload) for p in BOUNDED}
    bound = results["clairvoyant"]["mean_latency_ms"]
    for policy, m in results.items():
        assert m["mean_latency_ms"] >= bound * (1 - 1e-9), policy


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), batch=st.integers(1, 4), kv=st.floats(0.0, 0.5))
def test_clairvoyant_latency_is_below_every_policy_on_random_traces(seed, batch, kv):
    rng = np.random.default_rng(seed)
    trace = random_trace(rng, layers=int(rng.integers(2, 5)), experts=8, top_k=2,
                         lengths=[int(n) for n in rng.integers(2, 20, size=3)])
    cache = split_capacity(int(rng.integers(3, 7)), 2)
    workload = WorkloadConfig(batch_min=1, batch_max=batch, kv_min=0.0, kv_max=kv, segment_steps=4)
    results = {p: run(trace, p, cache, workload, seed=seed) for p in BOUNDED}
    bound = results["clairvoyant"]["mean_latency_ms"]
    for policy, m in results.items():
        assert m["mean_latency_ms"] >= bound * (1 - 1e-9), policy


# ---- 3. every ratio is in [0, 1] -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen1.5-moe", "deepseek-v2-lite", "mixtral"])
def test_every_ratio_of_every_policy_is_a_share(name):
    trace = head(name, 800)
    cache = split_capacity(max(trace.top_k + 2, int(round(0.4 * trace.num_experts))), trace.top_k)
    for batch in (1, 8):
        for policy in POLICIES:
            m = run(trace, policy, cache, WorkloadConfig(batch_min=batch, batch_max=batch))
            for key in RATIOS:
                assert 0.0 <= m[key] <= 1.0, (policy, batch, key, m[key])


def test_an_overtaken_prefetch_counts_once_in_precision():
    # prefetches queued behind a saturated link are overtaken by demand loads; each is still one issue
    trace = head("qwen1.5-moe", 800)
    m = run(trace, "perfect", split_capacity(24, 4), WorkloadConfig(batch_min=4, batch_max=4))
    assert m["prefetches_cancelled"] >= m["prefetches_overtaken"] > 0
    assert m["prefetch_precision"] <= 1.0


# ---- 6. no-prefetch reads no predictor ----------------------------------------------------------------------------
def test_no_prefetch_is_the_same_whatever_the_predictor():
    trace = head("qwen1.5-moe", 600)
    cache = split_capacity(24, 4)
    a = run(trace, "no-prefetch", cache, WorkloadConfig(), predictor="cross-layer")
    b = run(trace, "no-prefetch", cache, WorkloadConfig(), predictor="noisy-oracle")
    assert a == b
    assert a["prefetches_issued"] == 0 and a["predictor_top1_accuracy"] == 0.0


# ---- 8. prefill runs a prompt per step ----------------------------------------------------------------------------
def test_prefill_trace_runs_each_prompt_as_one_chunk():
    rng = np.random.default_rng(0)
    trace = random_trace(rng, layers=2, experts=8, top_k=2, lengths=[5, 7, 3], phase="prefill")
    sim = Simulator(trace, SimConfig(cache=split_capacity(4, 2)), rng=np.random.default_rng(0))
    assert sim.schedule.num_steps == 3
    assert sim.schedule.step_ntokens.tolist() == [5, 7, 3]
    decode = replace(trace, meta={**dict(trace.meta), "phase": "decode"})
    assert Simulator(decode, SimConfig(cache=split_capacity(4, 2)), rng=np.random.default_rng(0)).num_steps == 15
    chunked = SimConfig(cache=split_capacity(4, 2), workload=WorkloadConfig(chunk_tokens=4))
    assert Simulator(trace, chunked, rng=np.random.default_rng(0)).schedule.step_ntokens.tolist() == [4, 1, 4, 3, 3]


# ---- 9. the cache's geometry is checked against the trace ------------------------------------------------------------
def test_cache_geometry_is_checked_against_the_trace():
    rng = np.random.default_rng(0)
    trace = random_trace(rng, layers=2, experts=8, top_k=6, lengths=[4])
    with pytest.raises(ConfigError, match=r"l1_slots=4 is below top_k=6 .*2 layers x 8 experts, top-6"):
        Simulator(trace, SimConfig(cache=CacheConfig(4, 1, 1)))
    with pytest.raises(ConfigError, match=r"8 slots per layer \(tiers 6/1/1\) holds every expert"):
        check_geometry(trace, CacheConfig(6, 1, 1))
    check_geometry(trace, CacheConfig(6, 1, 1), allow_full=True)  # the simulator replays it if asked


# ---- 2. a predicted expert already on the GPU is protected during the prediction pass ------------------------------
def test_a_resident_predicted_expert_survives_the_admission_of_another():
    # one layer, top-2, tiers 2 / 2 / 0, eviction by recency only, the perfect predictor, the seed's instant
    # prefetches. Steps need {0,1}, {2,3}, {4,5}, {2,6}. After step 2, L2 holds 2 and 3 (same age). Predicting
    # step 3 = {2, 6}: 2 is resident; admitting 6 overfills L2, and the victim must be 3, not 2 (the lower key
    # of the tie, which an unprotected pass evicts). By hand: steps hit 0, 2, 2, 2 of 2 experts: 6 / 8.
    experts = np.array([[[0, 1]], [[2, 3]], [[4, 5]], [[2, 6]]], dtype=np.int64)
    meta = make_meta(model="hand", num_experts=8, top_k=2, num_layers=1, expert_bytes=1_000_000, phase="decode",
                     source="tests")
    trace = Trace(experts=experts, sequence=np.zeros(4, dtype=np.int32), meta=meta)
    config = SimConfig(cache=CacheConfig(2, 2, 0), predictor="perfect", timing="seed", profile="rtx3090-seed")
    sim = Simulator(trace, config, rng=np.random.default_rng(0))
    controls = Controls(w_recency=1.0, w_frequency=0.0, w_confidence=0.0)
    hits = [sim.run(1, controls).metrics["hit_rate"] for _ in range(4)]
    assert hits == [0.0, 1.0, 1.0, 1.0]
    assert sim.metrics()["hit_rate"] == pytest.approx(6 / 8)
