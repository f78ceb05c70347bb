"""The environment's one validated configuration: a JSON-able dict merged onto :data:`DEFAULT_CONFIG`.

Unknown keys and out-of-range values are rejected with a message that names the key, the value and what is
allowed. The simulator's own sections (``cache``, ``workload``) are validated by ``moe_cache_env.sim.config``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping

from moe_cache_env.envs.suite import DEFAULT_SUITE, EPISODE_SPLITS, expand_suite
from moe_cache_env.sim.config import (
    DEFAULT_PREFETCH_HANDOFF,
    MEASURED_ORACLE_ACCURACY,
    CacheConfig,
    ConfigError,
    SimConfig,
    WorkloadConfig,
    from_mapping,
)
from moe_cache_env.traces.splits import DEFAULT_FRACTIONS

ACTION_TYPES = ("continuous", "discrete", "extended")

#: The defaults of ``MoECache-v0``; every registered variant is this dict with some keys replaced.
DEFAULT_CONFIG: dict[str, Any] = {
    # -- episodes ---------------------------------------------------------------------------------------------
    "traces": list(DEFAULT_SUITE),  # suite names (moe_cache_env.envs.suite)
    "split": "train",  # which part of every suite trace episodes replay (train / validation / test / all)
    "split_fractions": list(DEFAULT_FRACTIONS),
    "split_seed": 0,
    "episode_tokens": 8192,  # tokens (whole sequences) replayed per episode, from a random start
    "window_steps": 8,  # forward passes (steps) per environment step
    "max_episode_steps": 256,  # truncation, in windows
    # -- the cache and its hardware (moe_cache_env.sim.config) ------------------------------------------------
    "timing": "timeline",
    # the measured H100 (PCIe Gen5, ~54 GB/s pinned: a 28 MB expert in ~0.54 ms, ~15x its compute time), so
    # prefetching pays and over-prefetching costs (profiles/data/h100.json)
    "profile": "h100",
    "predictor": "cross-layer",
    "oracle_accuracy": list(MEASURED_ORACLE_ACCURACY),
    "predictor_fit_tokens": 4096,  # cross-layer predictor pre-fitted on this many train tokens (0 = none)
    # replay every trace as if its experts had this many bytes (0 = each trace's own meta.expert_bytes)
    "expert_bytes": 0,
    # charge the profile's host time per expert launch (profiles with expert_launch_ms, e.g. h200); false: an
    # engine that launches a layer's experts as one grouped kernel
    "launch_cost": True,
    # when a queued prefetch reaches the link: "link" (the instant it frees) or "host-poll" (the host's next poll)
    "prefetch_handoff": DEFAULT_PREFETCH_HANDOFF,
    "cache": {"l1_slots": 4, "l2_slots": 10, "l3_slots": 20, "scope": "per-layer"},
    # non-stationary serving: batch size, KV-cache share of memory and background link traffic change in
    # segments of ~segment_steps steps; sequences come in blocks of one domain
    "workload": {
        "batch_min": 1,
        "batch_max": 8,
        "kv_min": 0.0,
        "kv_max": 0.6,
        "background_min": 0.0,
        "background_max": 0.5,
        "domain_shift": True,
        "segment_steps": 128,
    },
    # -- actions ----------------------------------------------------------------------------------------------
    "action_type": "continuous",
    "l2_range": [0.5, 0.9],  # the seed's threshold ranges
    "l3_range": [0.1, 0.6],
    "initial_thresholds": [0.7, 0.3],  # the seed's defaults, used for the warm-up window at reset
    "discrete_step": 0.05,  # the seed's base step
    "max_prefetch_budget": 16,  # extended actions: largest finite prefetch budget per prediction
    # -- reward -----------------------------------------------------------------------------------------------
    "reward": {"coverage_weight": 1.0, "latency_weight": 1.0},
}

_TOP_LEVEL_KEYS = tuple(DEFAULT_CONFIG)


def _number(key: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> float:
    # NaN and infinity are rejected before any comparison or int(): int(inf) raises OverflowError, and NaN
    # compares false with every bound
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"env config {key} must be a finite number in [{lo}, {hi}], got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"env config {key} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"env config {key}={value!r} is out of range; allowed [{lo}, {hi}]")
    return value


def _pair(key: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"env config {key} must be a pair [low, high], got {value!r}")
    a = _number(f"{key}[0]", value[0], lo, hi)
    b = _number(f"{key}[1]", value[1], lo, hi)
    if a >= b:
        raise ConfigError(f"env config {key}={list(value)}: low must be below high")
    return float(a), float(b)


def _check_mapping(what: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a dict of config keys (e.g. {{\"episode_tokens\": 4096}}), "
                          f"got {type(value).__name__} {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{what}: keys must be strings, got {bad!r}")
    return value


def merge_config(overrides: Mapping[str, Any] | None, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_CONFIG, then ``base`` (a registered variant's settings), then ``overrides`` merged in.

    Nested dicts merge key by key, except ``cache`` and ``workload``, which a layer replaces whole; unknown
    keys and a non-dict ``overrides`` raise :class:`ConfigError`.
    """
    config = copy.deepcopy(DEFAULT_CONFIG)
    for layer, what in ((base, "base_config"), (overrides, "env config")):
        _merge_into(config, _check_mapping(what, layer))
    return config


def _merge_into(config: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if key not in _TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown env config key {key!r}; known keys: {sorted(_TOP_LEVEL_KEYS)}")
        if isinstance(DEFAULT_CONFIG[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"env config {key} must be a dict, got {value!r}")
            if key == "reward":
                unknown = sorted(set(value) - set(DEFAULT_CONFIG["reward"]))
                if unknown:
                    raise ConfigError(f"unknown env config reward key(s) {unknown}; known: {sorted(DEFAULT_CONFIG['reward'])}")
            if key in ("cache", "workload"):
                # a given section replaces the default one: a half-merged workload would mix two regimes
                config[key] = dict(value)
            else:
                config[key].update(value)
        else:
            config[key] = copy.deepcopy(value)


@dataclass(frozen=True)
class EnvConfig:
    """The validated configuration (build with :func:`make_config`)."""

    raw: dict[str, Any]
    sim: SimConfig
    l2_range: tuple[float, float]
    l3_range: tuple[float, float]
    initial_thresholds: tuple[float, float]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]


def make_config(overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None) -> EnvConfig:
    """Merge ``base`` and then ``overrides`` onto the defaults and validate every value."""
    raw = merge_config(overrides, base)
    try:
        raw["traces"] = expand_suite(raw["traces"])  # a folder stands for every trace in it
    except ValueError as exc:
        raise ConfigError(f"env config {exc}") from None
    raw["traces"] = list(raw["traces"])
    if raw["split"] not in EPISODE_SPLITS:
        raise ConfigError(f"env config split={raw['split']!r} is not one of {list(EPISODE_SPLITS)}")
    fractions = raw["split_fractions"]
    if not isinstance(fractions, (list, tuple)) or len(fractions) != 3:
        raise ConfigError(f"env config split_fractions must be three numbers, got {fractions!r}")
    for i, f in enumerate(fractions):
        _number(f"split_fractions[{i}]", f, 1e-6, 1.0)
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"env config split_fractions={list(fractions)} must sum to 1")
    _number("split_seed", raw["split_seed"], 0, 2**63 - 1, integer=True)
    _number("episode_tokens", raw["episode_tokens"], 16, 10**9, integer=True)
    _number("window_steps", raw["window_steps"], 1, 100_000, integer=True)
    _number("max_episode_steps", raw["max_episode_steps"], 1, 10**9, integer=True)
    _number("predictor_fit_tokens", raw["predictor_fit_tokens"], 0, 10**9, integer=True)
    _number("expert_bytes", raw["expert_bytes"], 0, 10**12, integer=True)
    if raw["action_type"] not in ACTION_TYPES:
        raise ConfigError(f"env config action_type={raw['action_type']!r} is not one of {list(ACTION_TYPES)}")
    l2_range = _pair("l2_range", raw["l2_range"], 0.0, 1.01)
    l3_range = _pair("l3_range", raw["l3_range"], 0.0, 1.01)
    initial = raw["initial_thresholds"]
    if not isinstance(initial, (list, tuple)) or len(initial) != 2:
        raise ConfigError(f"env config initial_thresholds must be [l2, l3], got {initial!r}")
    _number("initial_thresholds[0]", initial[0], *l2_range)
    _number("initial_thresholds[1]", initial[1], *l3_range)
    _number("discrete_step", raw["discrete_step"], 1e-4, 0.5)
    _number("max_prefetch_budget", raw["max_prefetch_budget"], 1, 10_000, integer=True)
    for key, value in raw["reward"].items():
        _number(f"reward.{key}", value, 0.0, 100.0)
    if raw["reward"]["coverage_weight"] == 0 and raw["reward"]["latency_weight"] == 0:
        raise ConfigError("env config reward: coverage_weight and latency_weight cannot both be 0")
    try:
        sim = SimConfig(
            cache=from_mapping(CacheConfig, raw["cache"], "cache"),
            workload=from_mapping(WorkloadConfig, raw["workload"], "workload"),
            timing=raw["timing"],
            profile=raw["profile"],
            predictor=raw["predictor"],
            oracle_accuracy=raw["oracle_accuracy"],
            expert_bytes=int(raw["expert_bytes"]),
            launch_cost=raw["launch_cost"],
            prefetch_handoff=raw["prefetch_handoff"],
        )
    except TypeError as exc:  # a wrongly typed section
        raise ConfigError(f"env config: {exc}") from None
    return EnvConfig(
        raw=raw,
        sim=sim,
        l2_range=l2_range,
        l3_range=l3_range,
        initial_thresholds=(float(initial[0]), float(initial[1])),
    )
