"""An SB3 ``VecEnv`` over the native vector environment (``moe_cache_env/envs/vector.py``).

``moe-cache-env train`` uses it by default (``--vec-backend native``): every training step replays the windows of
all ``n_envs`` environments in one compiled call, in the training process, instead of one window per
``SubprocVecEnv`` worker process or per ``DummyVecEnv`` environment.

SB3 resets a finished environment in the step that ended it and hands the last observation over in
``info["terminal_observation"]``; the native environment does exactly that in its ``SAME_STEP`` autoreset mode,
which this adapter uses. ``info["TimeLimit.truncated"]`` is set as SB3's wrappers set it (truncated and not
terminated), and ``episode_metrics`` / ``episode_spec`` come with the finishing step. Wrap it in ``VecMonitor``
for SB3's ``episode`` statistics.

Checkpoints: ``env_method("dump_state")`` gives each environment pickled mid-episode (simulator, ``np_random``),
``env_method("load_state", blob, indices=[i])`` puts one back, as ``agents/sb3.py``'s resume expects.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from moe_cache_env.envs.vector import MoECacheVectorEnv


def make_native_vec_env(env_id: str, split: str, n_envs: int,
                        overrides: dict[str, Any] | None = None, threads: int = 1) -> "NativeVecEnv":
    """``n_envs`` environments of ``env_id`` replaying ``split``, with the registered config and ``overrides``
    (as ``agents.evaluation.make_env`` builds one), behind SB3's ``VecEnv`` interface; ``threads``: numba threads
    replaying the windows (``MoECacheVectorEnv``)."""
    from moe_cache_env.envs import resolve_env_id, variant_config

    canonical = resolve_env_id(env_id)
    config = variant_config(canonical)
    config["split"] = split
    config.update(overrides or {})
    steps = config.get("max_episode_steps")
    from moe_cache_env.envs import kept_versions_quiet

    with kept_versions_quiet():
        venv = gym.make_vec(canonical, num_envs=int(n_envs), vectorization_mode="vector_entry_point", config=config,
                            max_episode_steps=int(steps) if isinstance(steps, int) and steps > 0 else None,
                            autoreset_mode=AutoresetMode.SAME_STEP, threads=threads)
    return NativeVecEnv(venv.unwrapped)


class NativeVecEnv(VecEnv):
    """SB3's ``VecEnv`` interface to a :class:`MoECacheVectorEnv` in ``SAME_STEP`` autoreset mode."""

    def __init__(self, venv: MoECacheVectorEnv) -> None:
        if venv.metadata["autoreset_mode"] != AutoresetMode.SAME_STEP:
            raise ValueError("NativeVecEnv needs a MoECacheVectorEnv made with autoreset_mode=SAME_STEP")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    # ---- the VecEnv interface -------------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        # seeds given by seed() apply to this reset only (SB3's convention); environments without one go on
        # with their own generators
        seeds = [None if s is None else int(s) for s in self._seeds]
        obs, _ = self.venv.reset(seed=seeds)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async() first"
        obs, rewards, terminations, truncations, info = self.venv.step(self._actions)
        self._actions = None
        dones = terminations | truncations
        # each played window's metrics and reward terms, as a single environment's info has them (TensorBoard's env/)
        infos: list[dict[str, Any]] = [dict(w) if w else {} for w in self.venv.window_infos]
        for i in np.flatnonzero(dones):
            final = _unbatch(info["final_info"], int(i))
            final["terminal_observation"] = info["final_obs"][i]
            final["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
            infos[i].update(final)
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.venv.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        targets = list(self._get_indices(indices))
        if method_name == "dump_state":
            return [pickle.dumps(self.venv.envs[i], protocol=pickle.HIGHEST_PROTOCOL) for i in targets]
        if method_name == "load_state":
            (blob,) = method_args
            for i in targets:
                self.venv.replace_env(i, pickle.loads(blob))
            return [None] * len(targets)
        return [getattr(self.venv.envs[i], method_name)(*method_args, **method_kwargs) for i in targets]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        # the environments are the bare MoECacheEnv: no Gymnasium wrapper (episode statistics: VecMonitor)
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, (int, np.integer)):
            return [int(indices)]
        return [int(i) for i in indices]


def _unbatch(info: dict[str, Any], i: int) -> dict[str, Any]:
    """Environment ``i``'s entries of a vector info dict (Gymnasium's dict of arrays with ``_key`` masks)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        mask = info.get(f"_{key}")
        if mask is not None and not mask[i]:
            continue
        out[key] = _unbatch(value, i) if isinstance(value, dict) else _item(value[i])
    return out


def _item(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
