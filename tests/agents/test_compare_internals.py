"""The oracle, the tuning and the bounds behind ``moe-cache-env compare``, each replayed here independently.

The expectations are recomputed from scratch: every grid point is played on a freshly reset environment (not on
copies the code under test made), rewards are summed here, and the bounds' hit rates come from the plain-Python
demand-only cache of ``tests/sim/flat_reference.py`` on the schedule the environment itself replayed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moe_cache_env.agents.compare import BOUNDS, bounds_for_episode
from moe_cache_env.agents.evaluation import L2_GRID, L3_GRID, OracleChooser, make_env, threshold_grid, tune_static
from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate

from ..sim.flat_reference import flat_cache_hits

ENV = "MoECache-v0"
#: a short synthetic trace and short episodes, so that each episode takes a fraction of a second
SMALL = {"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 256, "predictor_fit_tokens": 512}
#: three threshold pairs far apart: prefetch a lot, the seed's default, prefetch little
GRID = [(0.5, 0.1), (0.7, 0.3), (0.9, 0.6)]


def play(split: str, seed: int, actions: list[tuple[float, float]], *, until_done: bool = False) -> list[float]:
    """Rewards of a fresh environment reset with ``seed``, stepping to each (l2, l3) in turn (the last one repeated
    to the end of the episode when ``until_done``)."""
    env = make_env(ENV, split, SMALL)
    env.reset(seed=seed)
    rewards = []
    i = 0
    while True:
        l2, l3 = actions[min(i, len(actions) - 1)]
        _, reward, terminated, truncated, _ = env.step(env.unwrapped.threshold_action(l2, l3))
        rewards.append(float(reward))
        i += 1
        if terminated or truncated or (not until_done and i == len(actions)):
            break
    env.close()
    return rewards


def test_threshold_grid_by_hand():
    assert threshold_grid((0.5, 0.7), (0.3, 0.6, 0.8)) == [(0.5, 0.3), (0.7, 0.3), (0.7, 0.6)]
    grid = threshold_grid()
    # 0.5 pairs with 0.1..0.5 (5 values); 0.6..0.9 with all six L3 values
    assert len(grid) == 5 + 4 * 6
    assert all(l3 <= l2 for l2, l3 in grid) and set(grid) <= {(a, b) for a in L2_GRID for b in L3_GRID}


@pytest.mark.slow
def test_oracle_picks_the_best_grid_point_of_each_window():
    seed = 3
    chooser = OracleChooser(GRID)
    env = make_env(ENV, "test", SMALL)
    obs, _ = env.reset(seed=seed)
    history: list[tuple[float, float]] = []
    spreads = []
    for window in range(3):
        action = chooser(env, obs)
        # replay every grid point for this window on fresh environments that first repeat the chosen history
        rewards = {point: play("test", seed, history + [point])[-1] for point in GRID}
        chosen = [p for p in GRID if np.allclose(np.asarray(env.unwrapped.threshold_action(*p)), np.asarray(action))]
        assert chosen, f"window {window}: the oracle's action is not one of the grid's"
        best = max(rewards.values())
        spreads.append(best - min(rewards.values()))
        assert rewards[chosen[0]] == pytest.approx(best, rel=1e-12), (window, rewards, chosen)
        obs, reward, terminated, truncated, _ = env.step(action)
        assert reward == pytest.approx(best, rel=1e-12)  # the real step gets the reward the oracle foresaw
        history.append(chosen[0])
        if terminated or truncated:
            break
    # the grid points give different rewards, so picking the best is a real choice
    assert max(spreads) > 0


def test_tune_static_returns_the_grid_point_with_the_best_mean_reward():
    seed, episodes = 20, 2
    best, rows = tune_static(ENV, episodes, seed, grid=GRID, overrides=SMALL)
    assert [(r["l2"], r["l3"]) for r in rows] == GRID
    means = {}
    for point in GRID:
        totals = [sum(play("train", seed + i, [point], until_done=True)) for i in range(episodes)]
        means[point] = float(np.mean(totals))
        row = next(r for r in rows if (r["l2"], r["l3"]) == point)
        assert row["mean_reward"] == pytest.approx(means[point], rel=1e-9)
        assert row["std_reward"] == pytest.approx(float(np.std(totals)), rel=1e-9, abs=1e-12)
    assert best == max(means, key=means.get)
    assert len(set(means.values())) > 1  # the grid points differ, so the choice means something


def test_bounds_for_an_episode_replay_the_environments_own_schedule():
    seed = 5
    env = make_env(ENV, "test", SMALL)
    bounds = bounds_for_episode(env, seed)
    assert set(bounds) == set(BOUNDS)
    base = env.unwrapped
    # the episode the environment will play, under the schedule its own simulator drew
    schedule = base.sim.schedule
    trace = base.episode_trace
    capacity = schedule.tier_caps.sum(axis=1)
    for policy in ("lru", "belady"):
        hits, requests = flat_cache_hits(trace.experts, trace.num_experts, schedule.step_tokens, capacity, policy,
                                         base.sim.cache.scope)
        assert bounds[policy]["expert_requests"] == requests
        assert bounds[policy]["hit_rate"] == pytest.approx(hits / requests, abs=1e-12)
    assert bounds["belady"]["hit_rate"] >= bounds["lru"]["hit_rate"]
    # play the episode to its end: the agent's replay and the bounds cover the same steps, tokens and requests
    while True:
        *_, terminated, truncated, _ = env.step(base.threshold_action(0.7, 0.3))
        if terminated or truncated:
            break
    played = base.sim.metrics()
    for policy in BOUNDS:
        for key in ("steps", "tokens", "routing_events", "expert_requests"):
            assert bounds[policy][key] == played[key], (policy, key)
    # and each bound is what `evaluate` reports for the same episode trace and seed
    for policy in BOUNDS:
        request = EvaluationRequest(policy=policy, config=base.config.sim, seed=base.sim_seed)
        assert bounds[policy] == evaluate(trace, request)["metrics"]
    env.close()


def test_an_episode_record_replays_bit_identically(tmp_path):
    """The record compare writes (info["episode_spec"] plus the actions) replays the same rewards on a new env."""
    from moe_cache_env.agents.baselines import BASELINES
    from moe_cache_env.agents.evaluation import make_env, replay_episode, run_episode
    from tests.envs.conftest import SMALL

    env = make_env("MoECache-v0", "test", dict(SMALL))
    record = run_episode(env, BASELINES["random"](), seed=11, episode=0)
    data = record.replay_record()
    assert data["sim_seed"] == record.episode_spec["sim_seed"] and len(data["actions"]) == record.windows
    fresh = make_env("MoECache-v0", "test", dict(SMALL))
    rewards = replay_episode(fresh, json.loads(json.dumps(data)))
    assert len(rewards) == record.windows
    assert sum(rewards) == record.reward
    # a different simulator seed is a different episode
    other = dict(data, sim_seed=data["sim_seed"] + 1)
    assert replay_episode(make_env("MoECache-v0", "test", dict(SMALL)), other) != rewards
