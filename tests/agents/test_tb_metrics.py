"""The environment's own metrics reach TensorBoard during training (env/... tags), as window means."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from moe_cache_env.agents.tb_metrics import ENV_TAGS, EnvMetricsCallback, window_values  # noqa: E402

SMALL = {"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 384, "predictor_fit_tokens": 512}


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    files = sorted(log_dir.rglob("events.out.tfevents*"))
    assert files, f"no event file under {log_dir}"
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_window_values_of_a_hand_made_info():
    info = {"reward_terms": {"perfect_coverage": 0.5, "latency_ratio": 0.8, "reward": -0.3, "coverage_term": 0.5,
                             "latency_term": -0.8},
            "metrics": {"hit_rate": 0.9, "mean_latency_ms": 12.5, "wasted_prefetch_bytes": 250,
                        "bytes_transferred": 1000, "link_utilization": 0.4}}
    assert window_values(info) == {"perfect_coverage": 0.5, "latency_ratio": 0.8, "hit_rate": 0.9,
                                   "ms_per_token": 12.5, "wasted_bytes_share": 0.25, "link_utilization": 0.4,
                                   "reward": -0.3, "coverage_term": 0.5, "latency_term": -0.8}
    info["metrics"]["bytes_transferred"] = 0
    info["metrics"]["wasted_prefetch_bytes"] = 0
    assert window_values(info)["wasted_bytes_share"] == 0.0
    assert window_values({"action_mask": [1, 0]}) == {}  # another environment's infos: nothing logged


class _RecordInfos(gym.Wrapper):
    """Keeps every step's info, to recompute the logged means independently."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.infos: list[dict] = []

    def step(self, action):
        result = super().step(action)
        self.infos.append(result[4])
        return result


def test_ppo_logs_the_mean_of_each_rollouts_windows(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from moe_cache_env.agents.evaluation import make_env

    recorder = _RecordInfos(make_env("MoECache-v0", "train", SMALL))
    venv = DummyVecEnv([lambda: recorder])
    n_steps = 32
    model = PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=32, n_epochs=1, seed=0, device="cpu",
                tensorboard_log=str(tmp_path / "tb"))
    model.learn(total_timesteps=3 * n_steps, callback=EnvMetricsCallback(), tb_log_name="ppo")
    logged = scalars(tmp_path / "tb")
    assert {f"env/{tag}" for tag in ENV_TAGS} <= set(logged)
    # PPO dumps once per rollout: point r is the plain mean of the windows of rollout r
    for r in range(3):
        window = recorder.infos[r * n_steps:(r + 1) * n_steps]
        expected = {
            "env/perfect_coverage": np.mean([i["reward_terms"]["perfect_coverage"] for i in window]),
            "env/ms_per_token": np.mean([i["metrics"]["mean_latency_ms"] for i in window]),
            "env/hit_rate": np.mean([i["metrics"]["hit_rate"] for i in window]),
            "env/wasted_bytes_share": np.mean([i["metrics"]["wasted_prefetch_bytes"]
                                               / max(1, i["metrics"]["bytes_transferred"]) for i in window]),
        }
        for tag, value in expected.items():
            step, got = logged[tag][r]
            assert step == (r + 1) * n_steps
            assert got == pytest.approx(value, rel=1e-5), (tag, r)  # event files hold float32
    # the reward is the sum of its terms, window by window, so in the means too
    for (_, reward), (_, cov), (_, lat) in zip(logged["env/reward"], logged["env/coverage_term"],
                                               logged["env/latency_term"]):
        assert reward == pytest.approx(cov + lat, abs=1e-5)


def test_the_train_command_writes_the_env_tags(tmp_path):
    from moe_cache_env.cli import main

    out = tmp_path / "run"
    assert main(["train", "--algo", "ppo", "--env", "MoECache-v0", "--timesteps", "128", "--seed", "0",
                 "--n-envs", "1", "--eval-freq", "10000", "--eval-episodes", "1", "--checkpoint-freq", "10000",
                 "--out", str(out), "--env-config", json.dumps(SMALL), "--no-progress-bar"]) == 0
    logged = scalars(out / "tb")
    for tag in ("env/perfect_coverage", "env/latency_ratio", "env/wasted_bytes_share", "env/hit_rate",
                "env/ms_per_token"):
        assert logged[tag], tag
    assert all(0.0 <= v <= 1.0 for _, v in logged["env/perfect_coverage"] + logged["env/hit_rate"])
