"""The SB3 adapter of the native vector environment steps as SB3's DummyVecEnv of single environments does."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor  # noqa: E402

from moe_cache_env.agents.evaluation import make_env  # noqa: E402
from moe_cache_env.agents.vec_adapter import NativeVecEnv, make_native_vec_env  # noqa: E402

#: small episodes, cut at 4 windows, so that a few steps cross terminations and truncations
OVERRIDES = {"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 256, "predictor_fit_tokens": 512,
             "max_episode_steps": 4}


def test_native_adapter_matches_dummy_vec_env_across_episode_ends():
    n = 3
    native = make_native_vec_env("MoECache-v0", "train", n, OVERRIDES)
    dummy = DummyVecEnv([lambda: Monitor(make_env("MoECache-v0", "train", OVERRIDES)) for _ in range(n)])
    native.seed(5)
    dummy.seed(5)
    assert np.array_equal(native.reset(), dummy.reset())
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(14):
        actions = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        native.step_async(actions)
        dummy.step_async(actions)
        o1, r1, d1, i1 = native.step_wait()
        o2, r2, d2, i2 = dummy.step_wait()
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and np.array_equal(d1, d2)
        for i in np.flatnonzero(d1):
            ends += 1
            assert np.array_equal(i1[i]["terminal_observation"], i2[i]["terminal_observation"])
            assert i1[i]["TimeLimit.truncated"] == i2[i]["TimeLimit.truncated"]
            assert i1[i]["episode_spec"] == i2[i]["episode_spec"]
            assert i1[i]["episode_metrics"] == i2[i]["episode_metrics"]
    assert ends >= n, "every environment should have ended an episode"


def test_vec_monitor_records_episodes_and_states_round_trip():
    venv = VecMonitor(make_native_vec_env("MoECache-v0", "train", 2, OVERRIDES))
    venv.seed(0)
    venv.reset()
    episodes = []
    for _ in range(6):
        _, _, dones, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
        episodes += [info["episode"] for info, done in zip(infos, dones) if done]
    assert episodes and all(e["l"] <= 4 for e in episodes)
    # a checkpoint's environments, put into a fresh adapter, step on identically without a reset
    blobs = venv.env_method("dump_state")
    other = make_native_vec_env("MoECache-v0", "train", 2, OVERRIDES)
    for i, blob in enumerate(blobs):
        other.env_method("load_state", blob, indices=[i])
    for _ in range(5):
        a = venv.step(np.full((2, 2), 0.5, dtype=np.float32))
        b = other.step(np.full((2, 2), 0.5, dtype=np.float32))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_adapter_needs_same_step_autoreset():
    import gymnasium as gym

    venv = gym.make_vec("MoECache-v0", num_envs=1, vectorization_mode="vector_entry_point")
    with pytest.raises(ValueError, match="SAME_STEP"):
        NativeVecEnv(venv.unwrapped)
