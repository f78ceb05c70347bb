"""RL Zoo trains and replays the environment through its own scripts (docs/environment.md, "RL Zoo").

Skipped where rl_zoo3 is not installed (it is in the dev extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rl_zoo3")
pytest.importorskip("requests")  # rl_zoo3.enjoy imports it

HYPERPARAMS = Path(__file__).resolve().parents[2] / "moe_cache_env" / "agents" / "hyperparams" / "ppo.yml"
ENV_KWARGS = "config:dict(traces=['synth:qwen1.5-moe:2048:0'],episode_tokens=384,predictor_fit_tokens=512)"


def zoo(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", f"rl_zoo3.{script}", "--algo", "ppo", "--env", "MoECache-v0",
         "--gym-packages", "moe_cache_env", "-f", "logs", "--env-kwargs", ENV_KWARGS, *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        # SB3's logger, which rl_zoo3 sets up without a folder, would otherwise leave an SB3-<time> folder in the
        # system temp dir per run
        env={**os.environ, "SB3_LOGDIR": str(cwd / "sb3-log")},
    )
    assert result.returncode == 0, f"rl_zoo3.{script} exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_rl_zoo_train_then_enjoy_with_human_rendering(tmp_path: Path):
    zoo("train", tmp_path, "-n", "64", "--seed", "0", "--eval-freq", "-1", "--conf-file", str(HYPERPARAMS),
        "--hyperparams", "n_steps:16", "batch_size:16", "n_envs:1")
    assert (tmp_path / "logs" / "ppo" / "MoECache-v0_1" / "MoECache-v0.zip").exists()
    # enjoy makes the env with render_mode="human": the env prints one line per window
    result = zoo("enjoy", tmp_path, "-n", "12")
    windows = [line for line in result.stdout.splitlines() if line.startswith("window ")]
    assert len(windows) >= 12, result.stdout[-2000:]
