"""The policy zoo (docs/policies.md): every rule on a case computed by hand, and the fitted parts against
plain-Python references.

The hand cases use one sequence at batch 1 with top-1 routing unless said otherwise, so step ``s`` requests
one expert per layer and the kernel's clock (steps) equals ``s`` at layer 0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moe_cache_env.sim import kernel as K
from moe_cache_env.sim import zoo
from moe_cache_env.sim.config import CacheConfig, ConfigError, SimConfig, WorkloadConfig
from moe_cache_env.sim.evaluate import POLICIES, POLICY_KINDS, EvaluationRequest, evaluate, fit_source
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace, make_meta

from .flat_reference import flat_cache_hits


def make_trace(routes: list[list[list[int]]], experts: int, weights: list | None = None,
               sequence: list[int] | None = None) -> Trace:
    """``routes[t][l]``: the experts token t chose at layer l."""
    chosen = np.asarray(routes, dtype=np.int64)
    T, L, Kk = chosen.shape
    seq = np.zeros(T, dtype=np.int32) if sequence is None else np.asarray(sequence, dtype=np.int32)
    meta = make_meta(model="hand", num_experts=experts, top_k=Kk, num_layers=L, expert_bytes=1_000_000,
                     phase="decode", source="tests")
    w = None if weights is None else np.asarray(weights, dtype=np.float32)
    return Trace(experts=chosen, sequence=seq, meta=meta, weights=w)


def single_layer(stream: list[int], experts: int) -> Trace:
    return make_trace([[[e]] for e in stream], experts)


def replay(trace: Trace, eviction: str, slots: int, fit_trace: Trace | None = None, steps: int | None = None,
           scope: str = "per-layer", **fields) -> Simulator:
    config = SimConfig(cache=CacheConfig(slots, 0, 0, scope=scope), predictor="none", eviction=eviction,
                       profile="h100", **fields)
    sim = Simulator(trace, config, rng=np.random.default_rng(0), fit_trace=fit_trace)
    sim.run(steps)
    return sim


def hits(sim: Simulator) -> int:
    return int(sim.counters[K.C_HIT_L1])


def resident(sim: Simulator) -> set[int]:
    return {int(k) for k in np.flatnonzero(sim.state.tiers.k_tier)}


# One stream, two slots, worked out by hand for each rule (t: request -> outcome, cache after):
# FIFO : 0 m {0}; 1 m {0,1}; 0 h; 2 m evict 0 (first in) {1,2}; 0 m evict 1; 1 m evict 2; 3 m evict 0; 1 h -> 2
# LRU  : 0 m; 1 m; 0 h; 2 m evict 1 {0,2}; 0 h; 1 m evict 2 {0,1}; 3 m evict 0 {1,3}; 1 h                 -> 3
# LFU (no decay, counts since admission): 0 m; 1 m; 0 h (0:2); 2 m evict 1 (1 use); 0 h (0:3); 1 m evict 2;
#        3 m evict 1 (1 use) {0:3, 3:1}; 1 m evict 3                                                        -> 2
# LFU decayed by 0.5 per step: at t=6 key 0 scores 1.3125 * 0.5^2 = 0.328 < key 1's 1 * 0.5 = 0.5: evict 0 -> 3
# LFRU (uses / (1 + age)): t=3: 0 -> 2/2, 1 -> 1/3: evict 1; t=5: 0 -> 3/2, 2 -> 1/3: evict 2; t=6: 0 -> 3/3,
#        1 -> 1/2: evict 1; t=7: 0 -> 3/4, 3 -> 1/2: evict 3, so 1 misses                                    -> 2
STREAM = [0, 1, 0, 2, 0, 1, 3, 1]


@pytest.mark.parametrize("eviction, fields, expected", [
    ("fifo", {}, 2),
    ("lru", {}, 3),
    ("lfu", {"stats_decay": 1.0}, 2),
    ("lfu", {"stats_decay": 0.5}, 3),
    ("lfru", {}, 2),
])
def test_hand_computed_stream(eviction, fields, expected):
    sim = replay(single_layer(STREAM, 4), eviction, 2, **fields)
    assert hits(sim) == expected
    assert sim.counters[K.C_MISS] == len(STREAM) - expected


def test_lfu_resident_set_after_decay():
    # after t=6 the decayed LFU keeps {1, 3} (key 0 decayed below key 1), the undecayed one {0, 3}
    assert resident(replay(single_layer(STREAM, 4), "lfu", 2, steps=7, stats_decay=0.5)) == {1, 3}
    assert resident(replay(single_layer(STREAM, 4), "lfu", 2, steps=7, stats_decay=1.0)) == {0, 3}


def test_mrs_reads_gate_weights_and_keeps_scores():
    # top-2, three slots. step 0 routes experts 0 and 1 with gate weights w0, w1; step 1 needs 2 and 3 (one of 0
    # and 1 must go); step 2 needs 0 and 2. MRS (alpha 0.5): scores 0.5 * w; the lower-weight expert goes.
    routes = [[[0, 1]], [[2, 3]], [[0, 2]]]
    heavy_first = replay(make_trace(routes, 4, weights=[[[0.9, 0.1]], [[0.5, 0.5]], [[0.5, 0.5]]]), "mrs", 3)
    assert hits(heavy_first) == 2  # expert 1 (weight 0.1) was evicted: 0 and 2 both hit at step 2
    light_first = replay(make_trace(routes, 4, weights=[[[0.1, 0.9]], [[0.5, 0.5]], [[0.5, 0.5]]]), "mrs", 3)
    assert hits(light_first) == 1  # expert 0 was evicted
    # without weights every choice counts 1 / top_k: a tie, broken like LRU (same last use) by the lower key
    assert hits(replay(make_trace(routes, 4), "mrs", 3)) == 1


def test_mrs_hand_computed_scores():
    # two slots, top-1, alpha 0.5: a use adds 0.5 to the score, which halves per step.
    # S0 after t=0, 1, 2: 0.5, 0.75, 0.875; t=3: 1 joins, S1 = 0.5
    stream = [0, 0, 0, 1, 2, 0, 3]
    # by hand: t=4 (2 misses): S0 = 0.875 * 0.25 = 0.21875, S1 = 0.5 * 0.5 = 0.25 -> evict 0; {1, 2}
    # t=5 (0 misses): S1 = 0.125, S2 = 0.25 -> evict 1; S0 = 0.875 * 0.125 + 0.5 = 0.609375; {2, 0}
    # t=6 (3 misses): S2 = 0.125, S0 = 0.3046875 -> evict 2: {0, 3}
    sim = replay(single_layer(stream, 4), "mrs", 2, mrs_alpha=0.5)
    assert resident(sim) == {0, 3}
    assert hits(sim) == 2


def test_least_stale_evicts_the_layer_that_just_ran():
    # two layers, three experts, top-1, one global pool of 3 slots; keys: layer l expert e = 3 l + e.
    # step 0 needs keys 0, 3; step 1 needs 1, 4. At (1, 1) key 4 misses with {0, 3, 1} resident: layer 1 just ran,
    # so its key 3 is the stalest (next wanted a whole step away); LRU evicts key 0 (the oldest) instead.
    trace = make_trace([[[0], [0]], [[1], [1]], [[2], [0]]], 3)
    assert resident(replay(trace, "least-stale", 3, steps=2, scope="global")) == {0, 1, 4}
    assert resident(replay(trace, "lru", 3, steps=2, scope="global")) == {1, 3, 4}


def test_least_stale_per_layer_is_lru():
    # within one layer every key is equally stale: the tie-break (least recently used) decides
    trace = single_layer(STREAM, 4)
    assert hits(replay(trace, "least-stale", 2)) == hits(replay(trace, "lru", 2)) == 3


def test_static_hot_set_is_preloaded_and_kept():
    # fitted frequencies: 0 -> 3, 1 -> 2, 2 -> 1, 3 -> 0. Three slots start holding {0, 1, 2}, copied at start-up
    # (no transfer counted). Replay 2 h, 0 h, 3 m (evict 2, the coldest), 1 h, 2 m (evict 3, never seen): 3 hits
    fit = single_layer([0, 0, 0, 1, 1, 2], 4)
    sim = replay(single_layer([2, 0, 3, 1, 2], 4), "static", 3, fit_trace=fit)
    assert hits(sim) == 3
    assert sim.counters[K.C_DEMAND_LOADS] == 2
    assert sim.metrics()["bytes_transferred"] == 2 * 1_000_000
    assert resident(sim) == {0, 1, 2}
    with pytest.raises(ConfigError, match="fit trace"):
        replay(single_layer([0, 1], 4), "static", 2)


def test_lru_miss_curves_match_a_plain_lru():
    rng = np.random.default_rng(5)
    experts = np.stack([np.stack([rng.choice(6, 2, replace=False) for _ in range(3)]) for _ in range(60)])
    curves = zoo.lru_miss_curves(experts, 6)
    for layer in range(3):
        for slots in range(2, 7):
            cache: list[int] = []  # most recent last
            misses = 0
            for t in range(len(experts)):
                want = sorted(int(e) for e in experts[t, layer])
                misses += sum(e not in cache for e in want)
                cache = [k for k in cache if k not in want] + want  # lower key older within a token
                cache = cache[-slots:]
            assert curves[layer, slots] == misses


def test_layer_allocation_is_the_exhaustive_optimum():
    rng = np.random.default_rng(2)
    curves = np.sort(rng.random((3, 7)) * 100, axis=1)[:, ::-1].copy()  # misses fall with slots
    for budget in range(6, 19):
        slots = zoo.allocate_layer_slots(curves, budget, 2, 6)
        assert slots.sum() == budget and slots.min() >= 2 and slots.max() <= 6
        best = min(curves[0, a] + curves[1, b] + curves[2, budget - a - b]
                   for a in range(2, 7) for b in range(2, 7) if 2 <= budget - a - b <= 6)
        assert curves[np.arange(3), slots].sum() == pytest.approx(best)
    # by hand: layer 0 gains 50 from a 3rd slot, layer 1 only 1: the 3rd slot of a 5-slot budget goes to layer 0
    hand = np.array([[0, 0, 100, 50, 50], [0, 0, 10, 9, 9]], dtype=float)
    assert zoo.allocate_layer_slots(hand, 5, 2, 4).tolist() == [3, 2]


def test_layer_alloc_replays_each_layer_as_its_own_lru():
    rng = np.random.default_rng(7)
    experts = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)]) for _ in range(80)])
    trace = make_trace(experts.tolist(), 8)
    sim = replay(trace, "lru", 4, fit_trace=trace, layer_slots="fitted")
    caps = sim.state.eviction.layer_caps
    assert caps.shape == (sim.num_steps, 3) and (caps.sum(axis=1) == 12).all()
    total = 0
    for layer in range(3):
        one = experts[:, layer:layer + 1, :]
        h, _ = flat_cache_hits(one, 8, sim.schedule.step_tokens, caps[:, layer], "lru")
        total += h
    assert hits(sim) == total


def test_activation_matrix_prediction_matches_the_closest_recorded_sequence():
    # recorded: sequence A always routes to expert 0 at both layers, B to expert 1 at layer 0 and 2 at layer 1.
    fit = make_trace([[[0], [0]]] * 3 + [[[1], [2]]] * 3, 3, sequence=[0, 0, 0, 1, 1, 1])
    replayed = make_trace([[[1], [1]], [[1], [2]], [[1], [2]]], 3)
    predictor = zoo.ActivationMatrixPredictor()
    predictor.fit(fit)
    sim = Simulator(replayed, SimConfig(cache=CacheConfig(2, 0, 0), predictor="none"), rng=np.random.default_rng(0))
    predictor.start(replayed, sim.schedule)
    conf = predictor.confidences(0, 3, 1)
    # step 0 has no routing yet: the recorded mean (A and B half each); layer 1 targets layer 1 of the same step
    assert conf[0, 0].tolist() == pytest.approx([0.5, 0.0, 0.5])
    # step 1 has seen token 0 (experts 1 and 1): closest to B -> layer 1 of step 1 is expert 2, layer 0 of step 2
    # is expert 1
    assert conf[1, 0].tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert conf[1, 1].tolist() == pytest.approx([0.0, 1.0, 0.0])
    # the last step's layer-1 prediction targets a step past the end: zeros
    assert conf[2, 1].tolist() == [0.0, 0.0, 0.0]


def test_zoo_policies_run_through_evaluate_and_fit_on_the_head():
    rng = np.random.default_rng(11)
    lengths = [30, 20, 25, 15]
    experts = np.stack([np.stack([rng.choice(10, 2, replace=False) for _ in range(3)]) for _ in range(90)])
    trace = make_trace(experts.tolist(), 10, sequence=np.repeat(np.arange(4), lengths).tolist())
    head = fit_source(trace, "hot-set", None)
    assert head is not None and head.num_tokens == 30  # the first quarter of the sequences: one of four
    assert fit_source(trace, "lru", None) is None
    config = SimConfig(cache=CacheConfig(4, 0, 0), workload=WorkloadConfig(batch_min=2, batch_max=2))
    zoo_rows = ["fifo", "lfu", "lfru", "least-stale", "mrs", "hot-set", "layer-alloc", "activation-aware"]
    assert set(zoo_rows) <= set(POLICIES) and all(POLICY_KINDS[p] == "policy" for p in zoo_rows)
    belady = evaluate(trace, EvaluationRequest(policy="belady", config=config))["metrics"]
    for policy in zoo_rows:
        m = evaluate(trace, EvaluationRequest(policy=policy, config=config))["metrics"]
        assert m["expert_requests"] == belady["expert_requests"]
        # belady bounds demand-only caches of the same per-layer slots that start empty; not a global pool,
        # another split of the slots, a preloaded cache or a prefetching one
        if policy not in ("least-stale", "layer-alloc", "hot-set", "activation-aware"):
            assert m["hit_rate"] <= belady["hit_rate"] + 1e-12


@pytest.mark.slow
def test_cli_runs_the_checked_policy_list(tmp_path, capsys):
    from moe_cache_env.cli import main

    out = tmp_path / "zoo.json"
    rc = main(["evaluate", "--trace", "qwen1.5-moe", "--policy", "lru,lfu,lfru,least-stale,belady", "--json",
               str(out), "--capacity", "12"])
    assert rc == 0
    payload = json.loads(out.read_text())["policies"]
    assert set(payload) == {"lru", "lfu", "lfru", "least-stale", "belady"}
    # belady bounds the demand-only caches of the same per-layer slots
    for name in ("lru", "lfu", "lfru"):
        assert payload[name]["hit_rate"] <= payload["belady"]["hit_rate"]


def reference_hits(stream: list[int], slots: int, rule: str, rate: float) -> int:
    """A plain-Python demand-only cache of one layer with top-1 routing, written from docs/policies.md (shares
    no code with the kernel): lowest score evicted, ties to the least recently used, then the lower expert.
    ``rate``: LFU's decay per step, or MRS's alpha."""
    cache: set[int] = set()
    last: dict[int, int] = {}
    uses: dict[int, int] = {}
    admitted: dict[int, int] = {}
    score: dict[int, tuple[float, int]] = {}  # (value, step it was brought up to date)
    hits = 0
    for t, key in enumerate(stream):
        if key in cache:
            hits += 1
        else:
            cache.add(key)
            admitted[key] = t
            uses[key] = 0
            if rule == "lfu":
                score[key] = (0.0, t)
        uses[key] += 1
        last[key] = t
        value, since = score.get(key, (0.0, t))
        if rule == "lfu":
            score[key] = (value * rate ** (t - since) + 1.0, t)
        elif rule == "mrs":
            score[key] = (value * rate ** (t - since) + (1.0 - rate), t)
        if len(cache) > slots:
            def rank(k: int) -> tuple[float, int, int]:
                if rule == "fifo":
                    s = float(admitted[k])
                elif rule == "lfru":
                    s = uses[k] / (1.0 + (t - last[k]))
                else:
                    v, since_k = score[k]
                    s = v * rate ** (t - since_k)
                return (s, last[k], k)
            cache.remove(min((k for k in cache if k != key), key=rank))
    return hits


@pytest.mark.parametrize("rule, rate", [("fifo", 1.0), ("lfu", 1.0), ("lfu", 0.5), ("lfru", 1.0), ("mrs", 0.5),
                                        ("mrs", 0.25)])
def test_zoo_rules_match_a_plain_python_cache(rule, rate):
    rng = np.random.default_rng(sum(map(ord, rule)) + int(rate * 100))
    fields = {"lfu": {"stats_decay": rate}, "mrs": {"mrs_alpha": rate}}.get(rule, {})
    for _ in range(15):
        experts = int(rng.integers(3, 9))
        p = rng.dirichlet(np.full(experts, 0.6))
        stream = [int(e) for e in rng.choice(experts, size=int(rng.integers(10, 70)), p=p)]
        slots = int(rng.integers(1, min(5, experts)))
        sim = replay(single_layer(stream, experts), rule, slots, **fields)
        assert hits(sim) == reference_hits(stream, slots, rule, rate), (stream, slots)
