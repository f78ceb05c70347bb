"""The simulator's compiled hot path: one call replays a range of steps (see ``docs/simulator.md``).

All state lives in preallocated NumPy arrays, grouped in named tuples (:class:`KernelState` and its parts,
:class:`ScheduleArrays`, :class:`KernelConfig`; built by ``moe_cache_env/sim/state.py``) owned by
:class:`moe_cache_env.sim.simulator.Simulator`; the functions here are ``numba.njit`` compiled (cached on
disk), take no other Python objects and allocate only small scratch arrays. Keys are ``layer * E + expert``; a
*pool* is one layer's cache (per-layer scope) or the single global cache.

Two plug-in points take code from outside: a predictor written in Python hands the kernel its confidences as
an array per window (``P_EXTERNAL``), and an eviction rule written as a small numba-compilable function
(``EV_CUSTOM``) is compiled into a private copy of this module (``moe_cache_env/sim/plugins.py``).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from moe_cache_env.sim.timing import (
    NUM_SEED, fused_launch_wait_ms, launch_wait_ms, per_expert_finish_ms, seed_compute_ms, seed_layer_ms,
    step_layer_experts, timeline_layer_ms,
)

# error_model="numpy": divisions follow IEEE rules instead of checking for zero and raising, which keeps
# branches out of the per-event loop (every division here has a nonzero divisor by construction).

# ---- counter indices (Simulator.counters) --------------------------------------------------------------------
C_STEPS = 0
C_TOKENS = 1
C_EVENTS = 2  # routing events: token x layer
C_STEP_LAYERS = 3
C_REQUESTS = 4  # expert requests after deduplication across the batch
C_HIT_L1 = 5
C_HIT_L2 = 6
C_HIT_L3 = 7
C_LATE = 8  # needed expert whose prefetch was still in flight or queued
C_MISS = 9
C_PERFECT = 10
C_ZERO = 11
C_COVERAGE_SUM = 12
C_DEMAND_LOADS = 13
C_PREFETCH_LOADS = 14  # prefetch transfers that started
C_WASTED_LOADS = 15  # prefetched experts evicted before any use, after their transfer started
C_PREFETCH_ISSUED = 16
C_PREFETCH_CANCELLED = 17
C_PREFETCH_USED = 18
C_LINK_BUSY_MS = 19
C_ELAPSED_MS = 20
C_PRED_EVENTS = 21
C_PRED_TOP1 = 22
C_PRED_RECALL = 23
C_CONF_MAX_SUM = 24
C_ABOVE_L2 = 25
C_ABOVE_L3 = 26
C_PRESSURE_SUM = 27
C_STALL_MS = 28
C_COMPUTE_MS = 29
C_PREFETCH_L2 = 30
C_PREFETCH_L3 = 31
C_PROMOTED = 32
C_L3_BLOCKED = 33
C_BUDGET_DROPPED = 34
C_PREFETCH_OVERTAKEN = 35  # a queued prefetch loaded on demand ahead of the queue (not started when its layer ran)
NUM_COUNTERS = 36

# ---- controls vector indices -----------------------------------------------------------------------------------
U_L2_THRESHOLD = 0
U_L3_THRESHOLD = 1
U_LOOKAHEAD = 2
U_BUDGET = 3
U_L2_SHARE = 4
U_W_RECENCY = 5
U_W_FREQUENCY = 6
U_W_CONFIDENCE = 7
U_OVERTAKE = 8
U_PRESSURE_LIMIT = 9
NUM_CONTROLS = 10

# ---- integer configuration indices -----------------------------------------------------------------------------
I_LAYERS = 0
I_EXPERTS = 1
I_TOPK = 2
I_GLOBAL = 3
I_SEED_TIMING = 4
I_PREDICTOR = 5
I_TOTAL_SLOTS = 6
I_CALIBRATE = 7
I_EVICTION = 8  # EV_* below
I_FLAT = 9  # 1: one tier (L2 = L3 = 0 slots): prefetches are admitted into L1 itself
I_LAYER_CAPS = 10  # 1: a one-tier per-layer cache whose slots differ by layer (EvictionState.layer_caps)
I_PER_EXPERT = 11  # 1: each expert computes when its own copy lands (timing.per_expert_finish_ms); 0: fused
I_HOST_POLL = 12  # 1: a queued prefetch reaches the link at the host's next poll (_handoff); 0: when the link frees
NUM_ICONF = 13

# ---- eviction rules (the score whose lowest value is evicted) --------------------------------------------------
EV_WEIGHTED = 0  # w_recency / (1 + age) + w_frequency * uses / (uses + 1) + w_confidence * confidence
EV_LRU = 1  # least recently used
EV_BELADY = 2  # the key whose next use is farthest (reads the future: a bound, not a policy)
EV_CUSTOM = 3  # a plug-in's rule: plugins.py compiles a private copy of this module that calls it
# the policy zoo (docs/policies.md); ties among these go to the least recently used key, then the lower key
EV_LFU = 4  # fewest uses since admission, each use decayed by F_DECAY per step
EV_LFRU = 5  # uses since admission divided by (1 + steps since the last use): frequency and recency combined
EV_LEAST_STALE = 6  # the key whose layer runs again farthest away in layer order (the layer just run first)
EV_MRS = 7  # lowest exponentially averaged routing score (F_MRS_ALPHA per step), kept across evictions
EV_STATIC = 8  # lowest fitted frequency (EvictionState.k_static): a static hot set, preloaded at the first step
EV_FIFO = 9  # first admitted, first evicted
NEVER = 1 << 62  # next use of a key that is never needed again

# ---- confidence calibration: raw scores are binned; a bin answers its observed hit frequency -------------------
NUM_CAL_BINS = 20
CAL_PRIOR = 4.0  # pseudo-observations at the bin's midpoint: an unvisited bin answers the raw score
CAL_LANES = 4  # the binning counts into this many interleaved histograms (see _bin_scores)

# ---- float configuration indices -------------------------------------------------------------------------------
F_TRANSFER_MS = 0
F_LAYER_OVERHEAD_MS = 1
F_DECAY = 2
F_ORACLE_ACC = 3
F_SEED_H2D_1 = 4  # the seed table, NUM_SEED values in timing.SEED_* order
F_MRS_ALPHA = F_SEED_H2D_1 + NUM_SEED  # EV_MRS: weight of the previous score per step
F_HOST_MS = F_MRS_ALPHA + 1  # the host's per-layer decision time (profile) plus the policy's own
F_LAUNCH_MS = F_HOST_MS + 1  # the host's time to launch one expert (profile; 0: launches are free)
F_COPY_ISSUE_MS = F_LAUNCH_MS + 1  # the host's time to issue one copy (profile; 0: issuing is free)
NUM_FCONF = F_COPY_ISSUE_MS + 1

# ---- link scalars ----------------------------------------------------------------------------------------------
L_BUSY_UNTIL = 0
L_NOW = 1
# the host's busy spans around ``L_NOW`` in which it cannot hand a queued prefetch to the link (see _handoff):
L_LAUNCH_FROM = 2  # the last layer's expert launches, from its decision ...
L_LAUNCH_TO = 3  # ... to the last launch
L_DECIDE_FROM = 4  # the current layer's decision (router sync, bookkeeping), until L_NOW
L_ISSUE_MS = 5  # host-poll: the host's time to issue a copy, so a handed-over prefetch starts this much later
NUM_LINK = 6

# ---- predictor kinds (predictors.PREDICTORS) -------------------------------------------------------------------
P_NOISY_ORACLE = 0
P_POPULARITY = 1
P_PREVIOUS_TOKEN = 2
P_CROSS_LAYER = 3
P_PERFECT = 4
P_NONE = 5  # no predictor: nothing is predicted or prefetched
P_EXTERNAL = 6  # confidences computed outside the kernel, one array per window (plugins.Predictor)

# ---- the kernel's arguments, by concern (shapes: L layers, E experts, S steps, W tokens per step, P pools) -------
#: per key (L*E): tier (0 = not on the GPU, else 1-3), slot position, transfer state (ST_*), arrival time (ms),
#: last use (steps), uses, last confidence, prefetched-and-unused flag, pinned event; per pool: tier slots
#: ``mem`` (P, 3, slots) and counts ``cnt`` (P, 3); per key, ``uses / (uses + 1)`` ``k_ufrac`` (the weighted rule's
#: frequency term, kept with the count: it saves a division per key scanned for a victim)
TierState = namedtuple(
    "TierState", "k_tier k_pos k_state k_arrival k_last k_uses k_conf k_prefetched k_pin mem cnt k_ufrac"
)
#: the host-to-GPU link: [busy until, now] (ms), the prefetch queue (ring of keys and issue times, head/tail)
#: and each queued key's queue slot
LinkState = namedtuple("LinkState", "link q_key q_issue qht k_qpos")
#: the built-in predictors' online statistics: decayed popularity (L, E) and its weights (L,), reuse (L,),
#: co-occurrence counts (D, L, E, E) / (D, L, E), confidence calibration bins and pending predictions
PredictionState = namedtuple(
    "PredictionState",
    "pop_cnt pop_obs pop_weight reuse_hit reuse_tot pair src cal_hits cal_count pend_bin pend_hist pend_target",
)
#: what the eviction rules read besides the tiers: Belady's view of the future (each key's uses in replay order,
#: CSR: start (L*E+1,), events, and a cursor); per key (L*E): a decayed use count or score ``k_freq`` and the clock
#: it was last brought up to date ``k_ftime`` (EV_LFU, EV_MRS), the admission order ``k_ins`` (EV_FIFO) with its
#: counter ``ins_count`` (1,), the fitted frequency ``k_static`` (EV_STATIC); the routing weight of each token's
#: choices ``route_w`` (T, L, K) (EV_MRS, else empty); the slots of each layer at each step ``layer_caps`` (S, L)
#: (I_LAYER_CAPS, else empty)
EvictionState = namedtuple(
    "EvictionState",
    "nu_start nu_events nu_cursor k_freq k_ftime k_ins ins_count k_static route_w layer_caps",
)
KernelState = namedtuple("KernelState", "tiers link prediction eviction")
#: the replay plan (sim.schedule.Schedule) and the trace's routing (T, L, K); ctab: compute ms by token count
ScheduleArrays = namedtuple(
    "ScheduleArrays", "step_tokens step_ntokens prev_token step_of_token tier_caps link_share kv_fraction experts ctab"
)
#: integer settings (I_*), float settings (F_*), the random seed of the noisy oracle
KernelConfig = namedtuple("KernelConfig", "iconf fconf rng_seed")
#: accumulated counters (C_*), each step's latency (S,), and the optional decision log: ``log`` (N, LOG_COLUMNS)
#: int32 rows of LOG_* events in the order they happen, ``log_pos`` [rows written, rows that did not fit]. An
#: empty ``log`` (the default) turns logging off: the replay then writes nothing and checks one flag per event.
KernelOutput = namedtuple("KernelOutput", "counters step_latency_ms log log_pos")
KernelOutput.__new__.__defaults__ = (np.zeros((0, 6), dtype=np.int32), np.zeros(2, dtype=np.int64))

# ---- decision-log events (KernelOutput.log rows: kind, step, layer, expert, tokens, source) --------------------
LOG_COLUMNS = 6
LOG_NEED = 1  # an expert the step needs at this layer: tokens served, source (LOG_SRC_*); after the layer's evictions
LOG_PREFETCH = 2  # a prefetch issued (layer, expert = its target), after the evictions it caused
LOG_EVICT = 3  # a key left the GPU (layer, expert), at the event that shed it
LOG_SRC_RESIDENT = 0  # on the GPU and used before (or preloaded)
LOG_SRC_DEMAND = 1  # loaded on demand at this layer
LOG_SRC_PREFETCHED = 2  # brought by a prefetch and not used since (landed, in flight, or still queued)

#: pins hold the event a key is protected for: NO_EVENT protects it for none; passing ANY_KEY as the event to a
#: victim search matches no pin, so every key is a candidate
NO_EVENT = -10
ANY_KEY = -2

ST_NONE = 0
ST_READY = 1  # transfer committed: arrival time known (maybe in the future)
ST_QUEUED = 2  # prefetch waiting in the link queue, not started


@njit(cache=True, inline="always", error_model="numpy")
def _mix64(x):
    # splitmix64 finaliser: a counter-based RNG that touches no global state
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always", error_model="numpy")
def _uniform(seed, counter):
    x = _mix64(np.uint64(seed) + np.uint64(counter) * np.uint64(0x9E3779B97F4A7C15))
    return (x >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always", error_model="numpy")
def _next_use(key, nu_start, nu_events, nu_cursor):
    """The event at which ``key`` is needed next (``NEVER`` if not again); only kept for Belady eviction."""
    c = nu_cursor[key]
    if c < nu_start[key + 1]:
        return nu_events[c]
    return NEVER


@njit(cache=True, error_model="numpy")
def _zoo_score(key, mode, clock, k_last, k_uses, k_freq, k_ftime, k_ins, k_static, k_tier, E, decay):
    """The eviction score of a resident key under the zoo's rules (EV_LFU and above; docs/policies.md): the
    lowest score is evicted first (ties: the least recently used key, then the lower key). Not inlined, so the
    built-in rules' loop stays as compact as it was."""
    if mode == EV_LFU or mode == EV_MRS:
        # lazily decayed: the stored value was brought up to date at clock k_ftime
        return k_freq[key] * decay ** (clock - k_ftime[key])
    if mode == EV_LFRU:
        return k_uses[key] / (1.0 + (clock - k_last[key]))
    if mode == EV_LEAST_STALE:
        # layers run in order, so a key of layer j is next wanted (j - current) mod L layers from now; the
        # layer that just ran (distance L) is the stalest and goes first
        L = k_tier.shape[0] // E
        cur = int(np.floor(clock * L + 0.5)) % L
        dist = (key // E - cur) % L
        if dist == 0:
            dist = L
        return -float(dist)
    if mode == EV_STATIC:
        return k_static[key]
    # EV_FIFO
    return float(k_ins[key])


@njit(cache=True, inline="always", error_model="numpy")
def _log_row(log, log_pos, kind, s, l, e, tokens, source):
    i = log_pos[0]
    if i >= log.shape[0]:
        log_pos[1] += 1  # the caller sized the log too small: counted, reported by the simulator
        return
    log[i, 0] = kind
    log[i, 1] = s
    log[i, 2] = l
    log[i, 3] = e
    log[i, 4] = tokens
    log[i, 5] = source
    log_pos[0] = i + 1


@njit(cache=True, error_model="numpy")
def _log_snapshot(pool, mem, cnt, scratch):
    """The pool's keys before a _make_room call (decision logging only)."""
    n = 0
    for t in range(3):
        for i in range(cnt[pool, t]):
            scratch[n] = mem[pool, t, i]
            n += 1
    return n


@njit(cache=True, error_model="numpy")
def _log_evictions(scratch, n, k_tier, log, log_pos, s, E):
    """Log the keys of the snapshot that have left the GPU since (decision logging only)."""
    for i in range(n):
        key = scratch[i]
        if k_tier[key] == 0:
            _log_row(log, log_pos, LOG_EVICT, s, key // E, key % E, 0, 0)


@njit(cache=True, inline="always", error_model="numpy")
def _tier_add(pool, tier, key, mem, cnt, k_tier, k_pos):
    i = cnt[pool, tier - 1]
    mem[pool, tier - 1, i] = key
    k_pos[key] = i
    cnt[pool, tier - 1] = i + 1
    k_tier[key] = tier


@njit(cache=True, inline="always", error_model="numpy")
def _tier_remove(pool, key, mem, cnt, k_tier, k_pos):
    t = k_tier[key] - 1
    i = k_pos[key]
    last_i = cnt[pool, t] - 1
    last = mem[pool, t, last_i]
    mem[pool, t, i] = last
    k_pos[last] = i
    cnt[pool, t] = last_i
    k_tier[key] = 0


@njit(cache=True, inline="always", error_model="numpy")
def _evict(pool, key, mem, cnt, k_tier, k_pos, k_state, k_prefetched, k_uses, k_ufrac, k_qpos, q_key, counters):
    _tier_remove(pool, key, mem, cnt, k_tier, k_pos)
    if k_state[key] == ST_QUEUED:
        q_key[k_qpos[key]] = -1
        counters[C_PREFETCH_CANCELLED] += 1
    elif k_prefetched[key] == 1:
        counters[C_WASTED_LOADS] += 1
    k_state[key] = ST_NONE
    k_prefetched[key] = 0
    k_uses[key] = 0
    k_ufrac[key] = 0.0


@njit(cache=True, inline="always", error_model="numpy")
def _pick_victim(pool, tier, event, mode, clock, u, mem, cnt, k_last, k_uses, k_ufrac, k_conf, k_pin, ev, k_tier, E,
                 decay):
    """The unpinned key of ``tier`` with the lowest eviction score, or -1. Ties: the lower key; for the zoo's
    rules (EV_LFU and above), the least recently used key first, then the lower key."""
    victim = -1
    best = 1e300
    n = cnt[pool, tier - 1]
    # one loop per rule, the rule chosen outside it: a branch on the rule inside the loop kept the compiler
    # from optimising the common weighted score (about 1.5x slower replays)
    if mode == EV_WEIGHTED:
        w_recency, w_frequency, w_confidence = u[U_W_RECENCY], u[U_W_FREQUENCY], u[U_W_CONFIDENCE]
        for i in range(n):
            key = mem[pool, tier - 1, i]
            if k_pin[key] == event:
                continue
            age = clock - k_last[key]
            s = w_recency / (1.0 + age) + w_frequency * k_ufrac[key] + w_confidence * k_conf[key]
            if victim < 0 or s < best or (s == best and key < victim):
                best = s
                victim = key
        return victim
    if mode == EV_LRU:
        for i in range(n):
            key = mem[pool, tier - 1, i]
            if k_pin[key] == event:
                continue
            s = k_last[key]
            if victim < 0 or s < best or (s == best and key < victim):
                best = s
                victim = key
        return victim
    if mode == EV_BELADY:
        nu_start, nu_events, nu_cursor = ev.nu_start, ev.nu_events, ev.nu_cursor
        for i in range(n):
            key = mem[pool, tier - 1, i]
            if k_pin[key] == event:
                continue
            s = -float(_next_use(key, nu_start, nu_events, nu_cursor))
            if victim < 0 or s < best or (s == best and key < victim):
                best = s
                victim = key
        return victim
    if mode == EV_CUSTOM:
        for i in range(n):
            key = mem[pool, tier - 1, i]
            if k_pin[key] == event:
                continue
            # plugins.py compiles a private copy of this module with the plug-in's call on the next line
            s = 0.0  # CUSTOM_SCORE_CALL
            if victim < 0 or s < best or (s == best and key < victim):
                best = s
                victim = key
        return victim
    return _pick_zoo_victim(pool, tier, event, mode, clock, mem, cnt, k_last, k_uses, k_pin, ev.k_freq, ev.k_ftime,
                            ev.k_ins, ev.k_static, k_tier, E, decay)


@njit(cache=True, inline="always", error_model="numpy")
def _lowest_weighted(pool, tier, m, event, clock, u, mem, cnt, k_last, k_ufrac, k_conf, k_pin, vkey, vscore):
    """The (up to) ``m`` unpinned keys of ``tier`` with the lowest weighted eviction score, lowest first (ties:
    the lower key), into ``vkey``; returns how many. The order in which repeated :func:`_pick_victim` calls
    would take them, with each score computed once, by the same expression."""
    w_recency, w_frequency, w_confidence = u[U_W_RECENCY], u[U_W_FREQUENCY], u[U_W_CONFIDENCE]
    nv = 0
    for i in range(cnt[pool, tier - 1]):
        key = mem[pool, tier - 1, i]
        if k_pin[key] == event:
            continue
        age = clock - k_last[key]
        s = w_recency / (1.0 + age) + w_frequency * k_ufrac[key] + w_confidence * k_conf[key]
        if nv == m and not (s < vscore[m - 1] or (s == vscore[m - 1] and key < vkey[m - 1])):
            continue
        pos = nv if nv < m else m - 1
        while pos > 0 and (s < vscore[pos - 1] or (s == vscore[pos - 1] and key < vkey[pos - 1])):
            vscore[pos] = vscore[pos - 1]
            vkey[pos] = vkey[pos - 1]
            pos -= 1
        vscore[pos] = s
        vkey[pos] = key
        if nv < m:
            nv += 1
    return nv


@njit(cache=True, error_model="numpy")
def _pick_zoo_victim(pool, tier, event, mode, clock, mem, cnt, k_last, k_uses, k_pin, k_freq, k_ftime, k_ins,
                     k_static, k_tier, E, decay):
    """_pick_victim for the zoo's rules: lowest score, then least recently used, then lower key."""
    victim = -1
    best = 1e300
    for i in range(cnt[pool, tier - 1]):
        key = mem[pool, tier - 1, i]
        if k_pin[key] == event:
            continue
        s = _zoo_score(key, mode, clock, k_last, k_uses, k_freq, k_ftime, k_ins, k_static, k_tier, E, decay)
        if victim < 0 or s < best or (s == best and (k_last[key] < k_last[victim]
                                                     or (k_last[key] == k_last[victim] and key < victim))):
            best = s
            victim = key
    return victim


@njit(cache=True, inline="always", error_model="numpy")
def _make_room(pool, tier, caps, event, mode, clock, u, mem, cnt, k_tier, k_pos, k_state, k_prefetched, k_uses,
               k_ufrac, k_last, k_conf, k_pin, k_qpos, q_key, ev, counters, E, decay, vkey, vscore):
    """Shed entries from ``tier`` down until every tier and the pool as a whole fit their slots.

    An over-full tier demotes its lowest-score unpinned entry to the next tier that has slots (L1 -> L2 -> L3,
    skipping empty tiers); the victims of the last tier with slots leave the GPU. Keys pinned for this event
    (in use, or just predicted) are never shed: if they alone overfill a tier, it overflows until the next
    event, and the pool's other tiers give up slots instead, so a pool never holds more than its total slots
    beyond what the event pins.

    ``vkey``, ``vscore``: scratch of a pool's slots (3 x the widest tier).
    """
    for t in range(tier, 4):
        dest = 0
        for t2 in range(t + 1, 4):
            if caps[t2 - 1] > 0:
                dest = t2
                break
        if mode == EV_WEIGHTED and cnt[pool, t - 1] - caps[t - 1] > 1:
            # several victims from one tier: while they leave, no other key's score changes and no key joins
            # the tier, so they are its lowest-scored unpinned keys in order; one scan finds them all (the
            # loop below takes over if too few keys are unpinned)
            nv = _lowest_weighted(pool, t, cnt[pool, t - 1] - caps[t - 1], event, clock, u, mem, cnt, k_last,
                                  k_ufrac, k_conf, k_pin, vkey, vscore)
            for j in range(nv):
                victim = vkey[j]
                if dest > 0:
                    _tier_remove(pool, victim, mem, cnt, k_tier, k_pos)
                    _tier_add(pool, dest, victim, mem, cnt, k_tier, k_pos)
                else:
                    _evict(pool, victim, mem, cnt, k_tier, k_pos, k_state, k_prefetched, k_uses, k_ufrac, k_qpos,
                           q_key, counters)
        while cnt[pool, t - 1] > caps[t - 1]:
            victim = _pick_victim(pool, t, event, mode, clock, u, mem, cnt, k_last, k_uses, k_ufrac, k_conf, k_pin, ev,
                                  k_tier, E, decay)
            if victim < 0 and t >= 2 and dest > 0:
                # only protected predictions are left: one moves down a tier (it stays on the GPU)
                victim = _pick_victim(pool, t, ANY_KEY, mode, clock, u, mem, cnt, k_last, k_uses, k_ufrac, k_conf,
                                      k_pin, ev, k_tier, E, decay)
            if victim < 0:
                break  # everything left is in use by this event: the tier overflows until the next event
            if dest > 0:
                _tier_remove(pool, victim, mem, cnt, k_tier, k_pos)
                _tier_add(pool, dest, victim, mem, cnt, k_tier, k_pos)
            else:
                _evict(pool, victim, mem, cnt, k_tier, k_pos, k_state, k_prefetched, k_uses, k_ufrac, k_qpos, q_key,
                       counters)
    total_caps = caps[0] + caps[1] + caps[2]
    while cnt[pool, 0] + cnt[pool, 1] + cnt[pool, 2] > total_caps:
        victim = -1
        for t in range(3, 0, -1):
            victim = _pick_victim(pool, t, event, mode, clock, u, mem, cnt, k_last, k_uses, k_ufrac, k_conf, k_pin, ev,
                                  k_tier, E, decay)
            if victim >= 0:
                break
        if victim < 0:
            break
        _evict(pool, victim, mem, cnt, k_tier, k_pos, k_state, k_prefetched, k_uses, k_ufrac, k_qpos, q_key,
               counters)


@njit(cache=True, inline="always", error_model="numpy")
def _has_room(pool, target, caps, cnt, event, mem, k_pin):
    """Whether a key can join ``target`` without the pool holding more than its slots: a free slot in a tier
    at or below ``target`` while the pool is under its total, or an unpinned key that can make way."""
    free = 0
    for t in range(target, 4):
        if caps[t - 1] > cnt[pool, t - 1]:
            free += caps[t - 1] - cnt[pool, t - 1]
    if free > 0 and cnt[pool, 0] + cnt[pool, 1] + cnt[pool, 2] < caps[0] + caps[1] + caps[2]:
        return True
    first = target if free == 0 else 1
    for t in range(first, 4):
        for i in range(cnt[pool, t - 1]):
            if k_pin[mem[pool, t - 1, i]] != event:
                return True
    return False


@njit(cache=True, inline="always", error_model="numpy")
def _farthest_next_use(pool, event, mem, cnt, k_pin, nu_start, nu_events, nu_cursor):
    """The farthest next use among the pool's unpinned keys (-1 if every key is pinned)."""
    far = -1
    for t in range(3):
        for i in range(cnt[pool, t]):
            key = mem[pool, t, i]
            if k_pin[key] == event:
                continue
            nu = _next_use(key, nu_start, nu_events, nu_cursor)
            if nu > far:
                far = nu
    return far


@njit(cache=True, inline="always", error_model="numpy")
def _handoff(t, link):
    """When a prefetch the link could start at ``t`` is handed to it: an engine's host hands a queued prefetch over
    only when it polls and sees the link idle, not while it launches the last layer's experts (until
    ``L_LAUNCH_TO``). One the link could have started before the launches began was held back by the last decision
    and goes when that decision's copies are issued (``L_LAUNCH_FROM``). With free host work the spans are empty."""
    if t < link[L_LAUNCH_FROM]:
        return link[L_LAUNCH_FROM]
    if t > link[L_LAUNCH_FROM] and t < link[L_LAUNCH_TO]:
        return link[L_LAUNCH_TO]
    return t


@njit(cache=True, inline="always", error_model="numpy")
def _start_head(slot, key, start, link, q_key, qht, k_state, k_arrival, dur, counters):
    """Put the prefetch at the head of the link queue (``key``, in queue slot ``slot``) on the link, handed over at
    ``start`` (under host-poll the host then spends ``L_ISSUE_MS`` issuing it)."""
    end = start + link[L_ISSUE_MS] + dur
    link[L_BUSY_UNTIL] = end
    k_state[key] = ST_READY
    k_arrival[key] = end
    counters[C_PREFETCH_LOADS] += 1
    counters[C_LINK_BUSY_MS] += dur
    q_key[slot] = -1
    qht[0] += 1


@njit(cache=True, inline="always", error_model="numpy")
def _commit_head(link, q_key, q_issue, qht, k_state, k_arrival, dur, counters):
    """Start the prefetch at the head of the link queue now, whenever the link reaches it (cancelled entries are
    skipped)."""
    Q = q_key.shape[0]
    while qht[0] < qht[1]:
        slot = qht[0] % Q
        key = q_key[slot]
        if key < 0:
            qht[0] += 1
            continue
        start = _handoff(max(link[L_BUSY_UNTIL], q_issue[slot]), link)
        if start < link[L_NOW] and start >= link[L_DECIDE_FROM]:
            start = link[L_NOW]  # a commit forced while the host decides: it goes once the decision is made
        _start_head(slot, key, start, link, q_key, qht, k_state, k_arrival, dur, counters)
        return


@njit(cache=True, inline="always", error_model="numpy")
def _advance_link(now, link, q_key, q_issue, qht, k_state, k_arrival, dur, counters):
    """Start every queued prefetch that the link reaches by time ``now`` (FIFO among prefetches)."""
    Q = q_key.shape[0]
    while qht[0] < qht[1]:
        slot = qht[0] % Q
        key = q_key[slot]
        if key < 0:
            qht[0] += 1
            continue
        start = _handoff(max(link[L_BUSY_UNTIL], q_issue[slot]), link)
        if start > now or start >= link[L_DECIDE_FROM] and start < now:
            return  # not reached yet, or reached while the host decides: after this layer's demand loads
        _start_head(slot, key, start, link, q_key, qht, k_state, k_arrival, dur, counters)


#: per-call scratch arrays of the replay loop (E experts each, except cal_table, caps and n_admitted)
Scratch = namedtuple(
    "Scratch",
    "mark ntok needed conf prod truth pmark x_arrival x_compute x_order cand top cal_table caps n_admitted route_sum "
    "need_src snap cal_hist sel bin_val bin_cnt bin_id bin_grp grp_next vkey vscore",
)


@njit(cache=True, error_model="numpy")
def run_steps(s0, s1, sched, cfg, u, state, ext_conf, out):
    """Replay steps [s0, s1) of ``sched`` (:class:`ScheduleArrays`) under settings ``cfg`` (:class:`KernelConfig`)
    and controls ``u`` (``U_*``), updating ``state`` (:class:`KernelState`) and accumulating into ``out``
    (:class:`KernelOutput`). ``ext_conf`` ((s1 - s0) * L, E): the confidences of an external predictor for
    event ``(s, l)`` at row ``(s - s0) * L + l`` (ignored by the built-in predictors)."""
    E = cfg.iconf[I_EXPERTS]
    scratch = Scratch(
        np.full(E, -1, dtype=np.int64), np.zeros(E, dtype=np.int64), np.empty(E, dtype=np.int64),
        np.empty(E, dtype=np.float64), np.empty(E, dtype=np.float64), np.zeros(E, dtype=np.int64),
        np.full(E, -1, dtype=np.int64), np.empty(E, dtype=np.float64), np.empty(E, dtype=np.float64),
        np.empty(E, dtype=np.int64), np.empty(E, dtype=np.int64), np.empty(E, dtype=np.int64),
        np.empty(NUM_CAL_BINS, dtype=np.float64), np.empty(3, dtype=np.int64), np.zeros(4, dtype=np.int64),
        np.zeros(E, dtype=np.float64),
        # the decision log's: each need's source, and a snapshot of a pool's keys around an eviction
        np.zeros(E, dtype=np.int64),
        np.empty(3 * state.tiers.mem.shape[2] + 1 if out.log.shape[0] > 0 else 0, dtype=np.int64),
        # the calibrated selection's: per-bin counts (CAL_LANES interleaved copies), the experts that can enter a
        # list, and the occupied bins' values and counts
        np.zeros(CAL_LANES * NUM_CAL_BINS, dtype=np.int64), np.empty(E, dtype=np.int64),
        np.empty(NUM_CAL_BINS, dtype=np.float64), np.empty(NUM_CAL_BINS, dtype=np.int64),
        # ... and their bins, each bin's value group, and each group's next place in the order
        np.empty(NUM_CAL_BINS, dtype=np.int64), np.empty(NUM_CAL_BINS, dtype=np.int64),
        np.empty(NUM_CAL_BINS, dtype=np.int64),
        # the victim scan's: a tier's lowest-scored keys and their scores (_make_room)
        np.empty(3 * state.tiers.mem.shape[2], dtype=np.int64), np.empty(3 * state.tiers.mem.shape[2]),
    )
    _replay_steps(s0, s1, sched, cfg, u, state, ext_conf, out, scratch)


# _nrt=False: the replay loop allocates nothing (run_steps hands it its scratch arrays), so it needs no reference
# counting. With it on, numba wraps every array passed to an inlined helper in atomic increments and decrements
# of the array's reference count that its pruning pass cannot remove inside loops: a quarter of the replay's time
# went to those atomic operations alone, and the calls kept LLVM from keeping array pointers in registers.
@njit(cache=True, error_model="numpy", _nrt=False)
def _replay_steps(s0, s1, sched, cfg, u, state, ext_conf, out, scratch):
    """The body of :func:`run_steps`, with its scratch arrays (:class:`Scratch`) given."""
    # named views of the grouped state: the body below reads plain arrays
    step_tokens, step_ntokens, prev_token, step_of_token = sched.step_tokens, sched.step_ntokens, \
        sched.prev_token, sched.step_of_token
    tier_caps, link_share, kv_fraction, experts, ctab = sched.tier_caps, sched.link_share, sched.kv_fraction, \
        sched.experts, sched.ctab
    iconf, fconf, rng_seed = cfg.iconf, cfg.fconf, cfg.rng_seed
    tiers, lk, pr, ev = state.tiers, state.link, state.prediction, state.eviction
    k_tier, k_pos, k_state, k_arrival, k_last = tiers.k_tier, tiers.k_pos, tiers.k_state, tiers.k_arrival, \
        tiers.k_last
    k_uses, k_conf, k_prefetched, k_pin, mem, cnt = tiers.k_uses, tiers.k_conf, tiers.k_prefetched, tiers.k_pin, \
        tiers.mem, tiers.cnt
    k_ufrac = tiers.k_ufrac
    link, q_key, q_issue, qht, k_qpos = lk.link, lk.q_key, lk.q_issue, lk.qht, lk.k_qpos
    pop_cnt, pop_obs, pop_weight, reuse_hit, reuse_tot = pr.pop_cnt, pr.pop_obs, pr.pop_weight, pr.reuse_hit, \
        pr.reuse_tot
    pair, src, cal_hits, cal_count = pr.pair, pr.src, pr.cal_hits, pr.cal_count
    pend_bin, pend_hist, pend_target = pr.pend_bin, pr.pend_hist, pr.pend_target
    nu_start, nu_events, nu_cursor = ev.nu_start, ev.nu_events, ev.nu_cursor
    counters, step_latency_ms = out.counters, out.step_latency_ms
    log, log_pos = out.log, out.log_pos
    log_on = log.shape[0] > 0
    L = iconf[I_LAYERS]
    E = iconf[I_EXPERTS]
    K = iconf[I_TOPK]
    is_global = iconf[I_GLOBAL] == 1
    seed_timing = iconf[I_SEED_TIMING] == 1
    predictor = iconf[I_PREDICTOR]
    calibrate = (iconf[I_CALIBRATE] == 1 and predictor != P_PERFECT and predictor != P_NOISY_ORACLE
                 and predictor != P_NONE)
    mode = iconf[I_EVICTION]
    flat = iconf[I_FLAT] == 1
    layer_caps_on = iconf[I_LAYER_CAPS] == 1
    layer_caps = ev.layer_caps
    seed_tab = fconf[F_SEED_H2D_1:F_SEED_H2D_1 + NUM_SEED]
    total_slots = iconf[I_TOTAL_SLOTS]
    base_transfer_ms = fconf[F_TRANSFER_MS]
    layer_overhead_ms = fconf[F_LAYER_OVERHEAD_MS]
    decay = fconf[F_DECAY]
    oracle_acc = fconf[F_ORACLE_ACC]
    # the per-step decay of the zoo's lazily decayed scores: LFU shares the statistics' decay, MRS has its own
    ev_decay = fconf[F_MRS_ALPHA] if mode == EV_MRS else decay
    k_freq, k_ftime, k_ins, ins_count, route_w = ev.k_freq, ev.k_ftime, ev.k_ins, ev.ins_count, ev.route_w
    l2_thr = u[U_L2_THRESHOLD]
    l3_thr = u[U_L3_THRESHOLD]
    lookahead = int(u[U_LOOKAHEAD])
    budget = int(u[U_BUDGET])
    overtake = u[U_OVERTAKE] > 0.5
    pressure_limit = u[U_PRESSURE_LIMIT]
    if budget > 0:
        l2_budget = int(np.ceil(budget * u[U_L2_SHARE]))
        l3_budget = budget - l2_budget
    else:
        l2_budget = 1 << 30
        l3_budget = 1 << 30
    S = step_tokens.shape[0]

    mark, ntok, needed, conf, prod, truth = scratch.mark, scratch.ntok, scratch.needed, scratch.conf, \
        scratch.prod, scratch.truth
    pmark = scratch.pmark  # experts of the target layer pinned by this event's prediction pass
    per_expert = iconf[I_PER_EXPERT] == 1
    host_poll = iconf[I_HOST_POLL] == 1 and not seed_timing
    host_ms = fconf[F_HOST_MS]
    launch_ms = fconf[F_LAUNCH_MS]
    issue_ms = fconf[F_COPY_ISSUE_MS]
    if host_poll:
        link[L_ISSUE_MS] = issue_ms
    else:
        link[L_DECIDE_FROM] = np.inf  # no host spans: _handoff and the decision check change nothing
    x_arrival, x_compute, x_order = scratch.x_arrival, scratch.x_compute, scratch.x_order
    cand, top, cal_table, caps, n_admitted, route_sum = scratch.cand, scratch.top, scratch.cal_table, scratch.caps, \
        scratch.n_admitted, scratch.route_sum
    need_src, snap = scratch.need_src, scratch.snap  # the decision log's (empty unless it is on)
    cal_hist, sel, bin_val, bin_cnt = scratch.cal_hist, scratch.sel, scratch.bin_val, scratch.bin_cnt
    bin_id, bin_grp, grp_next = scratch.bin_id, scratch.bin_grp, scratch.grp_next
    vkey, vscore = scratch.vkey, scratch.vscore

    for s in range(s0, s1):
        nt = step_ntokens[s]
        caps[0] = tier_caps[s, 0]
        caps[1] = tier_caps[s, 1]
        caps[2] = tier_caps[s, 2]
        share = link_share[s]
        dur = base_transfer_ms / share
        if s == 0 and mode == EV_STATIC:
            _preload_static(caps, layer_caps_on, layer_caps, E, ev.k_static, mem, cnt, k_tier, k_pos, k_state,
                            k_arrival, is_global)
        if s > 0 and (tier_caps[s, 0] < tier_caps[s - 1, 0] or tier_caps[s, 1] < tier_caps[s - 1, 1]
                      or tier_caps[s, 2] < tier_caps[s - 1, 2]):
            # the KV cache grew: shrink every pool's tiers now
            clock = float(s)
            for pool in range(cnt.shape[0]):
                if layer_caps_on:
                    caps[0] = layer_caps[s, pool]
                if log_on:
                    nsnap = _log_snapshot(pool, mem, cnt, snap)
                _make_room(pool, 1, caps, -1, mode, clock, u, mem, cnt, k_tier, k_pos, k_state, k_prefetched,
                           k_uses, k_ufrac, k_last, k_conf, k_pin, k_qpos, q_key, ev, counters, E, ev_decay,
                           vkey, vscore)
                if log_on:
                    _log_evictions(snap, nsnap, k_tier, log, log_pos, s, E)
        latency = 0.0
        for l in range(L):
            event = s * L + l
            clock = event / L
            now = link[L_NOW]
            pool = 0 if is_global else l
            if layer_caps_on:
                caps[0] = layer_caps[s, l]  # this layer's share of the global budget (one tier)
            # ---- 1. the step's experts at this layer, deduplicated over the batch ----------------------------
            nneed = step_layer_experts(step_tokens, s, nt, experts, l, K, event, mark, ntok, needed)
            # ---- 2. what is already on the GPU ----------------------------------------------------------------
            if not seed_timing:
                _advance_link(now, link, q_key, q_issue, qht, k_state, k_arrival, dur, counters)
            covered = 0
            ready = now
            nmiss = 0
            nhit_l1 = 0
            n_copies = 0  # copies this layer's decision issues: the k-th starts no earlier than now + k x issue_ms
            for n in range(nneed):
                key = l * E + needed[n]
                tier = k_tier[key]
                if log_on:
                    need_src[n] = LOG_SRC_DEMAND if tier == 0 else (
                        LOG_SRC_PREFETCHED if k_prefetched[key] == 1 else LOG_SRC_RESIDENT)
                if tier > 0 and k_state[key] == ST_READY and (seed_timing or k_arrival[key] <= now):
                    covered += 1
                    if tier == 1:
                        counters[C_HIT_L1] += 1
                        nhit_l1 += 1
                    elif tier == 2:
                        counters[C_HIT_L2] += 1
                    else:
                        counters[C_HIT_L3] += 1
                    if k_prefetched[key] == 1:
                        counters[C_PREFETCH_USED] += 1
                        k_prefetched[key] = 0
                elif tier > 0:
                    # the prefetch has not landed yet: wait for it, or load it on demand ahead of the queue
                    counters[C_LATE] += 1
                    if k_prefetched[key] == 1:
                        counters[C_PREFETCH_USED] += 1
                        k_prefetched[key] = 0
                    if k_state[key] == ST_QUEUED:
                        if overtake:
                            q_key[k_qpos[key]] = -1
                            counters[C_PREFETCH_CANCELLED] += 1
                            counters[C_PREFETCH_OVERTAKEN] += 1
                            n_copies += 1
                            start = max(now + n_copies * issue_ms, link[L_BUSY_UNTIL])
                            link[L_BUSY_UNTIL] = start + dur
                            k_state[key] = ST_READY
                            k_arrival[key] = start + dur
                            counters[C_DEMAND_LOADS] += 1
                            counters[C_LINK_BUSY_MS] += dur
                        else:
                            while k_state[key] == ST_QUEUED:
                                _commit_head(link, q_key, q_issue, qht, k_state, k_arrival, dur, counters)
                    if k_arrival[key] > ready:
                        ready = k_arrival[key]
                else:
                    # a miss: demand load into L1
                    nmiss += 1
                    counters[C_MISS] += 1
                    counters[C_DEMAND_LOADS] += 1
                    if seed_timing:
                        k_arrival[key] = now
                    else:
                        if not overtake:
                            while qht[0] < qht[1]:
                                _commit_head(link, q_key, q_issue, qht, k_state, k_arrival, dur, counters)
                                if qht[0] >= qht[1]:
                                    break
                        n_copies += 1
                        start = max(now + n_copies * issue_ms, link[L_BUSY_UNTIL])
                        link[L_BUSY_UNTIL] = start + dur
                        k_arrival[key] = start + dur
                        counters[C_LINK_BUSY_MS] += dur
                        if start + dur > ready:
                            ready = start + dur
                    k_state[key] = ST_READY
                    _tier_add(pool, 1, key, mem, cnt, k_tier, k_pos)
                    if mode >= EV_LFU:
                        _admitted(key, mode, clock, k_freq, k_ftime, k_ins, ins_count)
            # ---- 3. the step's experts become L1 (in use), pinned for this event ------------------------------
            if mode == EV_MRS:
                # the routing score of each expert in this step: its tokens' gate weights, averaged over the step
                for n in range(nneed):
                    route_sum[needed[n]] = 0.0
                for b in range(nt):
                    t = step_tokens[s, b]
                    for k in range(K):
                        route_sum[experts[t, l, k]] += route_w[t, l, k] / nt
            for n in range(nneed):
                key = l * E + needed[n]
                k_pin[key] = event
                k_last[key] = clock
                k_uses[key] += 1
                k_ufrac[key] = k_uses[key] / (k_uses[key] + 1.0)
                if mode == EV_LFU:
                    k_freq[key] = k_freq[key] * ev_decay ** (clock - k_ftime[key]) + 1.0
                    k_ftime[key] = clock
                elif mode == EV_MRS:
                    k_freq[key] = (k_freq[key] * ev_decay ** (clock - k_ftime[key])
                                   + (1.0 - ev_decay) * route_sum[needed[n]])
                    k_ftime[key] = clock
                if mode == EV_BELADY:
                    nu_cursor[key] += 1  # this use is consumed: the key's next use is its following one
                if k_tier[key] != 1:
                    _tier_remove(pool, key, mem, cnt, k_tier, k_pos)
                    _tier_add(pool, 1, key, mem, cnt, k_tier, k_pos)
            if log_on:
                nsnap = _log_snapshot(pool, mem, cnt, snap)
            _make_room(pool, 1, caps, event, mode, clock, u, mem, cnt, k_tier, k_pos, k_state, k_prefetched,
                       k_uses, k_ufrac, k_last, k_conf, k_pin, k_qpos, q_key, ev, counters, E, ev_decay, vkey, vscore)
            if log_on:
                # the slots these evictions free are the ones this layer's demand loads fill
                _log_evictions(snap, nsnap, k_tier, log, log_pos, s, E)
                for n in range(nneed):
                    _log_row(log, log_pos, LOG_NEED, s, l, needed[n], ntok[needed[n]], need_src[n])
            # ---- 3b. the prediction that targeted this event meets its outcome: calibrate ----------------------
            if calibrate:
                slot = event % 3
                if pend_target[slot] == event:
                    # every expert's bin was counted when the prediction was made; the hits are the needed ones
                    for b in range(NUM_CAL_BINS):
                        cal_count[b] += pend_hist[slot, b]
                    for n in range(nneed):
                        cal_hits[pend_bin[slot, needed[n]]] += 1.0
                    pend_target[slot] = -1
            # ---- 4. coverage --------------------------------------------------------------------------------
            counters[C_STEP_LAYERS] += 1
            counters[C_REQUESTS] += nneed
            counters[C_EVENTS] += nt
            counters[C_COVERAGE_SUM] += covered / nneed
            if covered == nneed:
                counters[C_PERFECT] += 1
            elif covered == 0:
                counters[C_ZERO] += 1
            # ---- 5. predict the step `lookahead` layers ahead and prefetch ------------------------------------
            # the target: `lookahead` layers ahead in execution order (wrapping into the next step(s))
            st = s + (l + lookahead) // L
            lt = (l + lookahead) % L
            if st < S and predictor != P_NONE:
                if predictor == P_EXTERNAL:
                    row = (s - s0) * L + l
                    for e in range(E):
                        conf[e] = ext_conf[row, e]
                else:
                    _predict(st, s, l, lt, predictor, step_tokens, step_ntokens, prev_token, step_of_token,
                             experts, E, K, pop_cnt, pop_obs, reuse_hit, reuse_tot, pair, src, oracle_acc,
                             rng_seed, event, conf, prod, truth)
                if calibrate:
                    # keep each expert's score bin until the target runs; answer with the bin's hit frequency
                    for b in range(NUM_CAL_BINS):
                        cal_table[b] = (cal_hits[b] + CAL_PRIOR * (b + 0.5) / NUM_CAL_BINS) / (cal_count[b] + CAL_PRIOR)
                    target = st * L + lt
                    slot = target % 3
                    pend_target[slot] = target
                    _bin_scores(conf, E, slot, pend_bin, pend_hist, cal_hist)
                nst = step_ntokens[st]
                # accuracy against the truth (the simulator knows it; the predictor did not read it)
                ntruth = 0
                for b in range(nst):
                    t = step_tokens[st, b]
                    for k in range(K):
                        e = experts[t, lt, k]
                        if truth[e] != event + 1:
                            truth[e] = event + 1
                            ntruth += 1
                # The most confident expert (top-1), the |truth| most confident (recall), and the admission
                # candidates (confidence >= the L3 threshold); all ordered by confidence, ties to the lower
                # expert id.
                base_key = lt * E
                if calibrate:
                    # calibrated confidences take one value per bin: only the experts at or above the lower of
                    # the L3 threshold and the |truth|-th highest value can enter any list, and they come sorted
                    # (into cand): the top-1 is the first, the recall list the first |truth|, the admission
                    # candidates the prefix at or above the L3 threshold
                    nsel = _calibrated_candidates(conf, E, slot, pend_bin, pend_hist, cal_table, ntruth, l3_thr,
                                                  k_conf, base_key, sel, bin_val, bin_cnt, bin_id, bin_grp,
                                                  grp_next, cand)
                    best = cand[0]
                    ntop = ntruth if ntruth < nsel else nsel
                    ncand = 0
                    while ncand < nsel and conf[cand[ncand]] >= l3_thr:
                        ncand += 1
                else:
                    # one pass over every expert; the confidences of the current best and of the last of the top
                    # list are kept in registers: the compares are on every expert, the updates rare
                    for e in range(E):
                        k_conf[base_key + e] = conf[e]
                    best = 0
                    best_c = conf[0]
                    ntop = 0
                    top_last_c = 0.0  # conf[top[ntop - 1]], read only once the list holds ntruth experts
                    ncand = 0
                    for e in range(E):
                        c = conf[e]
                        if c > best_c:
                            best = e
                            best_c = c
                        if ntop < ntruth or c > top_last_c:
                            pos = ntop if ntop < ntruth else ntruth - 1
                            while pos > 0 and conf[top[pos - 1]] < c:
                                top[pos] = top[pos - 1]
                                pos -= 1
                            top[pos] = e
                            if ntop < ntruth:
                                ntop += 1
                            top_last_c = conf[top[ntop - 1]]
                        if c >= l3_thr:
                            pos = ncand
                            while pos > 0 and conf[cand[pos - 1]] < c:
                                cand[pos] = cand[pos - 1]
                                pos -= 1
                            cand[pos] = e
                            ncand += 1
                counters[C_PRED_EVENTS] += 1
                if truth[best] == event + 1:
                    counters[C_PRED_TOP1] += 1
                found = 0
                ranked = cand if calibrate else top  # calibrated, the recall list is cand's first ntop
                for r in range(ntop):
                    if truth[ranked[r]] == event + 1:
                        found += 1
                counters[C_PRED_RECALL] += found / ntruth
                counters[C_CONF_MAX_SUM] += conf[best]
                tpool = 0 if is_global else lt
                pressure = (kv_fraction[s] * total_slots + cnt[tpool, 0] + cnt[tpool, 1]) / total_slots
                if pressure > 1.0:
                    pressure = 1.0
                counters[C_PRESSURE_SUM] += pressure
                l3_open = pressure <= pressure_limit
                n_admitted[:] = 0
                n2 = 0
                n3 = 0
                for r in range(ncand):
                    e = cand[r]
                    c = conf[e]
                    key = lt * E + e
                    confident = c >= l2_thr
                    if confident:
                        counters[C_ABOVE_L2] += 1
                    counters[C_ABOVE_L3] += 1
                    tier = k_tier[key]
                    if tier > 0:
                        # already on the GPU (or on its way): protected from the rest of this prediction pass
                        k_pin[key] = event
                        pmark[e] = event
                    # which tier the prediction earns (L2: confident, L3: speculative), within its budget; a
                    # tier without slots (a small cache, or the KV cache took them) hands over to the next one
                    if confident:
                        if tier == 1 or tier == 2:
                            continue
                        if tier == 3 and caps[1] == 0:
                            continue  # nowhere better to promote it to
                        if n2 >= l2_budget:
                            counters[C_BUDGET_DROPPED] += 1
                            continue
                        target = 2 if caps[1] > 0 else 3
                    else:
                        if tier > 0:
                            continue
                        if not l3_open:
                            counters[C_L3_BLOCKED] += 1
                            continue
                        if n3 >= l3_budget:
                            counters[C_BUDGET_DROPPED] += 1
                            continue
                        target = 3
                    if caps[target - 1] == 0:
                        if flat:
                            target = 1  # one-tier cache: the prefetch joins the pool itself
                        else:
                            counters[C_BUDGET_DROPPED] += 1
                            continue
                    tpool = 0 if is_global else lt
                    if n_admitted[target] >= caps[target - 1] or not _has_room(tpool, target, caps, cnt, event, mem,
                                                                               k_pin):
                        counters[C_BUDGET_DROPPED] += 1
                        continue
                    if mode == EV_BELADY and tier == 0 and cnt[tpool, 0] + cnt[tpool, 1] + cnt[tpool, 2] >= \
                            caps[0] + caps[1] + caps[2]:
                        # Belady admission: prefetch only by evicting a key needed later than this one
                        far = _farthest_next_use(tpool, event, mem, cnt, k_pin, nu_start, nu_events, nu_cursor)
                        if far <= _next_use(key, nu_start, nu_events, nu_cursor):
                            counters[C_BUDGET_DROPPED] += 1
                            continue
                    if confident:
                        n2 += 1
                    else:
                        n3 += 1
                    n_admitted[target] += 1
                    issued = False
                    if tier == 3:
                        # already on the GPU as a speculative copy: promoted to L2 without a transfer
                        _tier_remove(tpool, key, mem, cnt, k_tier, k_pos)
                        _tier_add(tpool, target, key, mem, cnt, k_tier, k_pos)
                        counters[C_PROMOTED] += 1
                    else:
                        _tier_add(tpool, target, key, mem, cnt, k_tier, k_pos)
                        if mode >= EV_LFU:
                            _admitted(key, mode, clock, k_freq, k_ftime, k_ins, ins_count)
                        _issue_prefetch(key, now, seed_timing, k_state, k_arrival, k_qpos, k_prefetched,
                                        q_key, q_issue, qht, link, dur, counters)
                        counters[C_PREFETCH_L3 if target == 3 else C_PREFETCH_L2] += 1
                        issued = True
                    k_pin[key] = event
                    pmark[e] = event
                    if log_on:
                        nsnap = _log_snapshot(tpool, mem, cnt, snap)
                    _make_room(tpool, target, caps, event, mode, clock, u, mem, cnt, k_tier, k_pos, k_state,
                               k_prefetched, k_uses, k_ufrac, k_last, k_conf, k_pin, k_qpos, q_key, ev, counters, E,
                               ev_decay, vkey, vscore)
                    if log_on:
                        _log_evictions(snap, nsnap, k_tier, log, log_pos, s, E)
                        if issued:  # after its evictions: the prefetch takes a slot one of them freed
                            _log_row(log, log_pos, LOG_PREFETCH, s, lt, e, 0, 0)
                    k_last[key] = clock
            # ---- 6. learn from this layer's routing -----------------------------------------------------------
            if predictor != P_NONE and predictor != P_EXTERNAL:
                _observe(s, l, nt, step_tokens, prev_token, experts, E, K, decay, pop_cnt, pop_obs, pop_weight,
                         reuse_hit, reuse_tot, pair, src, predictor == P_CROSS_LAYER)
            # ---- 7. time ------------------------------------------------------------------------------------
            compute_ms = 0.0
            for n in range(nneed):
                compute_ms += ctab[ntok[needed[n]]]
            launch_from = now + n_copies * issue_ms  # the host launches the experts once it issued the copies
            if seed_timing:
                layer_ms = seed_layer_ms(nhit_l1, covered - nhit_l1, nmiss, nneed, seed_tab)
                compute_ms = seed_compute_ms(nneed, seed_tab)
            elif per_expert:
                for n in range(nneed):
                    key = l * E + needed[n]
                    x_arrival[n] = k_arrival[key] if k_arrival[key] > now else now
                    x_compute[n] = ctab[ntok[needed[n]]]
                finish = per_expert_finish_ms(now, x_arrival, x_compute, nneed, x_order)
                stall = finish - now - compute_ms
                counters[C_STALL_MS] += stall
                layer_ms = timeline_layer_ms(stall, compute_ms, layer_overhead_ms) + host_ms
                if launch_ms > 0.0 or launch_from > now:
                    layer_ms += launch_wait_ms(launch_from, finish, x_arrival, x_compute, nneed, x_order, launch_ms)
            else:
                stall = ready - now
                counters[C_STALL_MS] += stall
                layer_ms = timeline_layer_ms(stall, compute_ms, layer_overhead_ms) + host_ms
                if launch_ms > 0.0 or launch_from > now:
                    layer_ms += fused_launch_wait_ms(launch_from, ready, now + stall + compute_ms, needed, nneed, ntok,
                                                     ctab, x_arrival, x_compute, x_order, launch_ms)
            counters[C_COMPUTE_MS] += compute_ms
            link[L_NOW] = now + layer_ms
            if host_poll:
                # the host's busy spans the next hand-offs avoid: this layer's copy issue and launches (a prefetch
                # held back by the decision goes at the host's poll after the copies), the next layer's decision
                link[L_LAUNCH_FROM] = launch_from
                link[L_LAUNCH_TO] = launch_from + nneed * launch_ms
                link[L_DECIDE_FROM] = now + layer_ms - host_ms
            # ---- 8. the layer is done: experts that overfilled the pool only while in use give their slots back;
            # the experts this pass predicted stay protected until their layer runs
            if cnt[pool, 0] > caps[0] or cnt[pool, 1] > caps[1] or cnt[pool, 2] > caps[2]:
                for n in range(nneed):
                    e = needed[n]
                    if not (lt == l and pmark[e] == event):
                        k_pin[l * E + e] = NO_EVENT
                if log_on:
                    nsnap = _log_snapshot(pool, mem, cnt, snap)
                _make_room(pool, 1, caps, event, mode, clock, u, mem, cnt, k_tier, k_pos, k_state, k_prefetched,
                           k_uses, k_ufrac, k_last, k_conf, k_pin, k_qpos, q_key, ev, counters, E, ev_decay,
                           vkey, vscore)
                if log_on:
                    _log_evictions(snap, nsnap, k_tier, log, log_pos, s, E)
            latency += layer_ms
        step_latency_ms[s] = latency
        counters[C_STEPS] += 1
        counters[C_TOKENS] += nt
        counters[C_ELAPSED_MS] += latency


@njit(cache=True, inline="always", error_model="numpy")
def _admitted(key, mode, clock, k_freq, k_ftime, k_ins, ins_count):
    """A key enters the GPU: FIFO's admission order; LFU counts its uses from here (an in-cache count, as in
    the classic LFU), while MRS keeps the score the key had earned before it left."""
    k_ins[key] = ins_count[0]
    ins_count[0] += 1
    if mode == EV_LFU:
        k_freq[key] = 0.0
        k_ftime[key] = clock


@njit(cache=True, error_model="numpy")
def _preload_static(caps, layer_caps_on, layer_caps, E, k_static, mem, cnt, k_tier, k_pos, k_state, k_arrival,
                    is_global):
    """EV_STATIC: before the first step, fill every pool with its hottest keys (highest fitted frequency, ties to
    the lower key; never a key the fit never saw), as an engine loads its resident experts at start-up: no copy
    is counted."""
    n_keys = k_static.shape[0]
    for pool in range(cnt.shape[0]):
        room = caps[0] + caps[1] + caps[2]
        if layer_caps_on:
            room = layer_caps[0, pool]
        first = 0 if is_global else pool * E
        last = n_keys if is_global else (pool + 1) * E
        while cnt[pool, 0] + cnt[pool, 1] + cnt[pool, 2] < room:
            best = -1
            for key in range(first, last):
                if k_tier[key] == 0 and k_static[key] > 0.0 and (best < 0 or k_static[key] > k_static[best]):
                    best = key
            if best < 0:
                break
            tier = 1
            while tier < 3 and cnt[pool, tier - 1] >= caps[tier - 1]:
                tier += 1
            _tier_add(pool, tier, best, mem, cnt, k_tier, k_pos)
            k_state[best] = ST_READY
            k_arrival[best] = 0.0


@njit(cache=True, inline="always", error_model="numpy")
def _bin_scores(conf, E, slot, pend_bin, pend_hist, cal_hist):
    """Calibration's binning of a prediction: each expert's raw score bin into ``pend_bin[slot]`` and the count
    of experts per bin into ``pend_hist[slot]`` (``conf`` keeps the raw scores).

    Most experts share the lowest bins, so one histogram would make every increment wait for the previous one
    through memory; CAL_LANES interleaved integer histograms break that chain. The sums are counts, exact in a
    float64, so ``pend_hist`` holds the same values as adding 1.0 per expert."""
    for e in range(E):
        b = int(conf[e] * NUM_CAL_BINS)
        if b >= NUM_CAL_BINS:
            b = NUM_CAL_BINS - 1
        pend_bin[slot, e] = b
    for i in range(CAL_LANES * NUM_CAL_BINS):
        cal_hist[i] = 0
    e0 = 0
    while e0 + CAL_LANES <= E:
        for j in range(CAL_LANES):
            cal_hist[j * NUM_CAL_BINS + pend_bin[slot, e0 + j]] += 1
        e0 += CAL_LANES
    for e in range(e0, E):
        cal_hist[pend_bin[slot, e]] += 1
    for b in range(NUM_CAL_BINS):
        n = 0
        for j in range(CAL_LANES):
            n += cal_hist[j * NUM_CAL_BINS + b]
        pend_hist[slot, b] = float(n)


@njit(cache=True, inline="always", error_model="numpy")
def _calibrated_candidates(conf, E, slot, pend_bin, pend_hist, cal_table, ntruth, l3_thr, k_conf, base_key, sel,
                           bin_val, bin_cnt, bin_id, bin_grp, grp_next, order):
    """Answer each expert's calibrated confidence (its bin's value) into ``conf`` and ``k_conf[base_key:]``, list
    in ``sel`` (in expert order) the experts the selection must see, and put the same experts into ``order`` by
    confidence, highest first, ties to the lower expert; returns how many.

    A calibrated confidence is one of NUM_CAL_BINS values, and the bins' counts are known (``pend_hist``), so the
    |truth|-th highest confidence ``v`` is found from the occupied bins alone. Only an expert with a confidence
    >= min(v, l3_thr) can be the top-1, among the |truth| most confident, or an admission candidate. The same
    counts give each value's first place in the order, so the experts are sorted by one counting pass (an
    insertion sort costs up to nsel^2 moves: with a low L3 threshold every expert is a candidate). The
    calibration table need not be monotone in the bin, so bins are ordered by their values, not their indices,
    and bins that answer the same value share their places, taken in expert order."""
    # the occupied bins by value, highest first (insertion: at most NUM_CAL_BINS, usually a handful)
    nb = 0
    for b in range(NUM_CAL_BINS):
        if pend_hist[slot, b] > 0.0:
            v = cal_table[b]
            pos = nb
            while pos > 0 and bin_val[pos - 1] < v:
                bin_val[pos] = bin_val[pos - 1]
                bin_cnt[pos] = bin_cnt[pos - 1]
                bin_id[pos] = bin_id[pos - 1]
                pos -= 1
            bin_val[pos] = v
            bin_cnt[pos] = int(pend_hist[slot, b])
            bin_id[pos] = b
            nb += 1
    cut = bin_val[nb - 1]
    acc = 0
    for j in range(nb):
        acc += bin_cnt[j]
        if acc >= ntruth:
            cut = bin_val[j]
            break
    if l3_thr < cut:
        cut = l3_thr
    # each value's first place in the order: the experts of higher values come before it
    start = 0
    group = 0
    for j in range(nb):
        if j == 0 or bin_val[j] != bin_val[j - 1]:
            group = j
            grp_next[group] = start
        bin_grp[bin_id[j]] = group
        start += bin_cnt[j]
    # branch-free compaction: which experts pass is data, not a pattern a branch predictor learns
    nsel = 0
    for e in range(E):
        c = cal_table[pend_bin[slot, e]]
        conf[e] = c
        k_conf[base_key + e] = c
        sel[nsel] = e
        nsel += 1 if c >= cut else 0
    # the selected experts are whole values at the top of the order, so their places are 0 .. nsel - 1
    for j in range(nsel):
        e = sel[j]
        g = bin_grp[pend_bin[slot, e]]
        order[grp_next[g]] = e
        grp_next[g] += 1
    return nsel


@njit(cache=True, inline="always", error_model="numpy")
def _issue_prefetch(key, now, seed_timing, k_state, k_arrival, k_qpos, k_prefetched, q_key, q_issue, qht, link,
                    dur, counters):
    counters[C_PREFETCH_ISSUED] += 1
    k_prefetched[key] = 1
    if seed_timing:
        # the seed's model: prefetches are free and instant
        k_state[key] = ST_READY
        k_arrival[key] = now
        counters[C_PREFETCH_LOADS] += 1
        return
    Q = q_key.shape[0]
    if qht[1] - qht[0] >= Q:
        _commit_head(link, q_key, q_issue, qht, k_state, k_arrival, dur, counters)
    slot = qht[1] % Q
    q_key[slot] = key
    q_issue[slot] = now
    k_qpos[key] = slot
    k_state[key] = ST_QUEUED
    qht[1] += 1


@njit(cache=True, inline="always", error_model="numpy")
def _predict(st, s, l, lt, predictor, step_tokens, step_ntokens, prev_token, step_of_token, experts,
             E, K, pop_cnt, pop_obs, reuse_hit, reuse_tot, pair, src, oracle_acc, rng_seed, event, conf, prod,
             truth):
    """Fill ``conf`` with the probability that each expert is among step ``st``'s experts at layer ``lt``."""
    nst = step_ntokens[st]
    if predictor == P_PERFECT or predictor == P_NOISY_ORACLE:
        for e in range(E):
            conf[e] = 0.0
        marker = -(event + 2)
        for b in range(nst):
            t = step_tokens[st, b]
            for k in range(K):
                truth[experts[t, lt, k]] = marker
        if predictor == P_PERFECT:
            for e in range(E):
                conf[e] = 1.0 if truth[e] == marker else 0.0
            return
        base = np.uint64(event) * np.uint64(E + 1)
        top = -1.0
        for e in range(E):
            r = _uniform(rng_seed, base + np.uint64(e))
            conf[e] = 0.3 + 0.6 * r if truth[e] == marker else 0.5 * r
        # the most confident expert is a true one with probability oracle_acc
        want_true = _uniform(rng_seed, base + np.uint64(E)) < oracle_acc
        ncand = 0
        for e in range(E):
            if (truth[e] == marker) == want_true:
                ncand += 1
        if ncand == 0:
            return
        pick = int(_uniform(rng_seed ^ 0x5DEECE66D, base) * ncand)
        chosen = -1
        for e in range(E):
            if (truth[e] == marker) == want_true:
                if pick == 0:
                    chosen = e
                    break
                pick -= 1
        for e in range(E):
            if conf[e] > top:
                top = conf[e]
        conf[chosen] = min(1.0, top + 0.01)
        return

    # popularity: per-token probability of selecting each expert at lt
    obs = pop_obs[lt]
    for e in range(E):
        prod[e] = 1.0
    if obs > 0.0:
        inv = 1.0 / obs
    else:
        inv = 0.0
    reuse = reuse_hit[lt] / reuse_tot[lt] if reuse_tot[lt] > 0 else K / E
    use_cross = predictor == P_CROSS_LAYER and st == s
    d = lt - l - 1
    if use_cross and nst == 1:
        # the common single-token case: the averaged co-occurrence row is the confidence itself
        nsrc = _cooccurrence_row(step_tokens[st, 0], l, d, experts, K, E, pair, src, conf)
        if nsrc > 0:
            inv_n = 1.0 / nsrc
            for e in range(E):
                conf[e] = min(conf[e] * inv_n, 1.0)
            return
    for b in range(nst):
        t = step_tokens[st, b]
        if use_cross:
            nsrc = _cooccurrence_row(t, l, d, experts, K, E, pair, src, conf)
            if nsrc > 0:
                inv_n = 1.0 / nsrc
                for e in range(E):
                    prod[e] *= 1.0 - min(conf[e] * inv_n, 1.0)
                continue
        p = prev_token[t]
        known = False
        if predictor != P_POPULARITY and p >= 0:
            sp = step_of_token[p]
            known = sp >= 0 and (sp < s or (sp == s and lt <= l))
        if known:
            for e in range(E):
                conf[e] = (1.0 - reuse) * (pop_cnt[lt, e] * inv if obs > 0.0 else K / E)
            for k in range(K):
                conf[experts[p, lt, k]] = reuse
            for e in range(E):
                prod[e] *= 1.0 - min(conf[e], 1.0)
        else:
            for e in range(E):
                q = pop_cnt[lt, e] * inv if obs > 0.0 else K / E
                prod[e] *= 1.0 - min(q, 1.0)
    for e in range(E):
        conf[e] = 1.0 - prod[e]


@njit(cache=True, inline="always", error_model="numpy")
def _cooccurrence_row(t, l, d, experts, K, E, pair, src, out):
    """Sum over token t's experts i at layer l of P(e at l + d + 1 | i at l) into ``out``; returns how many of
    its experts have been seen (the divisor of the average)."""
    for e in range(E):
        out[e] = 0.0
    nsrc = 0
    for k in range(K):
        i = experts[t, l, k]
        if src[d, l, i] > 0:
            w = 1.0 / src[d, l, i]
            for e in range(E):
                out[e] += pair[d, l, i, e] * w
            nsrc += 1
    return nsrc


@njit(cache=True, inline="always", error_model="numpy")
def _observe(s, l, nt, step_tokens, prev_token, experts, E, K, decay, pop_cnt, pop_obs, pop_weight, reuse_hit,
             reuse_tot, pair, src, learn_pairs):
    """Update the online statistics with the routing of step ``s`` at layer ``l`` (now known).

    Popularity and reuse are exponentially decayed per step. Only ratios of these sums are ever read, so
    instead of multiplying every count by ``decay`` each step, new observations are added with a weight that
    grows by 1/decay per step (``pop_weight``); sums are rescaled before the weight overflows.
    """
    w = pop_weight[l] / decay if decay > 0.0 else 1.0
    if w > 1e200:
        scale = 1.0 / w
        for e in range(E):
            pop_cnt[l, e] *= scale
        pop_obs[l] *= scale
        reuse_hit[l] *= scale
        reuse_tot[l] *= scale
        w = 1.0
    if decay == 0.0:
        for e in range(E):
            pop_cnt[l, e] = 0.0
        pop_obs[l] = 0.0
        reuse_hit[l] = 0.0
        reuse_tot[l] = 0.0
    pop_weight[l] = w
    D = pair.shape[0]
    for b in range(nt):
        t = step_tokens[s, b]
        pop_obs[l] += w
        for k in range(K):
            pop_cnt[l, experts[t, l, k]] += w
        p = prev_token[t]
        if p >= 0:
            same = 0
            for k in range(K):
                ek = experts[t, l, k]
                for j in range(K):
                    if experts[p, l, j] == ek:
                        same += 1
                        break
            reuse_hit[l] += same * w
            reuse_tot[l] += K * w
        if learn_pairs:
            for d in range(1, D + 1):
                ls = l - d
                if ls < 0:
                    break
                for k in range(K):
                    i = experts[t, ls, k]
                    src[d - 1, ls, i] += 1
                    for j in range(K):
                        pair[d - 1, ls, i, experts[t, l, j]] += 1


@njit(cache=True, error_model="numpy")
def build_next_use(step_tokens, step_ntokens, experts, num_experts):
    """Every key's uses in replay order, for Belady eviction: ``(start, events)`` in CSR form, where
    ``events[start[key]:start[key + 1]]`` are the events (``step * L + layer``) at which the key is needed
    (once per event, however many tokens of the step need it)."""
    S = step_tokens.shape[0]
    L = experts.shape[1]
    K = experts.shape[2]
    n_keys = L * num_experts
    count = np.zeros(n_keys + 1, dtype=np.int64)
    mark = np.full(n_keys, -1, dtype=np.int64)
    for s in range(S):
        for l in range(L):
            ev = s * L + l
            for b in range(step_ntokens[s]):
                t = step_tokens[s, b]
                for k in range(K):
                    key = l * num_experts + experts[t, l, k]
                    if mark[key] != ev:
                        mark[key] = ev
                        count[key + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    events = np.empty(start[-1], dtype=np.int64)
    mark[:] = -1
    for s in range(S):
        for l in range(L):
            ev = s * L + l
            for b in range(step_ntokens[s]):
                t = step_tokens[s, b]
                for k in range(K):
                    key = l * num_experts + experts[t, l, k]
                    if mark[key] != ev:
                        mark[key] = ev
                        events[fill[key]] = ev
                        fill[key] += 1
    return start, events
