"""Frozen, validated configuration objects for the simulator, one per concern.

A bad value fails at construction with a message naming the field, the value and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

SCOPES = ("per-layer", "global")
TIMING_MODES = ("timeline", "seed")
#: how a layer runs its experts (timeline timing): ``fused`` waits for all of them, then computes (one grouped
#: kernel, as vLLM's fused MoE); ``per-expert`` computes each as soon as its copy lands, resident ones first
EXECUTION_ORDERS = ("fused", "per-expert")
#: when a queued prefetch reaches the link (timeline timing): ``link``, the instant the link frees; ``host-poll``,
#: when the engine's host next polls and sees the link idle: not while it decides a layer (router sync, bookkeeping)
#: nor while it launches the layer's experts (docs/simulator.md, "Prefetch hand-off")
PREFETCH_HANDOFFS = ("link", "host-poll")
#: the default: an engine whose host runs the layers (router sync, then copies and launches) can only hand a
#: prefetch to its copy stream when it polls; on the H200 replays this rule gives the GPU's count of late
#: prefetches (docs/sim-to-real.md). With a profile without host costs the two rules give the same numbers.
DEFAULT_PREFETCH_HANDOFF = "host-poll"
#: eviction rules of the kernel (``kernel.EV_*``): the seed's confidence-weighted score, plain LRU, and Belady's
#: farthest-next-use rule (which reads the future: a bound, not a deployable policy)
EVICTION_RULES = ("weighted", "lru", "belady", "lfu", "lfru", "least-stale", "mrs", "static", "fifo")
#: how a one-tier per-layer cache gives out its slots: the same to every layer, or by layer from fitted miss
#: curves under the same global budget (``sim/zoo.py``: AdapMoE's allocation)
LAYER_SLOTS = ("uniform", "fitted")
#: the measured profile every tool defaults to (``profiles/data/h100.json``)
DEFAULT_PROFILE = "h100"


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
    The defaults are the seed's 4 / 20 / 40 slots per layer. A cache with ``l2_slots = l3_slots = 0`` is a
    *flat* cache: one tier that holds demand loads and prefetches alike (the reference policies use it).
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

    @property
    def flat(self) -> bool:
        """One tier only: prefetches, if any, are admitted into L1 itself."""
        return self.l2_slots == 0 and self.l3_slots == 0

    def flattened(self) -> "CacheConfig":
        """The same slots as one tier (the layout of the demand-only reference caches)."""
        return replace(self, l1_slots=self.total_slots, l2_slots=0, l3_slots=0)


def split_capacity(capacity: int, top_k: int, scope: str = "per-layer") -> CacheConfig:
    """The three tiers for ``capacity`` slots (per layer, or in all with ``scope="global"``).

    L1 holds a step's experts (top_k per layer), the rest splits 1 : 2 between L2 and L3 (the seed's 20 : 40),
    and neither is left empty while a slot is free for it: with one spare slot L2 gets it (confident
    predictions go to L2), with two or more each of L2 and L3 gets at least one.
    """
    _check_range("cache", "capacity", capacity, 1, 10**9, integer=True)
    if capacity < top_k:
        raise ConfigError(
            f"cache capacity={capacity} is below top_k={top_k}: a token's experts must fit on the GPU; "
            f"give --capacity {top_k} or more"
        )
    l1 = min(top_k, capacity)
    rest = capacity - l1
    if rest == 0:
        return CacheConfig(l1_slots=l1, l2_slots=0, l3_slots=0, scope=scope)
    l2 = min(rest, max(1, rest // 3))
    l3 = rest - l2
    if l3 == 0 and rest >= 2:
        l2, l3 = rest - 1, 1
    return CacheConfig(l1_slots=l1, l2_slots=l2, l3_slots=l3, scope=scope)


def default_capacity(num_experts: int, top_k: int, num_layers: int = 1, scope: str = "per-layer") -> int:
    """The one rule for a cache size when none is given: 40% of the experts of a layer, at least top_k + 2
    and at most all but one, per layer (``scope="global"``: the same share of all layers' experts).

    40% is a GPU that holds part of the model, as offloading systems run; see ``docs/simulator.md``.
    """
    per_layer = max(top_k + 2, int(round(0.4 * num_experts)))
    per_layer = min(per_layer, max(top_k, num_experts - 1))
    return per_layer * (num_layers if scope == "global" else 1)


def default_cache(num_experts: int, top_k: int, num_layers: int, scope: str = "per-layer") -> CacheConfig:
    """The default cache of a trace's geometry: :func:`default_capacity` slots split by :func:`split_capacity`."""
    return split_capacity(default_capacity(num_experts, top_k, num_layers, scope), top_k, scope)


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
        _check_thresholds(self.l2_threshold, self.l3_threshold)
        _check_range("controls", "lookahead", self.lookahead, 1, 2, integer=True)
        _check_range("controls", "prefetch_budget", self.prefetch_budget, 0, 1_000_000, integer=True)
        _check_range("controls", "l2_share", self.l2_share, 0.0, 1.0)
        for name in ("w_recency", "w_frequency", "w_confidence"):
            _check_range("controls", name, getattr(self, name), 0.0, 100.0)
        if not isinstance(self.demand_overtakes, bool):
            raise ConfigError(f"controls.demand_overtakes must be a bool, got {self.demand_overtakes!r}")

    def replace(self, **changes: Any) -> "Controls":
        return replace(self, **changes)

    def with_thresholds(self, l2_threshold: float, l3_threshold: float) -> "Controls":
        """``replace(l2_threshold=..., l3_threshold=...)``, checking only the thresholds: the other fields were
        checked when this object was made (an action's decoding runs once per environment and window, and a
        full ``dataclasses.replace`` costs several times more)."""
        _check_thresholds(l2_threshold, l3_threshold)
        new = object.__new__(Controls)
        new.__dict__.update(self.__dict__, l2_threshold=l2_threshold, l3_threshold=l3_threshold)
        return new

    def to_dict(self) -> dict[str, Any]:
        # plain scalar fields: no deep copy needed (dataclasses.asdict costs ~0.1 ms per window)
        return {name: getattr(self, name) for name in _CONTROL_FIELDS}


_CONTROL_FIELDS = tuple(f.name for f in fields(Controls))


def _check_thresholds(l2: float, l3: float) -> None:
    _check_range("controls", "l2_threshold", l2, 0.0, 1.01)
    _check_range("controls", "l3_threshold", l3, 0.0, 1.01)
    if l3 > l2:
        raise ConfigError(
            f"controls.l3_threshold={l3} is above l2_threshold={l2}; "
            "L3 holds the less confident predictions, so its threshold must be the lower one"
        )


@dataclass(frozen=True)
class WorkloadConfig:
    """How serving conditions change over a replay (all optional, all seeded).

    Every dynamic quantity is piecewise constant over segments whose lengths are drawn geometrically with mean
    ``segment_steps``; a value is drawn uniformly from its [min, max] range at each segment start.

    Attributes:
        batch_min, batch_max: concurrent sequences per step (continuous batching); equal = constant.
        chunk_tokens: tokens each sequence contributes per step; 0 (the default) follows the trace's phase:
            a prefill trace runs each prompt as one chunk (all its tokens in one step), a decode trace one token
            per sequence per step; a positive value is a fixed chunk (chunked prefill).
        prefill_chunk_tokens: with ``chunk_tokens`` 0, the chunk of a prefill trace (0: the whole prompt).
        kv_min, kv_max: share of the expert-slot budget taken by the KV cache (memory pressure).
        background_min, background_max: share of the host-to-GPU link taken by other traffic.
        domain_shift: order sequences in blocks of one domain (the workload shifts), else interleave them.
        segment_steps: mean length of a constant segment, in steps.
    """

    batch_min: int = 1
    batch_max: int = 1
    chunk_tokens: int = 0
    #: a prefill trace's chunk when ``chunk_tokens`` is 0: 0 = each prompt whole, else this many tokens
    prefill_chunk_tokens: int = 0
    kv_min: float = 0.0
    kv_max: float = 0.0
    background_min: float = 0.0
    background_max: float = 0.0
    domain_shift: bool = False
    segment_steps: int = 256

    def __post_init__(self) -> None:
        _check_range("workload", "batch_min", self.batch_min, 1, 4096, integer=True)
        _check_range("workload", "batch_max", self.batch_max, self.batch_min, 4096, integer=True)
        _check_range("workload", "chunk_tokens", self.chunk_tokens, 0, 65536, integer=True)
        _check_range("workload", "prefill_chunk_tokens", self.prefill_chunk_tokens, 0, 65536, integer=True)
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


#: Top-1 accuracy per lookahead distance (1, 2) of the ``recorded`` predictor (the routers of the next layers
#: applied to the current hidden state) on the bundled learned decode trace, as ``moe-cache-env predictors``
#: measures it (docs/traces.md): a hidden-state predictor's accuracy for ``noisy-oracle``.
MEASURED_ORACLE_ACCURACY: tuple[float, float] = (0.845, 0.713)


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator needs besides the trace and the controls."""

    #: None: the trace's default cache (:func:`default_cache`)
    cache: CacheConfig | None = None
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    timing: str = "timeline"
    profile: str = DEFAULT_PROFILE
    predictor: str = "cross-layer"
    #: how a full tier picks its victim (:data:`EVICTION_RULES`)
    eviction: str = "weighted"
    #: how a layer runs its experts (:data:`EXECUTION_ORDERS`; timeline timing only)
    execution_order: str = "fused"
    #: the policy's own decision time per layer (ms), added to the profile's host decision cost (a learned
    #: eviction model that takes 0.2 ms per decision costs that time on the critical path)
    decision_ms: float = 0.0
    #: charge the profile's host time per expert launch (``expert_launch_ms``); False models an engine that runs
    #: a layer's experts as one grouped kernel or CUDA graph, whose launches cost nothing per expert
    launch_cost: bool = True
    #: when a queued prefetch reaches the link (:data:`PREFETCH_HANDOFFS`): at once when the link frees, or at the
    #: host's next poll (the profile's decision and launch times are when the host does not poll)
    prefetch_handoff: str = DEFAULT_PREFETCH_HANDOFF
    #: the noisy-oracle's top-1 accuracy: one number for every lookahead (the seed's was 0.4755), or one per lookahead
    #: distance (``(acc_1, acc_2)``). The default is :data:`MEASURED_ORACLE_ACCURACY`, what hidden-state speculation
    #: reached on the learned decode trace (docs/traces.md).
    oracle_accuracy: float | tuple[float, ...] = MEASURED_ORACLE_ACCURACY
    #: decay per step of the popularity and reuse statistics (an effective memory of 1/(1-decay) steps).
    stats_decay: float = 0.995
    #: override the trace's expert size (bytes); 0 = use the trace's meta.expert_bytes.
    expert_bytes: int = 0
    #: map the learned predictors' raw scores to observed hit frequencies (online, from outcomes already seen),
    #: so a threshold of 0.7 means "needed 70% of the time" whichever predictor is used.
    calibrate_confidence: bool = True
    #: ``eviction="mrs"``: weight of an expert's previous score per step (HybriMoE's MRS moving average)
    mrs_alpha: float = 0.5
    #: ``uniform`` or ``fitted`` (:data:`LAYER_SLOTS`; ``fitted`` needs a one-tier per-layer cache and a fit trace)
    layer_slots: str = "uniform"
    #: the largest ``Controls.lookahead`` this simulator is run with (1 or 2). The cross-layer predictor learns its
    #: co-occurrence counts only for these distances: 1 halves that table and its updates, which is what an
    #: environment whose actions cannot change the lookahead runs with; a run asking for more is refused.
    max_lookahead: int = 2

    def __post_init__(self) -> None:
        from moe_cache_env.sim.predictors import MAX_LOOKAHEAD, PREDICTORS

        _check_choice("sim", "timing", self.timing, TIMING_MODES)
        from moe_cache_env.sim.plugins import registered_evictions, registered_predictors

        _check_choice("sim", "predictor", self.predictor, tuple(PREDICTORS) + registered_predictors())
        _check_choice("sim", "eviction", self.eviction, EVICTION_RULES + registered_evictions())
        _check_choice("sim", "execution_order", self.execution_order, EXECUTION_ORDERS)
        _check_choice("sim", "prefetch_handoff", self.prefetch_handoff, PREFETCH_HANDOFFS)
        _check_range("sim", "decision_ms", self.decision_ms, 0.0, 1000.0)
        if self.cache is not None and not isinstance(self.cache, CacheConfig):
            raise ConfigError(f"sim.cache must be a CacheConfig or None, got {self.cache!r}")
        if isinstance(self.oracle_accuracy, (list, tuple)):
            if not 1 <= len(self.oracle_accuracy) <= MAX_LOOKAHEAD:
                raise ConfigError(f"sim.oracle_accuracy as a list needs 1 to {MAX_LOOKAHEAD} values (one per "
                                  f"lookahead distance), got {list(self.oracle_accuracy)}")
            for value in self.oracle_accuracy:
                _check_range("sim", "oracle_accuracy", value, 0.0, 1.0)
            object.__setattr__(self, "oracle_accuracy", tuple(float(v) for v in self.oracle_accuracy))
        else:
            _check_range("sim", "oracle_accuracy", self.oracle_accuracy, 0.0, 1.0)
        _check_range("sim", "stats_decay", self.stats_decay, 0.0, 1.0)
        _check_range("sim", "mrs_alpha", self.mrs_alpha, 0.0, 1.0)
        _check_choice("sim", "layer_slots", self.layer_slots, LAYER_SLOTS)
        _check_range("sim", "max_lookahead", self.max_lookahead, 1, MAX_LOOKAHEAD, integer=True)
        _check_range("sim", "expert_bytes", self.expert_bytes, 0, 10**12, integer=True)
        if not isinstance(self.launch_cost, bool):
            raise ConfigError(f"sim.launch_cost must be a bool, got {self.launch_cost!r}")
        if not isinstance(self.calibrate_confidence, bool):
            raise ConfigError(f"sim.calibrate_confidence must be a bool, got {self.calibrate_confidence!r}")
        if not isinstance(self.profile, str) or not self.profile:
            raise ConfigError(f"sim.profile must be a profile name or path, got {self.profile!r}")
