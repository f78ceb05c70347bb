"""MoECache-Evict-v0 and the replay behind it (``sim/evict.py``): a hand-computed episode, both env checkers, and
equality with the simulator's ``lru`` and ``belady`` when the agent takes their choices."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import moe_cache_env  # noqa: F401 - registers the environments
from moe_cache_env.envs.evict import MoECacheEvictEnv
from moe_cache_env.envs.suite import load_suite_trace
from moe_cache_env.profiles import load_profile
from moe_cache_env.sim import evict_kernel as EK
from moe_cache_env.sim.config import ConfigError, SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate
from moe_cache_env.sim.evict import EvictionReplay
from moe_cache_env.traces.format import Trace, make_meta, save_trace

STREAM = [0, 1, 2, 0, 1, 3]  # one layer, top-1, one sequence; a pool of 2 slots


def _stream_trace(stream: list[int], experts: int = 4) -> Trace:
    meta = make_meta(model="hand", num_experts=experts, top_k=1, num_layers=1, expert_bytes=1_000_000,
                     phase="decode", source="tests")
    chosen = np.asarray(stream, dtype=np.int16).reshape(len(stream), 1, 1)
    return Trace(experts=chosen, sequence=np.zeros(len(stream), dtype=np.int64), meta=meta)


def _hand_env(tmp_path, stream=STREAM) -> MoECacheEvictEnv:
    path = tmp_path / "stream.npz"
    save_trace(_stream_trace(stream), path)
    return MoECacheEvictEnv(config={
        "traces": [str(path)], "split": "all", "episode_sequences": 0, "capacity": 2,
        "workload": {"batch_min": 1, "batch_max": 1, "kv_min": 0.0, "kv_max": 0.0}, "schedule_seed": 0,
    })


def _layer_ms(miss: bool) -> float:
    """One layer of one token by hand: copy (if missed, on an idle link) + compute + overhead + host time."""
    p = load_profile("h100")
    ctab = p.compute_table(1_000_000, 1)
    return (p.transfer_ms(1_000_000) if miss else 0.0) + ctab[1] + p.layer_overhead_ms + p.host_decision_ms


def test_hand_computed_belady_episode(tmp_path):
    env = _hand_env(tmp_path)
    obs, info = env.reset(seed=0)
    # t0 0 miss, t1 1 miss, t2 2 miss: the pool {0, 1, 2} is over 2 slots; 0 and 1 are candidates
    assert info["warmup_ms"] == pytest.approx(3 * _layer_ms(True))
    keys = env.slot_keys()
    assert sorted(keys[info["action_mask"]].tolist()) == [0, 1]
    assert keys[info["belady_action"]] == 1  # 0 is needed at t3, 1 at t4
    assert keys[info["lru_action"]] == 0
    rewards, misses = [], []
    done = False
    while not done:
        obs, r, done, trunc, info = env.step(info["belady_action"])
        rewards.append(r)
        misses.append(info["misses"])
    # evict 1: t3 hit 0, t4 miss 1 -> {0, 2, 1}: both candidates never needed again, the lower key (0) goes;
    # t5 miss 3 -> {2, 1, 3}: again a tie, key 1 goes; nothing runs after the last decision
    assert rewards == pytest.approx([-(_layer_ms(False) + _layer_ms(True)), -_layer_ms(True), 0.0])
    assert misses == [1, 1, 0]
    m = info["episode_metrics"]
    assert m["miss_rate"] == pytest.approx(5 / 6)
    assert m["decisions"] == 3
    assert not trunc


def test_hand_computed_lru_episode(tmp_path):
    env = _hand_env(tmp_path)
    _, info = env.reset(seed=0)
    rewards = []
    done = False
    while not done:
        _, r, done, _, info = env.step(info["lru_action"])
        rewards.append(r)
    # evict 0 -> t3 0 miss (evict 1) -> t4 1 miss (evict 2) -> t5 3 miss (evict 0 or 1): every token misses
    assert rewards == pytest.approx([-_layer_ms(True)] * 3 + [0.0])
    assert info["episode_metrics"]["miss_rate"] == 1.0


def test_masked_action_falls_back_to_lru_and_bad_actions_are_refused(tmp_path):
    env = _hand_env(tmp_path)
    _, info = env.reset(seed=0)
    masked = int(np.flatnonzero(~info["action_mask"])[0])
    _, _, _, _, info2 = env.step(masked)
    assert info2["invalid_action"] is True
    assert info2["misses"] == 1 and info2["decisions"] == 1  # LRU's victim (0) left: t3 misses
    for bad in (1.5, "2", True, [0, 1], 10**6):
        with pytest.raises(ValueError):
            env.step(bad)


def test_both_checkers_and_maskable_interface():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("moe_cache_env:MoECache-Evict-v0", config={"episode_sequences": 2})
    check_env(env.unwrapped)
    sb3_check_env(gym.make("moe_cache_env:MoECache-Evict-v0", config={"episode_sequences": 2}))
    obs, info = env.reset(seed=3)
    mask = env.unwrapped.action_masks()
    assert mask.shape == (env.action_space.n,) and mask.any()
    assert np.array_equal(mask, info["action_mask"])
    assert obs.shape == env.observation_space.shape and env.observation_space.contains(obs)
    # candidates are the slot rows marked 1; rows past the pool's keys are zero
    rows = obs.reshape(env.action_space.n, EK.NUM_FEATURES)
    assert np.array_equal(rows[:, EK.F_SLOT_STATE] == 1.0, mask)


def test_same_seed_same_episode():
    def rollout():
        env = gym.make("moe_cache_env:MoECache-Evict-v0", config={"episode_sequences": 2})
        obs, info = env.reset(seed=11)
        out = [obs.sum()]
        for _ in range(200):
            obs, r, done, _, info = env.step(int(np.flatnonzero(info["action_mask"])[-1]))
            out += [r, obs.sum()]
            if done:
                break
        return out

    assert rollout() == rollout()


def test_unknown_key_and_small_max_slots_are_refused():
    with pytest.raises(ConfigError, match="unknown MoECache-Evict config key"):
        MoECacheEvictEnv(config={"slots": 3})
    env = MoECacheEvictEnv(config={"max_slots": 8})
    with pytest.raises(ConfigError, match="max_slots >="):
        env.reset(seed=0)


def _env_replay(trace: Trace, config: SimConfig, seed: int, choose: str) -> dict:
    """Replay through the agent interface, taking ``info[choose]`` at every decision."""
    rp = EvictionReplay(trace, config, seed=seed, policy="agent")
    pending = rp.run()
    while pending:
        pending = rp.run(rp.belady_action() if choose == "belady" else rp.lru_action())
    return rp.metrics()


@pytest.mark.parametrize("name", ["learned/tiny-olmoe-12L-64E-decode", "engines/gpt-oss-120b-decode",
                                  "synthetic/mixtral"])
@pytest.mark.parametrize("rule", ["lru", "belady"])
def test_choices_reproduce_the_simulators_lru_and_belady(name, rule):
    trace = load_suite_trace(name)
    if trace.num_tokens > 2000:
        trace = trace.select_sequences(np.unique(trace.sequence)[:4])
    workloads = [WorkloadConfig(), WorkloadConfig(batch_min=1, batch_max=4, kv_min=0.0, kv_max=0.5, segment_steps=8)]
    for workload in workloads:
        for order in ("fused", "per-expert"):
            config = SimConfig(workload=workload, execution_order=order)
            want = evaluate(trace, EvaluationRequest(policy=rule, config=config, seed=5))["metrics"]
            got = _env_replay(trace, config, 5, rule)
            assert got.pop("decisions") > 0
            assert got == want  # every metric, bit for bit: misses, hits, latency, bytes


@pytest.mark.slow
def test_seed_timing_global_pools_and_launch_costs_reproduce_too():
    trace = load_suite_trace("learned/tiny-olmoe-12L-64E-decode").select_sequences(list(range(3)))
    for config in (SimConfig(timing="seed", profile="rtx3090-seed"),
                   SimConfig(cache=split_capacity(26 * 12, 8, "global")),
                   # a profile with a host cost per expert launch, in both execution orders
                   SimConfig(profile="h200"), SimConfig(profile="h200", execution_order="per-expert")):
        for rule in ("lru", "belady"):
            want = evaluate(trace, EvaluationRequest(policy=rule, config=config, seed=1))["metrics"]
            got = _env_replay(trace, config, 1, rule)
            got.pop("decisions")
            assert got == want


@pytest.mark.slow
def test_a_copy_issue_cost_is_charged_alike(tmp_path):
    # a profile whose host spends 0.03 ms more issuing each copy than h200's: the eviction environment's replay and
    # the simulator charge it the same way (the k-th copy of a layer starts k issues after the decision)
    import json

    from moe_cache_env.profiles.profile import DATA_DIR

    data = json.loads((DATA_DIR / "h200.json").read_text())
    data["copy_issue_ms"] = data.get("copy_issue_ms", 0.0) + 0.03
    path = tmp_path / "h200-issue.json"
    path.write_text(json.dumps(data))
    trace = load_suite_trace("learned/tiny-olmoe-12L-64E-decode").select_sequences(list(range(2)))
    for order in ("fused", "per-expert"):
        config = SimConfig(profile=str(path), execution_order=order)
        want = evaluate(trace, EvaluationRequest(policy="lru", config=config, seed=1))["metrics"]
        plain = evaluate(trace, EvaluationRequest(policy="lru", config=SimConfig(profile="h200", execution_order=order),
                                                  seed=1))["metrics"]
        assert want["mean_latency_ms"] > plain["mean_latency_ms"]  # the issue cost is charged
        got = _env_replay(trace, config, 1, "lru")
        got.pop("decisions")
        assert got == want


def test_rewards_sum_to_the_episodes_latency():
    env = gym.make("moe_cache_env:MoECache-Evict-v0", config={"episode_sequences": 2})
    _, info = env.reset(seed=4)
    total, done = 0.0, False
    while not done:
        _, r, done, _, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
        total += r
    replay = env.unwrapped.replay
    assert info["warmup_ms"] - total == pytest.approx(float(replay.step_latency_ms.sum()), rel=1e-9)


def test_misses_reward_counts_demand_loads(tmp_path):
    env = _hand_env(tmp_path)
    env.config["reward"] = "misses"
    _, info = env.reset(seed=0)
    rewards, done = [], False
    while not done:
        _, r, done, _, info = env.step(info["belady_action"])
        rewards.append(r)
    assert rewards == [-1.0, -1.0, 0.0]  # the hand-computed Belady episode: t4 misses 1, t5 misses 3
