"""The compiled replay behind ``MoECache-Evict-v0`` and learned eviction: a one-tier demand-only cache that can
stop at every eviction and let the caller pick the victim.

It replays the cache that ``lru`` and ``belady`` replay in ``kernel.py`` (one tier, per-layer or global pools,
misses loaded on demand, the step's experts pinned while in use, the KV cache shrinking the pools at step
starts), with the same timing (timeline fused or per-expert, or the seed table) and the same counters
(``kernel.C_*``), so ``metrics.metrics_from_counters`` reads its totals. It differs from ``kernel.py`` only in who
picks the victim of a full pool: :func:`advance` stops and returns (``POL_AGENT``), or picks by least recent use
(``POL_LRU``), farthest next use (``POL_BELADY``) or a small MLP scoring each candidate's features
(``POL_LEARNED``). With ``POL_LRU`` / ``POL_BELADY`` its counters and step latencies equal the kernel's ``lru`` /
``belady`` replays exactly (``tests/envs/test_evict_env.py``).

A *decision* is asked for only when there is a choice: at least one key must leave a full pool and more keys
than must leave are candidates (resident and not pinned by the current layer). A pool whose only candidates
must all leave sheds them without asking.

All state lives in arrays (see :func:`new_state` in ``moe_cache_env/sim/evict.py``); the cursor ``cur``
(``CUR_*``) says where the replay stands, so a call resumes where the last one stopped.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.timing import (
    fused_launch_wait_ms, launch_wait_ms, per_expert_finish_ms, seed_compute_ms, seed_layer_ms, step_layer_experts,
    timeline_layer_ms,
)

# ---- who picks the victim --------------------------------------------------------------------------------------
POL_AGENT = 0  # stop and return: the caller picks (the environment)
POL_LRU = 1  # least recently used (ties: the lower key), as kernel.EV_LRU
POL_BELADY = 2  # farthest next use (ties: the lower key), as kernel.EV_BELADY
POL_LEARNED = 3  # highest MLP score over the candidate's features (ties: the lower key)

# ---- the cursor -----------------------------------------------------------------------------------------------
CUR_STEP = 0
CUR_LAYER = 1
CUR_PHASE = 2
CUR_POOL = 3
CUR_EVENT = 4  # the event whose pins protect keys in the pending make-room (-1: none)
CUR_NNEED = 5  # distinct experts of the current event (their keys are in ``needed_keys``)
CUR_DECISIONS = 6  # decisions taken so far (asked or internal)
CUR_RECORDED = 7  # decisions recorded so far
NUM_CUR = 8

PH_STEP = 0  # a step starts: capacities, KV-cache shrink
PH_SHRINK = 1  # the KV cache grew: each pool sheds keys down to its new slots
PH_EVENT = 2  # one layer of one step: hits, demand loads, pins, timing
PH_ROOM = 3  # the layer's misses overfill its pool: unpinned keys leave
PH_AFTER = 4  # the layer is done: keys that overfilled the pool only while pinned give their slots back
PH_DONE = 5

# ---- per-key state: float columns (kf) and integer columns (ki) -------------------------------------------------
KF_ARRIVAL = 0  # when its copy lands (ms)
KF_LAST = 1  # last use (steps, clock = event / L)
KF_INS = 2  # admission (steps)
KF_FREQ = 3  # uses, each decayed by ``decay`` per step (kept across evictions: a serving system's statistics)
KF_FTIME = 4  # the clock KF_FREQ was brought up to date
KF_CONF = 5  # the cross-layer predictor's last confidence for this key
KF_GAP = 6  # moving average of the steps between consecutive uses (0 until a second use)
NUM_KF = 7
KI_RES = 0  # 1: resident in its pool
KI_POS = 1  # position in the pool's slot list
KI_USES = 2  # uses since admission
KI_PIN = 3  # the event that pins it (in use)
KI_CURSOR = 4  # next-use cursor into nu_events
NUM_KI = 5

#: the recorded next-use distance of a key never needed again (steps)
NEVER_STEPS = 1e9
#: weight of the newest gap in KF_GAP's moving average
GAP_ALPHA = 0.3

# ---- features of one slot (a row of ``feats``) -----------------------------------------------------------------
F_AGE = 0  # log1p(steps since last use)
F_RECENCY_RANK = 1  # rank by last use among the pool's candidates, 0 = most recent, 1 = least recent
F_FREQ = 2  # log1p(decayed use count)
F_FREQ_RANK = 3  # rank by decayed use count among candidates, 0 = most used, 1 = least used
F_USES = 4  # log1p(uses since admission)
F_RESIDENCE = 5  # log1p(steps since admission)
F_CONF = 6  # the cross-layer predictor's last confidence for the key
F_LAYER_DIST = 7  # layers until the key's layer runs again, / L (1 for every key of a per-layer pool)
F_NEXT_VIEW = 8  # popularity's view of the next run of its layer: 1 - (1 - share)^tokens of the next step
F_GAP = 9  # log1p(moving average of steps between uses)
F_OVERDUE = 10  # (age - gap) / (1 + gap), clipped to [-5, 5]: how far past its usual reuse the key is
F_USE_RATE = 11  # uses since admission / (1 + steps since admission)
F_POOL_FILL = 12  # global: candidates / slots
F_NEED_SHARE = 13  # global: keys that must leave / candidates
F_STEP_TOKENS = 14  # global: log1p(tokens in this step)
F_SLOTS_SHARE = 15  # global: this step's slots / the most slots of the replay (the KV cache's pressure)
F_SLOT_STATE = 16  # 1: a candidate; 0.5: resident but pinned; 0: empty
NUM_FEATURES = 17
#: the features the learned rule reads (all but the slot state, which only marks candidates)
NUM_MODEL_FEATURES = 16

_NO_PIN = -10


@njit(cache=True, error_model="numpy")
def _next_use(key, nu_start, nu_events, ki):
    c = ki[key, KI_CURSOR]
    if c < nu_start[key + 1]:
        return nu_events[c]
    return K.NEVER


@njit(cache=True, error_model="numpy")
def _evict_at(pool, i, mem, cnt, ki):
    key = mem[pool, i]
    last = cnt[pool] - 1
    moved = mem[pool, last]
    mem[pool, i] = moved
    ki[moved, KI_POS] = i
    mem[pool, last] = -1
    cnt[pool] = last
    ki[key, KI_RES] = 0
    ki[key, KI_USES] = 0
    return key


@njit(cache=True, error_model="numpy")
def _count_candidates(pool, event, mem, cnt, ki):
    n = 0
    for i in range(cnt[pool]):
        if ki[mem[pool, i], KI_PIN] != event:
            n += 1
    return n


@njit(cache=True, error_model="numpy")
def _pick_rule(pool, event, rule, mem, cnt, ki, kf, nu_start, nu_events):
    """The position of the rule's victim (POL_LRU: least recent use; POL_BELADY: farthest next use; ties: the
    lower key), or -1 if every key is pinned."""
    best_i = -1
    best = 0.0
    best_key = -1
    for i in range(cnt[pool]):
        key = mem[pool, i]
        if ki[key, KI_PIN] == event:
            continue
        if rule == POL_BELADY:
            s = -float(_next_use(key, nu_start, nu_events, ki))
        else:
            s = kf[key, KF_LAST]
        if best_i < 0 or s < best or (s == best and key < best_key):
            best, best_i, best_key = s, i, key
    return best_i


@njit(cache=True, error_model="numpy")
def fill_features(pool, event, clock, r_needed, mem, cnt, ki, kf, layer_fsum, layer_ftime, decay, L, E,
                  next_tokens, step_tokens_n, slots_share, feats, order):
    """Fill ``feats`` (rows = slot positions of the pool) with every slot's features (``F_*``); rows past the
    pool's keys are zero. Returns the number of candidates."""
    feats[:, :] = 0.0
    n = cnt[pool]
    ncand = 0
    for i in range(n):
        if ki[mem[pool, i], KI_PIN] != event:
            ncand += 1
    cur_layer = int(np.floor(clock * L + 0.5)) % L
    for i in range(n):
        key = mem[pool, i]
        layer = key // E
        age = clock - kf[key, KF_LAST]
        freq = kf[key, KF_FREQ] * decay ** (clock - kf[key, KF_FTIME])
        fsum = layer_fsum[layer] * decay ** (clock - layer_ftime[layer])
        share = freq / fsum if fsum > 0.0 else 0.0
        if share > 1.0:
            share = 1.0
        gap = kf[key, KF_GAP]
        resid = clock - kf[key, KF_INS]
        uses = ki[key, KI_USES]
        dist = (layer - cur_layer) % L
        if dist == 0:
            dist = L
        feats[i, F_AGE] = np.log1p(max(age, 0.0))
        feats[i, F_FREQ] = np.log1p(freq)
        feats[i, F_USES] = np.log1p(uses)
        feats[i, F_RESIDENCE] = np.log1p(max(resid, 0.0))
        feats[i, F_CONF] = kf[key, KF_CONF]
        feats[i, F_LAYER_DIST] = dist / L
        feats[i, F_NEXT_VIEW] = 1.0 - (1.0 - share) ** next_tokens
        feats[i, F_GAP] = np.log1p(gap)
        od = (age - gap) / (1.0 + gap)
        feats[i, F_OVERDUE] = min(5.0, max(-5.0, od))
        feats[i, F_USE_RATE] = uses / (1.0 + max(resid, 0.0))
        feats[i, F_POOL_FILL] = ncand / max(n, 1)
        feats[i, F_NEED_SHARE] = r_needed / max(ncand, 1)
        feats[i, F_STEP_TOKENS] = np.log1p(step_tokens_n)
        feats[i, F_SLOTS_SHARE] = slots_share
        feats[i, F_SLOT_STATE] = 1.0 if ki[key, KI_PIN] != event else 0.5
    # ranks among the candidates (0 = most recent / most used; ties: the higher key first); a pool of one
    # candidate ranks it 0. Sorted, not compared pairwise: a decision stays O(n log n) in the pool's slots.
    denom = max(ncand - 1, 1)
    cand = np.empty(ncand, dtype=np.int64)
    c = 0
    for i in range(n):
        if feats[i, F_SLOT_STATE] == 1.0:
            cand[c] = i
            c += 1
    n_keys = ki.shape[0]
    rec_key = np.empty(ncand)
    for c in range(ncand):
        key = mem[pool, cand[c]]
        # last use as an event number (integral), then the key: one exact number orders both
        rec_key[c] = -(np.floor(kf[key, KF_LAST] * L + 0.5) * n_keys + key)
    order_r = np.argsort(rec_key)
    for pos in range(ncand):
        feats[cand[order_r[pos]], F_RECENCY_RANK] = pos / denom
    by_key = np.empty(ncand)
    for c in range(ncand):
        by_key[c] = -float(mem[pool, cand[c]])
    first = np.argsort(by_key)  # higher key first
    fkey = np.empty(ncand)
    for c in range(ncand):
        fkey[c] = -feats[cand[first[c]], F_FREQ]
    order_f = np.argsort(fkey, kind="mergesort")  # stable: equal counts keep the higher key first
    for pos in range(ncand):
        feats[cand[first[order_f[pos]]], F_FREQ_RANK] = pos / denom
    return ncand


@njit(cache=True, error_model="numpy")
def mlp_scores(feats, n, mu, sd, w1, b1, w2, b2, w3, b3, out):
    """``out[i]`` = the MLP's eviction score of row i < n (higher: evict first): two ReLU layers over the
    standardised features ``(feats[:, :NUM_MODEL_FEATURES] - mu) / sd``."""
    F = w1.shape[0]
    H1 = w1.shape[1]
    H2 = w2.shape[1]
    x = np.empty(F)
    h1 = np.empty(H1)
    h2 = np.empty(H2)
    for i in range(n):
        for f in range(F):
            x[f] = (feats[i, f] - mu[f]) / sd[f]
        for j in range(H1):
            h1[j] = b1[j]
        for f in range(F):
            xf = x[f]
            for j in range(H1):
                h1[j] += xf * w1[f, j]
        for j in range(H2):
            h2[j] = b2[j]
        for f in range(H1):
            a = h1[f] if h1[f] > 0.0 else 0.0
            for j in range(H2):
                h2[j] += a * w2[f, j]
        a = b3[0]
        for f in range(H2):
            a += (h2[f] if h2[f] > 0.0 else 0.0) * w3[f]
        out[i] = a


@njit(cache=True, error_model="numpy")
def advance(cur, action, policy, sched_tokens, sched_ntokens, tier_caps, link_share, experts, ctab, iconf, fconf,
            seed_tab, ki, kf, mem, cnt, link, layer_fsum, layer_ftime, pair, src, nu_start, nu_events, needed_keys,
            counters, step_latency_ms, acc, feats, model_mu, model_sd, w1, b1, w2, b2, w3, b3, rec_x, rec_label,
            rec_group, rec_rows, scores):
    """Replay until a decision is pending (returns 1) or the replay ends (returns 0).

    ``action`` >= 0 applies the pending decision first: the key at that position of the pending pool leaves.
    ``policy`` (``POL_*``) picks every other victim; with ``POL_AGENT`` each real choice stops the replay with
    ``feats`` filled for the pending pool. ``acc`` accumulates [latency ms, misses, hits, layers] since the
    caller last zeroed it. Recording (``rec_x`` rows > 0): the candidate rows of every ``rec_rows[1]``-th
    decision go to ``rec_x``, the steps until the key's next use in ``rec_label`` (``NEVER_STEPS`` if never:
    Belady evicts a row of the decision's largest value), the decision's index in ``rec_group``,
    until ``rec_x`` is full; ``rec_rows[0]`` counts the rows written.
    """
    L = iconf[0]
    E = iconf[1]
    Kk = iconf[2]
    is_global = iconf[3] == 1
    seed_timing = iconf[4] == 1
    per_expert = iconf[5] == 1
    transfer_ms = fconf[0]
    overhead_ms = fconf[1]
    host_ms = fconf[2]
    decay = fconf[3]
    max_cap = fconf[4]
    launch_ms = fconf[5]
    issue_ms = fconf[6]  # the host's time to issue one copy: the k-th demand load starts k of them after now
    S = sched_tokens.shape[0]
    P = cnt.shape[0]
    M = mem.shape[1]
    mark = np.full(E, -1, dtype=np.int64)
    ntok = np.zeros(E, dtype=np.int64)
    needed = np.empty(E, dtype=np.int64)
    prod = np.empty(E, dtype=np.float64)
    row = np.empty(E, dtype=np.float64)
    x_arrival = np.empty(E, dtype=np.float64)
    x_compute = np.empty(E, dtype=np.float64)
    x_order = np.empty(E, dtype=np.int64)
    order = np.empty(M, dtype=np.int64)
    have_nu = nu_events.shape[0] > 0
    rec_cap = rec_x.shape[0]
    while True:
        ph = cur[CUR_PHASE]
        s = cur[CUR_STEP]
        if ph == PH_DONE:
            return 0
        if ph == PH_STEP:
            if s >= S:
                cur[CUR_PHASE] = PH_DONE
                return 0
            step_latency_ms[s] = 0.0
            cur[CUR_LAYER] = 0
            cur[CUR_POOL] = 0
            cur[CUR_EVENT] = -1
            if s > 0 and tier_caps[s, 0] < tier_caps[s - 1, 0]:
                cur[CUR_PHASE] = PH_SHRINK  # the KV cache grew: every pool sheds keys now
            else:
                cur[CUR_PHASE] = PH_EVENT
            continue
        cap = tier_caps[s, 0]
        if ph == PH_EVENT:
            l = cur[CUR_LAYER]
            nt = sched_ntokens[s]
            event = s * L + l
            clock = event / L
            now = link[1]
            pool = 0 if is_global else l
            dur = transfer_ms / link_share[s]
            nneed = step_layer_experts(sched_tokens, s, nt, experts, l, Kk, event, mark, ntok, needed)
            covered = 0
            ready = now
            nmiss = 0
            for n in range(nneed):
                key = l * E + needed[n]
                if ki[key, KI_RES] == 1:
                    if seed_timing or kf[key, KF_ARRIVAL] <= now:
                        covered += 1
                        counters[K.C_HIT_L1] += 1
                    else:
                        counters[K.C_LATE] += 1
                        if kf[key, KF_ARRIVAL] > ready:
                            ready = kf[key, KF_ARRIVAL]
                else:
                    nmiss += 1
                    counters[K.C_MISS] += 1
                    counters[K.C_DEMAND_LOADS] += 1
                    if seed_timing:
                        kf[key, KF_ARRIVAL] = now
                    else:
                        start = max(now + nmiss * issue_ms, link[0])
                        link[0] = start + dur
                        kf[key, KF_ARRIVAL] = start + dur
                        counters[K.C_LINK_BUSY_MS] += dur
                        if start + dur > ready:
                            ready = start + dur
                    c = cnt[pool]
                    mem[pool, c] = key
                    ki[key, KI_POS] = c
                    cnt[pool] = c + 1
                    ki[key, KI_RES] = 1
                    ki[key, KI_USES] = 0
                    kf[key, KF_INS] = clock
            acc[1] += nmiss
            acc[2] += covered
            for n in range(nneed):
                key = l * E + needed[n]
                needed_keys[n] = key
                ki[key, KI_PIN] = event
                if kf[key, KF_FTIME] > 0.0 or kf[key, KF_FREQ] > 0.0:
                    gap = clock - kf[key, KF_LAST]
                    kf[key, KF_GAP] = gap if kf[key, KF_GAP] == 0.0 else (1.0 - GAP_ALPHA) * kf[key, KF_GAP] + \
                        GAP_ALPHA * gap
                kf[key, KF_LAST] = clock
                ki[key, KI_USES] += 1
                kf[key, KF_FREQ] = kf[key, KF_FREQ] * decay ** (clock - kf[key, KF_FTIME]) + 1.0
                kf[key, KF_FTIME] = clock
                if have_nu:
                    ki[key, KI_CURSOR] += 1
            layer_fsum[l] = layer_fsum[l] * decay ** (clock - layer_ftime[l]) + nneed
            layer_ftime[l] = clock
            cur[CUR_NNEED] = nneed
            counters[K.C_STEP_LAYERS] += 1
            counters[K.C_REQUESTS] += nneed
            counters[K.C_EVENTS] += nt
            counters[K.C_COVERAGE_SUM] += covered / nneed
            if covered == nneed:
                counters[K.C_PERFECT] += 1
            elif covered == 0:
                counters[K.C_ZERO] += 1
            # the cross-layer predictor (one layer ahead): learn layer l-1 -> l from this routing, then predict
            # layer l+1 from it; each key keeps its last confidence
            if l >= 1:
                for b in range(nt):
                    t = sched_tokens[s, b]
                    for k in range(Kk):
                        i = experts[t, l - 1, k]
                        src[l - 1, i] += 1
                        for j in range(Kk):
                            pair[l - 1, i, experts[t, l, j]] += 1
            if l + 1 < L:
                for e in range(E):
                    prod[e] = 1.0
                for b in range(nt):
                    t = sched_tokens[s, b]
                    for e in range(E):
                        row[e] = 0.0
                    nsrc = 0
                    for k in range(Kk):
                        i = experts[t, l, k]
                        if src[l, i] > 0:
                            w = 1.0 / src[l, i]
                            for e in range(E):
                                row[e] += pair[l, i, e] * w
                            nsrc += 1
                    if nsrc > 0:
                        for e in range(E):
                            prod[e] *= 1.0 - min(row[e] / nsrc, 1.0)
                for e in range(E):
                    kf[(l + 1) * E + e, KF_CONF] = 1.0 - prod[e]
            # time
            compute_ms = 0.0
            for n in range(nneed):
                compute_ms += ctab[ntok[needed[n]]]
            launch_from = now + nmiss * issue_ms  # the host launches the experts once it issued the copies
            if seed_timing:
                layer_ms = seed_layer_ms(covered, 0, nmiss, nneed, seed_tab)
                compute_ms = seed_compute_ms(nneed, seed_tab)
            elif per_expert:
                for n in range(nneed):
                    key = l * E + needed[n]
                    x_arrival[n] = kf[key, KF_ARRIVAL] if kf[key, KF_ARRIVAL] > now else now
                    x_compute[n] = ctab[ntok[needed[n]]]
                finish = per_expert_finish_ms(now, x_arrival, x_compute, nneed, x_order)
                stall = finish - now - compute_ms
                counters[K.C_STALL_MS] += stall
                layer_ms = timeline_layer_ms(stall, compute_ms, overhead_ms) + host_ms
                if launch_ms > 0.0 or launch_from > now:
                    layer_ms += launch_wait_ms(launch_from, finish, x_arrival, x_compute, nneed, x_order, launch_ms)
            else:
                stall = ready - now
                counters[K.C_STALL_MS] += stall
                layer_ms = timeline_layer_ms(stall, compute_ms, overhead_ms) + host_ms
                if launch_ms > 0.0 or launch_from > now:
                    layer_ms += fused_launch_wait_ms(launch_from, ready, now + stall + compute_ms, needed, nneed, ntok,
                                                     ctab, x_arrival, x_compute, x_order, launch_ms)
            counters[K.C_COMPUTE_MS] += compute_ms
            link[1] = now + layer_ms
            step_latency_ms[s] += layer_ms
            acc[0] += layer_ms
            acc[3] += 1
            cur[CUR_POOL] = pool
            cur[CUR_EVENT] = event
            cur[CUR_PHASE] = PH_ROOM
            continue
        # ---- PH_SHRINK, PH_ROOM, PH_AFTER: keys leave a pool until it fits --------------------------------------
        pool = cur[CUR_POOL]
        event = cur[CUR_EVENT]
        l = cur[CUR_LAYER]
        if action >= 0:
            _evict_at(pool, action, mem, cnt, ki)
            cur[CUR_DECISIONS] += 1
            action = -1
        clock = (s * L + l) / L if ph != PH_SHRINK else float(s)
        while cnt[pool] > cap:
            ncand = _count_candidates(pool, event, mem, cnt, ki)
            if ncand == 0:
                break  # everything left is in use: the pool overflows until the layer is done
            r = cnt[pool] - cap
            if ncand <= r:
                # every candidate must leave: nothing to decide
                i = _pick_rule(pool, event, POL_LRU, mem, cnt, ki, kf, nu_start, nu_events)
                _evict_at(pool, i, mem, cnt, ki)
                continue
            nxt = s + 1 if s + 1 < S else s
            record = rec_rows[0] < rec_cap and cur[CUR_DECISIONS] % rec_rows[1] == 0
            if policy == POL_AGENT or policy == POL_LEARNED or record:
                fill_features(pool, event, clock, r, mem, cnt, ki, kf, layer_fsum, layer_ftime, decay, L, E,
                              sched_ntokens[nxt], sched_ntokens[s], cap / max_cap, feats, order)
            if record:
                g = cur[CUR_RECORDED]
                now_event = s * L + l if ph != PH_SHRINK else s * L
                for i in range(cnt[pool]):
                    if feats[i, F_SLOT_STATE] != 1.0 or rec_rows[0] >= rec_cap:
                        continue
                    rr = rec_rows[0]
                    for f in range(NUM_MODEL_FEATURES):
                        rec_x[rr, f] = feats[i, f]
                    nu = _next_use(mem[pool, i], nu_start, nu_events, ki)
                    rec_label[rr] = NEVER_STEPS if nu >= K.NEVER else (nu - now_event) / L
                    rec_group[rr] = g
                    rec_rows[0] = rr + 1
                cur[CUR_RECORDED] = g + 1
            if policy == POL_AGENT:
                return 1
            if policy == POL_LEARNED:
                n = cnt[pool]
                mlp_scores(feats, n, model_mu, model_sd, w1, b1, w2, b2, w3, b3, scores)
                i = -1
                for j in range(n):
                    if feats[j, F_SLOT_STATE] != 1.0:
                        continue
                    if i < 0 or scores[j] > scores[i] or (scores[j] == scores[i] and mem[pool, j] < mem[pool, i]):
                        i = j
            else:
                i = _pick_rule(pool, event, policy, mem, cnt, ki, kf, nu_start, nu_events)
            _evict_at(pool, i, mem, cnt, ki)
            cur[CUR_DECISIONS] += 1
        if ph == PH_SHRINK:
            cur[CUR_POOL] = pool + 1
            if pool + 1 >= P:
                cur[CUR_PHASE] = PH_EVENT
                cur[CUR_POOL] = 0
            continue
        if ph == PH_ROOM and cnt[pool] > cap:
            # pinned keys alone overfill the pool: the layer is done, so they give their slots back now
            for n in range(cur[CUR_NNEED]):
                ki[needed_keys[n], KI_PIN] = _NO_PIN
            cur[CUR_PHASE] = PH_AFTER
            continue
        # the layer is done
        if l + 1 < L:
            cur[CUR_LAYER] = l + 1
            cur[CUR_PHASE] = PH_EVENT
        else:
            counters[K.C_STEPS] += 1
            counters[K.C_TOKENS] += sched_ntokens[s]
            counters[K.C_ELAPSED_MS] += step_latency_ms[s]
            cur[CUR_STEP] = s + 1
            cur[CUR_PHASE] = PH_STEP
