"""Stable-Baselines3 training on the environments, and SB3 models as agents for ``compare``.

Training (``moe-cache-env train``): vectorised training environments on the *train* split, by default the
native vector environment behind SB3's ``VecEnv`` interface (``agents/vec_adapter.py``) in a ``VecMonitor``
(``vec_backend="subproc"`` or ``"dummy"``: SB3's own vector environments, each environment in a ``Monitor``);
an ``EvalCallback`` on the held-out *validation* split that keeps the best model; checkpoints; TensorBoard logs
(SB3's scalars and the environment's own, ``env/...``: ``agents/tb_metrics.py``); a progress bar; the final model
saved as ``model.zip`` beside a ``run.json`` record.
Hyperparameters come from ``agents/hyperparams/<algo>.yml`` (RL-Zoo style: an entry per environment id, or
``default``) and can be overridden.

Checkpoints and resuming
------------------------
Every ``checkpoint_freq`` steps, and at the end of a run that was not interrupted, a checkpoint is written at
the start of a rollout (after the model's update, before it collects the next experience), the one point where
nothing is half done:

- ``checkpoints/ALGO_N_steps.zip``: the model (parameters, optimiser state, step counter), loadable with
  ``ALGO.load``;
- ``checkpoints/ALGO_replay_buffer_N_steps.pkl`` (SAC, DQN): the replay buffer;
- ``checkpoints/ALGO_N_steps.resume.pkl``, written last: the run's settings, the training environments'
  whole state (each pickled with its wrappers: the simulator mid-episode, the env's ``np_random``, the
  ``Monitor``'s episode statistics, or the native backend's ``VecMonitor`` statistics), the model's last
  observations, the random generators SB3 draws from
  (torch's, NumPy's global one, Python's ``random``, the action space's), and the evaluation callback's history.

:func:`resume` (``train --resume DIR``) loads the newest complete checkpoint and continues to the run's total.
What is bit-identical to an uninterrupted run with the same seed: the model's parameters, the observations,
actions and rewards from the checkpoint on, and the validation scores; that holds for every algorithm here
with ``n_envs`` environments in one process or in subprocesses (each worker is one process, and the kernel is
single-threaded). What is not: the TensorBoard curves are appended to the old event file, wall-clock times and
SB3's ``time/fps``; a Ctrl-C'd run resumes from its last checkpoint, so the steps after it are trained again.

Ctrl-C (SIGINT) stops training after the current step; the model is saved as ``model.zip``, ``run.json`` is
written with ``"interrupted": true``, and the command exits 130. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import ast
import copy
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from moe_cache_env._io import atomic_write, atomic_write_json
from moe_cache_env.agents.baselines import Agent
from moe_cache_env.agents.tb_metrics import EnvMetricsCallback

ALGOS = ("ppo", "a2c", "sac", "dqn", "recurrentppo", "maskableppo")
#: algorithms from sb3-contrib (the ``rl`` extra): an LSTM policy, and PPO that reads ``action_masks()``
CONTRIB_ALGOS = ("recurrentppo", "maskableppo")
#: on-policy algorithms whose rollout (``n_steps``) is shortened to fit a tiny budget
ON_POLICY = ("ppo", "a2c", "recurrentppo", "maskableppo")
#: how the training environments are stepped (``train(vec_backend=...)``, ``train --vec-backend``)
VEC_BACKENDS = ("native", "subproc", "dummy")
OFF_POLICY = ("sac", "dqn")
HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
#: keys of a hyperparameter entry that are not arguments of the algorithm's constructor
_NON_ALGO_KEYS = ("n_envs", "n_timesteps", "policy")
#: version of the ``.resume.pkl`` layout
RESUME_FORMAT = 1
_CHECKPOINT = re.compile(r"^(?P<algo>[a-z0-9]+)_(?P<steps>\d+)_steps\.resume\.pkl$")


class TrainingError(ValueError):
    """A run that cannot be started or resumed (reported as one line by the command line)."""


class SeededEvalCallback(EvalCallback):
    """An ``EvalCallback`` that replays the same validation episodes at every evaluation, so that successive
    scores (and the choice of the best model) differ by the policy only, not by the episodes drawn."""

    def __init__(self, eval_seed: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_seed = eval_seed

    def _init_callback(self) -> None:
        from stable_baselines3.common.vec_env import VecEnvWrapper, VecMonitor

        # EvalCallback warns when the training and evaluation VecEnvs are of different classes, which here they
        # always are with n_envs > 1 (SubprocVecEnv for training, one DummyVecEnv for evaluation). The check is
        # there to catch a VecNormalize or frame stack on one side only; neither side has a VecEnvWrapper, so the
        # warning says nothing and is silenced; with a wrapper on either side it still shows. The native backend's
        # VecMonitor only records episode statistics (the training side's Monitor), so it does not count.
        def transforms(venv: Any) -> bool:
            return isinstance(venv, VecEnvWrapper) and not isinstance(venv, VecMonitor)

        plain = not transforms(self.training_env) and not transforms(self.eval_env)
        with warnings.catch_warnings():
            if plain:
                warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
            super()._init_callback()

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.eval_env.seed(self.eval_seed)
        return super()._on_step()

    def get_history(self) -> dict[str, Any]:
        return {
            "n_calls": self.n_calls,
            "best_mean_reward": self.best_mean_reward,
            "last_mean_reward": self.last_mean_reward,
            "evaluations_results": list(self.evaluations_results),
            "evaluations_timesteps": list(self.evaluations_timesteps),
            "evaluations_length": list(self.evaluations_length),
            "evaluations_successes": list(self.evaluations_successes),
        }

    def set_history(self, history: dict[str, Any]) -> None:
        for key, value in history.items():
            setattr(self, key, value)


class ResumableEnv(gym.Wrapper):
    """The outermost wrapper of a training environment: its whole state (with every wrapper below it) as bytes
    and back, so that checkpoints can carry environments mid-episode, also from subprocesses."""

    def dump_state(self) -> bytes:
        return pickle.dumps(self.env, protocol=pickle.HIGHEST_PROTOCOL)

    def load_state(self, blob: bytes) -> None:
        self.env = pickle.loads(blob)


class _StopFlag:
    """Set by the first SIGINT; training stops at the next step. A second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.is_set = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.is_set:
            raise KeyboardInterrupt
        self.is_set = True
        print("\ninterrupted: saving the model after this step (Ctrl-C again to quit without saving)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class CheckpointAndStop(BaseCallback):
    """Writes resumable checkpoints at rollout starts every ``checkpoint_freq`` steps; stops on Ctrl-C."""

    def __init__(self, trainer: "_Trainer", checkpoint_freq: int, stop: _StopFlag) -> None:
        super().__init__()
        self.trainer = trainer
        self.checkpoint_freq = max(1, int(checkpoint_freq))
        self.stop = stop
        self.last_checkpoint = 0

    def _on_rollout_start(self) -> None:
        steps = self.model.num_timesteps
        if steps - self.last_checkpoint >= self.checkpoint_freq:
            self.trainer.write_checkpoint()
            self.last_checkpoint = steps

    def _on_step(self) -> bool:
        return not self.stop.is_set


def _algo_class(algo: str):
    import stable_baselines3 as sb3

    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; use one of {list(ALGOS)}")
    if algo in CONTRIB_ALGOS:
        try:
            import sb3_contrib
        except ImportError:
            raise ValueError(f"{algo} needs sb3-contrib: pip install 'moe-cache-env[rl]'") from None
        return {"recurrentppo": sb3_contrib.RecurrentPPO, "maskableppo": sb3_contrib.MaskablePPO}[algo]
    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "sac": sb3.SAC, "dqn": sb3.DQN}[algo]


def is_evict_env(env_id: str) -> bool:
    """True for the eviction environment (``MoECache-Evict-v0``, another class with its own config)."""
    from moe_cache_env.envs import EVICT_ID

    return env_id.split(":")[-1] == EVICT_ID


def resolve_any_env(env_id: str) -> str:
    """The registered id of a threshold environment (``resolve_env_id``) or of the eviction environment."""
    from moe_cache_env.envs import EVICT_ID, resolve_env_id

    return EVICT_ID if is_evict_env(env_id) else resolve_env_id(env_id)


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


def _check_algo_fits(algo: str, env_id: str, overrides: dict[str, Any] | None = None) -> None:
    from moe_cache_env.envs import variant_config

    if is_evict_env(env_id):
        # Discrete(max_slots) with action_masks(): every discrete-action algorithm fits, SAC does not
        if algo == "sac":
            raise ValueError(f"sac needs continuous actions; {env_id} has discrete actions (the slot to evict)")
        return
    if algo == "maskableppo":
        raise ValueError(f"maskableppo needs an environment with action_masks(): use MoECache-Evict-v0, not {env_id}")
    action_type = {**variant_config(env_id), **(overrides or {})}["action_type"]
    if algo == "dqn" and action_type != "discrete":
        raise ValueError(f"dqn needs discrete actions; {env_id} has {action_type} actions: use MoECache-Discrete-v0")
    if algo == "sac" and action_type == "discrete":
        raise ValueError(f"sac needs continuous actions; {env_id} has discrete actions: use MoECache-v0")


def _make_env_fn(env_id: str, split: str, rank: int, seed: int, overrides: dict[str, Any] | None, parent_pid: int):
    def _init():
        import torch
        from stable_baselines3.common.monitor import Monitor

        from moe_cache_env.agents.evaluation import make_env

        if os.getpid() != parent_pid:
            # a SubprocVecEnv worker: Ctrl-C is the parent's to handle (it stops the workers when it is done);
            # left to the default, every worker would die with its own traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(1)  # one core per worker: the simulator, not torch, is the work here
        env = ResumableEnv(Monitor(make_env(env_id, split, overrides)))
        env.reset(seed=seed + rank)
        env.action_space.seed(seed + rank)
        return env

    return _init


_MONITOR_FIELDS = ("episode_returns", "episode_lengths", "episode_count", "t_start")


def _monitor_state(venv: Any) -> dict[str, Any] | None:
    """A VecMonitor's statistics of the episodes under way (None for a venv without one)."""
    from stable_baselines3.common.vec_env import VecMonitor

    if not isinstance(venv, VecMonitor):
        return None
    return {name: copy.deepcopy(getattr(venv, name)) for name in _MONITOR_FIELDS}


def _set_monitor_state(venv: Any, state: dict[str, Any]) -> None:
    for name in _MONITOR_FIELDS:
        setattr(venv, name, copy.deepcopy(state[name]))


def _rng_states(model: Any) -> dict[str, Any]:
    import torch

    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }


def _set_rng_states(model: Any, states: dict[str, Any]) -> None:
    import torch

    # SB3 draws from the global generators (its own seeding sets them); restoring them is what makes the resumed
    # run draw what the uninterrupted one would have
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    model.action_space.np_random.bit_generator.state = states["action_space"]


class _Trainer:
    """One training run: its settings, environments, model and callbacks (fresh or from a checkpoint)."""

    def __init__(self, settings: dict[str, Any], out: Path, progress_bar: bool, verbose: int) -> None:
        self.settings = settings
        self.out = out
        self.progress_bar = progress_bar
        self.verbose = verbose
        self.algo = settings["algo"]
        self.model: Any = None
        self.venv: Any = None
        self.eval_callback: SeededEvalCallback | None = None
        self.checkpoint_callback: CheckpointAndStop | None = None

    # ---- set-up --------------------------------------------------------------------------------------------
    def build(self, stop: _StopFlag) -> None:
        import torch
        from stable_baselines3.common.monitor import Monitor
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

        from moe_cache_env.agents.evaluation import make_env
        from moe_cache_env.envs import variant_config
        from moe_cache_env.envs.config import make_config
        from moe_cache_env.envs.suite import load_split

        s = self.settings
        torch.set_num_threads(1)
        evict = is_evict_env(s["env"])
        if not evict:
            # resolve the suite's splits once in this process; forked workers inherit the cache instead of
            # re-reading
            cfg = make_config(s["overrides"], variant_config(s["env"]))
            for name in cfg["traces"]:
                for split in ("train", "validation"):
                    load_split(name, split, tuple(cfg["split_fractions"]), int(cfg["split_seed"]))
        n_envs, seed = s["n_envs"], s["seed"]
        backend = s.get("vec_backend", "subproc")  # runs checkpointed before the native backend existed
        if backend == "native" and not evict:  # the eviction environment has no native vector form
            from stable_baselines3.common.vec_env import VecMonitor

            from moe_cache_env.agents.vec_adapter import make_native_vec_env

            # all environments in this process, their windows replayed in one compiled call per step
            self.venv = VecMonitor(make_native_vec_env(s["env"], "train", n_envs, s["overrides"],
                                                       threads=int(s.get("env_threads", 1))))
        else:
            fns = [_make_env_fn(s["env"], "train", i, seed, s["overrides"], os.getpid()) for i in range(n_envs)]
            subproc = backend == "subproc" and n_envs > 1
            self.venv = SubprocVecEnv(fns, start_method="fork") if subproc else DummyVecEnv(fns)
        self.venv.seed(seed)
        eval_env = Monitor(make_env(s["env"], "validation", s["overrides"]))
        self.eval_callback = SeededEvalCallback(
            s.get("eval_seed") if s.get("eval_seed") is not None else seed + 1_000_000,
            eval_env,
            n_eval_episodes=s["eval_episodes"],
            eval_freq=max(1, s["eval_freq"] // n_envs),
            best_model_save_path=str(self.out / "best"),
            log_path=str(self.out / "eval"),
            deterministic=True,
            verbose=self.verbose,
        )
        self.checkpoint_callback = CheckpointAndStop(self, s["checkpoint_freq"], stop)

    def new_model(self) -> None:
        s = self.settings
        cls = _algo_class(self.algo)
        # a deep copy: SB3 adds objects to policy_kwargs in place (A2C its optimizer class), which must not leak
        # into the settings that run.json and the checkpoints record
        self.model = cls(s["policy"], self.venv, seed=s["seed"], verbose=self.verbose,
                         tensorboard_log=str(self.out / "tb"), device="cpu", **copy.deepcopy(s["algo_kwargs"]))

    def load_checkpoint(self, steps: int) -> None:
        cls = _algo_class(self.algo)
        base = self.out / "checkpoints" / f"{self.algo}_{steps}_steps"
        with open(f"{base}.resume.pkl", "rb") as handle:
            state = pickle.load(handle)
        self.model = cls.load(f"{base}.zip", env=self.venv, device="cpu", tensorboard_log=str(self.out / "tb"),
                              verbose=self.verbose)
        if self.algo in OFF_POLICY:
            self.model.load_replay_buffer(self.out / "checkpoints" / f"{self.algo}_replay_buffer_{steps}_steps.pkl")
        for i, blob in enumerate(state["envs"]):
            self.venv.env_method("load_state", blob, indices=[i])
        if state.get("monitor") is not None:  # the native backend's VecMonitor: episodes under way
            _set_monitor_state(self.venv, state["monitor"])
        # SB3's load discards the last observations (it would reset the environments); they are restored with
        # the environments they belong to, so training goes on mid-episode
        self.model._last_obs = state["last_obs"]
        self.model._last_episode_starts = state["last_episode_starts"]
        if state.get("last_original_obs") is not None:
            self.model._last_original_obs = state["last_original_obs"]
        assert self.eval_callback is not None and self.checkpoint_callback is not None
        self.eval_callback.set_history(state["eval"])
        self.checkpoint_callback.last_checkpoint = steps
        _set_rng_states(self.model, state["rng"])  # last: loading the model reseeded them

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def write_checkpoint(self) -> Path:
        """The model, the replay buffer and the resume state at this rollout start (resume file last)."""
        model = self.model
        steps = model.num_timesteps
        folder = self.out / "checkpoints"
        base = folder / f"{self.algo}_{steps}_steps"
        # capture before anything else runs: saving draws no random numbers, but be explicit about the order
        rng = _rng_states(model)
        atomic_write(f"{base}.zip", lambda handle: model.save(handle))
        if self.algo in OFF_POLICY:
            atomic_write(folder / f"{self.algo}_replay_buffer_{steps}_steps.pkl",
                         lambda handle: model.save_replay_buffer(handle))
        assert self.eval_callback is not None
        state = {
            "format": RESUME_FORMAT,
            "num_timesteps": steps,
            "settings": self.settings,
            "envs": self.venv.env_method("dump_state"),
            "monitor": _monitor_state(self.venv),
            "last_obs": model._last_obs,
            "last_episode_starts": model._last_episode_starts,
            "last_original_obs": getattr(model, "_last_original_obs", None),
            "eval": self.eval_callback.get_history(),
            "rng": rng,
        }
        atomic_write(f"{base}.resume.pkl", lambda handle: pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL))
        return Path(f"{base}.resume.pkl")

    # ---- running -------------------------------------------------------------------------------------------
    def learn(self, resumed: bool) -> None:
        assert self.eval_callback is not None and self.checkpoint_callback is not None
        remaining = self.settings["timesteps"] - (self.model.num_timesteps if resumed else 0)
        self.model.learn(
            total_timesteps=remaining,
            # EnvMetricsCallback: the environment's own metrics in TensorBoard (env/...), see agents/tb_metrics.py
            callback=[self.checkpoint_callback, self.eval_callback, EnvMetricsCallback()],
            progress_bar=self.progress_bar,
            tb_log_name=self.algo,
            reset_num_timesteps=not resumed,
        )


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


def latest_checkpoint(out_dir: str | Path) -> int | None:
    """The step count of the newest complete checkpoint under ``out_dir/checkpoints`` (None if there is none)."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    steps = []
    for entry in folder.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and (folder / f"{match['algo']}_{match['steps']}_steps.zip").exists():
            steps.append(int(match["steps"]))
    return max(steps) if steps else None


def _run(trainer: _Trainer, resumed_from: int | None) -> dict[str, Any]:
    s = trainer.settings
    out = trainer.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with _StopFlag() as stop:
        try:
            trainer.build(stop)
            if resumed_from is None:
                trainer.new_model()
            else:
                trainer.load_checkpoint(resumed_from)
            trainer.learn(resumed=resumed_from is not None)
            wall_s = time.time() - start
            assert trainer.checkpoint_callback is not None
            if not stop.is_set and trainer.checkpoint_callback.last_checkpoint != trainer.model.num_timesteps:
                # the end of learn() is a rollout boundary too: a finished run can go on with --resume --timesteps
                trainer.write_checkpoint()
            model_path = out / "model.zip"
            atomic_write(model_path, lambda handle: trainer.model.save(handle))
        finally:
            if trainer.venv is not None:
                trainer.venv.close()
        interrupted = stop.is_set
    record = _record(trainer, wall_s, interrupted, resumed_from)
    atomic_write_json(out / "run.json", record)
    return record


def _record(trainer: _Trainer, wall_s: float, interrupted: bool, resumed_from: int | None) -> dict[str, Any]:
    """run.json: the run's settings and results; every file it names exists (None where none was written)."""
    s = trainer.settings
    out = trainer.out
    evaluations: dict[str, Any] = {}
    eval_file = out / "eval" / "evaluations.npz"
    if eval_file.exists():
        data = np.load(eval_file)
        evaluations = {
            "timesteps": data["timesteps"].tolist(),
            "mean_reward": data["results"].mean(axis=1).tolist(),
        }
    checkpoints = sorted(
        (str(p) for p in (out / "checkpoints").glob(f"{trainer.algo}_*_steps.zip")),
        key=lambda name: int(re.search(r"_(\d+)_steps\.zip$", name).group(1)),  # type: ignore[union-attr]
    ) if (out / "checkpoints").is_dir() else []
    last = latest_checkpoint(out)
    return {
        "algo": s["algo"],
        "env": s["env"],
        "timesteps": s["timesteps"],
        "timesteps_done": int(trainer.model.num_timesteps),
        "interrupted": interrupted,
        "resumed_from_step": resumed_from,
        "n_envs": s["n_envs"],
        "vec_backend": s.get("vec_backend", "subproc"),
        "seed": s["seed"],
        "hyperparams": {**s["hyperparams"], "n_envs": s["n_envs"]},
        "algo_kwargs": s["algo_kwargs"],
        "env_overrides": s["overrides"],
        "train_wall_s": round(wall_s, 1),
        "model": _existing(out / "model.zip"),
        "best_model": _existing(out / "best" / "best_model.zip"),
        "checkpoints": checkpoints,
        "resume_checkpoint": _existing(out / "checkpoints" / f"{s['algo']}_{last}_steps.resume.pkl") if last else None,
        "validation": evaluations,
    }


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
    vec_backend: str = "native",
    eval_seed: int | None = None,
    env_threads: int = 1,
) -> dict[str, Any]:
    """Train ``algo`` on ``env_id``; write model.zip, best/best_model.zip, checkpoints, tb logs, run.json.

    Args:
        env_id: any form ``gymnasium.make`` accepts (``MoECache-v0``, ``moe_cache_env:MoECache-v0``).
        timesteps: environment steps (windows) in total, over all environments; None = the YAML's n_timesteps.
        eval_freq: evaluate on the validation split every this many total steps.
        checkpoint_freq: write a resumable checkpoint every this many total steps (see the module docstring).
        overrides: env config keys replacing the registered variant's (e.g. a smaller ``traces`` suite).
        eval_seed: the validation episodes' seed (``reset(seed=eval_seed + i)`` at every evaluation); None =
            ``seed + 1_000_000``. A fixed one makes runs of different seeds score the same validation episodes, so
            their learning curves are paired.
        vec_backend: ``"native"`` (default: ``agents/vec_adapter.py``, every environment's window in one compiled
            call), ``"subproc"`` (a ``SubprocVecEnv`` worker per environment when ``n_envs`` > 1) or ``"dummy"``
            (SB3's ``DummyVecEnv``, one environment after another in this process).
        env_threads: with the native backend, how many numba threads replay the environments' windows (the
            same numbers for any count; the policy update between rollouts keeps one torch thread).
    Returns:
        The run record also written to ``run.json`` (``"interrupted": true`` after a Ctrl-C).
    """
    env_id = resolve_any_env(env_id)
    overrides = dict(overrides or {})
    _check_algo_fits(algo, env_id, overrides)
    _algo_class(algo)
    params = load_hyperparams(algo, env_id, hyperparams_path)
    n_envs = int(n_envs or params.get("n_envs", 1))
    total = int(timesteps if timesteps is not None else params.get("n_timesteps", 100_000))
    if total < 1 or n_envs < 1:
        raise ValueError(f"timesteps and n_envs must be >= 1, got {total} and {n_envs}")
    if vec_backend not in VEC_BACKENDS:
        raise ValueError(f"unknown vec_backend {vec_backend!r}; use one of {list(VEC_BACKENDS)}")
    algo_kwargs = {k: v for k, v in params.items() if k not in _NON_ALGO_KEYS}
    if algo in ON_POLICY and "n_steps" in algo_kwargs:
        # a tiny budget still completes one rollout
        algo_kwargs["n_steps"] = max(8, min(int(algo_kwargs["n_steps"]), total // n_envs))
        if "batch_size" in algo_kwargs:
            algo_kwargs["batch_size"] = min(int(algo_kwargs["batch_size"]), algo_kwargs["n_steps"] * n_envs)
    settings = {
        "format": RESUME_FORMAT,
        "algo": algo,
        "env": env_id,
        "timesteps": total,
        "seed": int(seed),
        "n_envs": n_envs,
        # the eviction environment has no native vector form: SB3's own vector environments instead
        "vec_backend": "dummy" if vec_backend == "native" and is_evict_env(env_id) else vec_backend,
        "env_threads": int(env_threads),
        "eval_freq": int(eval_freq),
        "eval_episodes": int(eval_episodes),
        "eval_seed": None if eval_seed is None else int(eval_seed),
        "checkpoint_freq": int(checkpoint_freq),
        "hyperparams": params,
        "policy": params.get("policy", "MlpPolicy"),
        "algo_kwargs": algo_kwargs,
        "overrides": overrides,
    }
    return _run(_Trainer(settings, Path(out_dir), progress_bar, verbose), resumed_from=None)


def resume(out_dir: str | Path, *, timesteps: int | None = None, progress_bar: bool = True,
           verbose: int = 0) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its newest complete checkpoint (see the module docstring).

    Args:
        timesteps: a new total for the run (above the checkpoint's step count); None = the run's own. A finished
            run goes on with a larger total (bit-identical to a longer run only where no schedule or rollout size
            depends on the total, as with this package's hyperparameter files).
    Raises:
        TrainingError: no checkpoint to resume from, or one written by another layout.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise TrainingError(f"--resume {out}: no such directory")
    steps = latest_checkpoint(out)
    if steps is None:
        raise TrainingError(
            f"--resume {out}: no complete checkpoint in {out / 'checkpoints'} (a checkpoint is written every "
            "--checkpoint-freq steps, at the start of a rollout); start a new run instead"
        )
    algo = next(m["algo"] for p in (out / "checkpoints").iterdir()
                if (m := _CHECKPOINT.match(p.name)) and int(m["steps"]) == steps)
    with open(out / "checkpoints" / f"{algo}_{steps}_steps.resume.pkl", "rb") as handle:
        state = pickle.load(handle)
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise TrainingError(f"--resume {out}: checkpoint of step {steps} has an unknown layout")
    settings = dict(state["settings"])
    if timesteps is not None:
        if timesteps < steps:
            raise TrainingError(f"--timesteps {timesteps} is below the checkpoint's {steps} steps")
        settings["timesteps"] = int(timesteps)
    if steps >= settings["timesteps"]:
        raise TrainingError(f"--resume {out}: the newest checkpoint is at step {steps}, the run's total is "
                            f"{settings['timesteps']}: nothing left to train (give a larger --timesteps)")
    return _run(_Trainer(settings, out, progress_bar, verbose), resumed_from=steps)


class SB3Agent(Agent):
    """A saved SB3 model acting deterministically (``compare --agents ppo:PATH``).

    RecurrentPPO's LSTM state is carried from step to step and cleared at each episode start; MaskablePPO is
    given the environment's ``action_masks()`` at every step (the eviction environment's valid slots)."""

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
        self._state: Any = None
        self._episode_start = np.ones((1,), dtype=bool)

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        self._state = None  # a fresh LSTM state: the episode starts
        self._episode_start = np.ones((1,), dtype=bool)

    def act(self, obs: np.ndarray) -> Any:
        if self.algo == "recurrentppo":
            action, self._state = self.model.predict(obs, state=self._state, episode_start=self._episode_start,
                                                     deterministic=True)
            self._episode_start = np.zeros((1,), dtype=bool)
            return action
        if self.algo == "maskableppo":
            action, _ = self.model.predict(obs, deterministic=True, action_masks=self.env.action_masks())
            return action
        action, _ = self.model.predict(obs, deterministic=True)
        return action
