"""Allocate the kernel's state and wrap the schedule for it (the named tuples of ``kernel.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.config import CacheConfig
from moe_cache_env.sim.predictors import MAX_LOOKAHEAD
from moe_cache_env.sim.schedule import Schedule


@dataclass(frozen=True)
class ZooArrays:
    """Read-only inputs of the zoo's eviction rules, fitted or derived before a replay (``sim/zoo.py``).

    ``k_static`` (L*E,): each key's fitted frequency (EV_STATIC); ``route_w`` (T, L, K): the routing weight of each
    token's choices (EV_MRS); ``layer_caps`` (S, L): each layer's slots at each step (I_LAYER_CAPS).
    """

    k_static: np.ndarray
    route_w: np.ndarray
    layer_caps: np.ndarray

    @staticmethod
    def empty(n_keys: int) -> "ZooArrays":
        return ZooArrays(np.zeros(n_keys, dtype=np.float64), np.zeros((0, 0, 0), dtype=np.float64),
                         np.zeros((0, 0), dtype=np.int64))


def schedule_arrays(schedule: Schedule, experts: np.ndarray, compute_table_ms: np.ndarray) -> K.ScheduleArrays:
    """The schedule, the trace's routing (T, L, K) int16 and the compute table, as the kernel reads them."""
    return K.ScheduleArrays(
        step_tokens=schedule.step_tokens,
        step_ntokens=schedule.step_ntokens,
        prev_token=schedule.prev_token,
        step_of_token=schedule.step_of_token,
        tier_caps=schedule.tier_caps,
        link_share=schedule.link_share,
        kv_fraction=schedule.kv_fraction,
        experts=experts,
        ctab=compute_table_ms,
    )


def allocate_state(
    num_layers: int,
    num_experts: int,
    top_k: int,
    cache: CacheConfig,
    step_width: int,
    cooccurrence: tuple[np.ndarray, np.ndarray] | None,
    next_use: tuple[np.ndarray, np.ndarray],
    zoo: "ZooArrays | None" = None,
    lookahead_depth: int = MAX_LOOKAHEAD,
) -> K.KernelState:
    """An empty cache, an idle link and fresh online statistics.

    ``cooccurrence``: a pre-fitted ``(pair, src)`` table (``predictors.fit_cooccurrence``), copied so a reset
    starts from it again; None starts empty. ``next_use``: ``(start, events)`` from ``kernel.build_next_use``
    (empty arrays unless Belady eviction reads them). ``zoo``: the fitted inputs of the zoo's rules (None: empty).
    ``lookahead_depth``: the lookahead distances the co-occurrence table learns (``SimConfig.max_lookahead``).
    """
    L, E = num_layers, num_experts
    n_keys = L * E
    pools = 1 if cache.scope == "global" else L
    # a tier can overflow by the pinned experts of one step (every token of the batch, every expert)
    slots = cache.total_slots + step_width * top_k + E + 8
    tiers = K.TierState(
        k_tier=np.zeros(n_keys, dtype=np.int8),
        k_pos=np.zeros(n_keys, dtype=np.int64),
        k_state=np.zeros(n_keys, dtype=np.int8),
        k_arrival=np.zeros(n_keys, dtype=np.float64),
        k_last=np.zeros(n_keys, dtype=np.float64),
        k_uses=np.zeros(n_keys, dtype=np.int64),
        k_conf=np.zeros(n_keys, dtype=np.float64),
        k_prefetched=np.zeros(n_keys, dtype=np.int8),
        k_pin=np.full(n_keys, K.NO_EVENT, dtype=np.int64),
        mem=np.zeros((pools, 3, slots), dtype=np.int64),
        cnt=np.zeros((pools, 3), dtype=np.int64),
        k_ufrac=np.zeros(n_keys, dtype=np.float64),
    )
    queue = 2 * n_keys + 64
    link = K.LinkState(
        link=np.zeros(K.NUM_LINK, dtype=np.float64),
        q_key=np.full(queue, -1, dtype=np.int64),
        q_issue=np.zeros(queue, dtype=np.float64),
        qht=np.zeros(2, dtype=np.int64),
        k_qpos=np.zeros(n_keys, dtype=np.int64),
    )
    # the co-occurrence table holds one (L, E, E) plane per lookahead distance the run can ask for
    if cooccurrence is not None:
        pair, src = cooccurrence[0][:lookahead_depth].copy(), cooccurrence[1][:lookahead_depth].copy()
    else:
        # int32 counts: half the memory of float64 keeps the table in cache (it is updated every event)
        pair = np.zeros((lookahead_depth, L, E, E), dtype=np.int32)
        src = np.zeros((lookahead_depth, L, E), dtype=np.int32)
    prediction = K.PredictionState(
        pop_cnt=np.zeros((L, E), dtype=np.float64),
        pop_obs=np.zeros(L, dtype=np.float64),
        pop_weight=np.ones(L, dtype=np.float64),
        reuse_hit=np.zeros(L, dtype=np.float64),
        reuse_tot=np.zeros(L, dtype=np.float64),
        pair=pair,
        src=src,
        cal_hits=np.zeros(K.NUM_CAL_BINS, dtype=np.float64),
        cal_count=np.zeros(K.NUM_CAL_BINS, dtype=np.float64),
        pend_bin=np.zeros((3, E), dtype=np.int64),
        pend_hist=np.zeros((3, K.NUM_CAL_BINS), dtype=np.float64),
        pend_target=np.full(3, -1, dtype=np.int64),
    )
    start, events = next_use
    zoo = zoo or ZooArrays.empty(n_keys)
    eviction = K.EvictionState(
        nu_start=start, nu_events=events, nu_cursor=start[:-1].copy(),
        k_freq=np.zeros(n_keys, dtype=np.float64),
        k_ftime=np.zeros(n_keys, dtype=np.float64),
        k_ins=np.zeros(n_keys, dtype=np.int64),
        ins_count=np.zeros(1, dtype=np.int64),
        k_static=zoo.k_static, route_w=zoo.route_w, layer_caps=zoo.layer_caps,
    )
    return K.KernelState(tiers=tiers, link=link, prediction=prediction, eviction=eviction)
