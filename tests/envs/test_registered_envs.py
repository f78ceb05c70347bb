"""Every registered environment passes both checkers without warnings, is deterministic and pickles."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

import moe_cache_env.envs  # noqa: F401
from moe_cache_env.envs import VARIANTS

from .conftest import small_config

ENV_IDS = sorted(VARIANTS)


def test_every_variant_is_registered():
    registered = {spec_id for spec_id in gym.registry if spec_id.startswith("MoECache")}
    from moe_cache_env.envs import EVICT_ID

    assert registered == set(VARIANTS) | {EVICT_ID}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_check_env(env_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(f"moe_cache_env:{env_id}", config=small_config(env_id), render_mode="ansi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # MoECache-Seed-v0 keeps the seed's 64 slots for 60 experts, and says so (test below)
        warnings.filterwarnings("ignore", message=".*hold every expert.*")
        check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env

    env = gym.make(f"moe_cache_env:{env_id}", config=small_config(env_id))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*hold every expert.*")
        check_env(env.unwrapped, warn=True)


def _rollout(env: gym.Env, seed: int, steps: int = 12) -> list[tuple]:
    env.action_space.seed(seed)
    obs, info = env.reset(seed=seed)
    out = [(obs.copy(), 0.0, False, False, info["trace"], info["start_sequence"])]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out.append((obs.copy(), reward, terminated, truncated, info["metrics"]["mean_latency_ms"]))
        if terminated or truncated:
            obs, info = env.reset()
    return out


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_rollout(env_id, make_small_env):
    a = _rollout(make_small_env(env_id), seed=3)
    b = _rollout(make_small_env(env_id), seed=3)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    c = _rollout(make_small_env(env_id), seed=4)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c)), "a different seed should give another episode"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_round_trip(env_id, make_small_env):
    env = make_small_env(env_id)
    env.reset(seed=5)
    env.action_space.seed(5)
    first = env.action_space.sample()
    env.step(first)
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(4):
        action = env.action_space.sample()
        o1, r1, t1, u1, _ = env.step(action)
        o2, r2, t2, u2, _ = clone.step(action)
        np.testing.assert_array_equal(o1, o2)
        assert (r1, t1, u1) == (r2, t2, u2)
        if t1 or u1:
            break


def test_an_environment_pickled_by_the_earlier_layout_resumes_with_the_same_numbers(make_small_env):
    """Checkpoints of earlier versions hold environments whose last raw features are a dict (``_previous_raw``)
    and that gathered no observation constants: unpickled, they step as the environment they were."""
    env = make_small_env("MoECache-v0").unwrapped
    env.reset(seed=2)
    env.action_space.seed(2)
    env.step(env.action_space.sample())
    state = pickle.loads(pickle.dumps(env)).__dict__
    trends = state.pop("_previous_trends")
    del state["_observe_constants"]
    sources = ("perfect_coverage", "latency_ratio", "link_utilization", "predictor_top1_accuracy")
    state["_previous_raw"] = {**dict(zip(sources, trends.tolist())), "hit_rate_l1": 0.5}
    old = type(env).__new__(type(env))
    old.__setstate__(state)
    for _ in range(3):
        action = env.action_space.sample()
        o1, r1, *_ = env.step(action)
        o2, r2, *_ = old.step(action)
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2


def test_gymnasium_vector_env():
    config = small_config("MoECache-v0")
    envs = gym.make_vec("moe_cache_env:MoECache-v0", num_envs=2, vectorization_mode="sync", config=config)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, envs.single_observation_space.shape[0])
    obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
    assert reward.shape == (2,) and np.all(np.isfinite(reward))
    envs.close()


def test_sb3_subproc_vec_env():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = make_vec_env(
        "moe_cache_env:MoECache-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
        env_kwargs={"config": small_config("MoECache-v0"), "render_mode": None}, vec_env_kwargs={"start_method": "fork"},
    )
    obs = venv.reset()
    obs, reward, done, info = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert obs.shape[0] == 2 and reward.shape == (2,)
    venv.close()


def test_a_cache_that_holds_every_expert_is_named_once():
    from moe_cache_env.envs import moe_cache

    moe_cache._WARNED_FULL.clear()
    env = gym.make("moe_cache_env:MoECache-Seed-v0", config=small_config("MoECache-Seed-v0"))
    with pytest.warns(UserWarning, match=r"64 slots per pool hold every expert of trace .*24 layers x 60 experts"):
        env.reset(seed=0)


def test_the_engine_suite_replays_each_recorded_request_whole():
    """MoECache-Engines-v0 on its own bundled traces: every trace is one episode, and both checkers pass."""
    from gymnasium.utils.env_checker import check_env

    env = gym.make("moe_cache_env:MoECache-Engines-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    for index, tokens in enumerate((128, 128, 64)):
        _, info = env.reset(seed=index, options={"trace": index})
        served = info["tokens"]
        while True:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            served += info["tokens"]
            assert np.isfinite(reward)
            if terminated or truncated:
                break
        assert terminated and served == tokens
