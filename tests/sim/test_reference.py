"""lru and belady follow their one-request-at-a-time definition exactly (checked against plain Python)."""

import numpy as np
from hypothesis import given, settings, strategies as st

from moe_cache_env.sim.reference import demand_hits


def python_reference(experts, num_experts, policy, capacity, scope):
    T, L, K = experts.shape
    requests = [(t, l, k) for t in range(T) for l in range(L) for k in range(K)]
    keys = [(l if scope == "global" else 0, l * num_experts + int(experts[t, l, k]), l) for t, l, k in requests]
    hits = []
    caches: dict[int, list[int]] = {}
    for i, (_, key, layer) in enumerate(keys):
        pool = 0 if scope == "global" else layer
        cache = caches.setdefault(pool, [])
        if key in cache:
            hits.append(1)
            if policy == "lru":
                cache.remove(key)
                cache.append(key)
            continue
        hits.append(0)
        if len(cache) >= capacity:
            if policy == "lru":
                cache.pop(0)
            else:
                def next_use(k):
                    for j in range(i + 1, len(keys)):
                        if keys[j][1] == k:
                            return j
                    return 10**18
                # farthest next use; ties -> lower key
                victim = max(cache, key=lambda k: (next_use(k), -k))
                cache.remove(victim)
        cache.append(key)
    return np.array(hits).reshape(T, L, K)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    tokens=st.integers(1, 30),
    layers=st.integers(1, 3),
    num_experts=st.integers(2, 8),
    capacity=st.integers(1, 6),
    policy=st.sampled_from(["lru", "belady"]),
    scope=st.sampled_from(["per-layer", "global"]),
)
def test_demand_caches_match_definition(seed, tokens, layers, num_experts, capacity, policy, scope):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, num_experts + 1))
    experts = np.stack([
        np.stack([rng.choice(num_experts, k, replace=False) for _ in range(layers)]) for _ in range(tokens)
    ])
    got = demand_hits(experts, num_experts, policy, capacity, scope)
    want = python_reference(experts, num_experts, policy, capacity, scope)
    assert np.array_equal(got, want)


def test_belady_never_worse_than_lru():
    rng = np.random.default_rng(3)
    experts = rng.integers(0, 16, size=(400, 2, 1))
    for capacity in (2, 4, 8):
        lru = demand_hits(experts, 16, "lru", capacity).mean()
        opt = demand_hits(experts, 16, "belady", capacity).mean()
        assert opt >= lru
