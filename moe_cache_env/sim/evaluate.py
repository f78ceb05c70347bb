"""Evaluate a policy on a trace: the engine behind ``moe-cache-env evaluate``.

Policies:

- ``static``: the three-tier cache with fixed thresholds (default 0.7 / 0.3) and a chosen predictor;
- ``no-prefetch``: the three-tier cache with prefetching off (a segmented LRU over the same slots);
- ``perfect``: the three-tier cache fed by the perfect predictor, the upper bound of prediction;
- ``lru`` and ``belady``: demand-only reference caches (``reference.py``), timed as demand loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numba import njit

from moe_cache_env.profiles import HardwareProfile, load_profile
from moe_cache_env.profiles.profile import SEED_TABLE_KEYS
from moe_cache_env.sim.kernel import F_SEED_H2D_1, NUM_FCONF, _seed_compute_ms, _seed_transfer_ms
from moe_cache_env.sim.config import CacheConfig, ConfigError, Controls, SimConfig
from moe_cache_env.sim.metrics import weighted_percentile
from moe_cache_env.sim.reference import REFERENCE_POLICIES, demand_hits
from moe_cache_env.sim.schedule import build_schedule
from moe_cache_env.sim.simulator import Simulator
from moe_cache_env.traces.format import Trace

CACHE_POLICIES = ("static", "no-prefetch", "perfect")
POLICIES = CACHE_POLICIES + REFERENCE_POLICIES


def split_capacity(capacity: int, top_k: int) -> CacheConfig:
    """Tiers for a total of ``capacity`` slots: L1 holds top_k, the rest splits 1 : 2 between L2 and L3
    (the seed's 20 : 40)."""
    if capacity < top_k:
        raise ConfigError(f"capacity={capacity} is below top_k={top_k}: a step's experts must fit on the GPU")
    l1 = top_k
    rest = capacity - l1
    l2 = rest // 3
    return CacheConfig(l1_slots=l1, l2_slots=l2, l3_slots=rest - l2)


def default_capacity(num_experts: int, top_k: int) -> int:
    """Slots per layer when none are given: 40% of the experts (at least top_k + 2), a GPU that holds part of
    the model, as offloading systems do."""
    return max(top_k + 2, int(round(0.4 * num_experts)))


@dataclass(frozen=True)
class EvaluationRequest:
    """One evaluation: which policy, on which trace, under which settings."""

    policy: str = "static"
    config: SimConfig = SimConfig()
    controls: Controls = Controls()
    seed: int = 0
    window_steps: int = 0  # > 0: also report metrics per window of this many steps


def evaluate(trace: Trace, request: EvaluationRequest, *, fit_trace: Trace | None = None) -> dict[str, Any]:
    """Run ``request`` on ``trace``; return the metrics (and per-window metrics when asked)."""
    if request.policy not in POLICIES:
        raise ConfigError(f"policy {request.policy!r} is not one of {list(POLICIES)}")
    rng = np.random.default_rng(request.seed)
    if request.policy in REFERENCE_POLICIES:
        return _evaluate_reference(trace, request, rng)
    config = request.config
    controls = request.controls
    if request.policy == "perfect":
        config = replace(config, predictor="perfect")
    elif request.policy == "no-prefetch":
        controls = replace(controls, l2_threshold=1.01, l3_threshold=1.01)
    sim = Simulator(trace, config, rng=rng, fit_trace=fit_trace)
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


@njit(cache=True)
def _demand_latency(step_tokens, step_ntokens, experts, num_experts, hits, ctab, transfer_ms, link_share,
                    layer_overhead_ms, seed_timing, fconf, out_latency, counters):
    """Per-step latency when every miss is a demand load on an otherwise idle link.

    An expert missed by any token of the step is loaded once. ``counters`` gets [compute_ms, link_busy_ms,
    step-layers, perfect step-layers, zero-coverage step-layers, sum of coverage ratios]: coverage counts an
    expert of a step as covered when every request for it was a hit, as the cache policies count it.
    """
    S = step_tokens.shape[0]
    L = experts.shape[1]
    K = experts.shape[2]
    mark = np.full(num_experts, -1, dtype=np.int64)
    missed = np.zeros(num_experts, dtype=np.int64)
    ntok = np.zeros(num_experts, dtype=np.int64)
    needed = np.empty(num_experts, dtype=np.int64)
    for s in range(S):
        nt = step_ntokens[s]
        lat = 0.0
        for l in range(L):
            ev = s * L + l
            nneed = 0
            for b in range(nt):
                t = step_tokens[s, b]
                for k in range(K):
                    e = experts[t, l, k]
                    if mark[e] != ev:
                        mark[e] = ev
                        ntok[e] = 0
                        missed[e] = 0
                        needed[nneed] = e
                        nneed += 1
                    ntok[e] += 1
                    if hits[t, l, k] == 0:
                        missed[e] = 1
            nmiss = 0
            compute = 0.0
            for n in range(nneed):
                nmiss += missed[needed[n]]
                compute += ctab[ntok[needed[n]]]
            nhit = nneed - nmiss
            counters[2] += 1.0
            if nmiss == 0:
                counters[3] += 1.0
            elif nhit == 0:
                counters[4] += 1.0
            counters[5] += nhit / nneed
            if seed_timing:
                compute = _seed_compute_ms(nneed, fconf)
                # one flat cache: every hit is a random access (the seed table's L2/L3 figure)
                layer = (nhit * fconf[F_SEED_H2D_1 + 4] + _seed_transfer_ms(nmiss, fconf) + compute
                         + nmiss * fconf[F_SEED_H2D_1 + 7])
            else:
                busy = nmiss * transfer_ms / link_share[s]
                counters[1] += busy
                layer = busy + compute + layer_overhead_ms
            counters[0] += compute
            lat += layer
        out_latency[s] = lat


def _evaluate_reference(trace: Trace, request: EvaluationRequest, rng: np.random.Generator) -> dict[str, Any]:
    config = request.config
    cache = config.cache
    capacity = cache.total_slots
    hits = demand_hits(trace.experts, trace.num_experts, request.policy, capacity, cache.scope)
    profile: HardwareProfile = load_profile(config.profile)
    expert_bytes = int(config.expert_bytes or trace.expert_bytes)
    schedule = build_schedule(trace, config.workload, cache, rng)
    width = schedule.step_tokens.shape[1]
    ctab = profile.compute_table(expert_bytes, width * trace.top_k)
    seed_timing = config.timing == "seed"
    if seed_timing and profile.seed_table is None:
        raise ConfigError(f"timing='seed' needs a profile with a seed_table; {profile.name!r} has none")
    fconf = np.zeros(NUM_FCONF)
    if profile.seed_table is not None:
        fconf[F_SEED_H2D_1:F_SEED_H2D_1 + len(SEED_TABLE_KEYS)] = [profile.seed_table[k] for k in SEED_TABLE_KEYS]
    latency = np.zeros(schedule.num_steps)
    counters = np.zeros(6)
    _demand_latency(schedule.step_tokens, schedule.step_ntokens, np.ascontiguousarray(trace.experts, dtype=np.int64),
                    trace.num_experts, hits, ctab, profile.transfer_ms(expert_bytes), schedule.link_share, profile.layer_overhead_ms,
                    seed_timing, fconf, latency, counters)
    requests = hits.size
    n_hits = int(hits.sum())
    w = schedule.step_ntokens.astype(np.float64)
    misses = requests - n_hits
    metrics = {
        "steps": int(schedule.num_steps),
        "tokens": int(trace.num_tokens),
        "routing_events": int(trace.num_tokens * trace.num_layers),
        "expert_requests": int(requests),
        "hit_rate": n_hits / requests,
        "miss_rate": misses / requests,
        # per step and layer over the step's distinct experts, as for the cache policies (at batch 1: per token)
        "perfect_coverage": float(counters[3] / counters[2]),
        "zero_coverage": float(counters[4] / counters[2]),
        "partial_coverage": float((counters[2] - counters[3] - counters[4]) / counters[2]),
        "avg_coverage": float(counters[5] / counters[2]),
        "mean_latency_ms": float(latency @ w / w.sum()),
        "p50_latency_ms": weighted_percentile(latency, w, 50),
        "p95_latency_ms": weighted_percentile(latency, w, 95),
        "p99_latency_ms": weighted_percentile(latency, w, 99),
        "bytes_transferred": int(misses * expert_bytes),
        "demand_bytes": int(misses * expert_bytes),
        "prefetch_bytes": 0,
        "wasted_prefetch_bytes": 0,
        "link_utilization": float(min(1.0, counters[1] / latency.sum())) if latency.sum() > 0 else 0.0,
    }
    return {"metrics": metrics}
