"""Evaluate a policy on a trace: the engine behind ``moe-cache-env evaluate``.

Every policy is a configuration of the same simulator (``kernel.py``), replayed on the same schedule (the
same steps, serving order, batch, KV-cache share and link share), so their numbers compare directly:

- ``static``: the three-tier cache with fixed thresholds (default 0.7 / 0.3) and a chosen predictor;
- ``no-prefetch``: the three-tier cache without a predictor: a plain segmented LRU over the same slots;
- ``perfect``: the three-tier cache fed by the perfect predictor (the seed's thresholds and eviction);
- ``lru``: a one-tier demand-only LRU cache of the same slots;
- ``belady``: a one-tier demand-only cache evicting the expert needed farthest in the future: the upper bound
  of the hit rate of every demand-only policy with the same slots (it reads the future);
- ``clairvoyant``: ``belady``'s eviction plus perfect prefetch of every expert of the layer one or two layers
  ahead (the simulator's lookahead; the faster of the two replays), admitted only when it evicts something
  needed later: the reference lower bound of latency (``docs/simulator.md`` says in which sense it bounds).

The policy zoo (``docs/policies.md``: each rule, its source, and what differs from it here) adds demand-only
caches of the same slots evicting by ``fifo``, ``lfu`` (decayed), ``lfru``, ``least-stale`` (one pool over all
layers), ``mrs``, a static ``hot-set`` preloaded from fitted frequencies, a per-layer split of the global budget
fitted on miss curves (``layer-alloc``, LRU within each layer), and ``activation-aware`` prefetch and replacement
from matched expert activation matrices. The policies that fit (``hot-set``, ``layer-alloc``,
``activation-aware``) use ``fit_trace``, or else the first quarter of the replayed trace's sequences (which are
replayed too: in-sample for that quarter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from moe_cache_env.sim.config import (
    CacheConfig,
    ConfigError,
    Controls,
    SimConfig,
    default_cache,
    default_capacity,
    split_capacity,
)
from moe_cache_env.sim.predictors import PREDICTORS
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace

__all__ = [
    "BOUNDS",
    "CACHE_POLICIES",
    "FITTED_POLICIES",
    "UNBOUNDED_POLICIES",
    "POLICIES",
    "POLICY_KINDS",
    "EvaluationRequest",
    "default_capacity",
    "evaluate",
    "policy_setup",
    "split_capacity",
]


def _static(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    return config, controls


def _no_prefetch(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    # predictor-free: recency is the whole eviction score (a segmented LRU)
    return (replace(config, predictor="none", eviction="lru"),
            replace(controls, w_recency=1.0, w_frequency=0.0, w_confidence=0.0))


def _perfect(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    return replace(config, predictor="perfect"), controls


def _demand_only(eviction: str) -> Callable[[SimConfig, Controls], tuple[SimConfig, Controls]]:
    def setup(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
        assert config.cache is not None
        return replace(config, cache=config.cache.flattened(), predictor="none", eviction=eviction), controls

    return setup


def _zoo_demand_only(eviction: str, **fields: Any) -> Callable[[SimConfig, Controls], tuple[SimConfig, Controls]]:
    def setup(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
        assert config.cache is not None
        return replace(config, cache=config.cache.flattened(), predictor="none", eviction=eviction, **fields), \
            controls

    return setup


def _least_stale(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    # the rule ranks keys across layers by when their layer runs next: one pool over all layers, same total slots
    assert config.cache is not None
    # (policy_setup widens a per-layer cache to one global pool of L times its slots: it knows the layer count)
    return replace(config, cache=config.cache.flattened(), predictor="none", eviction="least-stale"), controls


def _activation_aware(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    from moe_cache_env.sim import plugins, zoo

    if zoo.ACTIVATION_PREDICTOR not in plugins.registered_predictors():
        plugins.register_predictor(zoo.ACTIVATION_PREDICTOR, zoo.ActivationMatrixPredictor)
    assert config.cache is not None
    # one tier: prefetches join the pool; the victim is the key whose matched activation share (its last
    # predicted confidence) is lowest, recency breaking near-ties; confidences are used as matched, uncalibrated
    config = replace(config, cache=config.cache.flattened(), predictor=zoo.ACTIVATION_PREDICTOR, eviction="weighted",
                     calibrate_confidence=False)
    return config, replace(controls, l2_threshold=ACTIVATION_PREFETCH_THRESHOLD,
                           l3_threshold=ACTIVATION_PREFETCH_THRESHOLD, w_recency=0.01, w_frequency=0.0,
                           w_confidence=1.0)


#: activation-aware: prefetch an expert when its matched share of the target step's tokens is at least this
ACTIVATION_PREFETCH_THRESHOLD = 0.3


def _clairvoyant(config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    assert config.cache is not None
    config = replace(config, cache=config.cache.flattened(), predictor="perfect", eviction="belady")
    # every true expert (confidence 1) is admitted, as early as the lookahead allows, without a budget
    return config, Controls(l2_threshold=1.0, l3_threshold=1.0, lookahead=2, prefetch_budget=0,
                            demand_overtakes=controls.demand_overtakes)


#: policy name -> how it configures the simulator
_SETUPS: dict[str, Callable[[SimConfig, Controls], tuple[SimConfig, Controls]]] = {
    "static": _static,
    "no-prefetch": _no_prefetch,
    "perfect": _perfect,
    "lru": _demand_only("lru"),
    "belady": _demand_only("belady"),
    "clairvoyant": _clairvoyant,
    "fifo": _zoo_demand_only("fifo"),
    "lfu": _zoo_demand_only("lfu"),
    "lfru": _zoo_demand_only("lfru"),
    "least-stale": _least_stale,
    "mrs": _zoo_demand_only("mrs"),
    "hot-set": _zoo_demand_only("static"),
    "layer-alloc": _zoo_demand_only("lru", layer_slots="fitted"),
    "activation-aware": _activation_aware,
}
#: zoo policies whose cache is not the one the bounds are stated for (the same slots per layer, starting empty):
#: one pool over all layers, another split of the slots across layers, a cache preloaded with a hot set.
#: ``belady`` and ``clairvoyant`` make no claim about them (docs/policies.md).
UNBOUNDED_POLICIES = ("least-stale", "layer-alloc", "hot-set")
#: zoo policies that fit on recorded routing (fit_trace, else the replayed trace's first quarter of sequences)
FITTED_POLICIES = ("hot-set", "layer-alloc", "activation-aware")
POLICIES: tuple[str, ...] = tuple(_SETUPS)
CACHE_POLICIES = ("static", "no-prefetch", "perfect")
#: what each policy's numbers are: a deployable policy, or a bound that reads the future
POLICY_KINDS: dict[str, str] = {
    "static": "policy",
    "no-prefetch": "policy",
    "perfect": "oracle predictor",
    "lru": "policy",
    "belady": "hit-rate bound",
    "clairvoyant": "latency bound",
    "fifo": "policy",
    "lfu": "policy",
    "lfru": "policy",
    "least-stale": "policy",
    "mrs": "policy",
    "hot-set": "policy",
    "layer-alloc": "policy",
    "activation-aware": "policy",
}
BOUNDS = ("belady", "clairvoyant")
#: steps per call when a Python predictor's confidences are handed over (see _replay)
EXTERNAL_WINDOW_STEPS = 256


@dataclass(frozen=True)
class EvaluationRequest:
    """One evaluation: which policy, on which trace, under which settings."""

    policy: str = "static"
    config: SimConfig = SimConfig()
    controls: Controls = Controls()
    seed: int = 0
    window_steps: int = 0  # > 0: also report metrics per window of this many steps
    #: also return the kernel's decisions as a ``moe-decision-log/1`` (``result["decision_log"]``)
    decision_log: bool = False


def policy_setup(trace: Trace, policy: str, config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    """The simulator configuration and controls that ``policy`` replays ``trace`` with."""
    if policy not in _SETUPS:
        raise ConfigError(f"policy {policy!r} is not one of {list(POLICIES)}")
    if config.cache is None:
        config = replace(config, cache=default_cache(trace.num_experts, trace.top_k, trace.num_layers))
    config, controls = _SETUPS[policy](config, controls)
    if policy == "least-stale" and config.cache is not None and config.cache.scope == "per-layer":
        cache = config.cache
        config = replace(config, cache=replace(cache, l1_slots=cache.l1_slots * trace.num_layers, scope="global"))
    return config, controls


def fit_source(trace: Trace, policy: str, fit_trace: Trace | None) -> Trace | None:
    """The routing a fitted zoo policy learns from: ``fit_trace``, else the first quarter of ``trace``'s
    sequences (at least one); None for a policy that fits nothing and no fit trace."""
    if fit_trace is not None or policy not in FITTED_POLICIES:
        return fit_trace
    bounds = trace.sequence_bounds()
    first = bounds[: max(1, len(bounds) // 4), 0]
    return trace.select_sequences(trace.sequence[first])


def evaluate(trace: Trace, request: EvaluationRequest, *, fit_trace: Trace | None = None) -> dict[str, Any]:
    """Run ``request`` on ``trace``; return the metrics (and per-window metrics when asked).

    The workload schedule is drawn from ``numpy.random.default_rng(request.seed)`` first, so every policy of
    the same request settings replays the same steps. ``clairvoyant`` replays twice, prefetching one and two
    layers ahead, and keeps the faster replay: on a saturated link, copies for two layers ahead can delay the
    next layer's demand loads, so the earliest prefetch is not always the fastest.
    """
    config, controls = policy_setup(trace, request.policy, request.config, request.controls)
    fit_trace = fit_source(trace, request.policy, fit_trace)
    if request.policy == "clairvoyant":
        runs = [_replay(trace, config, replace(controls, lookahead=d), request, fit_trace) for d in (1, 2)]
        best = min(runs, key=lambda r: r["metrics"]["mean_latency_ms"])
        best["metrics"]["clairvoyant_lookahead"] = 1 + runs.index(best)
        return best
    return _replay(trace, config, controls, request, fit_trace)


def _replay(trace: Trace, config: SimConfig, controls: Controls, request: EvaluationRequest,
            fit_trace: Trace | None) -> dict[str, Any]:
    sim = Simulator(trace, config, rng=np.random.default_rng(request.seed), fit_trace=fit_trace)
    if request.decision_log:
        sim.record_decisions()
    windows = []
    if request.window_steps > 0:
        while not sim.done:
            windows.append(sim.run(request.window_steps, controls).metrics)
    elif sim.config.predictor == "none" or sim.config.predictor in PREDICTORS:
        sim.run(None, controls)
    else:
        # a Python predictor hands over (steps, L, E) confidences per call: bounded windows bound the memory
        # (the counters accumulate, so the totals are those of one call)
        while not sim.done:
            sim.run(EXTERNAL_WINDOW_STEPS, controls)
    result: dict[str, Any] = {"metrics": sim.metrics()}
    if windows:
        result["windows"] = windows
    if request.decision_log:
        from moe_cache_env.gpu.kernel_log import simulator_decision_log

        result["decision_log"] = simulator_decision_log(sim, policy=request.policy,
                                                        batch=config.workload.batch_max)
    return result
