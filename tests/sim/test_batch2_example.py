"""The batch-2 worked example of docs/worked-example-batch2.md: every number computed by hand, then checked.

Two sequences of four tokens, two MoE layers, five experts, top-1, served two at a time (batch 2: step s runs
token s of each sequence), 3 expert slots per layer. Profile: a copy takes 1 ms (one at a time on the link),
an expert computes in 0.5 ms whatever its token count, nothing else costs time.

Requests per step, (sequence A's expert, sequence B's expert) -> the distinct experts the step loads:

    step | layer 0           | layer 1
    0    | (0, 1) -> {0, 1}  | (4, 4) -> {4}
    1    | (2, 2) -> {2}     | (0, 1) -> {0, 1}
    2    | (3, 0) -> {3, 0}  | (2, 4) -> {2, 4}
    3    | (1, 1) -> {1}     | (0, 3) -> {0, 3}

13 requests after deduplication (6 at layer 0, 7 at layer 1). A step's experts are pinned while it runs.

lru (one tier of 3 slots per layer, least recently used out; ties to the lower expert):
    layer 0: s0 0, 1 miss {0 1} | s1 2 miss {0 1 2} | s2 0 HIT, 3 miss, evicts 1 (last used s0) {0 2 3}
             | s3 1 miss, evicts 2 (s1; 0 and 3 were used at s2) {0 1 3}                      -> 1 hit
    layer 1: s0 4 miss {4} | s1 0, 1 miss {0 1 4} | s2 4 HIT, 2 miss, evicts 0 (tie with 1 at s1: lower)
             {1 2 4} | s3 0, 3 miss, evict 1 (s1) then 2 (tie with 4 at s2: lower) {0 3 4}         -> 1 hit
    hit rate 2 / 13
belady (one tier of 3 slots, the expert needed farthest ahead out; never again = farthest; ties lower):
    layer 0: s2 evicts 2 (never again; 1 is needed at s3) | s3 1 HIT                            -> 2 hits
    layer 1: s2 evicts 1 (never again; 0 is needed at s3) | s3 0 HIT, 3 miss evicts 2 (2, 4: never again, lower)
                                                                                                 -> 2 hits
    hit rate 4 / 13
no-prefetch (three tiers 1 / 1 / 1, no predictor, recency order; L1 -> L2 -> L3 -> out): the tiers keep
    the keys in recency order (L1 newest), and a key leaving the last tier is the least recent of the three,
    so it evicts what lru evicts: at s2 layer 0, L1 {2} L2 {1} L3 {0}: 0 hits in L3, 3 misses; 2 is
    demoted, pushing 1 down, and the pool's 4th key (1) leaves. Layer 1, s2: 4 hits in L3, 0 leaves.
    hit rate 2 / 13 (the same hits as lru)

lru latency per step: a layer takes (its misses x 1 ms, copied one after another) + (its experts x 0.5 ms)
    s0: layer 0 2 misses, 2 experts: 3.0; layer 1 1 miss, 1 expert: 1.5           -> 4.5
    s1: layer 0 1 miss: 1.5; layer 1 2 misses: 3.0                                  -> 4.5
    s2: layer 0 1 hit + 1 miss: 1 + 1 = 2.0; layer 1 1 hit + 1 miss: 2.0           -> 4.0
    s3: layer 0 1 miss: 1.5; layer 1 2 misses: 3.0                                  -> 4.5
    mean per token 17.5 / 4 = 4.375 ms (every step runs 2 tokens)
belady: s3 layer 0 hits (0.5) and layer 1 has 1 hit + 1 miss (2.0)                  -> [4.5, 4.5, 4.0, 2.5]
"""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.profiles import save_profile
from moe_cache_env.sim.config import SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate
from moe_cache_env.traces.format import Trace, make_meta

from .test_worked_example import EXAMPLE_PROFILE

# routing[token] = (layer 0 expert, layer 1 expert); tokens 0-3 are sequence A, 4-7 sequence B
ROUTING = [
    [0, 4], [2, 0], [3, 2], [1, 0],  # A
    [1, 4], [2, 1], [0, 4], [1, 3],  # B
]


def batch2_trace() -> Trace:
    experts = np.asarray(ROUTING, dtype=np.int64)[:, :, None]
    meta = make_meta(model="worked-example-batch2", num_experts=5, top_k=1, num_layers=2, expert_bytes=1_000_000,
                     phase="decode", source="docs/worked-example-batch2.md")
    return Trace(experts=experts, sequence=np.repeat([0, 1], 4).astype(np.int32), meta=meta)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    profile = save_profile(EXAMPLE_PROFILE, tmp_path_factory.mktemp("profile") / "worked-example.json")
    cache = split_capacity(3, 1)  # 1 / 1 / 1 per layer
    config = SimConfig(cache=cache, workload=WorkloadConfig(batch_min=2, batch_max=2), profile=str(profile))
    out = {}
    for policy in ("lru", "belady", "no-prefetch"):
        r = evaluate(batch2_trace(), EvaluationRequest(policy=policy, config=config, window_steps=1))
        out[policy] = (r["metrics"], [w["mean_latency_ms"] for w in r["windows"]])
    return out


def test_the_example_is_what_the_docs_describe():
    assert split_capacity(3, 1).l1_slots == split_capacity(3, 1).l2_slots == split_capacity(3, 1).l3_slots == 1


@pytest.mark.parametrize("policy, hits", [("lru", 2), ("belady", 4), ("no-prefetch", 2)])
def test_hit_rates_match_the_hand_computation(results, policy, hits):
    m, _ = results[policy]
    assert m["steps"] == 4 and m["tokens"] == 8
    assert m["routing_events"] == 16  # 8 tokens x 2 layers, before deduplication
    assert m["expert_requests"] == 13
    assert m["hit_rate"] == pytest.approx(hits / 13)
    assert m["miss_rate"] == pytest.approx((13 - hits) / 13)
    assert m["prefetches_issued"] == 0


@pytest.mark.parametrize(
    "policy, step_ms",
    [("lru", [4.5, 4.5, 4.0, 4.5]), ("belady", [4.5, 4.5, 4.0, 2.5]), ("no-prefetch", [4.5, 4.5, 4.0, 4.5])],
)
def test_step_latencies_match_the_hand_computation(results, policy, step_ms):
    m, per_step = results[policy]
    assert per_step == step_ms
    assert m["mean_latency_ms"] == pytest.approx(sum(step_ms) / 4)  # two tokens in every step


def test_no_prefetch_hits_in_the_lowest_tier(results):
    # both of no-prefetch's hits (0 at layer 0 and 4 at layer 1, step 2) are found in L3
    m, _ = results["no-prefetch"]
    assert m["hit_rate_l3"] == pytest.approx(2 / 13)
    assert m["hit_rate_l1"] == m["hit_rate_l2"] == 0.0
