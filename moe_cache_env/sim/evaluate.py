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
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace

__all__ = [
    "BOUNDS",
    "CACHE_POLICIES",
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
}
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
}
BOUNDS = ("belady", "clairvoyant")


@dataclass(frozen=True)
class EvaluationRequest:
    """One evaluation: which policy, on which trace, under which settings."""

    policy: str = "static"
    config: SimConfig = SimConfig()
    controls: Controls = Controls()
    seed: int = 0
    window_steps: int = 0  # > 0: also report metrics per window of this many steps


def policy_setup(trace: Trace, policy: str, config: SimConfig, controls: Controls) -> tuple[SimConfig, Controls]:
    """The simulator configuration and controls that ``policy`` replays ``trace`` with."""
    if policy not in _SETUPS:
        raise ConfigError(f"policy {policy!r} is not one of {list(POLICIES)}")
    if config.cache is None:
        config = replace(config, cache=default_cache(trace.num_experts, trace.top_k, trace.num_layers))
    return _SETUPS[policy](config, controls)


def evaluate(trace: Trace, request: EvaluationRequest, *, fit_trace: Trace | None = None) -> dict[str, Any]:
    """Run ``request`` on ``trace``; return the metrics (and per-window metrics when asked).

    The workload schedule is drawn from ``numpy.random.default_rng(request.seed)`` first, so every policy of
    the same request settings replays the same steps. ``clairvoyant`` replays twice, prefetching one and two
    layers ahead, and keeps the faster replay: on a saturated link, copies for two layers ahead can delay the
    next layer's demand loads, so the earliest prefetch is not always the fastest.
    """
    config, controls = policy_setup(trace, request.policy, request.config, request.controls)
    if request.policy == "clairvoyant":
        runs = [_replay(trace, config, replace(controls, lookahead=d), request, fit_trace) for d in (1, 2)]
        best = min(runs, key=lambda r: r["metrics"]["mean_latency_ms"])
        best["metrics"]["clairvoyant_lookahead"] = 1 + runs.index(best)
        return best
    return _replay(trace, config, controls, request, fit_trace)


def _replay(trace: Trace, config: SimConfig, controls: Controls, request: EvaluationRequest,
            fit_trace: Trace | None) -> dict[str, Any]:
    sim = Simulator(trace, config, rng=np.random.default_rng(request.seed), fit_trace=fit_trace)
    windows = []
    if request.window_steps > 0:
        while not sim.done:
            windows.append(sim.run(request.window_steps, controls).metrics)
    else:
        sim.run(None, controls)
    result: dict[str, Any] = {"metrics": sim.metrics()}
    if windows:
        result["windows"] = windows
    return result
