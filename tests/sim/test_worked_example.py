"""The worked example of docs/simulator.md, checked number by number (computed there by hand)."""

import numpy as np
import pytest

from moe_cache_env.profiles.profile import HardwareProfile
from moe_cache_env.sim.config import CacheConfig, Controls, SimConfig
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace, make_meta


def worked_example_trace() -> Trace:
    # three tokens of one sequence, two MoE layers, four experts, top-1
    experts = np.array([[[0], [1]], [[0], [2]], [[3], [2]]], dtype=np.int64)
    meta = make_meta(model="worked-example", num_experts=4, top_k=1, num_layers=2, expert_bytes=1_000_000,
                     phase="decode", source="docs/simulator.md")
    return Trace(experts=experts, sequence=np.zeros(3, dtype=np.int32), meta=meta)


# a copy costs exactly 1 ms (no overhead, 1 GB/s, 1 MB experts); an expert computes in 0.5 ms
EXAMPLE_PROFILE = HardwareProfile(
    name="worked-example", h2d_overhead_ms=0.0, h2d_gbps=1.0, compute_tokens=(1.0,), compute_ms=(0.5,),
    compute_expert_bytes=1_000_000,
)


@pytest.fixture
def result():
    config = SimConfig(cache=CacheConfig(l1_slots=1, l2_slots=1, l3_slots=1), predictor="perfect")
    sim = Simulator(worked_example_trace(), config, rng=np.random.default_rng(0), profile=EXAMPLE_PROFILE)
    sim.run(None, Controls(l2_threshold=0.7, l3_threshold=0.3, lookahead=1))
    return sim


def test_per_token_latency_matches_hand_computation(result):
    assert result.step_latency_ms.tolist() == [2.5, 1.5, 1.5]


def test_counts_match_hand_computation(result):
    m = result.metrics()
    assert m["expert_requests"] == 6
    assert m["hit_rate"] == pytest.approx(2 / 6)
    assert m["hit_rate_l1"] == pytest.approx(2 / 6)
    assert m["late_prefetch_rate"] == pytest.approx(3 / 6)
    assert m["miss_rate"] == pytest.approx(1 / 6)
    assert m["perfect_coverage"] == pytest.approx(2 / 6)
    assert m["zero_coverage"] == pytest.approx(4 / 6)
    assert m["mean_latency_ms"] == pytest.approx(5.5 / 3)
    assert m["bytes_transferred"] == 4_000_000
    assert m["demand_bytes"] == 1_000_000
    assert m["prefetch_bytes"] == 3_000_000
    assert m["wasted_prefetch_bytes"] == 0
    assert m["prefetches_issued"] == 3
    assert m["link_utilization"] == pytest.approx(4.0 / 5.5)
    assert m["predictor_top1_accuracy"] == 1.0
