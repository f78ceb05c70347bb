"""Shared fixtures: small suites so that every environment test runs in well under a second per episode."""

from __future__ import annotations

from typing import Any

import pytest

#: a short synthetic trace (resolved once per process) and short episodes
SMALL = {"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 384, "predictor_fit_tokens": 512}


def small_config(env_id: str, **extra: Any) -> dict[str, Any]:
    """The registered variant's full config with the small suite and episodes."""
    from moe_cache_env.envs import variant_config

    config = variant_config(env_id)
    config.update(SMALL)
    config.update(extra)
    return config


@pytest.fixture
def make_small_env():
    import gymnasium as gym

    import moe_cache_env.envs  # noqa: F401

    def _make(env_id: str = "MoECache-v0", **extra: Any):
        return gym.make(f"moe_cache_env:{env_id}", config=small_config(env_id, **extra))

    return _make
