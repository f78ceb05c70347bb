"""Predictors: the co-occurrence fit against a plain-Python count, the noisy oracle against its configured accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_cache_env.sim import kernel
from moe_cache_env.sim.config import SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.predictors import MAX_LOOKAHEAD, fit_cooccurrence
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace, make_meta


def random_routing(rng: np.random.Generator, tokens: int, layers: int, experts: int, top_k: int) -> np.ndarray:
    return np.stack([np.stack([rng.choice(experts, top_k, replace=False) for _ in range(layers)])
                     for _ in range(tokens)]).astype(np.int64)


def plain_cooccurrence(experts: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """The definition, one token and one pair at a time."""
    T, L, K = experts.shape
    pair = np.zeros((MAX_LOOKAHEAD, L, num_experts, num_experts), dtype=np.int64)
    src = np.zeros((MAX_LOOKAHEAD, L, num_experts), dtype=np.int64)
    for d in range(1, MAX_LOOKAHEAD + 1):
        for layer in range(L - d):
            for t in range(T):
                for i in experts[t, layer]:
                    src[d - 1, layer, i] += 1
                    for j in experts[t, layer + d]:
                        pair[d - 1, layer, i, j] += 1
    return pair, src


# ---- the co-occurrence fit -------------------------------------------------------------------------------------------
def test_cooccurrence_fit_by_hand():
    # two tokens, three layers, four experts, top-2
    #   token 0: layer 0 {0, 1}, layer 1 {2, 3}, layer 2 {0, 2}
    #   token 1: layer 0 {0, 2}, layer 1 {2, 1}, layer 2 {3, 0}
    experts = np.array([[[0, 1], [2, 3], [0, 2]], [[0, 2], [2, 1], [3, 0]]], dtype=np.int64)
    pair, src = fit_cooccurrence(experts, 4)
    assert pair.shape == (2, 3, 4, 4) and src.shape == (2, 3, 4)
    # d = 1, layer 0 -> 1: expert 0 (both tokens) is followed by 2, 3 (token 0) and 2, 1 (token 1)
    assert pair[0, 0, 0].tolist() == [0, 1, 2, 1]
    assert pair[0, 0, 1].tolist() == [0, 0, 1, 1]  # 1 only in token 0
    assert pair[0, 0, 2].tolist() == [0, 1, 1, 0]  # 2 only in token 1
    assert src[0, 0].tolist() == [2, 1, 1, 0]
    # d = 1, layer 1 -> 2: token 0 {2, 3} -> {0, 2}; token 1 {2, 1} -> {3, 0}
    assert pair[0, 1, 2].tolist() == [2, 0, 1, 1]
    assert pair[0, 1, 3].tolist() == [1, 0, 1, 0]
    assert pair[0, 1, 1].tolist() == [1, 0, 0, 1]
    assert src[0, 1].tolist() == [0, 1, 2, 1]
    # d = 2, layer 0 -> 2: token 0 {0, 1} -> {0, 2}; token 1 {0, 2} -> {3, 0}
    assert pair[1, 0, 0].tolist() == [2, 0, 1, 1]
    assert src[1, 0].tolist() == [2, 1, 1, 0]
    # no layer l + d exists: nothing counted
    assert not pair[0, 2].any() and not src[0, 2].any()
    assert not pair[1, 1:].any() and not src[1, 1:].any()


@pytest.mark.parametrize("seed, layers, experts, top_k", [(0, 1, 4, 1), (1, 2, 6, 2), (2, 4, 8, 3), (3, 5, 16, 6)])
def test_cooccurrence_fit_equals_a_plain_count(seed, layers, experts, top_k):
    rng = np.random.default_rng(seed)
    routing = random_routing(rng, 60, layers, experts, top_k)
    pair, src = fit_cooccurrence(routing, experts)
    want_pair, want_src = plain_cooccurrence(routing, experts)
    assert pair.dtype == np.int32 and src.dtype == np.int32
    assert np.array_equal(pair, want_pair)
    assert np.array_equal(src, want_src)
    # every source count is the row sum of its pairs over top_k partners
    assert np.array_equal(pair.sum(axis=3), src * top_k)


# ---- the noisy oracle ------------------------------------------------------------------------------------------------
def oracle_trace(seed: int, tokens: int = 1200) -> Trace:
    rng = np.random.default_rng(seed)
    lengths = [200] * (tokens // 200)
    routing = random_routing(rng, tokens, 4, 16, 2)
    meta = make_meta(model="random", num_experts=16, top_k=2, num_layers=4, expert_bytes=1_000_000,
                     phase="decode", source="tests")
    return Trace(experts=routing, sequence=np.repeat(np.arange(len(lengths)), lengths).astype(np.int32), meta=meta)


@pytest.mark.parametrize("accuracy", [0.0, 0.2, 0.4755, 0.8, 1.0])
@pytest.mark.parametrize("batch", [1, 4])
def test_noisy_oracle_reaches_its_configured_top1_accuracy(accuracy, batch):
    """Its most confident expert is a true one with probability ``oracle_accuracy``: over n predictions the
    share of right top-1 picks is binomial(n, accuracy) / n, so it lies within 4 standard deviations."""
    trace = oracle_trace(seed=int(accuracy * 100) + batch)
    config = SimConfig(cache=split_capacity(8, 2), predictor="noisy-oracle", oracle_accuracy=accuracy,
                       workload=WorkloadConfig(batch_min=batch, batch_max=batch), profile="h100")
    sim = Simulator(trace, config, rng=np.random.default_rng(11))
    sim.run()
    m = sim.metrics()
    # one prediction per step-layer except the last `lookahead` (1) of the replay, which target no step
    n = m["steps"] * trace.num_layers - 1
    assert sim.counters[kernel.C_PRED_EVENTS] == n
    sigma = math.sqrt(accuracy * (1 - accuracy) / n)
    assert m["predictor_top1_accuracy"] == pytest.approx(accuracy, abs=4 * sigma + 1e-12)


def test_noisy_oracle_accuracies_are_ordered_on_the_same_replay():
    """Same trace, same seed: a more accurate oracle is right more often (a check on the direction, not only on
    the distance)."""
    trace = oracle_trace(seed=5)
    got = []
    for accuracy in (0.1, 0.5, 0.9):
        config = SimConfig(cache=split_capacity(8, 2), predictor="noisy-oracle", oracle_accuracy=accuracy)
        sim = Simulator(trace, config, rng=np.random.default_rng(0))
        sim.run()
        got.append(sim.metrics()["predictor_top1_accuracy"])
    assert got[0] < got[1] < got[2]


def test_fitted_tables_are_computed_once_per_trace_object_and_read_only():
    from moe_cache_env.sim.simulator import fitted_cooccurrence

    rng = np.random.default_rng(9)
    meta = make_meta(model="fit-cache", num_experts=6, top_k=2, num_layers=3, expert_bytes=1000, phase="decode",
                     source="tests")
    first = Trace(experts=random_routing(rng, 40, 3, 6, 2), sequence=np.zeros(40, dtype=np.int32), meta=meta)
    second = Trace(experts=random_routing(rng, 40, 3, 6, 2), sequence=np.zeros(40, dtype=np.int32), meta=meta)
    pair, src = fitted_cooccurrence(first, 6)
    again = fitted_cooccurrence(first, 6)
    assert again[0] is pair and again[1] is src  # the same Trace: no refit
    assert not pair.flags.writeable and not src.flags.writeable  # simulators copy before learning online
    for trace, (p, s) in ((first, (pair, src)), (second, fitted_cooccurrence(second, 6))):
        want_pair, want_src = plain_cooccurrence(trace.experts, 6)
        np.testing.assert_array_equal(p, want_pair)
        np.testing.assert_array_equal(s, want_src)


# ---- learning only the lookaheads a run can ask for ------------------------------------------------------------------
def test_max_lookahead_1_learns_one_distance_and_replays_lookahead_1_alike():
    trace = oracle_trace(4, tokens=600)
    fit = oracle_trace(5, tokens=400)
    results = {}
    for depth in (1, 2):
        config = SimConfig(cache=split_capacity(12, 2), workload=WorkloadConfig(batch_min=1, batch_max=3),
                           max_lookahead=depth)
        sim = Simulator(trace, config, rng=np.random.default_rng(7), fit_trace=fit)
        windows = [sim.run(8).metrics for _ in range(6)]
        pair, src = sim.state.prediction.pair, sim.state.prediction.src
        assert pair.shape[0] == depth and src.shape[0] == depth
        results[depth] = (windows, sim.metrics(), pair[0].copy(), src[0].copy())
    # the lookahead-1 plane and every number of a lookahead-1 replay are the same with or without the second plane
    assert results[1][0] == results[2][0] and results[1][1] == results[2][1]
    np.testing.assert_array_equal(results[1][2], results[2][2])
    np.testing.assert_array_equal(results[1][3], results[2][3])


def test_max_lookahead_refuses_a_farther_lookahead_and_out_of_range_values():
    from moe_cache_env.sim.config import ConfigError, Controls

    sim = Simulator(oracle_trace(6, tokens=200), SimConfig(cache=split_capacity(12, 2), max_lookahead=1),
                    rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="max_lookahead=1"):
        sim.run(4, Controls(lookahead=2))
    for bad in (0, 3, 1.5):
        with pytest.raises(ConfigError, match="max_lookahead"):
            SimConfig(max_lookahead=bad)


def test_environments_learn_the_lookaheads_their_actions_can_set():
    import gymnasium as gym

    import moe_cache_env.envs as envs

    for env_id, depth in (("MoECache-v0", 1), ("MoECache-Discrete-v0", 1), ("MoECache-Extended-v0", 2)):
        with envs.kept_versions_quiet():
            env = gym.make(env_id)
        env.reset(seed=0)
        assert env.unwrapped.sim.state.prediction.pair.shape[0] == depth, env_id
        env.close()
