"""``MoECacheEnv``: adapt a three-tier GPU expert cache's prefetch thresholds while a MoE model serves requests.

The environment is thin: it translates an action into the simulator's controls, replays one window of steps
(``moe_cache_env.sim``), and turns the window's statistics into an observation, a reward and ``info``.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import replace
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import logger

from moe_cache_env.envs.actions import make_action_type
from moe_cache_env.envs.config import EnvConfig, make_config
from moe_cache_env.envs.observation import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUM_FEATURES,
    encode_observation,
    encode_observations,
    expert_shares_of_windows,
    observation_space,
    popularity_entropies,
    popularity_entropy,
    popularity_shift,
    popularity_shifts,
)
from moe_cache_env.envs.render import HISTORY_WINDOWS, draw_state
from moe_cache_env.envs.reward import DemandAllReference, reward_terms, reward_terms_of_windows
from moe_cache_env.envs.suite import load_split
from moe_cache_env.sim.config import Controls
from moe_cache_env.sim.metrics import (
    ArrayOps,
    ScalarOps,
    metrics_of_windows,
    plain_mean,
    weighted_mean,
    weighted_percentiles_of_rows,
)
from moe_cache_env.sim.simulator import Simulator, WindowResult, holds_every_expert
from moe_cache_env.traces.format import Trace


class MoECacheEnv(gym.Env):
    """
    ## Description

    A Mixture-of-Experts model serves requests on a GPU that holds only part of its experts. Before each MoE
    layer runs, a predictor scores every expert of an upcoming layer; experts scoring at least the **L2
    threshold** are prefetched into the high-confidence tier L2, those scoring at least the **L3 threshold**
    into the speculative tier L3; the experts a step needs and does not find are copied on demand. Prefetches
    share the host-to-GPU link with demand loads, so prefetching too much delays the loads that matter, and
    prefetching too little leaves the model waiting. The serving conditions change during an episode (batch
    size, the KV cache's share of memory, other traffic on the link, the domain of the requests), so the best
    thresholds change too. The agent sets the thresholds once per window of ``window_steps`` forward passes.

    ## Action Space

    ``action_type="continuous"`` (default): ``Box(-1, 1, (2,), float32)``, the L2 and L3 thresholds mapped
    linearly onto ``l2_range`` (0.5-0.9) and ``l3_range`` (0.1-0.6). ``"discrete"``: ``Discrete(9)``, each
    threshold down / keep / up by ``discrete_step``. ``"extended"``: ``Box(-1, 1, (8,))``, the thresholds plus
    lookahead, prefetch budget, L2 share of the budget and the three eviction weights. The L3 threshold is
    clipped to at most the L2 threshold. See ``moe_cache_env/envs/actions.py``.

    ## Observation Space

    ``Box(low, high, (30,), float32)``: normalised statistics of the last window, in [0, 1] except the
    thresholds and trends in [-1, 1]. Feature by feature in ``moe_cache_env/envs/observation.py`` and
    ``docs/environment.md``.

    ## Rewards

    ``coverage_weight * perfect_coverage - latency_weight * latency_ratio`` per window (defaults 1 and 1),
    where ``latency_ratio`` is the mean per-token latency over the window's demand-all reference latency
    (``moe_cache_env/envs/reward.py``). Each term is in ``info["reward_terms"]``.

    ## Starting State

    ``reset`` draws a suite trace and a starting sequence with ``self.np_random``, takes whole sequences from
    there (wrapping around) up to ``episode_tokens`` tokens of the configured split, builds the workload
    schedule from a seed drawn from ``self.np_random``, and replays one warm-up window at
    ``initial_thresholds`` (0.7 / 0.3): the first observation describes that window.
    ``reset(options={"trace": i, "start_sequence": j, "sim_seed": k})`` fixes the trace (index or name), the
    start and the simulator's seed; ``info["episode_spec"]`` of every step holds these, so an episode is fully
    described by that record and its actions, and replays bit-identically
    (``moe_cache_env.agents.evaluation.replay_episode``). At the episode's end ``info["episode_metrics"]`` has
    the simulator's metrics of the whole episode.

    ## Episode End

    Terminated when the episode's tokens have all been served; truncated after ``max_episode_steps`` windows.

    The environment truncates by itself, at its config's ``max_episode_steps``, so it ends episodes the same way
    whether it is made with ``gymnasium.make`` or constructed directly. Each registered id also declares that
    number as ``spec.max_episode_steps`` (256), so ``gymnasium.make`` adds a ``TimeLimit`` that counts the same
    windows and fires at the same step: both report ``truncated=True`` once, on the same step. A config with
    *more* windows than the spec also needs ``gymnasium.make(..., max_episode_steps=N)`` (or ``-1`` for no
    ``TimeLimit``), else the ``TimeLimit`` ends the episode first; ``moe_cache_env.agents.evaluation.make_env``
    passes it.

    ## Arguments

    ``gymnasium.make("moe_cache_env:MoECache-v0", config={...}, render_mode="ansi")``: ``config`` is merged
    onto the registered variant's settings (``base_config``), which are merged onto
    ``moe_cache_env.envs.config.DEFAULT_CONFIG``; unknown keys and bad values raise ``ConfigError``.
    ``render_mode``: ``"ansi"`` (``render()`` returns one line per window), ``"rgb_array"`` (a 96 x 160 RGB
    picture of the tiers, the link and the recent latency ratios: ``moe_cache_env/envs/render.py``) or
    ``"human"`` (the line is printed on every reset and step; ``render()`` returns None).

    ## Version History

    - v0: initial release.
    - v0, revised with dynamics and reward unchanged (so the id stays v0): ``rgb_array`` and ``human`` render modes;
      ``spec.max_episode_steps`` registered; ``gym.make(id, config=...)`` merges ``config`` onto the
      variant's settings instead of replacing them (``MoECache-Discrete-v0`` stays discrete); malformed
      actions (wrong shape, NaN, infinity, non-integer discrete actions) raise ``ValueError``.
    - v0, revised with dynamics and reward unchanged: a native vector environment for every id,
      ``gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")`` (``envs/vector.py``), with the
      numbers of N single environments; ``make_vec`` without a mode now picks it.
    """

    metadata = {"render_modes": ["human", "rgb_array", "ansi"], "render_fps": 4}

    def __init__(self, config: dict[str, Any] | None = None, render_mode: str | None = None,
                 base_config: dict[str, Any] | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; use one of {self.metadata['render_modes']}")
        self.config: EnvConfig = make_config(config, base_config)
        self.render_mode = render_mode
        raw = self.config.raw
        self.action_type = make_action_type(
            raw["action_type"], self.config.l2_range, self.config.l3_range, raw["discrete_step"],
            raw["max_prefetch_budget"],
        )
        self.action_space = self.action_type.space
        # the simulator learns co-occurrence only for the lookaheads the actions can set (half the table when
        # they cannot change it: less memory traffic per window, the same numbers)
        self._sim_config = replace(self.config.sim, max_lookahead=self.action_type.max_lookahead)
        self.observation_space = observation_space()
        self.window_steps = int(raw["window_steps"])
        self.max_episode_steps = int(raw["max_episode_steps"])
        l2, l3 = self.config.initial_thresholds
        self.initial_controls = Controls(l2_threshold=l2, l3_threshold=min(l3, l2))
        self.controls = self.initial_controls
        self.sim: Simulator | None = None
        self.trace_name = ""
        self.elapsed_steps = 0
        self._last_line = ""
        self._last_info: dict[str, Any] | None = None
        #: (latency_ratio, perfect_coverage) of recent windows, for the rgb_array picture
        self._history: deque[tuple[float, float]] = deque(maxlen=HISTORY_WINDOWS)

    # ---- episodes ------------------------------------------------------------------------------------------
    def _split(self, name: str, split: str) -> Trace:
        return split_of(self.config, name, split)

    def _episode_trace(self, trace: Trace, start: int) -> Trace:
        return episode_window(trace, start, int(self.config["episode_tokens"]))

    def _fit_trace(self, name: str) -> Trace | None:
        """The cross-layer predictor's offline data: the first ``predictor_fit_tokens`` train-split tokens (one
        Trace object per trace and split settings in a process, so that every reset of every environment reuses
        the simulator's fitted table)."""
        tokens = int(self.config["predictor_fit_tokens"])
        if self.config["predictor"] != "cross-layer" or tokens == 0:
            return None
        raw = self.config.raw
        return _fit_trace_of(name, tuple(float(f) for f in raw["split_fractions"]), int(raw["split_seed"]), tokens)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: {list(RESET_OPTIONS)}")
        names = self.config["traces"]
        index = options.get("trace")
        if isinstance(index, str):
            if index not in names:
                raise ValueError(f"reset option trace={index!r} is not in this environment's suite {list(names)}")
            index = list(names).index(index)
        if index is None:
            index = int(self.np_random.integers(len(names)))
        if not 0 <= int(index) < len(names):
            raise ValueError(f"reset option trace={index} is out of range; the suite has {len(names)} trace(s)")
        self.trace_name = names[int(index)]
        trace = self._split(self.trace_name, self.config["split"])
        num_sequences = len(trace.sequence_bounds())
        start = options.get("start_sequence")
        if start is None:
            start = int(self.np_random.integers(num_sequences))
        if not 0 <= int(start) < num_sequences:
            raise ValueError(f"reset option start_sequence={start} is out of range [0, {num_sequences})")
        self.episode_trace = self._episode_trace(trace, int(start))
        self.start_sequence = int(start)
        # the simulator's own seed (workload schedule, noisy oracle), recorded so a replay can be rebuilt
        self.sim_seed = int(self.np_random.integers(0, 2**63 - 1))
        if options.get("sim_seed") is not None:
            self.sim_seed = int(options["sim_seed"])
        sim_rng = np.random.default_rng(self.sim_seed)
        self.sim = Simulator(self.episode_trace, self._sim_config, rng=sim_rng, fit_trace=self._fit_trace(self.trace_name))
        _warn_if_full(self.episode_trace, self.sim.cache, self.trace_name)
        schedule = self.sim.schedule
        self.reference = DemandAllReference(
            self.episode_trace, self.sim.profile, self.sim.expert_bytes, self.config["timing"], schedule.step_tokens.shape[1],
            experts=self.sim.routing,
        )
        # every step's reference latency, in a compiled call per chunk of steps instead of one per window (each
        # step's value depends on that step alone)
        self._reference_steps = self.reference.steps(schedule.step_tokens, schedule.link_share)
        self.controls = self.initial_controls
        self.elapsed_steps = 0
        self._previous_shares: np.ndarray | None = None
        self._gather_observe_constants()
        self._previous_trends: np.ndarray | None = None
        self._history.clear()
        # the warm-up window leaves at least one step to the agent, however short the episode
        window = self.sim.run(max(1, min(self.window_steps, self.sim.num_steps - 1)), self.controls)
        obs, info = self._observe(window)
        self._render_line(info)
        return obs, info

    def _gather_observe_constants(self) -> None:
        """What the observation reads of the episode's settings, gathered once per episode."""
        assert self.sim is not None
        reward_weights = self.config["reward"]
        self._observe_constants = (
            self.episode_trace.num_layers, self.episode_trace.num_experts, reward_weights["coverage_weight"],
            reward_weights["latency_weight"], *self.config.l2_range, *self.config.l3_range,
            self.sim.config.cache.total_slots, self.sim.schedule.step_tokens.shape[1], self.sim.expert_bytes,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # an environment pickled by an earlier version (a training checkpoint) kept its last raw features as a
        # dict and gathered no constants: convert, so that it resumes with the same numbers
        if "_previous_raw" in state:
            raw = self.__dict__.pop("_previous_raw")
            self._previous_trends = None if raw is None else np.array([raw[source] for _, source in _TRENDS])
        if self.sim is not None and "_observe_constants" not in state:
            self._gather_observe_constants()

    def step(self, action):
        if self.sim is None:
            raise RuntimeError("call reset() before step()")
        if self.sim.done:
            raise RuntimeError("the episode has ended; call reset()")
        self.controls = self.action_type.decode(action, self.controls)
        return self._finish_step(self.sim.run(self.window_steps, self.controls))

    def _finish_step(self, window: WindowResult, render: bool = True):
        """Observation, reward, ends and info of a step whose window has been replayed."""
        self.elapsed_steps += 1
        obs, info = self._observe(window)
        return self._finish_observed(obs, info, render)

    def _finish_observed(self, obs: np.ndarray, info: dict[str, Any], render: bool = True):
        """A step's results once its window is observed (``elapsed_steps`` already counts it): the vector
        environment observes all its windows at once (:func:`observe_windows`), then finishes each here."""
        terminated = bool(self.sim.done)
        truncated = bool(self.elapsed_steps >= self.max_episode_steps and not terminated)
        if terminated or truncated:
            info["episode_metrics"] = self.sim.metrics()
        if render:
            self._render_line(info)
        return obs, info["reward_terms"]["reward"], terminated, truncated, info

    # ---- observation, reward, info --------------------------------------------------------------------------
    def _observe(self, window: WindowResult) -> tuple[np.ndarray, dict[str, Any]]:
        """The observation and info of the window just replayed (one environment; :func:`observe_windows` does
        many at once with the same formulas)."""
        sim = self.sim
        assert sim is not None
        m = window.metrics
        s0, s1 = window.first_step, window.first_step + window.num_steps
        schedule = sim.schedule
        step_tokens = schedule.step_tokens[s0:s1]
        token_weights = schedule.step_ntokens[s0:s1].astype(np.float64)
        reference_ms = weighted_mean(self._reference_steps.window(s0, s1), token_weights)
        terms = reward_terms(m, reference_ms, **self.config["reward"])
        layers, experts = self._observe_constants[:2]
        shares = expert_shares_of_windows([sim.routing], [step_tokens], layers, experts)
        raw = _raw_features(
            m, ScalarOps(), controls=(self.controls.l2_threshold, self.controls.l3_threshold),
            constants=self._observe_constants, latency_ratio=terms["latency_ratio"], reference_ms=reference_ms,
            memory_share=float(sim.current_capacities().sum() / sim.config.cache.total_slots),
            bandwidth_share=weighted_mean(schedule.link_share[s0:s1], token_weights),
            batch_share=plain_mean(token_weights) / step_tokens.shape[1],
            entropy=popularity_entropy(shares[0]),
            shift=popularity_shift(shares[0], self._previous_shares),
        )
        sources = np.array([raw[source] for _, source in _TRENDS], dtype=np.float64)
        previous = sources if self._previous_trends is None else self._previous_trends
        for (trend, _), change in zip(_TRENDS, (sources - previous).tolist()):
            raw[trend] = change
        self._previous_shares = shares[0]
        self._previous_trends = sources
        obs = encode_observation(raw)
        return obs, _window_info(self, window, terms, m, int(token_weights.sum()))

    # ---- helpers for agents and humans ---------------------------------------------------------------------
    def episode_metrics(self) -> dict[str, Any]:
        """The simulator's metrics of the episode so far (also in ``info["episode_metrics"]`` at its end)."""
        if self.sim is None:
            raise RuntimeError("call reset() before episode_metrics()")
        return self.sim.metrics()

    def threshold_action(self, l2: float, l3: float):
        """The action that moves the thresholds as close to (l2, l3) as this action type allows."""
        return self.action_type.encode(l2, l3, self.controls)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    def _render_line(self, info: dict[str, Any]) -> None:
        t = info["reward_terms"]
        m = info["metrics"]
        w = info["workload"]
        self._last_info = info
        self._history.append((float(t["latency_ratio"]), float(m["perfect_coverage"])))
        self._last_line = (
            f"window {info['window']:4d}  L2 {self.controls.l2_threshold:.3f}  L3 {self.controls.l3_threshold:.3f}  "
            f"batch {w['batch']:5.2f}  kv {w['kv_fraction']:.2f}  link {w['link_share']:.2f}  "
            f"cov {m['perfect_coverage']:.3f}  lat {m['mean_latency_ms']:7.2f} ms  ratio {t['latency_ratio']:.3f}  "
            f"reward {t['reward']:+.3f}"
        )
        if self.render_mode == "human":
            # human mode renders as it goes (the Gymnasium convention); a line on stdout needs no display
            print(self._last_line, file=sys.stdout, flush=True)

    def _tier_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(configured slots, capacity left by the KV cache, mean slots in use) of L1, L2, L3 per pool."""
        cache = self.sim.cache if self.sim is not None else self.config.sim.cache
        slots = np.array([cache.l1_slots, cache.l2_slots, cache.l3_slots], dtype=np.float64)
        if self.sim is None:
            return slots, slots, np.zeros(3)
        capacity = np.asarray(self.sim.current_capacities(), dtype=np.float64).reshape(-1)[:3]
        used = self.sim.tier_occupancy()
        return slots, capacity, used

    def render(self) -> str | np.ndarray | None:
        """The ``render_mode``'s output: a line (``ansi``), an RGB array (``rgb_array``), None (``human``, none)."""
        if self.render_mode is None:
            spec_id = self.spec.id if self.spec is not None else "MoECache-v0"
            logger.warn(
                "You are calling render method without specifying any render mode. You can specify the render_mode "
                f'at initialization, e.g. gymnasium.make("{spec_id}", render_mode="rgb_array")'
            )
            return None
        if self.render_mode == "ansi":
            return self._last_line
        if self.render_mode == "rgb_array":
            slots, capacity, used = self._tier_state()
            info = self._last_info
            link_busy = float(info["metrics"]["link_utilization"]) if info else 0.0
            background = 1.0 - float(info["workload"]["link_share"]) if info else 0.0
            ratios = [r for r, _ in self._history]
            coverages = [c for _, c in self._history]
            return draw_state(slots, capacity, used, link_busy, background, ratios, coverages)
        return None  # human: already printed by reset() and step()


_WARNED_FULL: set[tuple[str, int]] = set()


#: from how many windows :func:`observe_windows` computes the features as columns: below, NumPy's cost per call
#: on short arrays makes one window at a time cheaper
COLUMNS_FROM = 4

#: the features whose change since the last window is a trend feature: (trend, source)
_TRENDS = (
    ("trend_perfect_coverage", "perfect_coverage"),
    ("trend_latency_ratio", "latency_ratio"),
    ("trend_link_utilization", "link_utilization"),
    ("trend_predictor_accuracy", "predictor_top1_accuracy"),
)
_TREND_COLUMNS = np.array([FEATURE_INDEX[trend] for trend, _ in _TRENDS])
_TREND_SOURCES = np.array([FEATURE_INDEX[source] for _, source in _TRENDS])


def observe_windows(envs: list[MoECacheEnv], windows: list[WindowResult]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The observations (n, NUM_FEATURES) and infos of n environments' windows just replayed (the vector
    environment's step).

    From :data:`COLUMNS_FROM` windows on, every quantity is computed as a column over the windows, with the
    single environment's formulas (the shared tables ``metric_table`` and :func:`_raw_features`: elementwise IEEE
    arithmetic in the same order; order-dependent sums row by row, as NumPy reduces each row alone), which costs
    a vector step far less than one pass per environment; below, :meth:`MoECacheEnv._observe` runs once per
    window. Either way the numbers are those of single environments. Each environment's trend and shift
    features read its previous window, kept on the environment.
    """
    n = len(envs)
    if n == 0:
        return np.zeros((0, NUM_FEATURES), dtype=np.float32), []
    if n < COLUMNS_FROM:
        observed = [env._observe(window) for env, window in zip(envs, windows)]
        return np.stack([obs for obs, _ in observed]), [info for _, info in observed]
    by_length: dict[int, list[int]] = {}
    by_geometry: dict[tuple[int, int], list[int]] = {}
    window_tokens: list[np.ndarray] = []
    capacities = []
    for i, (env, window) in enumerate(zip(envs, windows)):
        schedule = env.sim.schedule
        s0 = window.first_step
        by_length.setdefault(window.num_steps, []).append(i)
        by_geometry.setdefault(env._observe_constants[:2], []).append(i)
        window_tokens.append(schedule.step_tokens[s0:s0 + window.num_steps])
        capacities.append(env.sim.current_capacities())
    # per environment: layers, experts, reward weights, threshold ranges, slots, step width, expert bytes
    constants = np.array([env._observe_constants for env in envs], dtype=np.float64)
    coverage_weight, latency_weight = constants[:, 2], constants[:, 3]
    controls = np.array([(env.controls.l2_threshold, env.controls.l3_threshold) for env in envs], dtype=np.float64)
    counters = np.stack([window.counters for window in windows])
    mean_latency = np.zeros(n, dtype=np.float64)
    reference = np.zeros(n, dtype=np.float64)
    bandwidth = np.zeros(n, dtype=np.float64)
    token_totals = np.zeros(n, dtype=np.float64)
    percentiles = np.zeros((n, 3), dtype=np.float64)
    for length, rows in by_length.items():
        if length == 0:
            continue
        w = np.stack([windows[i].step_tokens for i in rows]).astype(np.float64)
        lat = np.stack([windows[i].step_latency_ms for i in rows])
        ref = np.stack([envs[i]._reference_steps.window(windows[i].first_step, windows[i].first_step + length)
                        for i in rows])
        link = np.stack([envs[i].sim.schedule.link_share[windows[i].first_step:windows[i].first_step + length]
                         for i in rows])
        # the token-weighted means are exact sums (math.fsum), row by row: they depend on no summation order
        totals = [math.fsum(row) for row in w.tolist()]
        token_totals[rows] = totals
        for out, values in ((mean_latency, lat), (reference, ref), (bandwidth, link)):
            out[rows] = [math.fsum(row) / total if total > 0 else 0.0
                         for row, total in zip((values * w).tolist(), totals)]
        percentiles[rows] = weighted_percentiles_of_rows(lat, w, (50, 95, 99))
    lengths = np.array([window.num_steps for window in windows], dtype=np.float64)
    batch_share = np.divide(token_totals, lengths, out=np.zeros(n), where=lengths > 0) / constants[:, 9]
    memory_share = np.array(capacities).sum(axis=1) / constants[:, 8]
    expert_bytes = constants[:, 10]
    token_counts = token_totals.astype(np.int64)
    m, metrics = metrics_of_windows(counters, mean_latency, percentiles, expert_bytes)
    latency_ratio, terms = reward_terms_of_windows(m["perfect_coverage"], mean_latency, reference, coverage_weight,
                                                   latency_weight)
    entropy = np.empty(n, dtype=np.float64)
    shift = np.zeros(n, dtype=np.float64)
    shares_of: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    for (layers, experts), rows in by_geometry.items():
        shares = expert_shares_of_windows([envs[i].sim.routing for i in rows], [window_tokens[i] for i in rows],
                                          layers, experts)
        entropy[rows] = popularity_entropies(shares)
        with_previous = [j for j, i in enumerate(rows) if envs[i]._previous_shares is not None]
        if with_previous:
            previous = np.stack([envs[rows[j]]._previous_shares for j in with_previous])
            shift[[rows[j] for j in with_previous]] = popularity_shifts(shares[with_previous], previous)
        for j, i in enumerate(rows):
            shares_of[i] = shares[j]
    features = _raw_features(
        m, ArrayOps(), controls=(controls[:, 0], controls[:, 1]), constants=constants.T,
        latency_ratio=latency_ratio, reference_ms=reference, memory_share=memory_share, bandwidth_share=bandwidth,
        batch_share=batch_share, entropy=entropy, shift=shift,
    )
    raw = np.empty((n, NUM_FEATURES), dtype=np.float64)
    for name, values in features.items():
        raw[:, FEATURE_INDEX[name]] = values
    # a trend is the change since the last window (0 on an episode's first)
    sources = raw[:, _TREND_SOURCES]
    previous = np.stack([sources[i] if env._previous_trends is None else env._previous_trends
                         for i, env in enumerate(envs)])
    raw[:, _TREND_COLUMNS] = sources - previous
    obs = encode_observations(raw)
    infos = []
    for i, (env, window) in enumerate(zip(envs, windows)):
        env._previous_shares = shares_of[i]
        env._previous_trends = sources[i]
        window.__dict__["metrics"] = metrics[i]  # WindowResult.metrics is a cached_property: the same dict
        infos.append(_window_info(env, window, terms[i], metrics[i], int(token_counts[i])))
    return obs, infos


def _raw_features(m: dict[str, Any], ops: Any, *, controls: tuple[Any, Any], constants: Any, latency_ratio: Any,
                  reference_ms: Any, memory_share: Any, bandwidth_share: Any, batch_share: Any, entropy: Any,
                  shift: Any) -> dict[str, Any]:
    """The observation's features before the trends, in natural units, written once for one window (Python
    floats, ``ScalarOps``) and for columns of many (arrays, ``ArrayOps``): the same operations in the same order.
    ``constants``: an environment's ``_observe_constants`` (or their columns)."""
    num_layers, num_experts, _, _, l2_low, l2_high, l3_low, l3_high = constants[:8]
    copied = ops.at_least_one(m["bytes_transferred"])
    return {
        "l2_threshold": 2.0 * (controls[0] - l2_low) / (l2_high - l2_low) - 1.0,
        "l3_threshold": 2.0 * (controls[1] - l3_low) / (l3_high - l3_low) - 1.0,
        "perfect_coverage": m["perfect_coverage"],
        "avg_coverage": m["avg_coverage"],
        "zero_coverage": m["zero_coverage"],
        "hit_rate_l1": m["hit_rate_l1"],
        "hit_rate_l2": m["hit_rate_l2"],
        "hit_rate_l3": m["hit_rate_l3"],
        "latency_ratio": latency_ratio,
        "p95_latency_ratio": ops.ratio(m["p95_latency_ms"], reference_ms),
        "layer_latency": m["mean_latency_ms"] / num_layers,
        "link_utilization": m["link_utilization"],
        "memory_pressure": m["memory_pressure"],
        "expert_memory_share": memory_share,
        "bandwidth_share": bandwidth_share,
        "batch_share": batch_share,
        "prefetch_precision": m["prefetch_precision"],
        "wasted_share": m["wasted_prefetch_bytes"] / copied,
        "prefetch_share": m["prefetch_bytes"] / copied,
        "predictor_top1_accuracy": m["predictor_top1_accuracy"],
        "predictor_topk_recall": m["predictor_topk_recall"],
        "predictor_max_confidence": m["predictor_mean_max_confidence"],
        "candidates_above_l2": m["candidates_above_l2_per_prediction"] / num_experts,
        "candidates_above_l3": m["candidates_above_l3_per_prediction"] / num_experts,
        "popularity_entropy": entropy,
        "popularity_shift": shift,
    }


def _window_info(env: MoECacheEnv, window: WindowResult, terms: dict[str, float], metrics: dict[str, Any],
                 tokens: int) -> dict[str, Any]:
    """A step's ``info``: the window's reward terms, metrics, controls and workload, and the episode's record."""
    s0, s1 = window.first_step, window.first_step + window.num_steps
    schedule = env.sim.schedule
    return {
        "reward_terms": terms,
        "metrics": metrics,
        "controls": env.controls.to_dict(),
        "workload": {
            "batch": plain_mean(schedule.batch[s0:s1]),
            "kv_fraction": plain_mean(schedule.kv_fraction[s0:s1]),
            "link_share": plain_mean(schedule.link_share[s0:s1]),
        },
        "trace": env.trace_name,
        "start_sequence": env.start_sequence,
        "sim_seed": env.sim_seed,
        # everything reset(options=...) needs to replay this episode exactly (with the same actions)
        "episode_spec": {"trace": env.trace_name, "split": env.config["split"],
                         "start_sequence": env.start_sequence, "sim_seed": env.sim_seed},
        "window": env.elapsed_steps,
        "first_step": s0,
        "num_steps": window.num_steps,
        "tokens": tokens,
    }


def _warn_if_full(trace: Trace, cache, trace_name: str) -> None:
    """Say once per trace and size when the cache holds every expert: only first uses miss, nothing to learn."""
    if not holds_every_expert(trace, cache) or (trace_name, cache.total_slots) in _WARNED_FULL:
        return
    _WARNED_FULL.add((trace_name, cache.total_slots))
    gym.logger.warn(
        f"the cache's {cache.total_slots} slots per pool hold every expert of trace {trace_name!r} "
        f"({trace.num_layers} layers x {trace.num_experts} experts, top-{trace.top_k}): after the first uses "
        "nothing is copied and the actions change little; give the env config a smaller 'cache'"
    )


#: the options ``reset(options=...)`` accepts: ``info["episode_spec"]`` of an episode holds all of them
RESET_OPTIONS = ("trace", "start_sequence", "sim_seed")


@lru_cache(maxsize=16)
def _fit_trace_of(name: str, fractions: tuple[float, ...], seed: int, tokens: int) -> Trace:
    """The first ``tokens`` tokens (whole sequences) of the train split of ``name`` (``load_split`` is cached)."""
    train = load_split(name, "train", fractions, seed)
    bounds = train.sequence_bounds()
    ids = train.sequence[bounds[:, 0]]
    keep = int(np.searchsorted(bounds[:, 1], tokens, side="left")) + 1
    return train.select_sequences(ids[: min(keep, len(ids))])


def split_of(config: EnvConfig, name: str, split: str) -> Trace:
    """One split (or ``all``) of the suite trace ``name`` under the environment's split settings."""
    raw = config.raw
    return load_split(name, split, tuple(float(f) for f in raw["split_fractions"]), int(raw["split_seed"]))


def episode_window(trace: Trace, start: int, episode_tokens: int) -> Trace:
    """Whole sequences from ``start`` (wrapping around) until ``episode_tokens`` are reached: an episode's trace."""
    bounds = trace.sequence_bounds()
    ids = trace.sequence[bounds[:, 0]]
    lengths = bounds[:, 1] - bounds[:, 0]
    order = (start + np.arange(len(ids))) % len(ids)
    cumulative = np.cumsum(lengths[order])
    take = int(np.searchsorted(cumulative, episode_tokens, side="left")) + 1
    return trace.select_sequences(ids[order[: min(take, len(ids))]])


def episode_trace(config: EnvConfig, episode: dict[str, Any]) -> Trace:
    """The trace an episode replays, from its ``info["episode_spec"]`` record and the environment's config."""
    split = split_of(config, episode["trace"], episode["split"])
    return episode_window(split, int(episode["start_sequence"]), int(config["episode_tokens"]))
