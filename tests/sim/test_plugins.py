"""A predictor and an eviction rule written outside the kernel give exactly the numbers of their compiled twins."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.sim import plugins
from moe_cache_env.sim.config import ConfigError, Controls, SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.simulator import Simulator

from .test_bounds import random_trace


class PythonPopularity(plugins.Predictor):
    """The built-in ``popularity`` predictor, re-written in plain Python from docs/simulator.md: each expert's
    decayed per-layer selection frequency per token, combined over a step's tokens as 1 - prod(1 - q)."""

    name = "python-popularity"

    def __init__(self, decay: float = 0.995) -> None:
        self.decay = decay

    def start(self, trace, schedule) -> None:
        self.trace, self.schedule = trace, schedule
        L, E = trace.num_layers, trace.num_experts
        self.count = np.zeros((L, E))
        self.observed = np.zeros(L)
        self.weight = np.ones(L)

    def _observe(self, s: int, layer: int) -> None:
        # new observations weigh 1/decay more per step (only ratios are read), as the kernel does
        w = self.weight[layer] / self.decay
        self.weight[layer] = w
        for t in self.schedule.step_tokens[s, : self.schedule.step_ntokens[s]]:
            self.observed[layer] += w
            for e in self.trace.experts[t, layer]:
                self.count[layer, e] += w

    def confidences(self, s0: int, s1: int, lookahead: int) -> np.ndarray:
        L, E, K = self.trace.num_layers, self.trace.num_experts, self.trace.top_k
        out = np.zeros((s1 - s0, L, E))
        for s in range(s0, s1):
            for layer in range(L):
                target_step = s + (layer + lookahead) // L
                target = (layer + lookahead) % L
                if target_step < self.schedule.num_steps:
                    n = self.schedule.step_ntokens[target_step]
                    if self.observed[target] > 0.0:
                        q = self.count[target] * (1.0 / self.observed[target])
                    else:
                        q = np.full(E, K / E)
                    keep = np.ones(E)
                    for _ in range(n):
                        keep = keep * (1.0 - np.minimum(q, 1.0))
                    out[s - s0, layer] = 1.0 - keep
                self._observe(s, layer)
        return out


def lru_score(age_steps, uses, confidence, tier, layer, expert):
    return -age_steps  # the oldest key has the lowest score


@pytest.fixture(scope="module", autouse=True)
def registered():
    plugins.register_predictor("python-popularity", PythonPopularity)
    # optimize=False: the fast-compiling copy (same source, helpers called instead of inlined) keeps this test at
    # ~45 s of compiling instead of ~150 s; the rule's plumbing is the same in both
    plugins.register_eviction(plugins.EvictionPolicy("python-lru", lru_score, optimize=False))


@pytest.mark.parametrize("batch", [1, 3])
def test_python_predictor_equals_its_compiled_twin(batch):
    rng = np.random.default_rng(5)
    trace = random_trace(rng, layers=3, experts=8, top_k=2, lengths=[30, 25, 20])
    workload = WorkloadConfig(batch_min=1, batch_max=batch, kv_max=0.4, segment_steps=5)
    controls = Controls(l2_threshold=0.5, l3_threshold=0.2, lookahead=2)
    results = []
    for predictor in ("popularity", "python-popularity"):
        config = SimConfig(cache=split_capacity(5, 2), workload=workload, predictor=predictor)
        sim = Simulator(trace, config, rng=np.random.default_rng(1))
        while not sim.done:
            sim.run(7, controls)  # windows: the plug-in is asked once per window
        results.append((sim.metrics(), sim.step_latency_ms.copy()))
    assert results[0][0]["prefetches_issued"] > 0
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.slow
def test_python_eviction_rule_equals_its_compiled_twin():
    rng = np.random.default_rng(6)
    trace = random_trace(rng, layers=2, experts=8, top_k=2, lengths=[40, 30])
    metrics = []
    for eviction in ("lru", "python-lru"):
        config = SimConfig(cache=split_capacity(5, 2), workload=WorkloadConfig(batch_min=2, batch_max=2),
                           predictor="perfect", eviction=eviction)
        sim = Simulator(trace, config, rng=np.random.default_rng(2))
        sim.run(None, Controls())
        metrics.append(sim.metrics())
    assert metrics[0] == metrics[1]
    assert metrics[0]["miss_rate"] > 0


def test_plugin_names_cannot_shadow_built_ins_and_bad_output_is_named():
    with pytest.raises(ConfigError, match="built-in"):
        plugins.register_predictor("perfect", PythonPopularity)

    class Broken(PythonPopularity):
        def confidences(self, s0, s1, lookahead):
            return np.zeros((1, 1))

    plugins.register_predictor("broken", Broken)
    trace = random_trace(np.random.default_rng(0), layers=2, experts=6, top_k=1, lengths=[5])
    sim = Simulator(trace, SimConfig(cache=split_capacity(3, 1), predictor="broken"))
    with pytest.raises(ConfigError, match=r"predictor 'broken' returned confidences of shape \(1, 1\)"):
        sim.run(None)
