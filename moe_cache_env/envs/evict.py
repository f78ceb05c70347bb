"""``MoECacheEvictEnv``: choose which expert leaves a full GPU cache, one eviction at a time.

The environment is thin: the replay (``moe_cache_env/sim/evict.py``, compiled in ``sim/evict_kernel.py``) runs
hits, demand loads and the timing model until a pool must give up a slot, and stops; the environment hands the
pool's slots to the agent as an observation, applies the chosen victim, and resumes.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from moe_cache_env.sim import evict_kernel as EK
from moe_cache_env.sim.config import ConfigError, SimConfig, WorkloadConfig, default_capacity, split_capacity
from moe_cache_env.sim.evict import EvictionReplay
from moe_cache_env.traces.format import Trace

#: the default configuration (``gym.make("MoECache-Evict-v0", config={...})`` overrides keys; unknown keys are
#: refused)
DEFAULT_EVICT_CONFIG: dict[str, Any] = {
    # suite names (moe_cache_env.envs.suite); the engines' traces hold one request each, so replay them with
    # split "all"
    "traces": ["learned/tiny-olmoe-12L-64E-decode"],
    "split": "train",
    "split_fractions": [0.7, 0.15, 0.15],
    "split_seed": 0,
    "episode_sequences": 8,  # whole sequences per episode from a random start (wrapping); 0 = the whole part
    "capacity": None,  # slots per pool (per layer, or in all with scope "global"); None: evaluate's default
    "scope": "per-layer",
    "max_slots": 64,  # the observation's slot rows; a pool that can hold more is refused at reset
    "profile": "h100",
    "timing": "timeline",
    "execution_order": "fused",
    "stats_decay": 0.995,
    "expert_bytes": 0,
    "decision_ms": 0.0,  # the agent's own time per layer (ms), added to the profile's host time (SimConfig)
    "workload": {"batch_min": 1, "batch_max": 4, "kv_min": 0.0, "kv_max": 0.3, "segment_steps": 64},
    "reward": "latency",  # "latency": -ms of the replay between decisions; "misses": -demand loads
    "schedule_seed": None,  # None: drawn from the environment's RNG at each reset; an int fixes it
}

#: feature names of a slot row (``evict_kernel.F_*`` order)
SLOT_FEATURES: tuple[str, ...] = (
    "age_log", "recency_rank", "frequency_log", "frequency_rank", "uses_log", "residence_log",
    "last_confidence", "layer_distance", "next_step_view", "reuse_gap_log", "overdue", "use_rate",
    "pool_fill", "evictions_needed_share", "step_tokens_log", "slots_share", "slot_state",
)
OBS_LOW, OBS_HIGH = -5.0, 30.0


def make_evict_config(overrides: Mapping[str, Any] | None = None,
                      base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``DEFAULT_EVICT_CONFIG`` with ``base`` then ``overrides`` merged in; unknown keys raise ``ConfigError``."""
    config = copy.deepcopy(DEFAULT_EVICT_CONFIG)
    for layer in (base, overrides):
        for key, value in (layer or {}).items():
            if key not in config:
                raise ConfigError(f"unknown MoECache-Evict config key {key!r}; known: {sorted(config)}")
            if key == "workload" and isinstance(value, Mapping):
                config["workload"] = {**config["workload"], **value}
            else:
                config[key] = copy.deepcopy(value)
    if config["reward"] not in ("latency", "misses"):
        raise ConfigError(f"reward {config['reward']!r} is not one of ['latency', 'misses']")
    if not isinstance(config["traces"], (list, tuple)) or not config["traces"]:
        raise ConfigError(f"traces must be a non-empty list of suite names, got {config['traces']!r}")
    n = config["episode_sequences"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"episode_sequences must be an integer >= 0, got {n!r}")
    m = config["max_slots"]
    if not isinstance(m, int) or isinstance(m, bool) or not 2 <= m <= 4096:
        raise ConfigError(f"max_slots must be an integer in [2, 4096], got {m!r}")
    WorkloadConfig(**config["workload"])  # validates, naming the field
    return config


class MoECacheEvictEnv(gym.Env):
    """
    ## Description

    A Mixture-of-Experts model serves requests on a GPU that holds only part of its experts, in one pool per
    layer (or one pool for all layers). Every expert a layer needs and does not find is copied on demand; when
    the copies overfill the pool, some resident experts must leave. The agent chooses which: one decision per
    eviction. The cache, its slots and the serving schedule are those that ``moe-cache-env evaluate`` gives
    ``lru`` and ``belady`` (one tier, demand loads only, the step's experts pinned while in use, the KV cache
    taking slots at step starts), under the same timing model, so an agent that always takes
    ``info["lru_action"]`` replays ``lru`` and one that always takes ``info["belady_action"]`` replays ``belady``
    exactly. A decision is asked for only when there is a choice (more candidates than keys that must leave).

    ## Action Space

    ``Discrete(max_slots)``: the slot (position in the pool's slot list) whose expert leaves. Only candidate
    slots (resident, not in use by the running layer) are valid: ``action_masks()`` (sb3-contrib's
    MaskablePPO reads it) and ``info["action_mask"]`` give them. A masked slot is not refused: the least recently
    used candidate leaves instead and ``info["invalid_action"]`` is True. A non-integer action raises
    ``ValueError``.

    ## Observation Space

    ``Box(-5, 30, (max_slots * 17,), float32)``: one row of 17 features per slot (rows beyond the pool's keys are
    zero), causal statistics a serving system keeps: log steps since last use, recency rank among candidates,
    log decayed use count and its rank, log uses since admission, log steps since admission, the cross-layer
    predictor's last confidence for the expert, layers until its layer runs again (over L), popularity's view of
    the next step (1 - (1 - share)^tokens), log moving-average reuse gap, how overdue its reuse is, uses per
    step resident; then the pool's candidate share, the share of candidates that must leave, log tokens in the
    step, the step's slots over the most slots of the replay; last the slot state (1 candidate, 0.5 pinned, 0
    empty). Names in ``SLOT_FEATURES``; definitions in ``moe_cache_env/sim/evict_kernel.py``.

    ## Rewards

    ``reward="latency"`` (default): minus the milliseconds the model spends between this decision and the next
    (every layer the replay runs in between, timed by ``sim/timing.py`` exactly as the simulator reports its
    per-step latency). Over an episode, ``sum(rewards) = -(total_ms - info["warmup_ms"])``, where
    ``total_ms`` is the sum of the episode's step latencies and ``warmup_ms`` the time before the first decision
    (no action can change it). ``evaluate``'s ``mean_latency_ms`` weights each step's latency by its tokens: it is
    ``total_ms / tokens`` when every step runs one token. ``reward="misses"``: minus the demand
    loads in between (the hit/miss outcome alone). ``info`` has both (``latency_ms``, ``misses``, ``hits``).

    ## Starting State

    ``reset`` draws a suite trace and a starting sequence with ``self.np_random`` and takes
    ``episode_sequences`` whole sequences of the configured split from there (wrapping); the workload schedule is
    drawn from a seed taken from ``self.np_random`` (or ``schedule_seed``). The cache starts empty and the replay
    runs to the first decision. ``reset(options={"trace": i, "start_sequence": j, "schedule_seed": k})`` fixes
    them.

    ## Episode End

    Terminated when the replay of the episode's sequences ends (the last step runs its layers after the last
    decision; their time is in the last reward). Not truncated by the environment; ``info["episode_metrics"]``
    at the end has the simulator's metrics of the episode (the same keys as ``evaluate``'s).

    ## Arguments

    ``gym.make("MoECache-Evict-v0", config={...})`` with keys of ``DEFAULT_EVICT_CONFIG``: ``traces``,
    ``split``, ``split_fractions``, ``split_seed``, ``episode_sequences``, ``capacity``, ``scope``,
    ``max_slots``, ``profile``, ``timing``, ``execution_order``, ``stats_decay``, ``expert_bytes``,
    ``decision_ms``, ``workload``, ``reward``, ``schedule_seed``.

    ## Version History

    - v0: first version.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: Mapping[str, Any] | None = None, base_config: Mapping[str, Any] | None = None,
                 render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"MoECache-Evict-v0 has no render modes, got {render_mode!r}")
        self.config = make_evict_config(config, base_config)
        self.max_slots = int(self.config["max_slots"])
        self.action_space = gym.spaces.Discrete(self.max_slots)
        self.observation_space = gym.spaces.Box(OBS_LOW, OBS_HIGH, (self.max_slots * EK.NUM_FEATURES,),
                                                dtype=np.float32)
        self.replay: EvictionReplay | None = None
        self._mask = np.zeros(self.max_slots, dtype=bool)

    # ---- episodes -------------------------------------------------------------------------------------------------
    def _sim_config(self, trace: Trace) -> SimConfig:
        cfg = self.config
        scope = cfg["scope"]
        capacity = cfg["capacity"]
        if capacity is None:
            capacity = default_capacity(trace.num_experts, trace.top_k, trace.num_layers, scope)
        return SimConfig(cache=split_capacity(int(capacity), trace.top_k, scope),
                         workload=WorkloadConfig(**cfg["workload"]), timing=cfg["timing"], profile=cfg["profile"],
                         execution_order=cfg["execution_order"], stats_decay=float(cfg["stats_decay"]),
                         expert_bytes=int(cfg["expert_bytes"]), decision_ms=float(cfg["decision_ms"]),
                         predictor="none", eviction="lru")

    def episode_trace(self, trace_index: int, start_sequence: int) -> Trace:
        """The sequences an episode replays: ``episode_sequences`` from ``start_sequence`` of the trace's part."""
        from moe_cache_env.envs.suite import load_split

        cfg = self.config
        part = load_split(cfg["traces"][trace_index], cfg["split"], tuple(cfg["split_fractions"]),
                          int(cfg["split_seed"]))
        n = cfg["episode_sequences"]
        bounds = part.sequence_bounds()
        if n == 0 or n >= len(bounds):
            return part
        rows = [(start_sequence + i) % len(bounds) for i in range(n)]
        ids = part.sequence[bounds[rows, 0]]
        return part.select_sequences(ids)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        traces = self.config["traces"]
        for attempt in range(8):
            ti = options.get("trace")
            if isinstance(ti, str):
                ti = list(traces).index(ti)
            if ti is None:
                ti = int(self.np_random.integers(len(traces)))
            start = options.get("start_sequence")
            if start is None:
                start = int(self.np_random.integers(1 << 30))
            sseed = options.get("schedule_seed", self.config["schedule_seed"])
            if sseed is None:
                sseed = int(self.np_random.integers(1 << 31))
            trace = self.episode_trace(int(ti), int(start))
            replay = EvictionReplay(trace, self._sim_config(trace), seed=int(sseed), policy="agent")
            if replay.max_slots > self.max_slots:
                raise ConfigError(
                    f"a pool of {trace.name!r} can hold up to {replay.max_slots} experts while a layer runs (its "
                    f"slots plus the layer's misses); give max_slots >= {replay.max_slots}"
                )
            self.replay = replay
            self.episode_spec = {"trace": traces[int(ti)], "start_sequence": int(start), "schedule_seed": int(sseed)}
            if replay.run():
                break
            if {"trace", "start_sequence"} <= set(options):
                raise ConfigError(f"episode {self.episode_spec} has no eviction with a choice; pick other "
                                  "sequences or fewer slots")
        else:
            raise ConfigError("eight episodes in a row had no eviction with a choice; give fewer slots (capacity)")
        self.warmup_ms = float(replay.acc[0])
        self._zero_acc()
        return self._observe(), self._info(invalid=False)

    def _zero_acc(self) -> None:
        assert self.replay is not None
        self.replay.acc[:] = 0.0

    def _observe(self) -> np.ndarray:
        assert self.replay is not None
        if self.replay.pending:
            feats = self.replay.feats[: self.max_slots]
            mask = self.replay.action_mask()[: self.max_slots]
            self._mask = np.zeros(self.max_slots, dtype=bool)
            self._mask[: mask.shape[0]] = mask
            rows = np.zeros((self.max_slots, EK.NUM_FEATURES), dtype=np.float32)
            rows[: feats.shape[0]] = feats
            return np.clip(rows, OBS_LOW, OBS_HIGH).ravel()
        self._mask = np.zeros(self.max_slots, dtype=bool)
        return np.zeros(self.observation_space.shape, dtype=np.float32)

    def _info(self, invalid: bool) -> dict[str, Any]:
        assert self.replay is not None
        rp = self.replay
        info: dict[str, Any] = {
            "action_mask": self._mask.copy(),
            "latency_ms": float(rp.acc[0]),
            "misses": int(rp.acc[1]),
            "hits": int(rp.acc[2]),
            "invalid_action": invalid,
            "decisions": rp.decisions,
            "warmup_ms": self.warmup_ms,
            "episode_spec": dict(self.episode_spec),
        }
        if rp.pending:
            info["belady_action"] = rp.belady_action()
            info["lru_action"] = rp.lru_action()
        else:
            info["episode_metrics"] = rp.metrics()
        return info

    def step(self, action: Any):
        if self.replay is None or not self.replay.pending:
            raise RuntimeError("step() called before reset() or after the episode ended; call reset()")
        a = _as_slot(action, self.max_slots)
        invalid = not bool(self._mask[a])
        if invalid:
            a = self.replay.lru_action()
        self._zero_acc()
        self.replay.run(a)
        acc = self.replay.acc
        reward = -float(acc[0]) if self.config["reward"] == "latency" else -float(acc[1])
        obs = self._observe()
        info = self._info(invalid)
        return obs, reward, not self.replay.pending, False, info

    def slot_keys(self) -> np.ndarray:
        """(max_slots,) the key (layer * E + expert) in each slot of the pending pool, -1 where empty."""
        out = np.full(self.max_slots, -1, dtype=np.int64)
        if self.replay is not None and self.replay.pending:
            keys = self.replay.slot_keys()[: self.max_slots]
            out[: keys.shape[0]] = keys
        return out

    def action_masks(self) -> np.ndarray:
        """(max_slots,) bool: the slots that may be evicted now (sb3-contrib's MaskablePPO calls this)."""
        return self._mask.copy()


def _as_slot(action: Any, n: int) -> int:
    arr = np.asarray(action)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.integer)) or arr.dtype == np.bool_:
        raise ValueError(f"action {action!r} is not valid for Discrete({n}): give one integer slot in 0..{n - 1}")
    a = int(arr.reshape(()))
    if not 0 <= a < n:
        raise ValueError(f"action {a} is outside Discrete({n}): give a slot in 0..{n - 1}")
    return a
