"""Frozen, validated configuration objects for the simulator, one per concern.

A bad value fails at construction with a message naming the field, the value and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

SCOPES = ("per-layer", "global")
TIMING_MODES = ("timeline", "seed")


class ConfigError(ValueError):
    """An out-of-range or unknown configuration value."""


def _check_range(owner: str, name: str, value: float, lo: float, hi: float, *, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{owner}.{name} must be a number in [{lo}, {hi}], got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{owner}.{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{owner}.{name}={value!r} is out of range; allowed [{lo}, {hi}]")


def _check_choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name}={value!r} is not one of {list(choices)}")


def from_mapping(cls: type, data: Mapping[str, Any] | None, owner: str | None = None):
    """Build a config dataclass from a dict, rejecting unknown keys by name."""
    data = dict(data or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {owner or cls.__name__} key(s) {unknown}; known keys: {sorted(names)}")
    return cls(**data)


@dataclass(frozen=True)
class CacheConfig:
    """GPU expert slots per tier (see ``docs/simulator.md``).

    With ``scope="per-layer"`` every MoE layer has its own three tiers of these capacities; with
    ``scope="global"`` one set of tiers holds (layer, expert) keys and the capacities are totals.
    The defaults are the seed's 4 / 20 / 40 slots per layer.
    """

    l1_slots: int = 4
    l2_slots: int = 20
    l3_slots: int = 40
    scope: str = "per-layer"
    #: L3 admission stops while memory pressure is above this (the seed's 0.8).
    l3_pressure_limit: float = 0.8

    def __post_init__(self) -> None:
        _check_range("cache", "l1_slots", self.l1_slots, 1, 1_000_000, integer=True)
        _check_range("cache", "l2_slots", self.l2_slots, 0, 1_000_000, integer=True)
        _check_range("cache", "l3_slots", self.l3_slots, 0, 1_000_000, integer=True)
        _check_choice("cache", "scope", self.scope, SCOPES)
        _check_range("cache", "l3_pressure_limit", self.l3_pressure_limit, 0.0, 1.0)

    @property
    def total_slots(self) -> int:
        return self.l1_slots + self.l2_slots + self.l3_slots


@dataclass(frozen=True)
class Controls:
    """The cache's adaptive controls; they may change between windows.

    Attributes:
        l2_threshold: a predicted expert with confidence >= this is prefetched into L2 (seed range 0.5-0.9).
        l3_threshold: ... >= this (and below l2_threshold) into L3 (seed range 0.1-0.6).
        lookahead: predict and prefetch the step this many layers ahead (1 or 2).
        prefetch_budget: most experts prefetched per prediction (one per layer of a step); 0 = unlimited.
        l2_share: the part of a finite budget reserved for L2 candidates; L3 gets the rest.
        w_recency, w_frequency, w_confidence: weights of the eviction score (lowest score is evicted).
        demand_overtakes: demand loads jump ahead of queued prefetches on the host-to-GPU link.
    """

    l2_threshold: float = 0.7
    l3_threshold: float = 0.3
    lookahead: int = 1
    prefetch_budget: int = 0
    l2_share: float = 0.5
    w_recency: float = 1.0
    w_frequency: float = 0.0
    w_confidence: float = 1.0
    demand_overtakes: bool = True

    def __post_init__(self) -> None:
        _check_range("controls", "l2_threshold", self.l2_threshold, 0.0, 1.01)
        _check_range("controls", "l3_threshold", self.l3_threshold, 0.0, 1.01)
        if self.l3_threshold > self.l2_threshold:
            raise ConfigError(
                f"controls.l3_threshold={self.l3_threshold} is above l2_threshold={self.l2_threshold}; "
                "L3 holds the less confident predictions, so its threshold must be the lower one"
            )
        _check_range("controls", "lookahead", self.lookahead, 1, 2, integer=True)
        _check_range("controls", "prefetch_budget", self.prefetch_budget, 0, 1_000_000, integer=True)
        _check_range("controls", "l2_share", self.l2_share, 0.0, 1.0)
        for name in ("w_recency", "w_frequency", "w_confidence"):
            _check_range("controls", name, getattr(self, name), 0.0, 100.0)
        if not isinstance(self.demand_overtakes, bool):
            raise ConfigError(f"controls.demand_overtakes must be a bool, got {self.demand_overtakes!r}")

    def replace(self, **changes: Any) -> "Controls":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkloadConfig:
    """How serving conditions change over a replay (all optional, all seeded).

    Every dynamic quantity is piecewise constant over segments whose lengths are drawn geometrically with mean
    ``segment_steps``; a value is drawn uniformly from its [min, max] range at each segment start.

    Attributes:
        batch_min, batch_max: concurrent sequences per step (continuous batching); equal = constant.
        chunk_tokens: tokens each sequence contributes per step (1 for decode; >1 for chunked prefill).
        kv_min, kv_max: share of the expert-slot budget taken by the KV cache (memory pressure).
        background_min, background_max: share of the host-to-GPU link taken by other traffic.
        domain_shift: order sequences in blocks of one domain (the workload shifts), else interleave them.
        segment_steps: mean length of a constant segment, in steps.
    """

    batch_min: int = 1
    batch_max: int = 1
    chunk_tokens: int = 1
    kv_min: float = 0.0
    kv_max: float = 0.0
    background_min: float = 0.0
    background_max: float = 0.0
    domain_shift: bool = False
    segment_steps: int = 256

    def __post_init__(self) -> None:
        _check_range("workload", "batch_min", self.batch_min, 1, 4096, integer=True)
        _check_range("workload", "batch_max", self.batch_max, self.batch_min, 4096, integer=True)
        _check_range("workload", "chunk_tokens", self.chunk_tokens, 1, 65536, integer=True)
        _check_range("workload", "kv_min", self.kv_min, 0.0, 0.95)
        _check_range("workload", "kv_max", self.kv_max, self.kv_min, 0.95)
        _check_range("workload", "background_min", self.background_min, 0.0, 0.95)
        _check_range("workload", "background_max", self.background_max, self.background_min, 0.95)
        _check_range("workload", "segment_steps", self.segment_steps, 1, 10**9, integer=True)

    @property
    def stationary(self) -> bool:
        return (
            self.batch_min == self.batch_max
            and self.kv_min == self.kv_max
            and self.background_min == self.background_max
            and not self.domain_shift
        )


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator needs besides the trace and the controls."""

    cache: CacheConfig = field(default_factory=CacheConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    timing: str = "timeline"
    profile: str = "rtx3090-seed"
    predictor: str = "cross-layer"
    #: the noisy-oracle's top-1 accuracy (the seed's 0.4755).
    oracle_accuracy: float = 0.4755
    #: decay per step of the popularity and reuse statistics (an effective memory of 1/(1-decay) steps).
    stats_decay: float = 0.995
    #: override the trace's expert size (bytes); 0 = use the trace's meta.expert_bytes.
    expert_bytes: int = 0
    #: map the learned predictors' raw scores to observed hit frequencies (online, from outcomes already seen),
    #: so a threshold of 0.7 means "needed 70% of the time" whichever predictor is used.
    calibrate_confidence: bool = True

    def __post_init__(self) -> None:
        from moe_cache_env.sim.predictors import PREDICTORS

        _check_choice("sim", "timing", self.timing, TIMING_MODES)
        _check_choice("sim", "predictor", self.predictor, tuple(PREDICTORS))
        _check_range("sim", "oracle_accuracy", self.oracle_accuracy, 0.0, 1.0)
        _check_range("sim", "stats_decay", self.stats_decay, 0.0, 1.0)
        _check_range("sim", "expert_bytes", self.expert_bytes, 0, 10**12, integer=True)
        if not isinstance(self.calibrate_confidence, bool):
            raise ConfigError(f"sim.calibrate_confidence must be a bool, got {self.calibrate_confidence!r}")
        if not isinstance(self.profile, str) or not self.profile:
            raise ConfigError(f"sim.profile must be a profile name or path, got {self.profile!r}")
