"""Environment ids in every form gym.make accepts, the registered episode length, and config merging."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import moe_cache_env.envs  # noqa: F401
from moe_cache_env.envs import VARIANTS, resolve_env_id, variant_config
from moe_cache_env.envs.config import DEFAULT_CONFIG, ConfigError

from .conftest import SMALL, small_config

ENV_IDS = sorted(VARIANTS)


@pytest.mark.parametrize("form,expected", [
    ("MoECache-v0", "MoECache-v0"),
    ("moe_cache_env:MoECache-v0", "MoECache-v0"),
    ("moe_cache_env:MoECache-Discrete-v0", "MoECache-Discrete-v0"),
    ("moe_cache_env.envs:MoECache-Seed-v0", "MoECache-Seed-v0"),
    ("  MoECache-Learned-v0 ", "MoECache-Learned-v0"),
    ("MoECache-Extended", "MoECache-Extended-v0"),  # unversioned: the latest version, as gym.make does
    ("MoECache", "MoECache-v3"),
])
def test_resolve_every_form(form, expected):
    assert resolve_env_id(form) == expected
    if form.strip() not in ("MoECache-Extended", "MoECache"):
        assert gym.spec(form.strip().split(":")[-1]).id == expected  # gymnasium agrees


@pytest.mark.parametrize("bad,words", [
    ("MoECache-v9", "unknown environment"),
    ("Nope-v0", "registered: MoECache-Discrete-v0"),
    ("no_such_module:MoECache-v0", "cannot import module 'no_such_module'"),
    ("CartPole-v1", "not an expert-cache environment"),
    ("", "non-empty string"),
])
def test_resolve_rejects_with_one_clear_message(bad, words):
    with pytest.raises(ValueError, match=words):
        resolve_env_id(bad)


def test_user_registered_variant_resolves_and_merges():
    from moe_cache_env.envs import ENTRY_POINT

    gym.register(id="MyCache-v3", entry_point=ENTRY_POINT, kwargs={"config": {"action_type": "discrete", "window_steps": 4}})
    try:
        assert resolve_env_id("MyCache-v3") == "MyCache-v3"
        config = variant_config("MyCache-v3")
        assert config["action_type"] == "discrete" and config["window_steps"] == 4
        assert config["episode_tokens"] == DEFAULT_CONFIG["episode_tokens"]
    finally:
        del gym.registry["MyCache-v3"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spec_declares_the_configs_episode_length(env_id):
    spec = gym.spec(env_id)
    assert spec.max_episode_steps == variant_config(env_id)["max_episode_steps"] == 256
    env = gym.make(f"moe_cache_env:{env_id}", config=small_config(env_id))
    assert env.spec.max_episode_steps == 256
    assert env.unwrapped.max_episode_steps == 256


def _steps_until_done(env, limit=400):
    env.reset(seed=1)
    env.action_space.seed(1)
    for n in range(1, limit + 1):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            return n, terminated, truncated
    raise AssertionError("episode did not end")


def test_env_and_time_limit_truncate_on_the_same_step():
    from moe_cache_env.agents.evaluation import make_env

    long_episode = {**SMALL, "episode_tokens": 2048}
    # the config's own limit, shorter than the spec's: the env truncates
    env = gym.make("moe_cache_env:MoECache-v0", config={**long_episode, "max_episode_steps": 5})
    assert _steps_until_done(env) == (5, False, True)
    # make_env sets the TimeLimit to the config's limit, so a longer limit than the spec's holds too
    env = make_env("MoECache-v0", "train", {**long_episode, "max_episode_steps": 260, "window_steps": 1})
    assert env.spec.max_episode_steps == 260
    n, terminated, truncated = _steps_until_done(env, limit=400)
    assert (n, terminated, truncated) == (260, False, True)


def test_make_env_without_time_limit_override_keeps_spec():
    from moe_cache_env.agents.evaluation import make_env

    env = make_env("moe_cache_env:MoECache-v0", "validation", SMALL)
    assert env.spec.max_episode_steps == 256 and env.unwrapped.config["split"] == "validation"


def test_discrete_variant_config_merges_instead_of_replacing():
    env = gym.make("moe_cache_env:MoECache-Discrete-v0", config={**SMALL, "window_steps": 4})
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n == 9
    assert env.unwrapped.config["window_steps"] == 4
    seed = gym.make("moe_cache_env:MoECache-Seed-v0", config={"episode_tokens": 2048})
    assert seed.unwrapped.config["timing"] == "seed" and seed.unwrapped.config["profile"] == "rtx3090-seed"
    assert seed.unwrapped.config["episode_tokens"] == 2048
    # the merge rules of the layers: reward merges key by key, a workload replaces the variant's whole
    stationary = gym.make("moe_cache_env:MoECache-Stationary-v0",
                          config={"reward": {"latency_weight": 2.0}, "workload": {"batch_min": 2, "batch_max": 2}})
    cfg = stationary.unwrapped.config
    assert cfg["reward"] == {"coverage_weight": 1.0, "latency_weight": 2.0}
    assert cfg["workload"] == {"batch_min": 2, "batch_max": 2}


def test_explicit_base_config_replaces_the_variant():
    env = gym.make("moe_cache_env:MoECache-Discrete-v0", config=SMALL, base_config={})
    assert env.unwrapped.config["action_type"] == "continuous"


@pytest.mark.parametrize("config,words", [
    ([1, 2], "must be a dict"),
    ("episode_tokens=4096", "must be a dict"),
    ({"episode_tokens": float("inf")}, "episode_tokens must be a finite number"),
    ({"episode_tokens": float("nan")}, "episode_tokens must be a finite number"),
    ({"window_steps": float("-inf")}, "window_steps must be a finite number"),
    ({"discrete_step": float("inf")}, "discrete_step must be a finite number"),
    ({"reward": {"latency_weight": float("inf")}}, "reward.latency_weight"),
    ({"l2_range": [0.5, float("inf")]}, r"l2_range\[1\]"),
    ({1: 2}, "keys must be strings"),
])
def test_bad_configs_raise_config_error(config, words):
    with pytest.raises(ConfigError, match=words):
        gym.make("moe_cache_env:MoECache-v0", config=config)


def test_v1_is_v0_on_the_measured_h200_profile_and_v2_adds_its_launch_cost():
    from moe_cache_env.envs import variant_config

    v0, v1, v2, v3 = (variant_config(f"MoECache-v{i}") for i in range(4))
    assert v0["profile"] == "h100" and v1["profile"] == v2["profile"] == "h200-2026-12-01" and v3["profile"] == "h200"
    assert v0["launch_cost"] and not v1["launch_cost"] and v2["launch_cost"] and v3["launch_cost"]
    assert (v1["prefetch_handoff"], v2["prefetch_handoff"], v3["prefetch_handoff"]) == ("link", "link", "host-poll")
    rest = {"profile", "launch_cost", "prefetch_handoff"}
    assert {k: v for k, v in v0.items() if k not in rest} == {k: v for k, v in v1.items() if k not in rest} \
        == {k: v for k, v in v2.items() if k not in rest} == {k: v for k, v in v3.items() if k not in rest}


def test_v2_pays_the_launches_that_v1_does_not():
    # same episode, same actions: the h200 engine's launches (0.095 ms per expert) only add time, never remove it
    envs = [gym.make(f"moe_cache_env:MoECache-v{i}", config={"episode_tokens": 256}) for i in (1, 2)]
    ms = []
    for env in envs:
        env.reset(seed=3)
        _, _, _, _, info = env.step(np.array([0.7, 0.3], dtype=np.float32))
        ms.append(info["metrics"]["mean_latency_ms"])
        env.close()
    assert ms[1] > ms[0]

def test_the_prefetch_handoff_reaches_the_environments_simulator():
    # v2's host (a decision and launches per layer) changes when prefetches start under host-poll: the same
    # episode with the same actions is timed differently; under v0's h100 profile (no host costs) identically
    runs = {}
    for env_id in ("MoECache-v0", "MoECache-v2"):
        for handoff in ("link", "host-poll"):
            env = gym.make(f"moe_cache_env:{env_id}", config={"episode_tokens": 256, "prefetch_handoff": handoff})
            env.reset(seed=3)
            assert env.unwrapped.sim.config.prefetch_handoff == handoff
            ms = []
            for _ in range(4):
                _, _, _, _, info = env.step(np.array([0.5, 0.1], dtype=np.float32))
                ms.append(info["metrics"]["mean_latency_ms"])
            runs[env_id, handoff] = ms
            env.close()
    assert runs["MoECache-v0", "link"] == runs["MoECache-v0", "host-poll"]
    assert runs["MoECache-v2", "link"] != runs["MoECache-v2", "host-poll"]
    with pytest.raises(ConfigError, match="prefetch_handoff"):
        gym.make("moe_cache_env:MoECache-v2", config={"prefetch_handoff": "soon"})


def test_v1_and_v2_run_on_a_frozen_profile_that_differs_only_in_the_fitted_host_costs():
    # v1 and v2 were quoted with the h200 profile as first shipped (their configs name it: the test above); the
    # frozen copy differs from the current h200 profile only in the host costs the replays fitted
    from moe_cache_env.profiles import load_profile

    env = gym.make("moe_cache_env:MoECache-v2", config={"episode_tokens": 256})
    env.reset(seed=0)
    assert env.unwrapped.sim.profile.name == "h200-2026-12-01"  # the name reaches the simulator's profile
    env.close()
    frozen, current = (load_profile(name) for name in ("h200-2026-12-01", "h200"))
    assert frozen.copy_issue_ms == 0.0 and current.copy_issue_ms > 0.0
    assert frozen.host_decision_ms != current.host_decision_ms
    # everything else is the same measurement
    changed = {"name", "description", "host_decision_ms", "copy_issue_ms", "host_fit"}
    assert {k: v for k, v in frozen.raw.items() if k not in changed} == {
        k: v for k, v in current.raw.items() if k not in changed}
    for field in ("h2d_gbps", "h2d_overhead_ms", "layer_overhead_ms", "expert_launch_ms"):
        assert getattr(frozen, field) == getattr(current, field), field
