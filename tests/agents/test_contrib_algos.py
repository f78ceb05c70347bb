"""RecurrentPPO and MaskablePPO (sb3-contrib) train and play through agents.sb3 and compare; every discrete
algorithm trains on the eviction environment (a few hundred steps each)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sb3_contrib")

from moe_cache_env.agents.compare import compare, evict_episode  # noqa: E402
from moe_cache_env.agents.evaluation import make_env  # noqa: E402
from moe_cache_env.agents.sb3 import SB3Agent, _check_algo_fits, load_hyperparams, train  # noqa: E402

SMALL = {"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 384, "predictor_fit_tokens": 512}
EVICT = "MoECache-Evict-v0"
EVICT_SMALL = {"episode_sequences": 1}


def _train(algo: str, env_id: str, overrides: dict, tmp_path, steps: int = 256) -> dict:
    return train(algo, env_id, steps, 0, tmp_path / algo, overrides=overrides, eval_freq=128, eval_episodes=1,
                 checkpoint_freq=10**9, progress_bar=False)


def test_hyperparameter_files_load_for_the_new_algorithms():
    assert load_hyperparams("recurrentppo", "MoECache-v1")["policy"] == "MlpLstmPolicy"
    assert load_hyperparams("recurrentppo", "MoECache-v1")["policy_kwargs"]["lstm_hidden_size"] == 64
    assert load_hyperparams("maskableppo", EVICT)["policy"] == "MlpPolicy"
    assert load_hyperparams("dqn", EVICT)["policy_kwargs"] == {"net_arch": [64, 64]}


def test_algorithms_are_refused_where_they_do_not_fit():
    with pytest.raises(ValueError, match="sac needs continuous"):
        _check_algo_fits("sac", EVICT)
    with pytest.raises(ValueError, match="action_masks"):
        _check_algo_fits("maskableppo", "MoECache-v1")
    for algo in ("ppo", "a2c", "dqn", "recurrentppo", "maskableppo"):
        _check_algo_fits(algo, EVICT)


@pytest.mark.slow
def test_recurrentppo_threads_its_lstm_state_through_an_episode(tmp_path):
    info = _train("recurrentppo", "MoECache-v0", SMALL, tmp_path)
    assert info["timesteps_done"] >= 256 and info["validation"]["timesteps"]
    agent = SB3Agent("recurrentppo", tmp_path / "recurrentppo" / "model.zip")
    # a plain reference loop: the state returned by each predict goes into the next, cleared at the start
    env = make_env("MoECache-v0", "test", SMALL)
    obs, _ = env.reset(seed=7)
    state, start, expected = None, np.ones((1,), dtype=bool), []
    while True:
        action, state = agent.model.predict(obs, state=state, episode_start=start, deterministic=True)
        start = np.zeros((1,), dtype=bool)
        obs, reward, terminated, truncated, _ = env.step(action)
        expected.append(reward)
        if terminated or truncated:
            break
    # the agent played twice gives the reference's rewards both times: its state is reset between episodes
    for _ in range(2):
        result = compare("MoECache-v0", [f"recurrentppo:{tmp_path / 'recurrentppo' / 'model.zip'}"], 1, 7,
                         overrides=SMALL, with_bounds=False)
        assert result["episodes_detail"][0]["reward"] == pytest.approx(float(np.sum(expected)), rel=1e-12)
    assert agent._state is None  # compare made its own agent; this one was never stepped


@pytest.mark.slow
def test_maskableppo_on_the_eviction_env_uses_the_masks(tmp_path):
    info = _train("maskableppo", EVICT, EVICT_SMALL, tmp_path)
    assert info["vec_backend"] == "dummy"  # the eviction env has no native vector form
    model = tmp_path / "maskableppo" / "model.zip"
    result = compare(EVICT, ["lru", "belady", f"maskableppo:{model}"], 2, 100, overrides=EVICT_SMALL)
    rows = result["episodes_detail"]
    assert result["reference_agent"] == "lru"
    # whole episodes: the same per episode for every rule and agent (the replay of one sequence)
    assert all(r["decisions"] > 0 for r in rows)
    # Belady's choices are the hit-rate bound of this cache: no agent hits more on the same episode
    for i in range(2):
        hits = {r["agent"]: r["hit_rate"] for r in rows if r["episode"] == i}
        assert hits["belady"] >= max(hits.values())
    assert all(r["invalid_actions"] == 0 for r in rows if r["agent"] == "maskableppo")
    # the lru rule through the environment: the same rewards as a hand-written loop taking info["lru_action"]
    env = make_env(EVICT, "test", EVICT_SMALL)
    for i in range(2):
        _, info = env.reset(seed=100 + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(info["lru_action"])
            total += reward
            done = terminated or truncated
        assert [r["reward"] for r in rows if r["agent"] == "lru"][i] == total
    assert result["agents"]["lru"]["reward_minus_lru"]["mean"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "recurrentppo"])
def test_discrete_algorithms_train_and_play_on_the_eviction_env(algo, tmp_path):
    info = _train(algo, EVICT, EVICT_SMALL, tmp_path, steps=200)
    assert info["timesteps_done"] >= 200
    agent = SB3Agent(algo, tmp_path / algo / "model.zip")
    env = make_env(EVICT, "test", EVICT_SMALL)
    row = evict_episode(env, 5, agent=agent)
    assert row["decisions"] > 0 and np.isfinite(row["reward"]) and row["reward"] < 0
