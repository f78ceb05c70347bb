"""Render modes: rgb_array (a NumPy picture), human (a printed line), ansi; a warning without a mode; SB3's
make_vec_env (which asks for rgb_array) and check_env."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import moe_cache_env.envs  # noqa: F401
from moe_cache_env.envs import render as R

from .conftest import small_config

KV = np.array(R._KV, dtype=np.uint8)
GREY = np.array(R._GREY, dtype=np.uint8)
USED = np.array(R._USED, dtype=np.uint8)
WHITE = np.array(R._WHITE, dtype=np.uint8)
LINK = np.array(R._LINK, dtype=np.uint8)
TRAFFIC = np.array(R._BACKGROUND_TRAFFIC, dtype=np.uint8)


def test_draw_state_hand_computed_pixels():
    # plotting area: rows 6..89 (84 rows), value 1 at row 6; tallest tier 20 slots
    img = R.draw_state(tier_slots=(4, 10, 20), tier_capacity=(4, 10, 10), tier_used=(4, 5, 0),
                       link_busy=0.5, background_share=0.25, latency_ratios=[0.5, 1.5], coverages=[1.0, 0.0])
    assert img.shape == (R.IMAGE_HEIGHT, R.IMAGE_WIDTH, 3) and img.dtype == np.uint8
    # L2 (x 18..27): 10 slots = 42 rows (48..89), 5 used = 21 rows (69..89), nothing above row 48
    assert (img[85, 20] == USED).all() and (img[60, 20] == GREY).all() and (img[40, 20] == WHITE).all()
    # L3 (x 32..41): capacity 10 of 20 slots = rows 48..89 grey, the KV cache's half above in dark red
    assert (img[50, 35] == GREY).all() and (img[10, 35] == KV).all()
    # L1 (x 4..13): 4 of 4 slots in use = 17 rows (73..89)
    assert (img[80, 8] == USED).all() and (img[70, 8] == WHITE).all()
    # link (x 50..59): busy half the time = rows 48..89; other traffic the top quarter = rows 6..26
    assert (img[60, 55] == LINK).all() and (img[10, 55] == TRAFFIC).all() and (img[35, 55] == WHITE).all()
    # history: the newest window in the right-most bar column; 1.5 > 1 is red and reaches above the line at 1
    newest_x = 66 + 2 * (R.HISTORY_WINDOWS - 1)
    older_x = newest_x - 2
    assert (img[40, newest_x] == np.array(R._BAD)).all()
    assert (img[70, older_x] == np.array(R._GOOD)).all() and (img[40, older_x] == WHITE).all()
    assert (img[48, 70] == np.array(R._BLACK)).all()  # the reference line (ratio 1) across the panel


def test_draw_state_clips_nan_and_overflow():
    img = R.draw_state((4, 10, 20), (4, 10, 20), (50, 50, 50), float("nan"), 2.0, [float("nan"), float("inf")], [2.0, -1.0])
    assert img.shape == (R.IMAGE_HEIGHT, R.IMAGE_WIDTH, 3)


def _run(env, steps):
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(steps):
        env.step(env.action_space.sample())


def test_rgb_array_shows_the_windows_played():
    env = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), render_mode="rgb_array")
    _run(env, 0)
    first = env.render()
    _run(env, 6)
    later = env.render()
    assert first.shape == later.shape == (R.IMAGE_HEIGHT, R.IMAGE_WIDTH, 3) and later.dtype == np.uint8
    history = slice(66, 66 + 2 * R.HISTORY_WINDOWS)
    coloured = lambda img: int((img[R._TOP:R._BOTTOM, history] != WHITE).any(axis=2).sum())  # noqa: E731
    assert coloured(later) > coloured(first) > 0, "every window adds a bar to the history panel"
    # tier columns show slots in use after a few windows
    assert (later[:, 4:42] == USED).all(axis=2).any()


def test_ansi_and_human(capsys):
    env = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), render_mode="ansi")
    _run(env, 2)
    line = env.render()
    assert isinstance(line, str) and line.startswith("window    2")
    human = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), render_mode="human")
    capsys.readouterr()
    _run(human, 2)
    printed = capsys.readouterr().out.splitlines()
    assert [p.split()[1] for p in printed] == ["0", "1", "2"], "one line per reset and step"
    assert human.render() is None


def test_render_without_mode_warns_and_returns_none():
    env = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), disable_env_checker=True)
    _run(env, 1)
    with pytest.warns(UserWarning, match="without specifying any render mode"):
        assert env.render() is None


def test_unknown_render_mode_is_refused():
    from moe_cache_env.envs.moe_cache import MoECacheEnv

    with pytest.raises(ValueError, match="render_mode='rgb' is not supported"):
        MoECacheEnv(config=small_config("MoECache-v0"), render_mode="rgb")


@pytest.mark.parametrize("mode", ["rgb_array", "ansi"])
def test_gymnasium_render_check(mode):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), render_mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)


def test_sb3_check_env_with_rgb_array():
    from stable_baselines3.common.env_checker import check_env

    env = gym.make("moe_cache_env:MoECache-v0", config=small_config("MoECache-v0"), render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, warn=True)


def test_sb3_make_vec_env_plain_id():
    """The call from the issue: SB3 passes render_mode="rgb_array" to gym.make."""
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("moe_cache_env:MoECache-v0")
    assert venv.render_mode == "rgb_array"
    venv.close()
    venv = make_vec_env("moe_cache_env:MoECache-v0", n_envs=2, seed=0, env_kwargs={"config": small_config("MoECache-v0")})
    obs = venv.reset()
    obs, reward, done, info = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert obs.shape == (2, 30) and np.all(np.isfinite(reward))
    frames = venv.get_images()
    assert len(frames) == 2 and all(f.shape == (R.IMAGE_HEIGHT, R.IMAGE_WIDTH, 3) for f in frames)
    venv.close()
