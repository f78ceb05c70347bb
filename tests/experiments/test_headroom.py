"""The headroom map's scenario run (experiments/headroom/headroom.py) on a shrunken grid: it replays lookahead-2
controls on an environment's simulator, which must keep both co-occurrence distances for them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "headroom" / "headroom.py"


@pytest.fixture()
def headroom(monkeypatch):
    module = load_script(SCRIPT, "headroom_script")
    monkeypatch.setattr(module, "threshold_grid", lambda: [(0.7, 0.3), (0.9, 0.6)])
    far = [c for c in module.EXTENDED_GRID if c.lookahead == 2][:2]
    monkeypatch.setattr(module, "EXTENDED_GRID", module.EXTENDED_GRID[:2] + far)
    return module


def test_a_scenario_replays_lookahead_2_controls(headroom):
    assert any(c.lookahead == 2 for c in headroom.EXTENDED_GRID)
    result = headroom.run_scenario(headroom.scenarios()[0], 1)
    extended = result["extended"]
    assert extended["best_fixed"]["controls"]["lookahead"] in (1, 2)
    assert math.isfinite(extended["best_fixed"]["ms_per_token"]) and extended["best_fixed"]["ms_per_token"] > 0
    # the eviction row: Belady's misses bound LRU's, and here its latency too
    assert result["eviction"]["belady"] <= result["eviction"]["lru"]


def test_the_window_replay_reproduces_the_environments_rewards(headroom):
    from moe_cache_env.agents.evaluation import make_env

    env = make_env("MoECache-v0", "test", headroom.env_overrides(headroom.scenarios()[0]))
    headroom.check_replay_matches_env(env, 0)  # raises if the replay and the environment disagree
    env.close()
