"""``MoECacheVectorEnv``: N expert-cache environments stepped together, their simulators in one compiled call.

``gymnasium.make_vec("moe_cache_env:MoECache-v0", num_envs=N, vectorization_mode="vector_entry_point")`` (and the
same for every registered variant) builds one. A vector step

1. decodes each environment's action into its controls (the action types of ``envs/actions.py``),
2. replays the window of every running environment in **one** call of ``sim.batch.run_windows``, which loops over
   the simulators inside compiled code (their kernel arguments stay unboxed in numba typed lists from one
   episode's reset to the next),
3. turns each window into its observation, reward and ends with exactly the code of
   :class:`~moe_cache_env.envs.moe_cache.MoECacheEnv` (so the numbers are those of N single environments), and
4. resets only the environments whose episode has ended (a new simulator: schedule, predictor fit, reference).

Seeds: ``reset(seed=s)`` seeds environment ``i`` with ``s + i`` (as ``SyncVectorEnv``), ``reset(seed=[s0, ...])``
each with its own. With the same seeds and actions, observations, rewards, terminations and truncations equal those
of N ``gymnasium.make`` environments in a ``SyncVectorEnv`` bit for bit, across autoresets (tests/envs/test_vector.py).

Autoreset: ``metadata["autoreset_mode"]`` is ``NEXT_STEP`` (Gymnasium's default): the step after an episode's last
one resets that environment, returns its first observation with reward 0, and ignores its action.
``autoreset_mode=AutoresetMode.SAME_STEP`` resets in the step that ended the episode and puts the last observation
and info in ``info["final_obs"]`` / ``info["final_info"]`` (the SB3 adapter, ``agents/vec_adapter.py``, uses it).

Info (Gymnasium's vector convention: a dict of arrays, each with a boolean ``_key`` mask): ``info_level="minimal"``
(default) gives ``episode_spec`` on every reset and ``episode_metrics`` with ``episode_spec`` on the step that ends an
episode, which is what training and evaluation read; ``info_level="full"`` gives every key of the single
environment's info on every step (nested dicts become dicts of arrays), at some cost per step.

Plug-in predictors or eviction rules (``sim/plugins.py``) run Python or privately compiled code per window: their
simulators are replayed one after another with ``Simulator.run`` in the same step, with the same numbers.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from moe_cache_env.envs.moe_cache import MoECacheEnv, observe_windows
from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.batch import BatchArgs

INFO_LEVELS = ("minimal", "full")


class MoECacheVectorEnv(VectorEnv):
    """N :class:`MoECacheEnv` of one configuration, replayed in one compiled call per step (module docstring).

    Args:
        num_envs: how many environments.
        config: merged onto ``base_config`` as in ``gymnasium.make(id, config=...)``.
        base_config: the registered variant's settings (``make_vec`` passes them).
        max_episode_steps: the registered ``TimeLimit`` (``make_vec`` passes ``spec.max_episode_steps``): an
            episode is truncated after this many windows, as ``gymnasium.make``'s ``TimeLimit`` does; None or -1:
            only the config's own ``max_episode_steps``.
        info_level: ``"minimal"`` or ``"full"`` (module docstring).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default) or ``AutoresetMode.SAME_STEP`` (or their values).
        render_mode: only None: render a single environment instead.
        threads: how many of numba's threads replay the environments' windows (1: one after another; more: the
            environments are spread over the threads, with the same numbers, since they share no state).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: dict[str, Any] | None = None,
                 base_config: dict[str, Any] | None = None, max_episode_steps: int | None = None,
                 info_level: str = "minimal", autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 render_mode: str | None = None, threads: int = 1) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if info_level not in INFO_LEVELS:
            raise ValueError(f"info_level={info_level!r} is not supported; use one of {list(INFO_LEVELS)}")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(f"autoreset_mode={autoreset_mode!r} is not supported; use "
                             f"{[AutoresetMode.NEXT_STEP.value, AutoresetMode.SAME_STEP.value]}") from None
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode={mode.value!r} is not supported; use "
                             f"{[AutoresetMode.NEXT_STEP.value, AutoresetMode.SAME_STEP.value]}")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: the vector environment does not render; make a single "
                             "environment with gymnasium.make(..., render_mode=...) to watch one")
        self.num_envs = int(num_envs)
        self.envs = [MoECacheEnv(config, base_config=base_config) for _ in range(self.num_envs)]
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.render_mode = None
        self.info_level = info_level
        #: per environment, the last step's window ``metrics`` and ``reward_terms`` (None where it played no window):
        #: read by the SB3 adapter for the training callbacks, at no cost to the vector ``info``
        self.window_infos: list[dict[str, Any] | None] = [None] * self.num_envs
        limit = None if max_episode_steps is None or int(max_episode_steps) < 0 else int(max_episode_steps)
        if limit == 0:
            raise ValueError("max_episode_steps must be >= 1, or None / -1 for no TimeLimit")
        #: the registered TimeLimit, applied as gymnasium.make's wrapper applies it
        self.time_limit = limit
        self._batch = BatchArgs(threads)
        self._started = False
        #: NEXT_STEP: the environments whose episode ended on the last step (reset on the next)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._s0 = np.zeros(self.num_envs, dtype=np.int64)
        self._s1 = np.zeros(self.num_envs, dtype=np.int64)
        self._u = np.zeros((self.num_envs, K.NUM_CONTROLS), dtype=np.float64)
        #: routing events (token x layer) replayed by step() so far, over all environments (for benchmarks)
        self.routing_events = 0
        #: CPU seconds spent inside the batched kernel call so far (the rest of step() is Python)
        self.kernel_cpu_s = 0.0
        #: CPU seconds spent in step() so far, the kernel call and autoresets included (benchmarks split a learner's
        #: time with it: environment vs the learner's own work)
        self.step_cpu_s = 0.0

    # ---- resets ------------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every environment (or those of ``options["reset_mask"]``); ``seed``: int (``seed + i``) or list."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset got {len(seeds)} seeds for {self.num_envs} environments")
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(f"reset option reset_mask must be a boolean array of shape ({self.num_envs},)")
            if not self._started and not mask.all():
                raise ValueError("the first reset must reset every environment (reset_mask all True)")
        obs = np.zeros((self.num_envs,) + self.single_observation_space.shape, dtype=np.float32)
        infos: dict[str, Any] = {}
        for i in np.flatnonzero(mask):
            obs[i], info = self.envs[i].reset(seed=seeds[i], options=options or None)
            infos = self._add_info(infos, self._reset_info(info), int(i))
            self._autoreset[i] = False
        if self._started:
            for i in np.flatnonzero(mask):
                self._batch.set(int(i), self.envs[i].sim)
        else:
            self._batch.set_all([env.sim for env in self.envs])
            self._started = True
        # environments left out of a partial reset keep their last observation
        for i in np.flatnonzero(~mask):
            obs[i] = self._last_obs[i]
        self._last_obs = obs.copy()
        return obs, infos

    def _reset_info(self, info: dict[str, Any]) -> dict[str, Any]:
        return info if self.info_level == "full" else {"episode_spec": info["episode_spec"]}

    def _reset_one(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.envs[i].reset()
        self._batch.set(i, self.envs[i].sim)
        return obs, self._reset_info(info)

    # ---- steps -------------------------------------------------------------------------------------------------
    def step(self, actions: Any):
        """One window of every environment (autoreset as ``metadata["autoreset_mode"]``)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        start = time.process_time()
        try:
            return self._step(actions)
        finally:
            self.step_cpu_s += time.process_time() - start

    def _step(self, actions: Any):
        actions = self._check_actions(actions)
        n = self.num_envs
        obs = np.zeros((n,) + self.single_observation_space.shape, dtype=np.float32)
        rewards = np.zeros(n, dtype=np.float64)
        terminations = np.zeros(n, dtype=bool)
        truncations = np.zeros(n, dtype=bool)
        infos: dict[str, Any] = {}
        next_step = self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        running = ~self._autoreset if next_step else np.ones(n, dtype=bool)
        run = np.flatnonzero(running)
        self.window_infos = [None] * n
        for i in run:
            if self.envs[i].sim.done:
                raise RuntimeError(f"environment {i}'s episode has ended; call reset()")
        # every action decoded before any environment changes: a bad one leaves the whole vector as it was
        controls = {int(i): self.envs[i].action_type.decode(actions[i], self.envs[i].controls) for i in run}
        for i in np.flatnonzero(~running):  # NEXT_STEP: the episode ended last step; this step resets it
            obs[i], info = self._reset_one(int(i))
            infos = self._add_info(infos, info, int(i))
        before: dict[int, np.ndarray] = {}
        batched = np.zeros(n, dtype=bool)
        for i in run:
            env = self.envs[i]
            sim = env.sim
            env.controls = controls[int(i)]
            self._s0[i], self._s1[i] = sim.window_bounds(env.window_steps)
            self._u[i] = sim.controls_vector(env.controls)
            before[i] = sim.counters.copy()
            batched[i] = sim.batchable
        if batched.any():
            start = time.process_time()
            self._batch.run(batched, self._s0, self._s1, self._u)
            self.kernel_cpu_s += time.process_time() - start
        windows = []
        for i in run:
            env = self.envs[i]
            if batched[i]:
                window = env.sim.finish_window(int(self._s0[i]), int(self._s1[i]), before[i])
            else:  # a plug-in predictor or eviction rule: its own code, one simulator at a time
                window = env.sim.run(env.window_steps, env.controls)
            self.routing_events += int(window.counters[K.C_EVENTS])
            env.elapsed_steps += 1
            windows.append(window)
        # every window's observation in one pass over columns (the numbers of one environment's step)
        observations, observed_infos = observe_windows([self.envs[i] for i in run], windows)
        for j, i in enumerate(run):
            env = self.envs[i]
            o, r, term, trunc, info = env._finish_observed(observations[j], observed_infos[j], render=False)
            # the window's metrics, for the training callbacks (agents/tb_metrics.py), whatever the info level
            self.window_infos[i] = {"metrics": info["metrics"], "reward_terms": info["reward_terms"]}
            if self.time_limit is not None and env.elapsed_steps >= self.time_limit:
                trunc = True  # the registered TimeLimit, as gymnasium.make applies it
            obs[i], rewards[i], terminations[i], truncations[i] = o, r, term, trunc
            ended = term or trunc
            if ended and "episode_metrics" not in info:
                info["episode_metrics"] = env.sim.metrics()
            if self.info_level == "full":
                step_info = info
            elif ended:
                step_info = {"episode_metrics": info["episode_metrics"], "episode_spec": info["episode_spec"]}
            else:
                step_info = None
            if ended and not next_step:  # SAME_STEP: reset now, the last observation and info go in final_*
                reset_obs, reset_info = self._reset_one(int(i))
                final = {"final_obs": o, "final_info": step_info or {}}
                obs[i] = reset_obs
                step_info = {**reset_info, **final}
            if step_info:
                infos = self._add_info(infos, step_info, int(i))
        if next_step:
            self._autoreset = terminations | truncations
        self._last_obs = obs.copy()
        return obs, rewards, terminations, truncations, infos

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        expected = self.action_space.shape
        if a.shape != expected:
            raise ValueError(f"actions of shape {a.shape} are not valid for {self.num_envs} environments with the "
                             f"action space {self.single_action_space}: the shape must be {expected}")
        return a

    # ---- helpers -------------------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``getattr(env, name)(*args, **kwargs)`` (or the attribute itself) of every environment."""
        results = []
        for env in self.envs:
            attr = getattr(env, name)
            results.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(results)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name`` of every environment."""
        return tuple(getattr(env, name) for env in self.envs)

    def replace_env(self, i: int, env: MoECacheEnv) -> None:
        """Put ``env`` (e.g. unpickled from a checkpoint, mid-episode) in place of environment ``i``.

        Once every environment has been reset or replaced, ``step()`` may go on without a ``reset()``.
        """
        if not isinstance(env, MoECacheEnv):
            raise TypeError(f"replace_env needs a MoECacheEnv, got {type(env).__name__}")
        self.envs[i] = env
        if env.sim is None:
            raise ValueError(f"replace_env({i}, ...) needs an environment that has been reset")
        if self._started:
            self._batch.set(i, env.sim)
        elif all(e.sim is not None for e in self.envs):
            # a vector rebuilt from a checkpoint, environment by environment, steps on without a reset
            self._batch.set_all([e.sim for e in self.envs])
            self._last_obs = np.zeros((self.num_envs,) + self.single_observation_space.shape, dtype=np.float32)
            self._started = True
        # an environment whose episode had ended is reset by the next step (NEXT_STEP)
        self._autoreset[i] = bool(env.sim.done) and self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP

    def episode_metrics(self) -> list[dict[str, Any]]:
        """Each environment's simulator metrics of its episode so far."""
        return [env.episode_metrics() for env in self.envs]

    def close_extras(self, **kwargs: Any) -> None:
        self.envs = []
        self._batch = BatchArgs(self._batch.threads)
