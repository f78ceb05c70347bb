"""Smoke tests of the real commands with tiny budgets: compare the five strategies, train PPO and DQN, and
compare a saved model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


SMALL = json.dumps({"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 384, "predictor_fit_tokens": 512})
FIVE = ["static", "conservative", "aggressive", "balanced", "dynamic"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "moe_cache_env", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_compare_five_strategies_writes_one_entry_per_agent(tmp_path: Path):
    out = tmp_path / "cmp"
    result = run_cli("compare", "--agents", ",".join(FIVE), "--episodes", "2", "--seed", "7", "--out", str(out),
                     "--env-config", SMALL)
    data = json.loads((out / "compare.json").read_text())
    assert data["agent_order"] == FIVE and sorted(data["agents"]) == sorted(FIVE)
    assert set(data["bounds"]) == {"lru", "belady", "clairvoyant", "perfect"}
    assert data["bound_kinds"]["clairvoyant"] == "latency bound" and data["bound_kinds"]["lru"] == "reference"
    # the latency bound is at or below every agent's mean latency on the same episodes
    for name in FIVE:
        assert data["bounds"]["clairvoyant"]["mean_latency_ms"]["mean"] <= data["agents"][name]["mean_latency_ms"]["mean"]
    assert len(data["episodes_detail"]) == 2 * len(FIVE)
    for name in FIVE:
        assert name in result.stdout
    assert (out / "compare.csv").exists() and (out / "summary.csv").exists()
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # every agent saw the same episodes
    episodes = {(r["episode"], r["trace"], r["start_sequence"]) for r in data["episodes_detail"]}
    assert len(episodes) == 2


def test_compare_rejects_unknown_agent(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "moe_cache_env", "compare", "--agents", "static,clairvoyant",
                             "--episodes", "1", "--env-config", SMALL], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "clairvoyant" in result.stderr


def test_compare_on_the_eviction_env_pairs_against_lru(tmp_path: Path):
    out = tmp_path / "evict"
    result = run_cli("compare", "--env", "MoECache-Evict-v0", "--episodes", "1", "--out", str(out), "--quiet",
                     "--env-config", json.dumps({"episode_sequences": 1}))
    data = json.loads((out / "compare.json").read_text())
    assert data["agent_order"] == ["lru", "belady", "random"] and data["reference_agent"] == "lru"
    # Belady's eviction misses least of all demand-only caches of the same slots on the same episode
    hits = {name: data["agents"][name]["hit_rate"]["mean"] for name in data["agent_order"]}
    assert hits["belady"] >= hits["lru"] and hits["belady"] >= hits["random"]
    assert "belady (bound)" in result.stdout and "vs lru (paired)" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "moe_cache_env", "compare", "--env", "MoECache-Evict-v0", "--agents",
                          "lru,static", "--episodes", "1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown agent 'static'" in bad.stderr and "Traceback" not in bad.stderr


def test_train_ppo_then_compare_the_saved_model(tmp_path: Path):
    out = tmp_path / "ppo"
    run_cli("train", "--algo", "ppo", "--env", "moe_cache_env:MoECache-v0", "--timesteps", "64", "--seed", "1", "--n-envs", "1",
            "--eval-freq", "32", "--eval-episodes", "1", "--checkpoint-freq", "32", "--out", str(out),
            "--env-config", SMALL, "--no-progress-bar")
    record = json.loads((out / "run.json").read_text())
    assert record["algo"] == "ppo" and record["timesteps"] == 64 and record["env"] == "MoECache-v0"
    assert (out / "model.zip").exists() and (out / "best" / "best_model.zip").exists()
    assert any((out / "checkpoints").iterdir())
    assert any((out / "tb").rglob("events.out.tfevents*"))
    assert record["validation"]["timesteps"], "the evaluation callback ran on the validation split"
    cmp_out = tmp_path / "cmp"
    run_cli("compare", "--agents", f"static,ppo:{out / 'model.zip'}", "--episodes", "1", "--no-bounds",
            "--out", str(cmp_out), "--env-config", SMALL)
    data = json.loads((cmp_out / "compare.json").read_text())
    assert data["agent_order"] == ["static", "ppo"]


def test_train_dqn_on_the_discrete_variant(tmp_path: Path):
    out = tmp_path / "dqn"
    result = run_cli("train", "--algo", "dqn", "--env", "MoECache-Discrete-v0", "--timesteps", "64", "--n-envs", "1",
                     "--eval-freq", "64", "--eval-episodes", "1", "--out", str(out), "--env-config", SMALL,
                     "--no-progress-bar")
    assert (out / "model.zip").exists()
    assert "Warning" not in result.stderr, result.stderr


def test_train_a2c_and_sac_use_their_hyperparameter_files(tmp_path: Path):
    from moe_cache_env.agents.sb3 import load_hyperparams

    assert load_hyperparams("a2c", "MoECache-v0")["n_steps"] == 32
    assert load_hyperparams("sac", "MoECache-v0")["buffer_size"] == 100000
    assert "log_std_init" not in load_hyperparams("a2c", "MoECache-Discrete-v0")["policy_kwargs"]
    for algo in ("a2c", "sac"):
        out = tmp_path / algo
        result = run_cli("train", "--algo", algo, "--env", "MoECache-v0", "--timesteps", "64", "--n-envs", "2",
                         "--eval-freq", "32", "--eval-episodes", "1", "--out", str(out), "--env-config", SMALL,
                         "--no-progress-bar")
        record = json.loads((out / "run.json").read_text())
        assert record["hyperparams"]["gamma"] == 0.95 and record["n_envs"] == 2
        # no spurious SB3 warning (the training/eval VecEnv type check) and no other warning either
        assert "Warning" not in result.stderr, result.stderr
        assert record["best_model"] and Path(record["best_model"]).exists()


def test_train_rejects_mismatched_algorithm():
    result = subprocess.run([sys.executable, "-m", "moe_cache_env", "train", "--algo", "dqn", "--env", "MoECache-v0",
                             "--timesteps", "8"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "MoECache-Discrete-v0" in result.stderr
