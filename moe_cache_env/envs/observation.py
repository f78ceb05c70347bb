"""The observation: a fixed-size float32 vector of normalised statistics of the last window.

Every feature is something a serving system can measure about its own cache over the last window: no feature
reads the future, the trace's labels or the workload schedule ahead. :data:`FEATURES` lists them in order with
their scale; :func:`decode_observation` turns a vector back into named values in their natural units (the
hand-written strategies in ``agents/`` read the observation through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np
from gymnasium import spaces

from moe_cache_env.sim.metrics import plain_mean


@dataclass(frozen=True)
class Feature:
    """One observation component: ``value = clip(raw / scale, low, high)``."""

    name: str
    description: str
    scale: float = 1.0
    low: float = 0.0
    high: float = 1.0


#: Per-layer latency that maps to 1.0 in ``layer_latency``: a layer that loads 8 experts of 28 MB on the
#: RTX 3090 profile (4.85 ms each, ``profiles/data/rtx3090-seed.json``) takes about 40 ms.
LAYER_LATENCY_SCALE_MS = 40.0

FEATURES: tuple[Feature, ...] = (
    Feature("l2_threshold", "current L2 threshold, -1 at the low end of l2_range, +1 at the high end", 1.0, -1.0, 1.0),
    Feature("l3_threshold", "current L3 threshold, -1 at the low end of l3_range, +1 at the high end", 1.0, -1.0, 1.0),
    Feature("perfect_coverage", "share of (step, layer) lookups whose experts were all on the GPU"),
    Feature("avg_coverage", "mean share of a lookup's experts found on the GPU"),
    Feature("zero_coverage", "share of lookups with none of their experts on the GPU"),
    Feature("hit_rate_l1", "share of expert requests served by L1"),
    Feature("hit_rate_l2", "share of expert requests served by L2"),
    Feature("hit_rate_l3", "share of expert requests served by L3"),
    Feature("latency_ratio", "mean per-token latency / the window's demand-all reference latency (reward.py), /2", 2.0),
    Feature("p95_latency_ratio", "P95 per-token latency / the demand-all reference latency, /2", 2.0),
    Feature("layer_latency", f"mean latency of one MoE layer of a step, ms / {LAYER_LATENCY_SCALE_MS:g}", LAYER_LATENCY_SCALE_MS),
    Feature("link_utilization", "share of the window's time the host-to-GPU link was busy"),
    Feature("memory_pressure", "mean (KV cache + L1 + L2 slots in use) / slot budget at prediction time"),
    Feature("expert_memory_share", "expert slots left by the KV cache / the full slot budget, at the window's end"),
    Feature("bandwidth_share", "share of the link's bandwidth left to expert copies by other traffic"),
    Feature("batch_share", "mean tokens per step / the workload's largest batch (x chunk_tokens)"),
    Feature("prefetch_precision", "share of completed prefetches that were used before eviction"),
    Feature("wasted_share", "wasted prefetch bytes / all bytes copied"),
    Feature("prefetch_share", "prefetch bytes / all bytes copied"),
    Feature("predictor_top1_accuracy", "share of predictions whose most confident expert was needed"),
    Feature("predictor_topk_recall", "share of needed experts among the predictor's top candidates"),
    Feature("predictor_max_confidence", "mean confidence of the predictor's most confident expert"),
    Feature("candidates_above_l2", "candidates per prediction at or above the L2 threshold / experts per layer"),
    Feature("candidates_above_l3", "candidates per prediction at or above the L3 threshold / experts per layer"),
    Feature("popularity_entropy", "entropy of the window's expert choices per layer / log(experts), mean over layers"),
    Feature("popularity_shift", "total-variation distance between this and the last window's expert shares"),
    Feature("trend_perfect_coverage", "change of perfect_coverage since the last window", 1.0, -1.0, 1.0),
    Feature("trend_latency_ratio", "change of latency_ratio (before /2) since the last window, /2", 2.0, -1.0, 1.0),
    Feature("trend_link_utilization", "change of link_utilization since the last window", 1.0, -1.0, 1.0),
    Feature("trend_predictor_accuracy", "change of predictor_top1_accuracy since the last window", 1.0, -1.0, 1.0),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
NUM_FEATURES = len(FEATURES)
_SCALE = np.array([f.scale for f in FEATURES], dtype=np.float64)
_LOW = np.array([f.low for f in FEATURES], dtype=np.float32)
_HIGH = np.array([f.high for f in FEATURES], dtype=np.float32)


def observation_space() -> spaces.Box:
    return spaces.Box(low=_LOW, high=_HIGH, dtype=np.float32)


def encode_observation(raw: Mapping[str, float]) -> np.ndarray:
    """Named raw values (natural units; see :data:`FEATURES`) -> the float32 observation vector."""
    missing = [name for name in FEATURE_NAMES if name not in raw]
    if missing:
        raise KeyError(f"observation is missing feature(s) {missing}")
    values = np.array([float(raw[name]) for name in FEATURE_NAMES], dtype=np.float64) / _SCALE
    if not np.isfinite(values).all():  # rare: nan_to_num costs more than the rest of the encoding
        values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(values, _LOW, _HIGH).astype(np.float32)


def decode_observation(obs: np.ndarray) -> dict[str, float]:
    """The observation vector -> named values in natural units (clipped features stay clipped)."""
    obs = np.asarray(obs, dtype=np.float64).reshape(-1)
    if obs.shape[0] != NUM_FEATURES:
        raise ValueError(f"observation has {obs.shape[0]} features, expected {NUM_FEATURES}")
    return {name: float(v * s) for name, v, s in zip(FEATURE_NAMES, obs, _SCALE)}


def expert_shares(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(L, E) share of each expert among the top-k choices at each layer, for tokens ``experts`` (n, L, K)."""
    n, num_layers, _ = experts.shape
    if n == 0:
        return np.zeros((num_layers, num_experts), dtype=np.float64)
    flat = (_layer_offsets(num_layers, num_experts) + experts).ravel()
    counts = np.bincount(flat, minlength=num_layers * num_experts).reshape(num_layers, num_experts)
    shares = counts.astype(np.float64)
    return shares / shares.sum(axis=1, keepdims=True)


@lru_cache(maxsize=16)
def _layer_offsets(num_layers: int, num_experts: int) -> np.ndarray:
    """(1, L, 1) int64 ``layer * num_experts``: added to (n, L, K) expert ids, the flat (layer, expert) keys."""
    offsets = np.arange(num_layers, dtype=np.int64)[None, :, None] * num_experts
    offsets.flags.writeable = False
    return offsets


def popularity_entropy(shares: np.ndarray) -> float:
    """Mean over layers of the normalised entropy (0 = one expert, 1 = uniform) of the expert shares."""
    num_experts = shares.shape[1]
    # log only where a share is positive (a zero share adds 0): no errstate, no -inf to mask afterwards
    logs = np.log(shares, out=np.zeros_like(shares), where=shares > 0)
    h = -(shares * logs).sum(axis=1)
    return float(plain_mean(h) / np.log(num_experts)) if num_experts > 1 else 0.0


def popularity_shift(shares: np.ndarray, previous: np.ndarray | None) -> float:
    """Mean over layers of the total-variation distance between two windows' expert shares."""
    if previous is None:
        return 0.0
    return float(0.5 * plain_mean(np.abs(shares - previous).sum(axis=1)))
