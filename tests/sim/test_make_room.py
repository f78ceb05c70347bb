"""``kernel._make_room`` with the weighted rule against a plain-Python model of its documented behaviour, on pools
that overflow tier by tier and as a whole (keys pinned by the event in use beyond L1's slots), with many ties."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.sim import kernel as K

NUM_KEYS = 64
EVENT = 11
CLOCK = 6.0


def _score(key: int, w: tuple[float, float, float], k_last, k_ufrac, k_conf) -> float:
    return w[0] / (1.0 + (CLOCK - float(k_last[key]))) + w[1] * float(k_ufrac[key]) + w[2] * float(k_conf[key])


def _lowest(members: list[int], pinned: set[int], w, k_last, k_ufrac, k_conf, honour_pins: bool = True) -> int:
    """The member with the lowest score (ties: the lower key), pinned ones left out; -1 if none."""
    candidates = [k for k in members if not (honour_pins and k in pinned)]
    if not candidates:
        return -1
    return min(candidates, key=lambda k: (_score(k, w, k_last, k_ufrac, k_conf), k))


def _model(tiers: list[list[int]], caps: list[int], start: int, pinned: set[int], w, k_last, k_ufrac, k_conf):
    """The rule of ``_make_room``'s docstring, one victim at a time: an over-full tier passes its lowest unpinned
    key down to the next tier with slots (or off the GPU from the last); a tier of L2 or below left with pinned
    keys only passes its lowest pinned key down, if there is a tier below; then the pool as a whole sheds the
    lowest unpinned keys of L3, then L2, then L1. Returns the tiers and the evicted keys in order."""
    tiers = [list(t) for t in tiers]
    evicted: list[int] = []
    for t in range(start, 4):
        dest = next((t2 for t2 in range(t + 1, 4) if caps[t2 - 1] > 0), 0)
        while len(tiers[t - 1]) > caps[t - 1]:
            victim = _lowest(tiers[t - 1], pinned, w, k_last, k_ufrac, k_conf)
            if victim < 0 and t >= 2 and dest > 0:
                victim = _lowest(tiers[t - 1], pinned, w, k_last, k_ufrac, k_conf, honour_pins=False)
            if victim < 0:
                break
            tiers[t - 1].remove(victim)
            if dest > 0:
                tiers[dest - 1].append(victim)
            else:
                evicted.append(victim)
    while sum(len(t) for t in tiers) > sum(caps):
        victim = -1
        for t in (3, 2, 1):
            victim = _lowest(tiers[t - 1], pinned, w, k_last, k_ufrac, k_conf)
            if victim >= 0:
                tiers[t - 1].remove(victim)
                break
        if victim < 0:
            break
        evicted.append(victim)
    return tiers, evicted


@pytest.mark.parametrize("seed", range(40))
def test_weighted_make_room_sheds_what_one_victim_at_a_time_would(seed: int) -> None:
    rng = np.random.default_rng(seed)
    caps = np.array([int(rng.integers(1, 5)), int(rng.integers(0, 6)), int(rng.integers(0, 9))], dtype=np.int64)
    width = 48
    mem = np.full((1, 3, width), -1, dtype=np.int64)
    cnt = np.zeros((1, 3), dtype=np.int64)
    k_tier = np.zeros(NUM_KEYS, dtype=np.int64)
    k_pos = np.zeros(NUM_KEYS, dtype=np.int64)
    k_state = np.full(NUM_KEYS, K.ST_READY, dtype=np.int64)
    k_prefetched = np.zeros(NUM_KEYS, dtype=np.int64)
    k_uses = rng.integers(0, 3, size=NUM_KEYS).astype(np.int64)
    # few distinct values, so that scores tie and the key decides
    k_ufrac = k_uses / (k_uses + 1.0)
    k_last = rng.integers(0, 4, size=NUM_KEYS).astype(np.float64)
    k_conf = rng.choice([0.0, 0.25, 0.5], size=NUM_KEYS)
    k_pin = np.full(NUM_KEYS, -1, dtype=np.int64)
    k_qpos = np.zeros(NUM_KEYS, dtype=np.int64)
    q_key = np.full(8, -1, dtype=np.int64)
    counters = np.zeros(K.NUM_COUNTERS, dtype=np.float64)
    u = np.zeros(K.NUM_CONTROLS)
    w = (float(rng.choice([0.0, 1.0, 0.4])), float(rng.choice([0.0, 0.3])), float(rng.choice([0.0, 0.3, 1.0])))
    u[K.U_W_RECENCY], u[K.U_W_FREQUENCY], u[K.U_W_CONFIDENCE] = w
    ev = K.EvictionState(np.zeros(NUM_KEYS + 1, dtype=np.int64), np.zeros(0, dtype=np.int64),
                         np.zeros(NUM_KEYS, dtype=np.int64), np.zeros(NUM_KEYS), np.zeros(NUM_KEYS),
                         np.zeros(NUM_KEYS, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(NUM_KEYS),
                         np.zeros((0, 1, 1)), np.zeros((0, 1), dtype=np.int64))

    # each tier at or over its slots; L1 often far over them with keys the event pins (a batch's experts)
    keys = list(rng.permutation(NUM_KEYS))
    tiers: list[list[int]] = [[], [], []]
    pinned: set[int] = set()
    for t in (1, 2, 3):
        extra = int(rng.integers(0, 12)) if t == 1 else int(rng.integers(0, 4))
        for _ in range(int(caps[t - 1]) + extra):
            key = int(keys.pop())
            K._tier_add(0, t, key, mem, cnt, k_tier, k_pos)
            tiers[t - 1].append(key)
            if rng.random() < (0.7 if t == 1 else 0.2):
                k_pin[key] = EVENT
                pinned.add(key)
    start = int(rng.integers(1, 4))
    expect_tiers, expect_evicted = _model(tiers, list(caps), start, pinned, w, k_last, k_ufrac, k_conf)

    vkey = np.empty(3 * width, dtype=np.int64)
    vscore = np.empty(3 * width)
    K._make_room(0, start, caps, EVENT, K.EV_WEIGHTED, CLOCK, u, mem, cnt, k_tier, k_pos, k_state, k_prefetched,
                 k_uses, k_ufrac, k_last, k_conf, k_pin, k_qpos, q_key, ev, counters, 6, 0.9, vkey, vscore)

    for t in (1, 2, 3):
        got = sorted(int(k) for k in mem[0, t - 1, :cnt[0, t - 1]])
        assert got == sorted(expect_tiers[t - 1]), f"tier {t}"
    evicted = [k for k in range(NUM_KEYS) if k_state[k] == K.ST_NONE]
    assert evicted == sorted(expect_evicted)
    for key in evicted:
        assert k_tier[key] == 0 and k_uses[key] == 0 and k_ufrac[key] == 0.0
