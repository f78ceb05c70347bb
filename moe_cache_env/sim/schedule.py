"""Turn a trace and a workload into a step schedule: which tokens run together, under which conditions.

A *step* is one forward pass of the model over a batch: every concurrent sequence (a *lane*) contributes its
next chunk of tokens: one token of a decode trace, a whole prompt of a prefill trace (as engines run prefill),
or a fixed ``chunk_tokens``. The number of active lanes, the KV cache's share of the expert-slot budget and the
background link traffic are piecewise constant over segments (``WorkloadConfig``). Everything is drawn from
the given ``numpy.random.Generator`` up front, so the replay itself is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from moe_cache_env.sim.config import CacheConfig, WorkloadConfig
from moe_cache_env.traces.format import Trace


@dataclass(frozen=True)
class Schedule:
    """The precomputed replay plan.

    Attributes:
        step_tokens: (S, W) int64 token indices of each step, -1 padded (W = batch_max * chunk_tokens).
        step_ntokens: (S,) tokens in each step.
        prev_token: (T,) the token before each token in its sequence, or -1 for a sequence's first token.
        step_of_token: (T,) the step each token runs in (-1 if the replay ends before it).
        tier_caps: (S, 3) L1 / L2 / L3 capacities per pool at each step (the KV cache shrinks L3 first, then L2,
            then L1 down to top_k).
        link_share: (S,) share of the link's bandwidth left for expert copies (1 - background traffic).
        kv_fraction: (S,) share of the expert-slot budget taken by the KV cache.
        batch: (S,) active lanes per step.
        sequence_order: sequence indices (in ``Trace.sequence_bounds`` order) in the order they were served.
    """

    step_tokens: np.ndarray
    step_ntokens: np.ndarray
    prev_token: np.ndarray
    step_of_token: np.ndarray
    tier_caps: np.ndarray
    link_share: np.ndarray
    kv_fraction: np.ndarray
    batch: np.ndarray
    sequence_order: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.step_tokens.shape[0])


def _segments(num_steps: int, mean_len: int, lo: float, hi: float, rng: np.random.Generator, integer: bool) -> np.ndarray:
    """A piecewise-constant series: geometric segment lengths (mean ``mean_len``), uniform values in [lo, hi]."""
    out = np.empty(num_steps, dtype=np.float64)
    if lo == hi:
        out.fill(lo)
        return out
    pos = 0
    while pos < num_steps:
        length = int(rng.geometric(1.0 / mean_len))
        value = rng.integers(int(lo), int(hi) + 1) if integer else rng.uniform(lo, hi)
        out[pos : pos + length] = value
        pos += length
    return out


def sequence_serving_order(trace: Trace, workload: WorkloadConfig, rng: np.random.Generator) -> np.ndarray:
    """The order sequences are served in: blocks of one domain when ``domain_shift``, else shuffled."""
    num_seq = len(trace.sequence_bounds())
    domains = trace.domains()
    if workload.domain_shift and domains is not None:
        names = sorted(set(domains))
        rng.shuffle(names)
        blocks = []
        for name in names:
            idx = np.array([i for i, d in enumerate(domains) if d == name], dtype=np.int64)
            rng.shuffle(idx)
            blocks.append(idx)
        return np.concatenate(blocks)
    if workload.stationary:
        return np.arange(num_seq, dtype=np.int64)
    return rng.permutation(num_seq).astype(np.int64)


def chunk_tokens(trace: Trace, workload: WorkloadConfig) -> int:
    """Tokens a sequence contributes per step: ``workload.chunk_tokens``, or by the trace's phase when it is 0
    (the longest prompt of a prefill trace, so each prompt runs in one step; 1 for decode)."""
    if workload.chunk_tokens > 0:
        return int(workload.chunk_tokens)
    if trace.meta.get("phase") == "prefill":
        if workload.prefill_chunk_tokens > 0:
            return int(workload.prefill_chunk_tokens)
        bounds = trace.sequence_bounds()
        return int((bounds[:, 1] - bounds[:, 0]).max())
    return 1


@njit(cache=True)
def _lay_out_steps(bounds, order, batch_series, lanes, chunk, num_tokens):
    """The steps' token rows (-1 padded) and each step's active lanes: sequences in ``order`` fill lanes, a lane
    takes up to ``chunk`` tokens of its sequence per step, and step ``s`` runs ``batch_series[s]`` lanes.

    Compiled: a Python loop over steps cost ~60 ms per schedule (thousands of steps), paid at every reset."""
    width = lanes * chunk
    max_steps = num_tokens  # an upper bound: every step serves at least one token while any is left
    lane_pos = np.full(lanes, -1, dtype=np.int64)  # next token of the lane's sequence
    lane_end = np.full(lanes, -1, dtype=np.int64)
    capacity = 64
    rows = np.full((capacity, width), -1, dtype=np.int64)
    batch_used = np.zeros(capacity, dtype=np.int64)
    next_seq = 0
    remaining = num_tokens
    step = 0
    while remaining > 0:
        active = int(batch_series[step]) if step < max_steps else lanes
        if step == capacity:  # grow by doubling
            capacity *= 2
            grown = np.full((capacity, width), -1, dtype=np.int64)
            grown[:step] = rows[:step]
            rows = grown
            grown_batch = np.zeros(capacity, dtype=np.int64)
            grown_batch[:step] = batch_used[:step]
            batch_used = grown_batch
        filled = 0
        for lane in range(active):
            if lane_pos[lane] < 0 or lane_pos[lane] >= lane_end[lane]:
                if next_seq >= len(order):
                    lane_pos[lane] = -1
                    continue
                lane_pos[lane] = bounds[order[next_seq], 0]
                lane_end[lane] = bounds[order[next_seq], 1]
                next_seq += 1
            take = min(chunk, lane_end[lane] - lane_pos[lane])
            for j in range(take):
                rows[step, filled + j] = lane_pos[lane] + j
            filled += take
            lane_pos[lane] += take
        if filled == 0:
            # the active lanes ran dry while paused lanes still hold tokens: let every lane run
            batch_series[step] = lanes
            continue
        remaining -= filled
        batch_used[step] = active
        step += 1
    return rows[:step].copy(), batch_used[:step].copy()


def build_schedule(trace: Trace, workload: WorkloadConfig, cache: CacheConfig, rng: np.random.Generator) -> Schedule:
    """Lay the trace's tokens out into steps under ``workload``."""
    bounds = trace.sequence_bounds()
    order = sequence_serving_order(trace, workload, rng)
    T = trace.num_tokens
    chunk = chunk_tokens(trace, workload)
    lanes = workload.batch_max
    width = lanes * chunk
    # an upper bound on steps: every step serves at least one token while any is left
    max_steps = T
    batch_series = _segments(max_steps, workload.segment_steps, workload.batch_min, workload.batch_max, rng, True)

    step_tokens, batch_used = _lay_out_steps(np.asarray(bounds, dtype=np.int64), np.asarray(order, dtype=np.int64),
                                             batch_series, lanes, chunk, T)
    num_steps = step_tokens.shape[0]
    step_ntokens = (step_tokens >= 0).sum(axis=1).astype(np.int64)
    step_of_token = np.full(T, -1, dtype=np.int64)
    flat_steps = np.repeat(np.arange(num_steps), width)
    valid = step_tokens.ravel() >= 0
    step_of_token[step_tokens.ravel()[valid]] = flat_steps[valid]

    prev_token = np.arange(-1, T - 1, dtype=np.int64)
    prev_token[bounds[:, 0]] = -1

    kv_fraction = _segments(num_steps, workload.segment_steps, workload.kv_min, workload.kv_max, rng, False)
    background = _segments(
        num_steps, workload.segment_steps, workload.background_min, workload.background_max, rng, False
    )
    return Schedule(
        step_tokens=step_tokens,
        step_ntokens=step_ntokens,
        prev_token=prev_token,
        step_of_token=step_of_token,
        tier_caps=tier_capacities(cache, kv_fraction, trace.top_k),
        link_share=1.0 - background,
        kv_fraction=kv_fraction,
        batch=batch_used,
        sequence_order=order,
    )


def tier_capacities(cache: CacheConfig, kv_fraction: np.ndarray, top_k: int) -> np.ndarray:
    """Tier capacities per step when the KV cache takes ``kv_fraction`` of the slot budget.

    The slots left, ``floor(total * (1 - kv))`` but never fewer than a token's top_k, are the same for every
    cache layout: the speculative L3 gives up its slots first, then L2, then L1 (which keeps at least top_k,
    the experts in use). A three-tier cache and a one-tier (flat) cache of the same slots thus always hold
    the same number of experts.
    """
    total = cache.total_slots
    floor_l1 = min(cache.l1_slots, top_k)
    available = np.floor(total * (1.0 - kv_fraction) + 1e-9).astype(np.int64)
    available = np.maximum(available, floor_l1)
    l1 = np.clip(available, floor_l1, cache.l1_slots)
    l2 = np.clip(available - l1, 0, cache.l2_slots)
    l3 = np.clip(available - l1 - l2, 0, cache.l3_slots)
    return np.stack([l1, l2, l3], axis=1)
