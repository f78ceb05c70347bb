"""The native vector environment: the numbers of N single environments, Gymnasium's vector conventions.

Gymnasium 1.4 ships no checker for vector environments; these tests compare the native vector environment with
Gymnasium's own ``SyncVectorEnv`` of the same environments (``make_vec(..., vectorization_mode="sync")``), exactly
(``data_equivalence(..., exact=True)``), and run ``gymnasium.utils.env_match.check_environments_match`` on one
environment.
"""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode

import moe_cache_env.envs  # noqa: F401
from moe_cache_env.envs import VARIANTS
from moe_cache_env.envs.vector import MoECacheVectorEnv

from .conftest import small_config

ENV_IDS = sorted(VARIANTS)


def _native(env_id: str, num_envs: int, **kwargs):
    config = kwargs.pop("config", small_config(env_id))
    return gym.make_vec(f"moe_cache_env:{env_id}", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        config=config, **kwargs)


def _sync(env_id: str, num_envs: int, **kwargs):
    config = kwargs.pop("config", small_config(env_id))
    return gym.make_vec(f"moe_cache_env:{env_id}", num_envs=num_envs, vectorization_mode="sync", config=config,
                        **kwargs)


def _rollout(venv, seed: int, steps: int, action_seed: int = 7):
    """(obs, rewards, terminations, truncations) of a reset and ``steps`` steps under seeded random actions."""
    space = venv.action_space
    space.seed(action_seed)
    obs, _ = venv.reset(seed=seed)
    out = [(obs.copy(),)]
    for _ in range(steps):
        obs, rewards, terminations, truncations, _ = venv.step(space.sample())
        out.append((obs.copy(), rewards.copy(), terminations.copy(), truncations.copy()))
    return out


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_vec_gives_the_native_vector_env(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # make_vec warns when autoreset_mode metadata is missing or mistyped
        warnings.filterwarnings("ignore", message=".*hold every expert.*")
        warnings.filterwarnings("ignore", message=".*is out of date.*")  # v0 is kept beside v1 on purpose
        venv = _native(env_id, 3)
    assert isinstance(venv.unwrapped, MoECacheVectorEnv)
    assert venv.num_envs == 3
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    single = gym.make(f"moe_cache_env:{env_id}", config=small_config(env_id))
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3,) + single.observation_space.shape and obs.dtype == np.float32
    assert venv.observation_space.contains(obs)
    assert info["_episode_spec"].all()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_numbers_as_single_envs_across_autoresets(env_id):
    # small episodes, cut at 8 windows at the latest, so that 24 steps cross autoresets of every environment
    config = small_config(env_id, episode_tokens=256)
    native = _rollout(_native(env_id, 3, config=config, max_episode_steps=8), seed=11, steps=24)
    sync = _rollout(_sync(env_id, 3, config=config, max_episode_steps=8), seed=11, steps=24)
    assert any(step[2].any() or step[3].any() for step in sync[1:]), "the rollout should cross an episode's end"
    for t, (a, b) in enumerate(zip(native, sync)):
        for x, y in zip(a, b):
            assert data_equivalence(x, y, exact=True), f"step {t}: {x} != {y}"


@pytest.mark.slow
def test_threaded_replay_gives_the_single_threaded_numbers():
    # environments share no state: spread over two numba threads, every window's numbers are the same (the
    # threaded batch loop compiles once per machine, ~40 s)
    config = small_config("MoECache-v2", episode_tokens=256)
    venvs = [_native("MoECache-v2", 5, config=config, max_episode_steps=8, threads=n) for n in (1, 2)]
    one, two = (_rollout(venv, seed=3, steps=20) for venv in venvs)
    for venv, threads in zip(venvs, (1, 2)):
        venv.close()  # keeps its thread count for a later use of the (emptied) batch
        assert venv.unwrapped._batch.threads == threads
    assert any(step[2].any() or step[3].any() for step in one[1:]), "the rollout should cross an episode's end"
    for t, (a, b) in enumerate(zip(one, two)):
        for x, y in zip(a, b):
            assert data_equivalence(x, y, exact=True), f"step {t}: {x} != {y}"


def test_time_limit_and_truncation_match_gymnasium_make():
    native = _rollout(_native("MoECache-v0", 2, max_episode_steps=3), seed=5, steps=9)
    sync = _rollout(_sync("MoECache-v0", 2, max_episode_steps=3), seed=5, steps=9)
    for a, b in zip(native, sync):
        for x, y in zip(a, b):
            assert data_equivalence(x, y, exact=True)
    # steps 3, 7 (after the NEXT_STEP reset at 4) end by the limit
    assert native[3][3].all() and not native[4][3].any() and native[7][3].all()


def test_gymnasium_environments_match_with_one_env():
    from gymnasium.utils.env_match import check_environments_match

    check_environments_match(_native("MoECache-v0", 1), _sync("MoECache-v0", 1), num_steps=20, seed=3,
                             info_comparison="skip")


def test_per_env_seeds_and_partial_reset():
    venv = _native("MoECache-v0", 3)
    obs_int, _ = venv.reset(seed=20)
    obs_list, _ = venv.reset(seed=[20, 21, 22])
    assert np.array_equal(obs_int, obs_list)
    single = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"))
    for i in range(3):
        obs, _ = single.reset(seed=20 + i)
        assert np.array_equal(obs, obs_int[i])
    venv.step(venv.action_space.sample())
    stepped = venv.step(venv.action_space.sample())[0]
    mask = np.array([False, True, False])
    obs, info = venv.reset(seed=[None, 21, None], options={"reset_mask": mask})
    assert np.array_equal(obs[1], obs_int[1])  # environment 1 starts its seeded episode again
    assert np.array_equal(obs[[0, 2]], stepped[[0, 2]])  # the others keep their last observation
    assert info["_episode_spec"].tolist() == mask.tolist()


def test_same_step_autoreset_gives_final_obs_and_the_same_numbers():
    # one environment: SAME_STEP's transitions are NEXT_STEP's without the steps NEXT_STEP spends on resets
    nxt = _native("MoECache-v0", 1, max_episode_steps=6)
    same = _native("MoECache-v0", 1, max_episode_steps=6, autoreset_mode=AutoresetMode.SAME_STEP)
    assert same.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    rng = np.random.default_rng(0)
    o_next, _ = nxt.reset(seed=3)
    o_same, _ = same.reset(seed=3)
    ended = 0
    for _ in range(30):
        action = rng.uniform(-1, 1, size=(1, 2)).astype(np.float32)
        o_next, r1, te1, tr1, _ = nxt.step(action)
        o_same, r2, te2, tr2, info = same.step(action)
        assert np.array_equal(r1, r2) and np.array_equal(te1, te2) and np.array_equal(tr1, tr2)
        if te1[0] or tr1[0]:
            assert info["_final_obs"].tolist() == [True]
            assert np.array_equal(info["final_obs"][0], o_next[0])
            assert info["final_info"]["_episode_metrics"].tolist() == [True]
            o_next, r_reset, te, tr, _ = nxt.step(action)  # NEXT_STEP: this step is the reset
            assert r_reset[0] == 0 and not te[0] and not tr[0]
            ended += 1
        assert np.array_equal(o_next, o_same)
    assert ended, "an episode should end within 30 steps"


def test_episode_end_info_and_full_info_level():
    venv = _native("MoECache-v0", 2, info_level="full", max_episode_steps=2)
    single = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), max_episode_steps=2)
    obs, info = venv.reset(seed=4)
    s_obs, s_info = single.reset(seed=4)
    assert info["episode_spec"]["sim_seed"][0] == s_info["episode_spec"]["sim_seed"]
    action = np.zeros((2, 2), dtype=np.float32)
    for _ in range(2):
        obs, rewards, te, tr, info = venv.step(action)
        s_obs, s_reward, s_te, s_tr, s_info = single.step(action[0])
    assert tr.all()
    assert info["reward_terms"]["reward"][0] == s_reward
    assert info["metrics"]["mean_latency_ms"][0] == s_info["metrics"]["mean_latency_ms"]
    assert info["_episode_metrics"].all()
    # TimeLimit ended it, so the single env has no episode_metrics; the vector env gives them on every end
    assert info["episode_metrics"]["mean_latency_ms"][0] == single.unwrapped.episode_metrics()["mean_latency_ms"]


def test_minimal_info_only_at_ends():
    venv = _native("MoECache-v0", 2, max_episode_steps=2)
    venv.reset(seed=0)
    _, _, _, _, info = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert info == {}
    _, _, _, tr, info = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert tr.all() and set(info) == {"episode_metrics", "_episode_metrics", "episode_spec", "_episode_spec"}


def test_plugin_predictor_falls_back_to_one_simulator_at_a_time():
    from moe_cache_env.sim import plugins

    class Uniform(plugins.Predictor):
        def start(self, trace, schedule):
            self.shape = (trace.num_layers, trace.num_experts)

        def confidences(self, s0, s1, lookahead):
            return np.full((s1 - s0,) + self.shape, 0.5)

    if "test-uniform" not in plugins.registered_predictors():
        plugins.register_predictor("test-uniform", Uniform)
    config = small_config("MoECache-v0", predictor="test-uniform", predictor_fit_tokens=0)
    native = _rollout(_native("MoECache-v0", 2, config=config), seed=2, steps=12)
    sync = _rollout(_sync("MoECache-v0", 2, config=config), seed=2, steps=12)
    for a, b in zip(native, sync):
        for x, y in zip(a, b):
            assert data_equivalence(x, y, exact=True)


def test_bad_arguments_and_actions_are_refused():
    with pytest.raises(ValueError, match="num_envs"):
        MoECacheVectorEnv(0)
    with pytest.raises(ValueError, match="info_level"):
        MoECacheVectorEnv(1, info_level="everything")
    with pytest.raises(ValueError, match="autoreset_mode"):
        MoECacheVectorEnv(1, autoreset_mode="disabled")
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        MoECacheVectorEnv(1, threads=0)
    with pytest.raises(ValueError, match="numba's"):
        MoECacheVectorEnv(1, threads=10_000)
    venv = _native("MoECache-v0", 2)
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros((2, 2), dtype=np.float32))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((3, 2), dtype=np.float32))
    before = [env.controls for env in venv.unwrapped.envs]
    mixed = np.array([[0.5, 0.5], [np.nan, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="not finite"):
        venv.step(mixed)
    assert [env.controls for env in venv.unwrapped.envs] == before  # environment 0 did not move either
    with pytest.raises(ValueError, match="seeds"):
        venv.reset(seed=[1, 2, 3])


def test_sub_env_pickles_and_replaces_mid_episode():
    a = _native("MoECache-v0", 2)
    b = _native("MoECache-v0", 2)
    a.reset(seed=9)
    b.reset(seed=100)
    action = np.full((2, 2), 0.25, dtype=np.float32)
    a.step(action)
    for i in range(2):
        b.unwrapped.replace_env(i, pickle.loads(pickle.dumps(a.unwrapped.envs[i])))
    for _ in range(3):
        ra = a.step(action)
        rb = b.step(action)
        assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1])
