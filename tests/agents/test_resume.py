"""Training that survives: resuming from a checkpoint reproduces the uninterrupted run bit for bit, Ctrl-C
saves the model and run.json and exits 130, and run.json names only files that exist."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("stable_baselines3")

SMALL = {"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 384, "predictor_fit_tokens": 512}
# tiny networks and rollouts, so that 64 steps hold several updates (and a checkpoint at a rollout start)
HYPERPARAMS = {
    "ppo": "default:\n  policy: MlpPolicy\n  n_steps: 16\n  batch_size: 16\n  n_epochs: 2\n"
           "  policy_kwargs: \"dict(net_arch=[16, 16])\"\n",
    "dqn": "default:\n  policy: MlpPolicy\n  learning_starts: 8\n  buffer_size: 1000\n  batch_size: 8\n"
           "  train_freq: 2\n  target_update_interval: 8\n  policy_kwargs: \"dict(net_arch=[16, 16])\"\n",
    "sac": "default:\n  policy: MlpPolicy\n  learning_starts: 8\n  buffer_size: 1000\n  batch_size: 8\n"
           "  train_freq: 2\n  policy_kwargs: \"dict(net_arch=[16, 16])\"\n",
}


def _paths_in(record: dict) -> list[str]:
    found = []
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str) and (v.endswith(".zip") or v.endswith(".pkl") or "/" in v) and key != "env":
                found.append(v)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("algo,env_id,n_envs,backend", [
    ("ppo", "MoECache-v0", 2, "subproc"),  # on-policy, environments in subprocesses
    ("ppo", "MoECache-v0", 2, "native"),  # the native vector environment, its VecMonitor mid-episode
    ("dqn", "moe_cache_env:MoECache-Discrete-v0", 1, "native"),  # off-policy: the replay buffer and exploration
    ("sac", "MoECache-v0", 1, "dummy"),
])
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, algo, env_id, n_envs, backend):
    from moe_cache_env.agents.sb3 import _algo_class, resume, train

    hp = tmp_path / f"{algo}.yml"
    hp.write_text(HYPERPARAMS[algo])
    kwargs = dict(n_envs=n_envs, eval_freq=16, eval_episodes=1, checkpoint_freq=32, hyperparams_path=hp,
                  overrides=SMALL, progress_bar=False, vec_backend=backend)
    full = train(algo, env_id, 64, 3, tmp_path / "full", **kwargs)
    assert full["vec_backend"] == backend
    assert full["timesteps_done"] >= 64 and not full["interrupted"]
    # the end of a finished run is a checkpoint too, so that it can go on with a larger total
    assert full["resume_checkpoint"].endswith(f"{algo}_{full['timesteps_done']}_steps.resume.pkl")
    for path in _paths_in(full):
        assert Path(path).exists(), f"run.json names {path}, which does not exist"
    # a run that stopped after its first checkpoint: only that checkpoint's files
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    first = min(int(p.name.split("_")[-2]) for p in (tmp_path / "full" / "checkpoints").glob(f"{algo}_*_steps.zip"))
    assert first < 64
    for p in (tmp_path / "full" / "checkpoints").iterdir():
        if p.name.endswith(f"_{first}_steps.zip") or p.name.endswith(f"_{first}_steps.pkl") \
                or p.name.endswith(f"_{first}_steps.resume.pkl"):
            shutil.copy(p, part / "checkpoints" / p.name)
    resumed = resume(part, progress_bar=False)
    assert resumed["resumed_from_step"] == first and resumed["timesteps_done"] == full["timesteps_done"]
    cls = _algo_class(algo)
    a = cls.load(tmp_path / "full" / "model.zip").policy.state_dict()
    b = cls.load(part / "model.zip").policy.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's parameters differ from the uninterrupted run's"
    # the validation history is carried over and the later scores are the same
    assert resumed["validation"] == full["validation"]


def test_resume_without_checkpoint_is_one_line(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "moe_cache_env", "train", "--resume", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no complete checkpoint" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = subprocess.run([sys.executable, "-m", "moe_cache_env", "train", "--resume", str(tmp_path), "--algo", "dqn"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "drop --algo" in result.stderr


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130_then_resumes(tmp_path: Path):
    hp = tmp_path / "ppo.yml"
    hp.write_text(HYPERPARAMS["ppo"])
    out = tmp_path / "run"
    args = ["train", "--algo", "ppo", "--env", "moe_cache_env:MoECache-v0", "--timesteps", "1000000",
            "--n-envs", "2", "--eval-freq", "1000000", "--checkpoint-freq", "16", "--hyperparams", str(hp),
            "--env-config", json.dumps(SMALL), "--no-progress-bar", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "moe_cache_env", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("*.resume.pkl")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    record = json.loads((out / "run.json").read_text())
    assert record["interrupted"] is True and 0 < record["timesteps_done"] < 1_000_000
    assert record["model"] and Path(record["model"]).exists()
    assert record["best_model"] is None  # no evaluation ran, so none is named
    for path in _paths_in(record):
        assert Path(path).exists(), f"run.json names {path}, which does not exist"
    # resume from the newest checkpoint, to a total a few rollouts later
    from moe_cache_env.agents.sb3 import latest_checkpoint

    step = latest_checkpoint(out)
    assert step is not None
    result = subprocess.run([sys.executable, "-m", "moe_cache_env", "train", "--resume", str(out),
                             "--timesteps", str(step + 32), "--no-progress-bar"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["resumed_from_step"] == step and record["timesteps_done"] == step + 32
    assert not record["interrupted"]
