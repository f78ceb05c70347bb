"""The effect of each control of the cache, on hand-built traces whose outcome is worked out by hand below.

Every case uses the worked-example profile of ``test_worked_example.py`` where time matters: a copy takes
exactly 1 ms (the link carries one copy at a time), an expert computes in 0.5 ms whatever its token count, and
a layer costs nothing else. Unless a case says otherwise, traces have one MoE layer, so step s's prediction
(lookahead 1) targets step s + 1 and lookahead 2 targets step s + 2.
"""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.envs.reward import DemandAllReference
from moe_cache_env.profiles import load_profile
from moe_cache_env.sim import kernel
from moe_cache_env.sim.config import CacheConfig, ConfigError, Controls, SimConfig, WorkloadConfig
from moe_cache_env.sim.evaluate import policy_setup
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace, make_meta

from .test_worked_example import EXAMPLE_PROFILE


def make_trace(routing: list, num_experts: int, lengths: list[int] | None = None) -> Trace:
    """A trace from routing[token][layer] = the token's experts at that layer."""
    experts = np.asarray(routing, dtype=np.int64)
    if experts.ndim == 2:  # one layer given as routing[token] = experts
        experts = experts[:, None, :]
    T, L, K = experts.shape
    lengths = lengths or [T]
    meta = make_meta(model="hand-built", num_experts=num_experts, top_k=K, num_layers=L, expert_bytes=1_000_000,
                     phase="decode", source="tests/sim/test_controls.py")
    return Trace(experts=experts, sequence=np.repeat(np.arange(len(lengths)), lengths).astype(np.int32), meta=meta)


def replay(trace: Trace, cache: CacheConfig, controls: Controls = Controls(), *, predictor: str = "perfect",
           eviction: str = "weighted", workload: WorkloadConfig = WorkloadConfig(), window: int | None = None,
           **sim) -> tuple[Simulator, list]:
    """Replay the whole trace (in windows of ``window`` steps if given); the simulator and the window results."""
    config = SimConfig(cache=cache, predictor=predictor, eviction=eviction, workload=workload, **sim)
    s = Simulator(trace, config, rng=np.random.default_rng(0), profile=EXAMPLE_PROFILE)
    windows = []
    while not s.done:
        windows.append(s.run(window, controls))
    return s, windows



#: perfect-predictor thresholds that admit nothing (1.0 < 1.01): confidences are recorded, nothing is prefetched
NO_ADMISSION = dict(l2_threshold=1.01, l3_threshold=1.01)


# ---- eviction weights ---------------------------------------------------------------------------------------------
def test_w_recency_against_w_frequency_picks_the_victim():
    # One layer, a flat cache of 2 slots, no predictor; requests A A A B C A (A=0, B=1, C=2).
    # At step 4 (C) the cache holds A (used 3 times, last at step 2: age 2) and B (used once, at step 3: age 1):
    #   recency only   (w_r=1, w_f=0): A scores 1/3, B 1/2        -> A is evicted, step 5's A misses
    #   frequency only (w_r=0, w_f=1): A scores 3/4, B 1/2        -> B is evicted, step 5's A hits
    trace = make_trace([[0], [0], [0], [1], [2], [0]], num_experts=4)
    cache = CacheConfig(2, 0, 0)
    recency, _ = replay(trace, cache, Controls(w_recency=1.0, w_frequency=0.0, w_confidence=0.0), predictor="none")
    frequency, _ = replay(trace, cache, Controls(w_recency=0.0, w_frequency=1.0, w_confidence=0.0), predictor="none")
    # hits: steps 1, 2 both; step 5 only when A stayed
    assert recency.metrics()["hit_rate"] == pytest.approx(2 / 6)
    assert frequency.metrics()["hit_rate"] == pytest.approx(3 / 6)
    assert recency.metrics()["miss_rate"] == pytest.approx(4 / 6)
    assert frequency.metrics()["miss_rate"] == pytest.approx(3 / 6)


def test_w_confidence_keeps_the_expert_predicted_next():
    # One layer, flat cache of 2 slots, requests A B C A (A=0, B=1, C=2); the perfect predictor looks 2 steps
    # ahead but admits nothing, so only its confidences act (through the eviction score).
    # At step 2 (C) the cache holds A (age 2) and B (age 1); the prediction made at step 1 targets step 3 (A):
    # conf(A) = 1, conf(B) = 0.
    #   w_r=1, w_c=1: A = 1/3 + 1 = 4/3, B = 1/2 -> B is evicted; step 3's A hits
    #   w_r=1, w_c=0: A = 1/3,           B = 1/2 -> A is evicted; step 3's A misses
    trace = make_trace([[0], [1], [2], [0]], num_experts=4)
    cache = CacheConfig(2, 0, 0)
    with_conf, _ = replay(trace, cache, Controls(**NO_ADMISSION, lookahead=2, w_recency=1.0, w_confidence=1.0))
    without, _ = replay(trace, cache, Controls(**NO_ADMISSION, lookahead=2, w_recency=1.0, w_confidence=0.0))
    assert with_conf.metrics()["prefetches_issued"] == without.metrics()["prefetches_issued"] == 0
    assert with_conf.metrics()["hit_rate"] == pytest.approx(1 / 4)
    assert without.metrics()["hit_rate"] == 0.0
    # a hit costs 0.5 ms (compute), a miss 1.5 ms (copy + compute)
    assert with_conf.step_latency_ms.tolist() == [1.5, 1.5, 1.5, 0.5]
    assert without.step_latency_ms.tolist() == [1.5, 1.5, 1.5, 1.5]


# ---- prefetch budget and its split ----------------------------------------------------------------------------------
def groups_trace(steps: int) -> Trace:
    """One layer, top-4 of 12: step s uses the group {4g, .., 4g + 3}, g = s mod 3 (consecutive groups disjoint)."""
    return make_trace([[4 * (s % 3) + k for k in range(4)] for s in range(steps)], num_experts=12)


@pytest.mark.parametrize("budget, per_prediction", [(0, 4), (1, 1), (2, 2), (3, 3), (4, 4), (6, 4)])
def test_prefetch_budget_caps_prefetches_per_prediction(budget, per_prediction):
    # A flat cache of 8 slots: the step's 4 experts are in use, 4 slots are free for the next group, which is
    # never on the GPU when predicted (it left when the group after it came in). The perfect predictor is
    # confident in the 4 experts of the next step; with l2_share = 1 the whole budget goes to confident
    # predictions, so each of the 5 predictions of a 6-step replay prefetches min(budget, 4) (0 = unlimited)
    # and drops the rest.
    s, windows = replay(groups_trace(6), CacheConfig(8, 0, 0), Controls(prefetch_budget=budget, l2_share=1.0),
                        window=1)
    issued = [w.metrics["prefetches_issued"] for w in windows]
    assert issued == [per_prediction] * 5 + [0]  # the last step predicts nothing
    assert s.metrics()["budget_dropped"] == 5 * (4 - per_prediction)


@pytest.mark.parametrize("share, l2_cap, l3_cap", [(0.0, 0, 4), (0.25, 1, 3), (0.5, 2, 2), (0.6, 3, 1), (1.0, 4, 0)])
def test_l2_share_splits_a_finite_budget(share, l2_cap, l3_cap):
    # Budget 4 per prediction: ceil(4 x share) for confident predictions (into L2), the rest for speculative
    # ones (into L3). The noisy oracle gives every expert a confidence; with thresholds 0.3 / 0.0 every one of
    # the 64 experts is a candidate, confident ones (>= 0.3: about 40% of them) for L2 and the others for L3.
    # The cache holds 18 of the 64, so every prediction has more candidates of each kind than its budget.
    rng = np.random.default_rng(4)
    trace = make_trace([rng.choice(64, 2, replace=False).tolist() for _ in range(40)], num_experts=64)
    cache = CacheConfig(2, 8, 8, l3_pressure_limit=1.0)
    controls = Controls(l2_threshold=0.3, l3_threshold=0.0, prefetch_budget=4, l2_share=share)
    s, windows = replay(trace, cache, controls, predictor="noisy-oracle", window=1)
    # an L2 admission is a prefetch, or the promotion of a speculative copy already in L3 (no transfer)
    l2 = [w.counters[kernel.C_PREFETCH_L2] + w.counters[kernel.C_PROMOTED] for w in windows]
    l3 = [w.counters[kernel.C_PREFETCH_L3] for w in windows]
    # never above its share, and the share is reached: admissions stop short of it only when the candidates
    # left are already on the GPU or every slot they could take is held by a key this prediction protects
    assert max(l2) == l2_cap and max(l3) == l3_cap
    assert all(a + b <= 4 for a, b in zip(l2, l3))
    assert sum(a == l2_cap and b == l3_cap for a, b in zip(l2, l3)) >= 20  # most predictions fill both
    assert s.metrics()["budget_dropped"] > 0
    unlimited, _ = replay(trace, cache, controls.replace(prefetch_budget=0), predictor="noisy-oracle")
    assert unlimited.metrics()["prefetches_issued"] > s.metrics()["prefetches_issued"]


# ---- the L3 pressure limit ----------------------------------------------------------------------------------------------
def l3_case(limit: float):
    # One layer, top-2 of 64, step s uses {2s, 2s + 1}; tiers 2 / 2 / 12 (16 slots), no KV cache.
    # The noisy oracle with thresholds 0.95 / 0.0 makes every expert a speculative (L3) candidate and none
    # confident (its confidences stay below 0.92). Pressure at a prediction = (L1 + L2 entries) / 16: at step 0
    # L1 holds the step's 2 experts and L2 nothing (2/16 = 0.125); from step 1 on, the previous step's experts
    # sit in L2 (4/16 = 0.25).
    trace = make_trace([[2 * s, 2 * s + 1] for s in range(6)], num_experts=64)
    cache = CacheConfig(2, 2, 12, l3_pressure_limit=limit)
    controls = Controls(l2_threshold=0.95, l3_threshold=0.0)
    return replay(trace, cache, controls, predictor="noisy-oracle", window=1)


def test_memory_pressure_by_hand():
    s, windows = l3_case(1.0)
    assert [w.metrics["memory_pressure"] for w in windows[:5]] == [0.125, 0.25, 0.25, 0.25, 0.25]
    assert s.metrics()["memory_pressure"] == pytest.approx((0.125 + 4 * 0.25) / 5)


@pytest.mark.parametrize("limit, open_steps", [(0.1, []), (0.2, [0]), (0.25, [0, 1, 2, 3, 4]), (1.0, [0, 1, 2, 3, 4])])
def test_l3_pressure_limit_blocks_l3_admissions_above_it(limit, open_steps):
    s, windows = l3_case(limit)
    for step, w in enumerate(windows[:5]):
        l3 = w.counters[kernel.C_PREFETCH_L3]
        blocked = w.metrics["l3_admissions_blocked"]
        if step in open_steps:
            assert l3 > 0 and blocked == 0, step
        else:
            # closed: every speculative candidate not on the GPU is refused
            assert l3 == 0 and blocked > 0, step
    assert s.metrics()["prefetches_issued"] == sum(w.counters[kernel.C_PREFETCH_L3] for w in windows)


# ---- demand loads overtaking queued prefetches, and lookahead 1 against 2 ------------------------------------------------
def abc_trace() -> Trace:
    """One layer, top-4 of 12: step 0 uses A = {0..3}, step 1 B = {4..7}, step 2 C = {8..11}."""
    return make_trace([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], num_experts=12)


#: tiers 4 / 4 / 0: the step's experts in L1, one group of prefetches in L2
ABC_CACHE = CacheConfig(4, 4, 0)


@pytest.mark.parametrize("overtake, step1_ms", [(True, 7.0), (False, 8.0)])
def test_demand_overtakes_queued_prefetches_lookahead_2(overtake, step1_ms):
    # Perfect predictor, lookahead 2 (step 0 predicts step 2), thresholds 0.7 / 0.3: confident, into L2.
    # step 0, t=0: A misses, copied at [0,1] [1,2] [2,3] [3,4]; prediction of C queues C0..C3 at t=0.
    #              stall 4 + compute 4 x 0.5 = 6 ms.                                                   t -> 6
    # step 1, t=6: the link reached C0 at 4 [4,5], C1 [5,6], C2 [6,7]; C3 would start at 7 > 6: still queued.
    #              B misses (nobody predicted it):
    #   overtake:  B0..B3 jump C3: [7,8] [8,9] [9,10] [10,11]; stall 5 + 2 = 7 ms; C3 goes next at [11,12]
    #   no overtake: C3 first [7,8], then B at [8,9] .. [11,12]; stall 6 + 2 = 8 ms
    #              (B's arrival pushes A to L2 and the eviction score keeps C there: conf 1 against A's 0)
    # step 2:      C landed by 12 (overtake: t=13) or 8 (no overtake: t=14): four hits, 2 ms.
    s, _ = replay(abc_trace(), ABC_CACHE, Controls(lookahead=2, demand_overtakes=overtake))
    assert s.step_latency_ms.tolist() == [6.0, step1_ms, 2.0]
    m = s.metrics()
    assert m["hit_rate"] == pytest.approx(4 / 12) and m["miss_rate"] == pytest.approx(8 / 12)
    assert m["late_prefetch_rate"] == 0.0
    assert m["prefetches_issued"] == 4 and m["prefetches_cancelled"] == 0
    assert m["bytes_transferred"] == 12_000_000
    assert m["link_utilization"] == pytest.approx(12 / (6 + step1_ms + 2))


@pytest.mark.parametrize("overtake", [True, False])
def test_lookahead_1_by_hand(overtake):
    # Perfect predictor, lookahead 1 (step s predicts step s + 1), same trace and cache.
    # step 0, t=0: A misses [0,1]..[3,4]; B0..B3 queued at t=0; 4 + 2 = 6 ms.                              t -> 6
    # step 1, t=6: B0 [4,5] and B1 [5,6] landed: hits; B2 [6,7] in flight: late; B3 still queued: late. B3's
    #              copy goes at 7 either way: ahead of the queue (overtake: the prefetch is cancelled and a
    #              demand load takes its place) or as the queue's head. Ready at 8: stall 2 + 2 = 4 ms.
    #              C0..C3 queued at t=6 (A, demoted to L2, makes way).                                     t -> 10
    # step 2, t=10: C0 [8,9], C1 [9,10] landed; C2 [10,11] late; C3 queued, copied at [11,12]: 2 + 2 = 4 ms.
    s, _ = replay(abc_trace(), ABC_CACHE, Controls(lookahead=1, demand_overtakes=overtake))
    assert s.step_latency_ms.tolist() == [6.0, 4.0, 4.0]
    m = s.metrics()
    assert m["hit_rate"] == pytest.approx(4 / 12)
    assert m["late_prefetch_rate"] == pytest.approx(4 / 12)
    assert m["miss_rate"] == pytest.approx(4 / 12)
    assert m["prefetches_issued"] == 8
    # an overtaken prefetch is cancelled and its expert copied as a demand load; the bytes are the same
    assert m["prefetches_cancelled"] == (2 if overtake else 0)
    assert m["prefetches_overtaken"] == m["prefetches_cancelled"]  # none was evicted while queued
    assert m["demand_bytes"] == (6_000_000 if overtake else 4_000_000)
    assert m["bytes_transferred"] == 12_000_000
    assert m["prefetch_precision"] == 1.0


@pytest.mark.parametrize("lookahead", [1, 2])
def test_lookahead_targets_across_layers(lookahead):
    # Three layers, two tokens (two steps), top-1 of 4; every token chooses expert 0 at layer 0, 1 at layer 1,
    # 2 at layer 2, so the target (step s + (l + d) // 3, layer (l + d) % 3) is named by its expert.
    # Predictions run at every step-layer whose target exists: 6 - d of them. The perfect predictor prefetches
    # exactly the target's expert, unless it is already on the GPU: with per-layer tiers 1 / 1 / 0 the experts
    # of step 0 stay resident, so only the targets inside step 0 (never seen yet) are copied:
    #   d = 1: targets (0,1) (0,2) (1,0) (1,1) (1,2): prefetches of (0,1) and (0,2): 2
    #   d = 2: targets (0,2) (1,0) (1,1) (1,2):       prefetch of (0,2): 1
    trace = make_trace([[[0], [1], [2]], [[0], [1], [2]]], num_experts=4)
    s, _ = replay(trace, CacheConfig(1, 1, 0), Controls(lookahead=lookahead))
    assert s.counters[kernel.C_PRED_EVENTS] == 6 - lookahead
    assert s.metrics()["prefetches_issued"] == {1: 2, 2: 1}[lookahead]
    assert s.metrics()["predictor_top1_accuracy"] == 1.0


# ---- the reference policies' latency --------------------------------------------------------------------------------
def reference_trace() -> Trace:
    # two layers, top-1; layer 0 requests A B C A B (0 1 2 0 1), layer 1 requests A A B C B (1 1 2 3 2)
    return make_trace([[[0], [1]], [[1], [1]], [[2], [2]], [[0], [3]], [[1], [2]]], num_experts=4)


@pytest.mark.parametrize(
    "policy, hits, step_ms",
    [
        # 2 slots per layer, demand only: a hit costs 0.5 ms (compute), a miss 1.5 ms (copy + compute).
        # lru, layer 0: A B C(evicts A) A(evicts B) B(evicts C): all 5 miss
        #      layer 1: A, A hit, B, C(evicts A), B hit: 2 hits
        ("lru", 2, [3.0, 2.0, 3.0, 3.0, 2.0]),
        # belady, layer 0: at C, A is needed again at step 3 and B at 4: B is evicted, step 3's A hits
        #         layer 1: at C, A is never needed again: evicted; as lru: 2 hits
        ("belady", 3, [3.0, 2.0, 3.0, 2.0, 2.0]),
    ],
)
def test_reference_policy_latency_by_hand(policy, hits, step_ms):
    trace = reference_trace()
    config, controls = policy_setup(trace, policy, SimConfig(cache=CacheConfig(1, 1, 0)), Controls())
    assert config.cache == CacheConfig(2, 0, 0)  # the references replay one tier of the same slots
    s = Simulator(trace, config, rng=np.random.default_rng(0), profile=EXAMPLE_PROFILE)
    s.run(None, controls)
    m = s.metrics()
    assert m["hit_rate"] == pytest.approx(hits / 10)
    assert s.step_latency_ms.tolist() == step_ms
    assert m["mean_latency_ms"] == pytest.approx(sum(step_ms) / 5)
    assert m["prefetches_issued"] == 0 and m["demand_bytes"] == (10 - hits) * 1_000_000


# ---- the demand-all reference against the kernel --------------------------------------------------------------------------
def no_repeat_trace(seed: int, steps: int, layers: int = 3, experts: int = 16, top_k: int = 2) -> Trace:
    """Two sequences of ``steps`` tokens; at batch 2 step s runs token s of each. No expert of a layer is used
    by two consecutive steps (a step's experts are drawn from those the previous step did not use)."""
    rng = np.random.default_rng(seed)
    routing = np.zeros((2 * steps, layers, top_k), dtype=np.int64)
    for layer in range(layers):
        previous: set[int] = set()
        for s in range(steps):
            allowed = [e for e in range(experts) if e not in previous]
            used = set()
            for token in (s, steps + s):
                routing[token, layer] = rng.choice(allowed, top_k, replace=False)
                used |= set(routing[token, layer].tolist())
            previous = used
    meta = make_meta(model="no-repeat", num_experts=experts, top_k=top_k, num_layers=layers,
                     expert_bytes=20_000_000, phase="decode", source="tests")
    return Trace(experts=routing, sequence=np.repeat([0, 1], steps).astype(np.int32), meta=meta)


@pytest.mark.parametrize("timing, profile", [("timeline", "h100"), ("seed", "rtx3090-seed")])
def test_demand_all_reference_equals_the_kernel_when_every_request_misses(timing, profile):
    # A cache of exactly top_k slots can only keep experts of the previous step, which the next step never
    # uses: every request misses, so the kernel's step latency is the demand-all reference's.
    trace = no_repeat_trace(seed=1, steps=12)
    workload = WorkloadConfig(batch_min=2, batch_max=2, background_min=0.3, background_max=0.3)
    config = SimConfig(cache=CacheConfig(2, 0, 0), workload=workload, timing=timing, profile=profile)
    config, controls = policy_setup(trace, "lru", config, Controls())
    s = Simulator(trace, config, rng=np.random.default_rng(0))
    s.run(None, controls)
    m = s.metrics()
    assert m["hit_rate"] == 0.0 and m["miss_rate"] == 1.0
    assert s.schedule.step_ntokens.tolist() == [2] * 12
    sch = s.schedule
    ref = DemandAllReference(trace, load_profile(profile), trace.expert_bytes, timing, sch.step_tokens.shape[1])
    assert s.step_latency_ms == pytest.approx(ref.step_latency_ms(sch.step_tokens, sch.link_share), rel=1e-12)
    assert m["mean_latency_ms"] == pytest.approx(ref.mean_latency_ms(sch.step_tokens, sch.step_ntokens,
                                                                     sch.link_share), rel=1e-12)


def test_with_thresholds_is_replace_with_the_thresholds_checked():
    base = Controls(lookahead=2, prefetch_budget=3, l2_share=0.25, w_frequency=0.5, demand_overtakes=False)
    moved = base.with_thresholds(0.8, 0.2)
    assert moved == base.replace(l2_threshold=0.8, l3_threshold=0.2)
    assert moved.to_dict() == {**base.to_dict(), "l2_threshold": 0.8, "l3_threshold": 0.2}
    assert base.l2_threshold == 0.7 and base.l3_threshold == 0.3  # the original is unchanged
    for l2, l3 in ((0.4, 0.5), (float("nan"), 0.1), (0.5, -0.1), (1.5, 0.2)):
        with pytest.raises(ConfigError, match="threshold"):
            base.with_thresholds(l2, l3)
