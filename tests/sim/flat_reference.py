"""A plain-Python demand-only cache on the simulator's schedule: the independent oracle for ``lru``/``belady``.

Written from the definition in docs/simulator.md, sharing no code with the kernel: each step-layer event
requests the distinct experts its tokens chose; requested experts are pinned for that event; a pool holds at
most the slots the KV cache leaves at that step (more only while the event's pinned experts alone exceed
them, until the event ends). LRU
evicts the least recently used expert, Belady the one needed farthest in the future; ties go to the lower key.
"""

from __future__ import annotations

import numpy as np


def flat_cache_hits(experts: np.ndarray, num_experts: int, step_tokens: np.ndarray, step_capacity: np.ndarray,
                    policy: str, scope: str = "per-layer") -> tuple[int, int]:
    """(hits, requests) of a one-tier demand-only cache replaying the schedule ``step_tokens``."""
    S = step_tokens.shape[0]
    L, K = experts.shape[1], experts.shape[2]
    events = []  # (step, layer, sorted distinct keys)
    for s in range(S):
        tokens = [int(t) for t in step_tokens[s] if t >= 0]
        for layer in range(L):
            keys = sorted({layer * num_experts + int(experts[t, layer, k]) for t in tokens for k in range(K)})
            events.append((s, layer, keys))
    uses: dict[int, list[int]] = {}
    for i, (_, _, keys) in enumerate(events):
        for key in keys:
            uses.setdefault(key, []).append(i)

    def next_use(key: int, after: int) -> int:
        for i in uses.get(key, []):
            if i > after:
                return i
        return 1 << 62

    pools: dict[int, dict[int, int]] = {}  # pool -> {key: last use}
    hits = requests = 0
    previous_capacity = None
    for i, (s, layer, keys) in enumerate(events):
        capacity = int(step_capacity[s])
        if layer == 0 and previous_capacity is not None and capacity < previous_capacity:
            for pool in pools.values():  # the KV cache grew: every pool sheds down to its slots now
                _shed(pool, capacity, set(), policy, lambda k: next_use(k, i - 1))
        previous_capacity = capacity if layer == 0 else previous_capacity
        pool = pools.setdefault(0 if scope == "global" else layer, {})
        for key in keys:
            requests += 1
            hits += key in pool
            pool[key] = i
        _shed(pool, capacity, set(keys), policy, lambda k: next_use(k, i))
        # the layer is done: experts that overfilled the pool only while in use give their slots back
        _shed(pool, capacity, set(), policy, lambda k: next_use(k, i))
    return hits, requests


def _shed(pool: dict[int, int], capacity: int, pinned: set[int], policy: str, next_use) -> None:
    while len(pool) > capacity:
        candidates = [k for k in pool if k not in pinned]
        if not candidates:
            return
        if policy == "lru":
            victim = min(candidates, key=lambda k: (pool[k], k))
        else:
            victim = min(candidates, key=lambda k: (-next_use(k), k))
        del pool[victim]
