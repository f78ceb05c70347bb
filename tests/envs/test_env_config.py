"""The environment's config: merged onto the defaults, every bad value rejected with a message naming it."""

from __future__ import annotations

import pytest

from moe_cache_env.envs.config import DEFAULT_CONFIG, make_config, merge_config
from moe_cache_env.sim.config import ConfigError


def test_defaults_are_valid_and_json_able():
    import json

    from moe_cache_env.sim.config import CacheConfig, WorkloadConfig

    # registered kwargs must survive JSON unchanged (no tuples, no objects)
    assert json.loads(json.dumps(DEFAULT_CONFIG)) == DEFAULT_CONFIG
    config = make_config()
    # the documented defaults (docs/environment.md), typed in here rather than read back from DEFAULT_CONFIG
    assert config.sim.profile == "h100" and config.sim.timing == "timeline"
    assert config.sim.predictor == "cross-layer" and config.sim.oracle_accuracy == (0.845, 0.713)
    assert config.sim.cache == CacheConfig(l1_slots=4, l2_slots=10, l3_slots=20, scope="per-layer")
    assert config.sim.workload == WorkloadConfig(batch_min=1, batch_max=8, kv_min=0.0, kv_max=0.6,
                                                 background_min=0.0, background_max=0.5, domain_shift=True,
                                                 segment_steps=128)
    assert config.l2_range == (0.5, 0.9) and config.l3_range == (0.1, 0.6)
    assert config.initial_thresholds == (0.7, 0.3)
    # an override reaches the simulator's config, and a given section replaces the default one whole
    other = make_config({"profile": "rtx3090-seed", "workload": {"batch_max": 4}, "expert_bytes": 1000})
    assert (other.sim.profile, other.sim.expert_bytes) == ("rtx3090-seed", 1000)
    assert other.sim.workload == WorkloadConfig(batch_min=1, batch_max=4)


def test_nested_reward_merges_key_by_key():
    merged = merge_config({"reward": {"latency_weight": 2.0}})
    assert merged["reward"] == {"coverage_weight": 1.0, "latency_weight": 2.0}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"windw_steps": 4}, "windw_steps"),
        ({"window_steps": 0}, "window_steps"),
        ({"episode_tokens": 1.5}, "episode_tokens"),
        ({"action_type": "joystick"}, "action_type"),
        ({"split": "dev"}, "split"),
        ({"split_fractions": [0.5, 0.5, 0.5]}, "split_fractions"),
        ({"l2_range": [0.9, 0.5]}, "l2_range"),
        ({"initial_thresholds": [0.95, 0.3]}, "initial_thresholds[0]"),
        ({"reward": {"coverage_weight": -1}}, "reward.coverage_weight"),
        ({"reward": {"speed": 1}}, "speed"),
        ({"reward": {"coverage_weight": 0, "latency_weight": 0}}, "both be 0"),
        ({"traces": []}, "traces"),
        ({"traces": ["synth:qwen1.5-moe:lots:0"]}, "TOKENS"),
        ({"workload": {"batch_min": 4, "batch_max": 2}}, "batch_max"),
        ({"workload": {"batchsize": 4}}, "batchsize"),
        ({"cache": {"l1_slots": 0}}, "l1_slots"),
        ({"predictor": "tea-leaves"}, "predictor"),
    ],
)
def test_bad_values_are_named(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as excinfo:
        make_config(overrides)
    assert fragment in str(excinfo.value)


def test_unknown_reset_option_is_rejected(make_small_env):
    env = make_small_env()
    with pytest.raises(ValueError, match="start"):
        env.reset(seed=0, options={"start": 3})
    with pytest.raises(ValueError, match="out of range"):
        env.reset(seed=0, options={"trace": 5})


def test_reset_options_fix_trace_and_start(make_small_env):
    env = make_small_env()
    _, a = env.reset(seed=1, options={"trace": 0, "start_sequence": 2})
    _, b = env.reset(seed=2, options={"trace": 0, "start_sequence": 2})
    assert a["start_sequence"] == b["start_sequence"] == 2
    assert a["trace"] == b["trace"]


def test_render_ansi_gives_one_line_per_window(make_small_env):
    import gymnasium as gym

    from .conftest import small_config

    env = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), render_mode="ansi")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    line = env.render()
    assert isinstance(line, str) and "\n" not in line and "reward" in line


def test_episode_ends_by_termination_or_truncation(make_small_env):
    env = make_small_env(max_episode_steps=3)
    env.reset(seed=0)
    flags = []
    for _ in range(3):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        flags.append((terminated, truncated))
    assert flags[-1] in ((False, True), (True, False))
    assert not any(t or u for t, u in flags[:-1])

    long_env = make_small_env(max_episode_steps=10_000)
    long_env.reset(seed=0)
    while True:
        _, _, terminated, truncated, _ = long_env.step(long_env.action_space.sample())
        if terminated or truncated:
            break
    assert terminated and not truncated
    assert long_env.unwrapped.sim.done
