"""The seed's strategies, rule by rule, on hand-made observations (seed-system.md, "The four adaptation
strategies")."""

from __future__ import annotations

import pytest

from moe_cache_env.agents.baselines import (
    AggressiveStrategy,
    BalancedStrategy,
    ConservativeStrategy,
    DynamicStrategy,
    StaticAgent,
    performance_score,
    pressure_adjustment,
)
from moe_cache_env.envs.observation import FEATURE_NAMES, encode_observation


class FakeEnv:
    """Just what an agent uses: the ranges and an action encoder that returns the thresholds themselves."""

    class config:  # noqa: N801 - mimics EnvConfig's attributes
        l2_range = (0.5, 0.9)
        l3_range = (0.1, 0.6)

    @property
    def unwrapped(self):
        return self

    def threshold_action(self, l2, l3):
        return (round(l2, 6), round(l3, 6))


def obs(coverage=0.39, layer_latency_ms=5.0, accuracy=0.5, pressure=0.5):
    raw = {name: 0.0 for name in FEATURE_NAMES}
    raw.update(perfect_coverage=coverage, layer_latency=layer_latency_ms, predictor_top1_accuracy=accuracy,
               memory_pressure=pressure)
    return encode_observation(raw)


def agent(cls):
    a = cls()
    a.reset(FakeEnv())
    return a


def test_performance_score_formula():
    assert performance_score(0.5, 5.0, 0.5, 0.0) == pytest.approx(1.0 + 0.2 * 0)  # every term at its best: 1.0
    # coverage capped at 1; latency floored at 0; accuracy / 0.5; 1 - pressure
    assert performance_score(0.9, 30.0, 0.25, 0.5) == pytest.approx(0.4 * 1 + 0.3 * 0 + 0.2 * 0.5 + 0.1 * 0.5)


def test_pressure_adjustment_ranges():
    assert pressure_adjustment(1.0) == pytest.approx(0.15)
    assert pressure_adjustment(0.9) == pytest.approx(0.075)
    assert pressure_adjustment(0.5) == 0.0
    assert pressure_adjustment(0.0) == pytest.approx(-0.1)


def test_static_keeps_the_seed_defaults():
    a = StaticAgent()
    a.reset(FakeEnv())
    assert a.act(obs(coverage=0.0)) == (0.7, 0.3)


def test_conservative_lowers_only_far_under_target_with_a_low_score():
    a = agent(ConservativeStrategy)
    # 10 points under, score = 0.4*0.58 + 0.3*0.0 + 0.2*0.2 + 0.1*0.5 < 0.7: half step down, L3 a quarter step
    assert a.act(obs(coverage=0.29, layer_latency_ms=20, accuracy=0.05)) == (0.675, 0.2875)
    # 3 points under: no change (pressure 0.5: no adjustment)
    assert a.act(obs(coverage=0.36)) == (0.675, 0.2875)
    # 10 points over and score > 0.8: half step up
    assert a.act(obs(coverage=0.49, accuracy=0.5, pressure=0.3)) == (0.7, 0.3)


def test_aggressive_moves_a_double_step_toward_target():
    a = agent(AggressiveStrategy)
    assert a.act(obs(coverage=0.2)) == (0.6, 0.2)
    assert a.act(obs(coverage=0.6)) == (0.7, 0.3)
    for _ in range(10):
        action = a.act(obs(coverage=0.0))
    assert action == (0.5, 0.1)  # clipped to the ranges


def test_balanced_scales_l2_by_the_score():
    a = agent(BalancedStrategy)
    o = obs(coverage=0.2, layer_latency_ms=5.0, accuracy=0.5, pressure=0.5)
    s = performance_score(0.2, 5.0, 0.5, 0.5)
    assert a.act(o) == pytest.approx((0.7 - 0.05 * (1 - s), 0.3 - 0.035))
    b = agent(BalancedStrategy)
    assert b.act(obs(coverage=0.40, accuracy=0.5)) == (0.7, 0.3)  # within 2 points and score >= 0.6
    c = agent(BalancedStrategy)
    s = performance_score(0.6, 5.0, 0.5, 0.5)
    assert c.act(obs(coverage=0.6, accuracy=0.5)) == pytest.approx((0.7 + 0.05 * s, 0.3 + 0.035))


def test_dynamic_switches_mode():
    a = agent(DynamicStrategy)
    a.act(obs(coverage=0.2, pressure=0.95))
    assert a.mode == "conservative"
    a.act(obs(coverage=0.0, layer_latency_ms=40, accuracy=0.0, pressure=0.5))
    assert a.mode == "aggressive"
    a.act(obs(coverage=0.39, accuracy=0.5, pressure=0.5))
    assert a.mode == "balanced"


def test_high_pressure_raises_the_thresholds_sent():
    a = agent(BalancedStrategy)
    l2, l3 = a.act(obs(coverage=0.40, accuracy=0.5, pressure=1.0))  # no base change, +0.15
    assert (l2, l3) == pytest.approx((0.85, 0.45))
    assert (a.l2, a.l3) == (0.7, 0.3)


def test_an_agent_replay_refuses_settings_the_environment_does_not_have():
    from moe_cache_env.agents.evaluation import evaluate_agent_on_trace
    from moe_cache_env.sim.config import ConfigError, SimConfig

    for config in (SimConfig(decision_ms=0.2), SimConfig(execution_order="per-expert")):
        with pytest.raises(ConfigError, match="acts through an environment"):
            evaluate_agent_on_trace("dynamic", "qwen1.5-moe", 64, config, "MoECache-v0", seed=0)
