"""How a layer runs its experts (fused or per-expert) and the host's decision time, against hand computations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moe_cache_env.sim.config import CacheConfig, ConfigError, Controls, SimConfig
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace, make_meta

from .test_worked_example import EXAMPLE_PROFILE  # a copy costs 1 ms, an expert computes in 0.5 ms


def two_step_trace() -> Trace:
    # one layer, top-2 of 4 experts; step 0 needs {0, 1}, step 1 needs {0, 2}
    experts = np.array([[[0, 1]], [[0, 2]]], dtype=np.int64)
    meta = make_meta(model="hand", num_experts=4, top_k=2, num_layers=1, expert_bytes=1_000_000, phase="decode",
                     source="tests")
    return Trace(experts=experts, sequence=np.zeros(2, dtype=np.int32), meta=meta)


def latencies(launch_ms: float = 0.0, copy_issue_ms: float = 0.0, **settings) -> list[float]:
    # a demand-only LRU cache of 2 slots: step 0 misses both, step 1 hits 0 and misses 2
    config = SimConfig(cache=CacheConfig(2, 0, 0), predictor="none", eviction="lru", **settings)
    profile = dataclasses.replace(EXAMPLE_PROFILE, expert_launch_ms=launch_ms, copy_issue_ms=copy_issue_ms)
    sim = Simulator(two_step_trace(), config, rng=np.random.default_rng(0), profile=profile)
    sim.run(None, Controls())
    return sim.step_latency_ms.tolist()


def test_fused_waits_for_every_copy_then_computes():
    # step 0: copies land at 1 and 2 ms, then 2 x 0.5 ms of compute: 3.0; step 1: 2 lands at 1 ms, then 1.0 ms
    assert latencies() == [3.0, 2.0]


def test_per_expert_computes_each_expert_when_it_lands():
    # step 0: expert 0 lands at 1.0, computes to 1.5; expert 1 lands at 2.0, computes to 2.5
    # step 1: resident expert 0 computes 0 -> 0.5; expert 2 lands at 1.0, computes to 1.5
    assert latencies(execution_order="per-expert") == [2.5, 1.5]


def test_the_decision_time_adds_to_every_layer():
    assert latencies(decision_ms=0.25) == [3.25, 2.25]
    assert latencies(execution_order="per-expert", decision_ms=0.25) == [2.75, 1.75]


def test_launches_hide_under_copies_and_bound_resident_layers():
    # the host launches the experts one by one from the layer's start, 0.75 ms each: expert i cannot start
    # before (i + 1) x 0.75. Fused: step 0's experts wait for the copy landing at 2.0 anyway (3.0, as without
    # launches); step 1: expert 0 waits for expert 2's copy (1.0) -> 1.5; expert 2 launched at 1.5 -> 2.0
    assert latencies(launch_ms=0.75) == [3.0, 2.0]
    # per-expert: step 0: expert 0 lands at 1.0 (launched at 0.75) -> 1.5; expert 1 lands at 2.0 -> 2.5;
    # step 1: resident expert 0 launched at 0.75 -> 1.25; expert 2 landed at 1.0, launched at 1.5 -> 2.0
    assert latencies(launch_ms=0.75, execution_order="per-expert") == [2.5, 2.0]
    # launches slower than copies: 1.25 each. Fused step 0: 2.0 -> 2.5, then expert 1 (launched 2.5) -> 3.0;
    # step 1: expert 0 launched at 1.25 -> 1.75, expert 2 launched at 2.5 -> 3.0
    assert latencies(launch_ms=1.25) == [3.0, 3.0]
    # per-expert step 0: expert 0 launched at 1.25 -> 1.75, expert 1 launched at 2.5 -> 3.0; step 1 likewise
    assert latencies(launch_ms=1.25, execution_order="per-expert") == [3.0, 3.0]
    # the host's decision time still adds to every layer
    assert latencies(launch_ms=1.25, decision_ms=0.25) == [3.25, 3.25]


def test_each_copy_waits_for_its_issue_and_the_launches_for_all_issues():
    # 0.25 ms to issue a copy. Fused step 0: the copies are issued at 0.25 and 0.5 ms; the first runs 0.25-1.25,
    # the second 1.25-2.25 (the link is busy), then 2 x 0.5 ms of compute: 3.25. Step 1: expert 2's copy
    # 0.25-1.25, then both experts: 2.25
    assert latencies(copy_issue_ms=0.25) == [3.25, 2.25]
    # per-expert step 0: expert 0 lands at 1.25 -> 1.75, expert 1 at 2.25 -> 2.75; step 1: resident expert 0 is
    # launched once the copy is issued (0.25) -> 0.75, expert 2 lands at 1.25 -> 1.75
    assert latencies(copy_issue_ms=0.25, execution_order="per-expert") == [2.75, 1.75]
    # with launches of 0.75 ms from the end of the issues: step 1's expert 0 is launched at 1.0 -> 1.5, expert 2
    # (landed at 1.25) at 1.75 -> 2.25
    assert latencies(copy_issue_ms=0.25, launch_ms=0.75, execution_order="per-expert") == [2.75, 2.25]


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="execution_order='sorted' is not one of"):
        SimConfig(execution_order="sorted")
    with pytest.raises(ConfigError, match="decision_ms"):
        SimConfig(decision_ms=-1.0)
    with pytest.raises(ConfigError, match="prefetch_handoff='soon' is not one of"):
        SimConfig(prefetch_handoff="soon")
