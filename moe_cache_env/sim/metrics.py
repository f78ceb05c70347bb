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


def weighted_percentiles_of_rows(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """(n, len(qs)): :func:`weighted_percentiles` of each row of the (n, R) ``values`` and ``weights`` (R >= 1),
    with the same sort (stable), the same running sums and the same first index whose sum reaches the rank."""
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    rows = np.arange(values.shape[0])
    last = values.shape[1] - 1
    out = np.empty((values.shape[0], len(qs)), dtype=np.float64)
    for j, q in enumerate(qs):
        rank = q / 100.0 * cw[:, -1]
        # the running sums never decrease (weights >= 0): the first index reaching the rank is how many are below
        index = np.minimum((cw < rank[:, None]).sum(axis=1), last)
        out[:, j] = v[rows, index]
    return out


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
    lat = np.asarray(step_latency_ms, dtype=np.float64)
    w = np.asarray(step_tokens, dtype=np.float64)
    p50, p95, p99 = weighted_percentiles(lat, w, (50, 95, 99))
    return metric_table(c, weighted_mean(lat, w), p50, p95, p99, ScalarOps(expert_bytes))


def metrics_of_windows(counters: np.ndarray, mean_latency_ms: np.ndarray, percentiles: np.ndarray,
                       expert_bytes: np.ndarray) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """:func:`metrics_from_counters` of n windows at once, from their (n, C) counters, (n,) token-weighted mean
    latencies, (n, 3) P50/P95/P99 latencies and (n,) expert sizes: the same formulas on columns, so the same
    numbers (every operation is elementwise IEEE arithmetic, in the same order). Returns the named (n,) columns
    and each window's metrics as :func:`metrics_from_counters` gives them (Python ints and floats)."""
    columns = metric_table(np.asarray(counters, dtype=np.float64).T, mean_latency_ms, percentiles[:, 0],
                           percentiles[:, 1], percentiles[:, 2], ArrayOps(expert_bytes))
    keys = tuple(columns)
    return columns, [dict(zip(keys, row)) for row in zip(*(column.tolist() for column in columns.values()))]


class ScalarOps:
    """The operations :func:`metric_table` (and the observation's features) need, on Python floats (one run or
    window)."""

    def __init__(self, expert_bytes: int = 0) -> None:
        self.expert_bytes = expert_bytes

    ratio = staticmethod(_ratio)
    count = staticmethod(int)

    def nbytes(self, loads: float) -> int:
        return int(round(loads * self.expert_bytes))

    @staticmethod
    def at_most_one(x: float) -> float:
        return min(1.0, x)

    @staticmethod
    def at_least_one(x: int) -> int:
        return max(1, x)


class ArrayOps:
    """:class:`ScalarOps` on (n,) columns (n windows): the same IEEE results, elementwise."""

    def __init__(self, expert_bytes: np.ndarray | int = 0) -> None:
        self.expert_bytes = np.asarray(expert_bytes, dtype=np.int64)

    @staticmethod
    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(np.shape(den), dtype=np.float64), where=den > 0)

    @staticmethod
    def count(x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64)

    def nbytes(self, loads: np.ndarray) -> np.ndarray:
        # np.rint rounds half to even, as round() does
        return np.rint(loads * self.expert_bytes).astype(np.int64)

    @staticmethod
    def at_most_one(x: np.ndarray) -> np.ndarray:
        return np.minimum(1.0, x)

    @staticmethod
    def at_least_one(x: np.ndarray) -> np.ndarray:
        return np.maximum(1, x)


def metric_table(c: Any, mean_latency_ms: Any, p50: Any, p95: Any, p99: Any, ops: Any) -> dict[str, Any]:
    """The named metrics from counters ``c`` (indexed by ``kernel.C_*``): written once for one window (Python
    floats, :class:`ScalarOps`) and for columns of many (arrays, :class:`ArrayOps`)."""
    ratio, count = ops.ratio, ops.count
    requests = c[K.C_REQUESTS]
    hits = c[K.C_HIT_L1] + c[K.C_HIT_L2] + c[K.C_HIT_L3]
    step_layers = c[K.C_STEP_LAYERS]
    demand = c[K.C_DEMAND_LOADS]
    prefetch = c[K.C_PREFETCH_LOADS]
    return {
        "steps": count(c[K.C_STEPS]),
        "tokens": count(c[K.C_TOKENS]),
        "routing_events": count(c[K.C_EVENTS]),
        "expert_requests": count(requests),
        "hit_rate": ratio(hits, requests),
        "hit_rate_l1": ratio(c[K.C_HIT_L1], requests),
        "hit_rate_l2": ratio(c[K.C_HIT_L2], requests),
        "hit_rate_l3": ratio(c[K.C_HIT_L3], requests),
        "late_prefetch_rate": ratio(c[K.C_LATE], requests),
        "miss_rate": ratio(c[K.C_MISS], requests),
        "perfect_coverage": ratio(c[K.C_PERFECT], step_layers),
        "zero_coverage": ratio(c[K.C_ZERO], step_layers),
        "partial_coverage": ratio(step_layers - c[K.C_PERFECT] - c[K.C_ZERO], step_layers),
        "avg_coverage": ratio(c[K.C_COVERAGE_SUM], step_layers),
        "mean_latency_ms": mean_latency_ms,
        "p50_latency_ms": p50,
        "p95_latency_ms": p95,
        "p99_latency_ms": p99,
        "stall_ms_per_token": ratio(c[K.C_STALL_MS], c[K.C_STEPS]),
        "compute_ms_per_token": ratio(c[K.C_COMPUTE_MS], c[K.C_STEPS]),
        "bytes_transferred": ops.nbytes(demand + prefetch),
        "demand_bytes": ops.nbytes(demand),
        "prefetch_bytes": ops.nbytes(prefetch),
        "wasted_prefetch_bytes": ops.nbytes(c[K.C_WASTED_LOADS]),
        "prefetches_issued": count(c[K.C_PREFETCH_ISSUED]),
        # cancelled: a queued prefetch dropped before it started, overtaken by its own demand load (late) or
        # evicted from its tier; overtaken: the first kind alone, what an engine counts as a late prefetch
        "prefetches_cancelled": count(c[K.C_PREFETCH_CANCELLED]),
        "prefetches_overtaken": count(c[K.C_PREFETCH_OVERTAKEN]),
        # every ratio below is a count over a count that contains it, so it lies in [0, 1] by construction:
        # a prefetch is "used" at most once (the first request for its expert, landed or still in flight or
        # overtaken by a demand load), and only an issued prefetch can be used
        "prefetch_precision": ratio(c[K.C_PREFETCH_USED], c[K.C_PREFETCH_ISSUED]),
        "link_utilization": ops.at_most_one(ratio(c[K.C_LINK_BUSY_MS], c[K.C_ELAPSED_MS])),
        "memory_pressure": ratio(c[K.C_PRESSURE_SUM], c[K.C_PRED_EVENTS]),
        "predictor_top1_accuracy": ratio(c[K.C_PRED_TOP1], c[K.C_PRED_EVENTS]),
        "predictor_topk_recall": ratio(c[K.C_PRED_RECALL], c[K.C_PRED_EVENTS]),
        "predictor_mean_max_confidence": ratio(c[K.C_CONF_MAX_SUM], c[K.C_PRED_EVENTS]),
        "candidates_above_l2_per_prediction": ratio(c[K.C_ABOVE_L2], c[K.C_PRED_EVENTS]),
        "candidates_above_l3_per_prediction": ratio(c[K.C_ABOVE_L3], c[K.C_PRED_EVENTS]),
        "l3_admissions_blocked": count(c[K.C_L3_BLOCKED]),
        "budget_dropped": count(c[K.C_BUDGET_DROPPED]),
    }
