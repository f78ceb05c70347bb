"""Turn the simulator's raw counters into named metrics (the keys of ``evaluate --json``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from moe_cache_env.sim import kernel as K


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) of ``values`` where each value counts ``weights`` times (inverted CDF)."""
    return weighted_percentiles(values, weights, (q,))[0]


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """:func:`weighted_percentile` at each of ``qs``, sorting once."""
    if len(values) == 0:
        return [0.0] * len(qs)
    order = np.argsort(values, kind="stable")
    v = values[order]
    cw = np.cumsum(weights[order])
    last = len(v) - 1
    return [float(v[min(int(np.searchsorted(cw, q / 100.0 * cw[-1], side="left")), last)]) for q in qs]


def plain_mean(values: np.ndarray) -> float:
    """``float(values.mean())`` of a non-empty 1-D array: the same float64 pairwise sum and division, without
    ``np.mean``'s per-call overhead (several microseconds, paid per environment and window)."""
    return float(np.add.reduce(values, dtype=np.float64) / values.shape[0])


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """sum(values * weights) / sum(weights), summed exactly (``math.fsum``): a BLAS dot product's rounding
    depends on its thread count, and results must not."""
    total = math.fsum(weights.tolist())
    return math.fsum((values * weights).tolist()) / total if total > 0 else 0.0


def metrics_from_counters(
    counters: np.ndarray,
    step_latency_ms: np.ndarray,
    step_tokens: np.ndarray,
    expert_bytes: int,
) -> dict[str, Any]:
    """Metrics of a run or a window from its counters and its steps' latencies and token counts.

    Per-token latency is the latency of the step a token ran in (its sum over layers), so percentiles weight
    each step by its tokens.
    """
    # plain floats: arithmetic on NumPy scalars costs several times more, with the same IEEE results
    c = np.asarray(counters, dtype=np.float64).tolist()
    requests = c[K.C_REQUESTS]
    hits = c[K.C_HIT_L1] + c[K.C_HIT_L2] + c[K.C_HIT_L3]
    step_layers = c[K.C_STEP_LAYERS]
    tokens = c[K.C_TOKENS]
    lat = np.asarray(step_latency_ms, dtype=np.float64)
    w = np.asarray(step_tokens, dtype=np.float64)
    demand = c[K.C_DEMAND_LOADS]
    prefetch = c[K.C_PREFETCH_LOADS]
    p50, p95, p99 = weighted_percentiles(lat, w, (50, 95, 99))
    return {
        "steps": int(c[K.C_STEPS]),
        "tokens": int(tokens),
        "routing_events": int(c[K.C_EVENTS]),
        "expert_requests": int(requests),
        "hit_rate": _ratio(hits, requests),
        "hit_rate_l1": _ratio(c[K.C_HIT_L1], requests),
        "hit_rate_l2": _ratio(c[K.C_HIT_L2], requests),
        "hit_rate_l3": _ratio(c[K.C_HIT_L3], requests),
        "late_prefetch_rate": _ratio(c[K.C_LATE], requests),
        "miss_rate": _ratio(c[K.C_MISS], requests),
        "perfect_coverage": _ratio(c[K.C_PERFECT], step_layers),
        "zero_coverage": _ratio(c[K.C_ZERO], step_layers),
        "partial_coverage": _ratio(step_layers - c[K.C_PERFECT] - c[K.C_ZERO], step_layers),
        "avg_coverage": _ratio(c[K.C_COVERAGE_SUM], step_layers),
        "mean_latency_ms": weighted_mean(lat, w),
        "p50_latency_ms": p50,
        "p95_latency_ms": p95,
        "p99_latency_ms": p99,
        "stall_ms_per_token": _ratio(c[K.C_STALL_MS], c[K.C_STEPS]),
        "compute_ms_per_token": _ratio(c[K.C_COMPUTE_MS], c[K.C_STEPS]),
        "bytes_transferred": int(round((demand + prefetch) * expert_bytes)),
        "demand_bytes": int(round(demand * expert_bytes)),
        "prefetch_bytes": int(round(prefetch * expert_bytes)),
        "wasted_prefetch_bytes": int(round(c[K.C_WASTED_LOADS] * expert_bytes)),
        "prefetches_issued": int(c[K.C_PREFETCH_ISSUED]),
        # cancelled: a queued prefetch dropped before it started, overtaken by its own demand load (late) or
        # evicted from its tier; overtaken: the first kind alone, what an engine counts as a late prefetch
        "prefetches_cancelled": int(c[K.C_PREFETCH_CANCELLED]),
        "prefetches_overtaken": int(c[K.C_PREFETCH_OVERTAKEN]),
        # every ratio below is a count over a count that contains it, so it lies in [0, 1] by construction:
        # a prefetch is "used" at most once (the first request for its expert, landed or still in flight or
        # overtaken by a demand load), and only an issued prefetch can be used
        "prefetch_precision": _ratio(c[K.C_PREFETCH_USED], c[K.C_PREFETCH_ISSUED]),
        "link_utilization": min(1.0, _ratio(c[K.C_LINK_BUSY_MS], c[K.C_ELAPSED_MS])),
        "memory_pressure": _ratio(c[K.C_PRESSURE_SUM], c[K.C_PRED_EVENTS]),
        "predictor_top1_accuracy": _ratio(c[K.C_PRED_TOP1], c[K.C_PRED_EVENTS]),
        "predictor_topk_recall": _ratio(c[K.C_PRED_RECALL], c[K.C_PRED_EVENTS]),
        "predictor_mean_max_confidence": _ratio(c[K.C_CONF_MAX_SUM], c[K.C_PRED_EVENTS]),
        "candidates_above_l2_per_prediction": _ratio(c[K.C_ABOVE_L2], c[K.C_PRED_EVENTS]),
        "candidates_above_l3_per_prediction": _ratio(c[K.C_ABOVE_L3], c[K.C_PRED_EVENTS]),
        "l3_admissions_blocked": int(c[K.C_L3_BLOCKED]),
        "budget_dropped": int(c[K.C_BUDGET_DROPPED]),
    }
