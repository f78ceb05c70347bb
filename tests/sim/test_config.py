"""Bad configuration fails at construction with a message naming the field, value and range."""

import math

import pytest

from moe_cache_env.sim.config import CacheConfig, ConfigError, Controls, SimConfig, WorkloadConfig, from_mapping


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: Controls(l2_threshold=math.nan), "controls.l2_threshold"),
        (lambda: Controls(l2_threshold=0.5, l3_threshold=0.6), "l3_threshold=0.6 is above"),
        (lambda: Controls(lookahead=3), "controls.lookahead=3 is out of range"),
        (lambda: Controls(prefetch_budget=-1), "prefetch_budget"),
        (lambda: Controls(l2_share=1.5), "l2_share"),
        (lambda: CacheConfig(l1_slots=0), "cache.l1_slots=0"),
        (lambda: CacheConfig(scope="sideways"), "cache.scope='sideways'"),
        (lambda: WorkloadConfig(batch_min=4, batch_max=2), "workload.batch_max=2"),
        (lambda: WorkloadConfig(kv_max=0.99), "workload.kv_max"),
        (lambda: SimConfig(predictor="magic"), "sim.predictor='magic'"),
        (lambda: SimConfig(timing="wallclock"), "sim.timing"),
    ],
)
def test_bad_values_are_named(build, fragment):
    with pytest.raises(ConfigError) as info:
        build()
    assert fragment in str(info.value)


def test_unknown_keys_rejected_by_name():
    with pytest.raises(ConfigError, match=r"unknown Controls key\(s\) \['l4_threshold'\]"):
        from_mapping(Controls, {"l2_threshold": 0.8, "l4_threshold": 0.1})
    assert from_mapping(Controls, {"l2_threshold": 0.8}).l2_threshold == 0.8


def test_seed_timing_needs_seed_table(tmp_path):
    import numpy as np

    from moe_cache_env.profiles.profile import HardwareProfile
    from moe_cache_env.sim.simulator import Simulator
    from moe_cache_env.traces.format import Trace, make_meta

    meta = make_meta(model="m", num_experts=4, top_k=1, num_layers=1, expert_bytes=1 << 20, phase="decode",
                     source="test")
    trace = Trace(experts=np.zeros((2, 1, 1), dtype=np.int64), sequence=np.zeros(2, dtype=np.int32), meta=meta)
    profile = HardwareProfile(name="flat", h2d_overhead_ms=0.1, h2d_gbps=10.0, compute_tokens=(1.0,),
                              compute_ms=(0.1,), compute_expert_bytes=1 << 20)
    with pytest.raises(ConfigError, match="seed_table"):
        Simulator(trace, SimConfig(timing="seed"), rng=np.random.default_rng(0), profile=profile)
