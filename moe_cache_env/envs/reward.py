"""The reward and the latency reference that normalises it.

``reward = coverage_weight * perfect_coverage - latency_weight * latency_ratio``

- ``perfect_coverage``: the window's share of (step, layer) lookups that found all their experts on the GPU
  (the seed's objective).
- ``latency_ratio``: the window's mean per-token latency over its *demand-all reference latency*: the latency
  the same steps would have if no expert were on the GPU and every needed expert were copied on demand, at the
  link bandwidth the window actually had. It removes what the cache cannot control (batch size, background
  traffic) from the latency term, so a reward is comparable across regimes and of order 1: 0 means free,
  1 means no better than loading everything on demand; above 1 is possible when prefetches delay demand loads.

Both terms are reported in ``info["reward_terms"]``.
"""

from __future__ import annotations

import numpy as np

from moe_cache_env.profiles import HardwareProfile
from moe_cache_env.traces.format import Trace


class DemandAllReference:
    """Computes the demand-all reference latency of any window of one replay.

    Timeline timing (``docs/simulator.md``): a layer of a step costs the copies of its distinct experts
    (``transfer_ms / link_share`` each, one after another on the link), then their compute (the profile's
    compute time at each expert's token count) and the layer overhead. Seed timing: the seed's table, the
    same piecewise-linear interpolation as the simulator's demand loads.
    """

    def __init__(self, trace: Trace, profile: HardwareProfile, expert_bytes: int, timing: str, width: int) -> None:
        self.trace = trace
        self.timing = timing
        self.num_experts = trace.num_experts
        self.transfer_ms = profile.transfer_ms(expert_bytes)
        self.layer_overhead_ms = profile.layer_overhead_ms
        self.compute_table_ms = profile.compute_table(expert_bytes, max(1, width))
        self.seed_table = profile.seed_table

    def step_latency_ms(self, step_tokens: np.ndarray, link_share: np.ndarray) -> np.ndarray:
        """(S,) demand-all latency of each step; ``step_tokens`` is (S, W), -1 padded."""
        S, W = step_tokens.shape
        L, E = self.trace.num_layers, self.num_experts
        valid = step_tokens >= 0
        step_index = np.repeat(np.arange(S), W)[valid.ravel()]
        experts = self.trace.experts[step_tokens[valid]].astype(np.int64)  # (n, L, K)
        key = (step_index[:, None, None] * L + np.arange(L)[None, :, None]) * E + experts
        counts = np.bincount(key.ravel(), minlength=S * L * E).reshape(S, L, E)
        distinct = (counts > 0).sum(axis=2)  # (S, L)
        if self.timing == "seed":
            t = self.seed_table
            h1, h4, h20 = t["h2d_1_expert_ms"], t["h2d_4_experts_ms"], t["h2d_20_experts_ms"]
            n = distinct.astype(np.float64)
            miss_ms = np.where(n <= 4, h1 + (n - 1) * (h4 - h1) / 3.0, h4 + (n - 4) * (h20 - h4) / 16.0)
            miss_ms = np.where(n > 0, miss_ms, 0.0)
            c1, c4 = t["compute_1_expert_ms"], t["compute_4_experts_ms"]
            compute = c1 + (n - 1) * (c4 - c1) / 3.0
            layer = miss_ms + compute + n * t["alloc_ms"]
        else:
            table = self.compute_table_ms
            compute = table[np.minimum(counts, len(table) - 1)].sum(axis=2)
            layer = distinct * self.transfer_ms / link_share[:, None] + compute + self.layer_overhead_ms
        return layer.sum(axis=1)

    def mean_latency_ms(self, step_tokens: np.ndarray, step_ntokens: np.ndarray, link_share: np.ndarray) -> float:
        """Token-weighted mean of the steps' demand-all latency (as ``mean_latency_ms`` weights steps)."""
        lat = self.step_latency_ms(step_tokens, link_share)
        w = step_ntokens.astype(np.float64)
        return float(lat @ w / w.sum()) if w.sum() > 0 else 0.0


def reward_terms(metrics: dict, reference_latency_ms: float, coverage_weight: float, latency_weight: float) -> dict[str, float]:
    """The reward and its terms for one window's ``metrics``."""
    latency_ratio = metrics["mean_latency_ms"] / reference_latency_ms if reference_latency_ms > 0 else 0.0
    coverage_term = coverage_weight * metrics["perfect_coverage"]
    latency_term = -latency_weight * latency_ratio
    return {
        "reward": float(coverage_term + latency_term),
        "coverage_term": float(coverage_term),
        "latency_term": float(latency_term),
        "perfect_coverage": float(metrics["perfect_coverage"]),
        "latency_ratio": float(latency_ratio),
        "reference_latency_ms": float(reference_latency_ms),
    }
