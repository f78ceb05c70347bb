"""A simulator copied or pickled mid-replay continues exactly as the original (the compiled entry point it keeps
for its windows is not part of its state)."""

import copy
import pickle

import numpy as np
import pytest

from moe_cache_env.sim.config import CacheConfig, Controls, SimConfig
from moe_cache_env.sim.simulator import Simulator

from .test_invariants import random_trace


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))])
def test_copy_mid_replay_continues_identically(clone):
    rng = np.random.default_rng(11)
    trace = random_trace(rng, tokens=40, layers=3, num_experts=8, top_k=2, sequences=3)
    sim = Simulator(trace, SimConfig(cache=CacheConfig(2, 1, 2)), rng=np.random.default_rng(4))
    controls = Controls(l2_threshold=0.6, l3_threshold=0.2)
    sim.run(3, controls)
    sim.run(3, controls)  # the second window goes through the entry point the first one found
    twin = clone(sim)
    while not sim.done:
        a, b = sim.run(5, controls), twin.run(5, controls)
        assert np.array_equal(a.counters, b.counters)
        assert a.metrics == b.metrics
    assert twin.done
    assert np.array_equal(sim.step_latency_ms, twin.step_latency_ms)
    assert sim.metrics() == twin.metrics()
