"""The reference policies' decisions and the plain-Python estimate, checked by hand-computed cases and against
the replay engine on the fake device (the same rules, two implementations)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moe_cache_env.gpu.decision_log import SOURCE_DEMAND, SOURCE_PREFETCHED, SOURCE_RESIDENT
from moe_cache_env.gpu.reference_policies import (
    ReferenceTiming,
    all_hits_log,
    estimate_latency,
    latency_stats,
    reference_log,
)
from moe_cache_env.gpu.replay import FakeReplayDevice, replay


def _random_experts(T=80, L=4, K=2, E=10, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(E, K, replace=False, p=np.linspace(2, 1, E) / np.linspace(2, 1, E).sum())
                     for _ in range(T * L)]).reshape(T, L, K)


def test_lru_hits_match_the_simulators_lru():
    # a cross-check against the simulator's own demand-only LRU on the same schedule (batch 1, 4 slots per
    # layer, a step's experts pinned while they run): the same rule, two implementations that break ties
    # between experts of equal age differently, so a few tenths of a point apart
    from moe_cache_env.sim.config import CacheConfig, SimConfig
    from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate
    from moe_cache_env.traces.format import Trace, make_meta

    experts = _random_experts()
    T, L, K = experts.shape
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=4, policy="lru")
    meta = make_meta(model="random", num_experts=10, top_k=K, num_layers=L, expert_bytes=100, phase="decode",
                     source="tests")
    trace = Trace(experts=experts.astype(np.int64), sequence=np.zeros(T, dtype=np.int32), meta=meta)
    simulated = evaluate(trace, EvaluationRequest(policy="lru", config=SimConfig(cache=CacheConfig(4, 0, 0))))
    assert abs(log.counts()["hit_rate"] - simulated["metrics"]["hit_rate"]) < 0.02
    assert log.counts()["prefetches_issued"] == 0


def test_perfect_prefetch_leaves_only_the_first_layer_to_demand_loads():
    experts = _random_experts()
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=4, policy="lru-prefetch")
    demand_at = [(d.step, d.layer) for d in log.iter_decisions() for *_, src in d.need if src == SOURCE_DEMAND]
    assert demand_at and set(demand_at) == {(0, 0)}
    counts = log.counts()
    assert counts["prefetch_hits"] == counts["prefetches_issued"]
    assert counts["hit_rate"] == pytest.approx(1 - 2 / experts.size)


def test_batched_steps_deduplicate_experts_and_count_tokens():
    experts = np.array([[[0, 1]], [[1, 2]], [[3, 0]]])  # 3 tokens, 1 layer, top-2
    log = reference_log(experts, num_experts=4, expert_bytes=100, slots_per_layer=4, policy="lru", batch=2)
    first = log.layer_decisions(0, 0)
    assert [(e, n) for e, _, n, _ in first.need] == [(0, 1), (1, 2), (2, 1)]
    assert list(log.step_ntokens) == [2, 1]
    with pytest.raises(ValueError, match="slots_per_layer"):
        reference_log(experts, num_experts=4, expert_bytes=100, slots_per_layer=3, policy="lru", batch=2)


def test_estimate_by_hand_one_layer_demand_only():
    # one layer, top-1: token 0 misses (copy 1 ms), token 1 hits
    experts = np.array([[[0]], [[0]]])
    log = reference_log(experts, num_experts=2, expert_bytes=100, slots_per_layer=1, policy="lru")
    timing = ReferenceTiming(transfer_ms=1.0, compute_ms=(0.0, 0.1), non_expert_ms=0.2, host_ms=0.05)
    lat = estimate_latency(log, timing, "fused")["latency_ms"]
    assert lat.tolist() == pytest.approx([0.2 + 0.05 + 1.0 + 0.1, 0.2 + 0.05 + 0.1])


def test_per_expert_runs_resident_experts_while_the_copy_lands():
    experts = np.array([[[0, 1]], [[0, 2]]])
    log = reference_log(experts, num_experts=3, expert_bytes=100, slots_per_layer=3, policy="lru")
    timing = ReferenceTiming(transfer_ms=1.0, compute_ms=(0.0, 0.3))
    fused = estimate_latency(log, timing, "fused")["latency_ms"]
    per_expert = estimate_latency(log, timing, "per-expert")["latency_ms"]
    assert fused[1] == pytest.approx(1.0 + 0.6)  # waits for expert 2's copy, then both
    assert per_expert[1] == pytest.approx(1.0 + 0.3)  # expert 0 runs during the copy


def test_demand_loads_overtake_queued_prefetches():
    # layer 0 prefetches two experts for layer 1; layer 1's own need for one of them is promoted ahead of the queue
    experts = np.array([[[0, 1], [2, 3]]])
    log = reference_log(experts, num_experts=4, expert_bytes=100, slots_per_layer=2, policy="lru-prefetch")
    assert [p for d in log.iter_decisions() for p in d.prefetch] == [(1, 2, 2), (1, 3, 3)]
    timing = ReferenceTiming(transfer_ms=1.0, compute_ms=(0.0, 0.1))
    result = estimate_latency(log, timing, "fused")
    # layer 0: two demand loads (2 ms) + compute; the first prefetch starts at 2 ms (the link frees), not queued
    # behind anything, the second is still queued when layer 1 decides at 2.2 ms and is loaded on demand
    assert result["copies"] == {"demand": 2, "prefetch": 1, "promoted": 1, "cancelled": 0}
    assert result["latency_ms"][0] == pytest.approx(2.2 + (4.0 - 2.2) + 0.2)


@pytest.mark.parametrize("policy", ["lru", "lru-prefetch"])
@pytest.mark.parametrize("order", ["fused", "per-expert"])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_engine_on_the_fake_device_reproduces_the_estimate_exactly_with_a_free_host(policy, order, batch):
    experts = _random_experts(T=60, seed=batch)
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=6, policy=policy, batch=batch)
    timing = ReferenceTiming(transfer_ms=0.5, compute_ms=tuple([0.0] + [0.03 + 0.01 * n for n in range(1, 7)]),
                             non_expert_ms=0.12)
    est = estimate_latency(log, timing, order)
    run = replay(FakeReplayDevice(timing), log, order=order, warmup_steps=3)
    np.testing.assert_allclose(run["latency_ms"], est["latency_ms"], rtol=1e-12, atol=1e-12)
    assert run["copies"] == est["copies"]


def test_host_poll_hands_a_prefetch_over_only_after_the_expert_launches():
    # as above, with launches of 1.5 ms per expert: layer 0's launches keep the host busy over [0, 3.0) ms
    experts = np.array([[[0, 1], [2, 3]]])
    log = reference_log(experts, num_experts=4, expert_bytes=100, slots_per_layer=2, policy="lru-prefetch")
    timing = ReferenceTiming(transfer_ms=1.0, compute_ms=(0.0, 0.1), launch_ms=1.5)
    # link: the first prefetch starts when the link frees at 2.0 ms, the second at 3.0, both before layer 1
    # decides at 3.1 ms (layer 0's last expert ends then)
    assert estimate_latency(log, timing, "fused", "link")["copies"] == {
        "demand": 2, "prefetch": 2, "promoted": 0, "cancelled": 0}
    poll = estimate_latency(log, timing, "fused", "host-poll")
    # host-poll: the host polls again at 3.0 ms, when it has launched layer 0's experts: the first prefetch
    # lands at 4.0, the second is still queued at 3.1 and goes on demand, 4.0-5.0; layer 1's launches end at
    # 3.1 + 1.5 = 4.6 and 6.1 ms, its last expert at 6.2 ms
    assert poll["copies"] == {"demand": 2, "prefetch": 1, "promoted": 1, "cancelled": 0}
    assert poll["latency_ms"][0] == pytest.approx(6.2)
    with pytest.raises(ValueError, match="prefetch hand-off"):
        estimate_latency(log, timing, "fused", "soon")


@pytest.mark.parametrize("policy", ["lru", "lru-prefetch"])
@pytest.mark.parametrize("order", ["fused", "per-expert"])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_engine_on_the_fake_device_reproduces_the_host_poll_estimate_exactly_with_host_costs(policy, order,
                                                                                                 batch):
    experts = _random_experts(T=100, seed=5)
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=6, policy=policy, batch=batch)
    timing = ReferenceTiming(0.5, tuple([0.0] + [0.03] * 3), 0.12, host_ms=0.1, launch_ms=0.06, layer_launch_ms=0.01)
    est = estimate_latency(log, timing, order, "host-poll")
    run = replay(FakeReplayDevice(timing), log, order=order, warmup_steps=3)
    np.testing.assert_allclose(run["latency_ms"], est["latency_ms"], rtol=1e-12, atol=1e-12)
    assert run["copies"] == est["copies"]


@pytest.mark.parametrize("order", ["fused", "per-expert"])
def test_a_copy_issue_cost_on_the_fake_device_and_in_the_estimate(order):
    experts = _random_experts(T=100, seed=5)
    timing = ReferenceTiming(0.5, (0.0, 0.03), 0.12, host_ms=0.1, launch_ms=0.06, layer_launch_ms=0.01,
                             copy_issue_ms=0.04)
    # demand-only: the engine issues a layer's copies one by one, then launches: the estimate is exact
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=5, policy="lru")
    est = estimate_latency(log, timing, order, "host-poll")
    run = replay(FakeReplayDevice(timing), log, order=order, warmup_steps=0)
    np.testing.assert_allclose(run["latency_ms"], est["latency_ms"], rtol=1e-12, atol=1e-12)
    free = estimate_latency(log, dataclasses.replace(timing, copy_issue_ms=0.0), order, "host-poll")
    assert est["latency_ms"].sum() > free["latency_ms"].sum()
    # with prefetches the engine's host also spends the issue time when it hands a prefetch over, which can
    # delay its next decision or launches; the estimate starts the prefetch later but does not move the host
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=5, policy="lru-prefetch")
    est = latency_stats(estimate_latency(log, timing, order, "host-poll")["latency_ms"])
    run = latency_stats(replay(FakeReplayDevice(timing), log, order=order, warmup_steps=0)["latency_ms"])
    assert run["mean_ms"] == pytest.approx(est["mean_ms"], rel=0.02)


@pytest.mark.parametrize("policy", ["lru", "lru-prefetch"])
def test_with_host_costs_engine_and_estimate_stay_close(policy):
    experts = _random_experts(T=100, seed=5)
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=5, policy=policy)
    timing = ReferenceTiming(0.5, (0.0, 0.03), 0.12, host_ms=0.1, launch_ms=0.06, layer_launch_ms=0.01)
    est = latency_stats(estimate_latency(log, timing, "fused")["latency_ms"])
    run = latency_stats(replay(FakeReplayDevice(timing), log, order="fused")["latency_ms"])
    # identical for demand-only; with prefetches the engine hands a queued prefetch to the link only when the
    # host polls, the estimate under the link rule as soon as the link is free
    assert run["mean_ms"] == pytest.approx(est["mean_ms"], rel=0.03 if policy == "lru-prefetch" else 1e-12)


def test_all_hits_log_and_host_launch_model():
    log = all_hits_log(3, 8, 4, 100, steps=5)
    assert log.counts()["resident"] == 5 * 3 * 4 and log.counts()["demand_loads"] == 0
    timing = ReferenceTiming(1.0, (0.0, 0.02), non_expert_ms=0.1, host_ms=0.05, launch_ms=0.03)
    lat = estimate_latency(log, timing)["latency_ms"]
    # launch-bound: per layer the non-expert time, the decision, four launches and the last expert's compute
    assert lat[-1] == pytest.approx(3 * (0.1 + 0.05 + 4 * 0.03 + 0.02))
    assert estimate_latency(log, timing.without_host())["latency_ms"][-1] == pytest.approx(3 * (0.1 + 4 * 0.02))


def test_latency_stats_weight_tokens():
    stats = latency_stats(np.array([1.0, 3.0]), np.array([3, 1]))
    assert stats["mean_ms"] == pytest.approx(1.5) and stats["p50_ms"] == 1.0 and stats["tokens"] == 4


def test_the_engine_times_its_host_per_layer_apart_by_copies():
    # layer by layer, the engine reports how many copies each decision issued: the split must follow the log
    experts = _random_experts(T=60, seed=3)
    log = reference_log(experts, num_experts=10, expert_bytes=100, slots_per_layer=4, policy="lru")
    run = replay(FakeReplayDevice(ReferenceTiming(0.5, (0.0, 0.03), 0.12)), log, order="fused", warmup_steps=0)
    loads = [sum(1 for n in d.need if n[3] == SOURCE_DEMAND) for d in log.iter_decisions()]
    host = run["host"]
    assert host["decision_ms_with_copy"]["layers"] == sum(1 for n in loads if n > 0)
    assert host["decision_ms_no_copy"]["layers"] == sum(1 for n in loads if n == 0) > 0
    assert 0 < host["decision_ms_no_copy"]["p10"] <= host["decision_ms_no_copy"]["median"]
    by = host["decision_ms_by_copies"]
    assert sum(v["layers"] for v in by.values()) == len(loads)
    assert by["0"]["layers"] == host["decision_ms_no_copy"]["layers"]
    assert set(host["decision_fit"]) == {"base_ms", "per_copy_ms"}
    # a log without copies has no with-copy layers: None, not NaN (the JSON stays strict)
    hits = replay(FakeReplayDevice(ReferenceTiming(0.5, (0.0, 0.03))), all_hits_log(2, 8, 2, 100, steps=3),
                  warmup_steps=0)["host"]
    assert hits["decision_ms_with_copy"] == {"layers": 0, "median": None, "mean": None, "p10": None, "p90": None}
    assert hits["decision_fit"] is None  # one copy count: no line


def test_the_host_summary_recovers_a_per_copy_cost():
    from moe_cache_env.gpu.replay import host_summary

    copies = np.array([0, 0, 1, 1, 1, 2, 2, 3, 0, 2], dtype=np.float64)
    decide = 0.03 + 0.02 * copies
    decide[0] = 5.0  # one stall of the host: the medians ignore it
    host = np.stack([decide, np.full(len(copies), 0.1), copies], axis=1)
    out = host_summary(host)
    assert out["decision_fit"]["base_ms"] == pytest.approx(0.03)
    assert out["decision_fit"]["per_copy_ms"] == pytest.approx(0.02)
    assert out["decision_ms_by_copies"]["2"] == {"layers": 3, "median": pytest.approx(0.07)}
    assert out["decision_ms_no_copy"]["layers"] == 3 and out["launch_ms_per_expert"] == pytest.approx(0.1)
