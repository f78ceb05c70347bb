"""Demand-only reference caches: ``lru`` and ``belady`` (no prediction, no prefetch).

Definition (exact, so hit rates can be checked by hand): every expert request of the trace is looked up one
at a time in the order token, layer, rank. All slots form one cache of ``capacity`` keys per layer
(``scope="per-layer"``: the key is the expert, one cache per layer) or one cache over (layer, expert) keys
(``scope="global"``). A miss inserts the key, evicting when full: ``lru`` the least recently used key,
``belady`` the key whose next request is farthest in the future (never requested again = infinitely far).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from moe_cache_env.sim.config import ConfigError

REFERENCE_POLICIES = ("lru", "belady")


@njit(cache=True)
def _next_use(keys, n_keys):
    """For each request, the index of the next request of the same key (or a large sentinel)."""
    n = keys.shape[0]
    nxt = np.empty(n, dtype=np.int64)
    last = np.full(n_keys, 1 << 62, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        k = keys[i]
        nxt[i] = last[k]
        last[k] = i
    return nxt


@njit(cache=True)
def _simulate(keys, pools, n_keys, n_pools, capacity, belady, nxt, hit_out):
    """Replay ``keys`` (one request each, pool given per request); write 1 for hits into ``hit_out``."""
    slots = np.full((n_pools, capacity), -1, dtype=np.int64)
    used = np.zeros(n_pools, dtype=np.int64)
    where = np.full(n_keys, -1, dtype=np.int64)  # slot index of a resident key
    stamp = np.zeros(n_keys, dtype=np.int64)  # last use (lru) or next use (belady) of a resident key
    for i in range(keys.shape[0]):
        k = keys[i]
        p = pools[i]
        if where[k] >= 0:
            hit_out[i] = 1
        else:
            hit_out[i] = 0
            if used[p] < capacity:
                slot = used[p]
                used[p] += 1
            else:
                # victim: smallest last use (lru) or largest next use (belady); ties -> lower key
                slot = 0
                best_key = slots[p, 0]
                for j in range(1, capacity):
                    cand = slots[p, j]
                    if belady:
                        better = stamp[cand] > stamp[best_key] or (stamp[cand] == stamp[best_key] and cand < best_key)
                    else:
                        better = stamp[cand] < stamp[best_key] or (stamp[cand] == stamp[best_key] and cand < best_key)
                    if better:
                        slot = j
                        best_key = cand
                where[best_key] = -1
            slots[p, slot] = k
            where[k] = slot
        stamp[k] = nxt[i] if belady else i


def demand_hits(experts: np.ndarray, num_experts: int, policy: str, capacity: int, scope: str = "per-layer") -> np.ndarray:
    """Hit (1) or miss (0) of every request, shaped like ``experts`` (T, L, K)."""
    if policy not in REFERENCE_POLICIES:
        raise ConfigError(f"reference policy {policy!r} is not one of {list(REFERENCE_POLICIES)}")
    if capacity < 1:
        raise ConfigError(f"capacity must be >= 1, got {capacity}")
    T, L, K = experts.shape
    layer = np.broadcast_to(np.arange(L)[None, :, None], experts.shape)
    keys = (layer * num_experts + experts).reshape(-1).astype(np.int64)
    if scope == "global":
        pools = np.zeros_like(keys)
        n_pools = 1
    elif scope == "per-layer":
        pools = layer.reshape(-1).astype(np.int64).copy()
        n_pools = L
    else:
        raise ConfigError(f"scope {scope!r} is not one of ['per-layer', 'global']")
    n_keys = L * num_experts
    nxt = _next_use(keys, n_keys)
    hits = np.zeros(keys.shape[0], dtype=np.int8)
    _simulate(keys, pools, n_keys, n_pools, int(capacity), policy == "belady", nxt, hits)
    return hits.reshape(T, L, K)
