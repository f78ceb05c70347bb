"""The observation: a fixed-size float32 vector of normalised statistics of the last window.

Every feature is something a serving system can measure about its own cache over the last window: no feature
reads the future, the trace's labels or the workload schedule ahead. :data:`FEATURES` lists them in order with
their scale; :func:`decode_observation` turns a vector back into named values in their natural units (the
hand-written strategies in ``agents/`` read the observation through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from gymnasium import spaces
from numba import njit


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
    return encode_observations(np.array([[float(raw[name]) for name in FEATURE_NAMES]], dtype=np.float64))[0]


def encode_observations(values: np.ndarray) -> np.ndarray:
    """(n, NUM_FEATURES) float64 raw values, in :data:`FEATURES`' order -> (n, NUM_FEATURES) float32 observations."""
    values = values / _SCALE
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
    tokens = np.arange(experts.shape[0], dtype=np.int64)[None, :]
    return expert_shares_of_windows([experts], [tokens], experts.shape[1], num_experts)[0]


def expert_shares_of_windows(routing: list[np.ndarray], step_tokens: list[np.ndarray], num_layers: int,
                             num_experts: int) -> np.ndarray:
    """(W, L, E): :func:`expert_shares` of each of W windows, window w's tokens being the ids in
    ``step_tokens[w]`` (steps x width, -1 padded) of the routing ``routing[w]`` (tokens, L, K)."""
    shares = np.empty((len(routing), num_layers, num_experts), dtype=np.float64)
    for w, (experts, tokens) in enumerate(zip(routing, step_tokens)):
        _count_shares(experts, tokens, shares[w])
    return shares


@njit(cache=True)
def _count_shares(experts: np.ndarray, step_tokens: np.ndarray, out: np.ndarray) -> None:
    """``out`` (L, E): each expert's count among the layer's choices of the tokens in ``step_tokens`` over the
    layer's number of choices, or 0 without tokens. Integer counts, then IEEE divisions (one per count value a
    layer holds): the values ``counts / counts.sum()`` has in NumPy."""
    num_layers, num_experts = out.shape
    counts = np.zeros((num_layers, num_experts), dtype=np.int64)
    for s in range(step_tokens.shape[0]):
        for j in range(step_tokens.shape[1]):
            t = step_tokens[s, j]
            if t < 0:
                continue
            for layer in range(num_layers):
                for k in range(experts.shape[2]):
                    counts[layer, experts[t, layer, k]] += 1
    # count / total for each count value once (a window's layers share their total): few divisions, same bits
    quotient = np.zeros(step_tokens.size * experts.shape[2] + 1, dtype=np.float64)
    known_total, known_up_to = -1, -1
    for layer in range(num_layers):
        total = 0
        most = 0
        for e in range(num_experts):
            total += counts[layer, e]
            most = max(most, counts[layer, e])
        if total == 0:
            for e in range(num_experts):
                out[layer, e] = 0.0
            continue
        if total != known_total:
            known_total, known_up_to = total, -1
        for c in range(known_up_to + 1, most + 1):
            quotient[c] = c / total
        known_up_to = max(known_up_to, most)
        for e in range(num_experts):
            out[layer, e] = quotient[counts[layer, e]]


def popularity_entropy(shares: np.ndarray) -> float:
    """Mean over layers of the normalised entropy (0 = one expert, 1 = uniform) of the expert shares."""
    return float(popularity_entropies(shares[None])[0])


def popularity_entropies(shares: np.ndarray) -> np.ndarray:
    """(W,): :func:`popularity_entropy` of each of W windows' (L, E) shares, ``shares`` (W, L, E)."""
    num_experts = shares.shape[2]
    if num_experts <= 1:
        return np.zeros(shares.shape[0], dtype=np.float64)
    # a zero share adds 0: its log is taken of 1.0 instead (no -inf to mask; a masked log costs several times more)
    logs = np.log(np.where(shares > 0, shares, 1.0))
    h = -(shares * logs).sum(axis=2)
    return np.add.reduce(h, axis=1, dtype=np.float64) / h.shape[1] / np.log(num_experts)


def popularity_shift(shares: np.ndarray, previous: np.ndarray | None) -> float:
    """Mean over layers of the total-variation distance between two windows' expert shares."""
    if previous is None:
        return 0.0
    return float(popularity_shifts(shares[None], previous[None])[0])


def popularity_shifts(shares: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """(W,): :func:`popularity_shift` of each of W windows' shares against its previous window's, both (W, L, E)."""
    distance = np.abs(shares - previous).sum(axis=2)
    return 0.5 * (np.add.reduce(distance, axis=1, dtype=np.float64) / distance.shape[1])
