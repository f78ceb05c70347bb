"""Stable-Baselines3 training on the environments, and SB3 models as agents for ``compare``.

Training (``moe-cache-env train``): vectorised training environments on the *train* split, each wrapped in
``Monitor``; an ``EvalCallback`` on the held-out *validation* split that keeps the best model; checkpoints;
TensorBoard logs; a progress bar; the final model saved as ``model.zip`` beside a ``run.json`` record.
Hyperparameters come from ``agents/hyperparams/<algo>.yml`` (RL-Zoo style: an entry per environment id, or
``default``) and can be overridden.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.callbacks import EvalCallback

from moe_cache_env.agents.baselines import Agent

ALGOS = ("ppo", "a2c", "sac", "dqn")
HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
#: keys of a hyperparameter entry that are not arguments of the algorithm's constructor
_NON_ALGO_KEYS = ("n_envs", "n_timesteps", "policy")


class SeededEvalCallback(EvalCallback):
    """An ``EvalCallback`` that replays the same validation episodes at every evaluation, so that successive
    scores (and the choice of the best model) differ by the policy only, not by the episodes drawn."""

    def __init__(self, eval_seed: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_seed = eval_seed

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.eval_env.seed(self.eval_seed)
        return super()._on_step()


def _algo_class(algo: str):
    import stable_baselines3 as sb3

    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; use one of {list(ALGOS)}")
    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "sac": sb3.SAC, "dqn": sb3.DQN}[algo]


def _parse_policy_kwargs(text: str) -> dict[str, Any]:
    """``"dict(net_arch=[64, 64], log_std_init=-1.0)"`` -> a dict; only literal keyword values are allowed."""
    tree = ast.parse(text.strip(), mode="eval").body
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "dict" and not tree.args):
        raise ValueError(f"policy_kwargs must look like dict(key=literal, ...), got {text!r}")
    return {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords}


def load_hyperparams(algo: str, env_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """The hyperparameters of ``algo`` on ``env_id`` (the env's entry, else ``default``; {} if no file)."""
    file = Path(path) if path else HYPERPARAMS_DIR / f"{algo}.yml"
    if not file.exists():
        if path:
            raise FileNotFoundError(f"hyperparameter file {file} does not exist")
        return {}
    data = yaml.safe_load(file.read_text()) or {}
    entry = dict(data.get(env_id, data.get("default", {})))
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = _parse_policy_kwargs(entry["policy_kwargs"])
    return entry


def _check_algo_fits(algo: str, env_id: str) -> None:
    from moe_cache_env.envs import variant_config

    action_type = variant_config(env_id)["action_type"]
    if algo == "dqn" and action_type != "discrete":
        raise ValueError(f"dqn needs discrete actions; {env_id} has {action_type} actions: use MoECache-Discrete-v0")
    if algo == "sac" and action_type == "discrete":
        raise ValueError(f"sac needs continuous actions; {env_id} has discrete actions: use MoECache-v0")


def _make_env_fn(env_id: str, split: str, rank: int, seed: int, overrides: dict[str, Any] | None):
    def _init():
        import torch
        from stable_baselines3.common.monitor import Monitor

        from moe_cache_env.agents.evaluation import make_env

        torch.set_num_threads(1)  # one core per worker: the simulator, not torch, is the work here
        env = Monitor(make_env(env_id, split, overrides))
        env.reset(seed=seed + rank)
        env.action_space.seed(seed + rank)
        return env

    return _init


def train(
    algo: str,
    env_id: str,
    timesteps: int | None,
    seed: int,
    out_dir: str | Path,
    *,
    n_envs: int | None = None,
    eval_freq: int = 10_000,
    eval_episodes: int = 5,
    checkpoint_freq: int = 50_000,
    hyperparams_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress_bar: bool = True,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train ``algo`` on ``env_id``; write model.zip, best/best_model.zip, checkpoints, tb logs, run.json.

    Args:
        timesteps: environment steps (windows) in total, over all environments; None = the YAML's n_timesteps.
        eval_freq: evaluate on the validation split every this many total steps.
        overrides: env config keys replacing the registered variant's (e.g. a smaller ``traces`` suite).
    Returns:
        The run record also written to ``run.json``.
    """
    import torch
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from moe_cache_env.agents.evaluation import make_env
    from moe_cache_env.envs import VARIANTS
    from moe_cache_env.envs.config import make_config
    from moe_cache_env.envs.suite import load_split

    if env_id not in VARIANTS:
        raise ValueError(f"unknown environment {env_id!r}; registered: {sorted(VARIANTS)}")
    _check_algo_fits(algo, env_id)
    cls = _algo_class(algo)
    params = load_hyperparams(algo, env_id, hyperparams_path)
    n_envs = int(n_envs or params.get("n_envs", 1))
    total = int(timesteps if timesteps is not None else params.get("n_timesteps", 100_000))
    if total < 1 or n_envs < 1:
        raise ValueError(f"timesteps and n_envs must be >= 1, got {total} and {n_envs}")
    policy = params.get("policy", "MlpPolicy")
    algo_kwargs = {k: v for k, v in params.items() if k not in _NON_ALGO_KEYS}
    if algo in ("ppo", "a2c") and "n_steps" in algo_kwargs:
        # a tiny budget still completes one rollout
        algo_kwargs["n_steps"] = max(8, min(int(algo_kwargs["n_steps"]), total // n_envs))
        if "batch_size" in algo_kwargs:
            algo_kwargs["batch_size"] = min(int(algo_kwargs["batch_size"]), algo_kwargs["n_steps"] * n_envs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    # resolve the suite's splits once in this process; forked workers inherit the cache instead of re-reading
    cfg = make_config({**_variant_overrides(env_id), **(overrides or {})})
    for name in cfg["traces"]:
        for split in ("train", "validation"):
            load_split(name, split, tuple(cfg["split_fractions"]), int(cfg["split_seed"]))

    fns = [_make_env_fn(env_id, "train", i, seed, overrides) for i in range(n_envs)]
    venv = SubprocVecEnv(fns, start_method="fork") if n_envs > 1 else DummyVecEnv(fns)
    venv.seed(seed)
    eval_env = Monitor(make_env(env_id, "validation", overrides))
    callbacks = [
        SeededEvalCallback(
            seed + 1_000_000,
            eval_env,
            n_eval_episodes=eval_episodes,
            eval_freq=max(1, eval_freq // n_envs),
            best_model_save_path=str(out / "best"),
            log_path=str(out / "eval"),
            deterministic=True,
            verbose=verbose,
        ),
        CheckpointCallback(save_freq=max(1, checkpoint_freq // n_envs), save_path=str(out / "checkpoints"), name_prefix=algo),
    ]
    model = cls(policy, venv, seed=seed, verbose=verbose, tensorboard_log=str(out / "tb"), device="cpu", **algo_kwargs)
    start = time.time()
    model.learn(total_timesteps=total, callback=callbacks, progress_bar=progress_bar, tb_log_name=algo)
    wall_s = time.time() - start
    model_path = out / "model.zip"
    model.save(model_path)
    venv.close()
    eval_file = out / "eval" / "evaluations.npz"
    evaluations = {}
    if eval_file.exists():
        data = np.load(eval_file)
        evaluations = {
            "timesteps": data["timesteps"].tolist(),
            "mean_reward": data["results"].mean(axis=1).tolist(),
        }
    record = {
        "algo": algo,
        "env": env_id,
        "timesteps": total,
        "n_envs": n_envs,
        "seed": seed,
        "hyperparams": {**params, "n_envs": n_envs},
        "env_overrides": overrides or {},
        "train_wall_s": round(wall_s, 1),
        "model": str(model_path),
        "best_model": str(out / "best" / "best_model.zip"),
        "validation": evaluations,
    }
    from moe_cache_env._io import atomic_write_json

    atomic_write_json(out / "run.json", record)
    return record


def _variant_overrides(env_id: str) -> dict[str, Any]:
    from moe_cache_env.envs import VARIANTS

    return dict(VARIANTS[env_id])


class SB3Agent(Agent):
    """A saved SB3 model acting deterministically (``compare --agents ppo:PATH``)."""

    def __init__(self, algo: str, path: str | Path) -> None:
        cls = _algo_class(algo)
        file = Path(path)
        if not file.exists() and not file.with_suffix(".zip").exists():
            raise FileNotFoundError(f"no saved {algo} model at {path}; train one with `moe-cache-env train`")
        import torch

        torch.set_num_threads(1)
        self.model = cls.load(str(file), device="cpu")
        self.name = f"{algo}:{file.name}" if file.stem not in ("model", "best_model") else f"{algo}"
        self.algo = algo

    def act(self, obs: np.ndarray) -> Any:
        action, _ = self.model.predict(obs, deterministic=True)
        return action
