"""The one timing model of the simulator: how long a layer of a step takes (see ``docs/simulator.md``).

Every consumer of the timing model calls these functions: the compiled replay loop (``kernel.py``), and the
environment's demand-all reference latency (``envs/reward.py``), so the two cannot drift apart.

Two modes:

- ``timeline``: a layer costs the time it waits for its experts' copies (the host-to-GPU link is a queue
  with one copy at a time, ``transfer_ms / link_share`` each), then the compute of its distinct experts (the
  profile's compute time at each expert's token count) and the profile's non-expert ``layer_overhead_ms``.
- ``seed``: the seed system's table: cache accesses, piecewise-linear transfer time of the layer's misses,
  compute of its experts and an allocation cost per miss; prefetches are free.

The seed table is passed to the compiled functions as a float array in :data:`SEED_TABLE_KEYS` order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from moe_cache_env.profiles.profile import SEED_TABLE_KEYS, HardwareProfile

# positions in the seed table array (the order of profiles.profile.SEED_TABLE_KEYS)
SEED_H2D_1 = 0
SEED_H2D_4 = 1
SEED_H2D_20 = 2
SEED_ACCESS_L1 = 3
SEED_ACCESS_L23 = 4
SEED_COMPUTE_1 = 5
SEED_COMPUTE_4 = 6
SEED_ALLOC = 7
NUM_SEED = 8


def seed_table_array(profile: HardwareProfile) -> np.ndarray:
    """The profile's seed table as the float array the compiled timing functions read (zeros if none)."""
    out = np.zeros(NUM_SEED, dtype=np.float64)
    if profile.seed_table is not None:
        out[:] = [profile.seed_table[key] for key in SEED_TABLE_KEYS]
    return out


@njit(cache=True, inline="always", error_model="numpy")
def seed_transfer_ms(n, seed_tab):
    """The seed table's host-to-GPU time for n experts: piecewise linear through 1, 4 and 20 experts."""
    if n == 0:
        return 0.0
    t1 = seed_tab[SEED_H2D_1]
    t4 = seed_tab[SEED_H2D_4]
    t20 = seed_tab[SEED_H2D_20]
    if n <= 4:
        return t1 + (n - 1) * (t4 - t1) / 3.0
    return t4 + (n - 4) * (t20 - t4) / 16.0


@njit(cache=True, inline="always", error_model="numpy")
def seed_compute_ms(n, seed_tab):
    """The seed table's compute time for n experts: linear through 1 and 4 experts."""
    c1 = seed_tab[SEED_COMPUTE_1]
    c4 = seed_tab[SEED_COMPUTE_4]
    return c1 + (n - 1) * (c4 - c1) / 3.0


@njit(cache=True, inline="always", error_model="numpy")
def seed_layer_ms(n_l1_hits, n_l23_hits, n_misses, n_experts, seed_tab):
    """A layer's time under the seed's table: accesses + transfers of the misses + compute + allocation."""
    return (
        n_l1_hits * seed_tab[SEED_ACCESS_L1]
        + n_l23_hits * seed_tab[SEED_ACCESS_L23]
        + seed_transfer_ms(n_misses, seed_tab)
        + seed_compute_ms(n_experts, seed_tab)
        + n_misses * seed_tab[SEED_ALLOC]
    )


@njit(cache=True, inline="always", error_model="numpy")
def timeline_layer_ms(stall_ms, compute_ms, layer_overhead_ms):
    """A layer's time in the timeline model: waiting for copies, then expert compute, then the rest."""
    return stall_ms + compute_ms + layer_overhead_ms


@njit(cache=True, error_model="numpy")
def per_expert_finish_ms(now, arrival, compute, n, order, launch_ms=0.0):
    """When a layer whose experts each compute as soon as their own copy has landed finishes (``per-expert``
    execution): experts run one after another on the GPU, in order of arrival (resident ones first, arrival
    ``now``), each starting at ``max(previous finish, its arrival)``. With ``launch_ms`` > 0 the host launches
    them one by one from ``now``, ``launch_ms`` each, and the i-th to run cannot start before its launch
    (``now + (i + 1) * launch_ms``). ``order`` is scratch space of size n; it is left holding the run order."""
    for i in range(n):
        order[i] = i
    # insertion sort by arrival (a layer has at most a few dozen experts); ties keep the request order
    for i in range(1, n):
        j = i
        while j > 0 and arrival[order[j - 1]] > arrival[order[j]]:
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    return _finish_in_order_ms(now, arrival, compute, n, order, launch_ms)


@njit(cache=True, error_model="numpy")
def _finish_in_order_ms(now, arrival, compute, n, order, launch_ms):
    """:func:`per_expert_finish_ms` once its experts are sorted into their run order ``order``."""
    t = now
    for i in range(n):
        k = order[i]
        if arrival[k] > t:
            t = arrival[k]
        launched = now + (i + 1) * launch_ms
        if launched > t:
            t = launched
        t += compute[k]
    return t


@njit(cache=True, error_model="numpy")
def launch_wait_ms(now, finish, arrival, compute, n, order, launch_ms):
    """How much later than ``finish`` (its end with free launches) a layer ends when the host launches its
    experts one by one, ``launch_ms`` each from ``now`` (an engine that runs each expert as its own kernels from
    Python; a grouped kernel or a CUDA graph has ``launch_ms`` = 0). ``arrival[i]`` is when expert i may start
    (its copy's landing, or the whole layer's ready time under ``fused`` execution); ``order`` is the run order
    that :func:`per_expert_finish_ms` left (not sorted again). Where copies are slower than launches the launches
    hide under them and the wait is 0; with every expert resident the layer is launch-bound."""
    return _finish_in_order_ms(now, arrival, compute, n, order, launch_ms) - finish


@njit(cache=True, error_model="numpy")
def fused_launch_wait_ms(now, ready, finish, needed, nneed, ntok, ctab, arrival, compute, order, launch_ms):
    """:func:`launch_wait_ms` of a ``fused`` layer: its ``nneed`` experts (``needed``, ``ntok`` tokens each, compute
    ``ctab[tokens]``) all wait for the layer's last copy (``ready``), so they run in request order; ``arrival``,
    ``compute`` and ``order`` are scratch space."""
    for n in range(nneed):
        arrival[n] = ready
        compute[n] = ctab[ntok[needed[n]]]
        order[n] = n
    return launch_wait_ms(now, finish, arrival, compute, nneed, order, launch_ms)


@njit(cache=True, inline="always")
def step_layer_experts(step_tokens, s, nt, experts, l, K, event, mark, ntok, needed):
    """The distinct experts that the ``nt`` tokens of step ``s`` need at layer ``l``: written to ``needed[:n]``
    (``n`` returned) in first-use order, with ``ntok[e]`` the tokens that need expert ``e``. ``mark[e] == event``
    flags the experts already counted for ``event``, so ``mark`` is never cleared between events."""
    n = 0
    for b in range(nt):
        t = step_tokens[s, b]
        for k in range(K):
            e = experts[t, l, k]
            if mark[e] != event:
                mark[e] = event
                ntok[e] = 0
                needed[n] = e
                n += 1
            ntok[e] += 1
    return n


@njit(cache=True, error_model="numpy")
def demand_all_step_latency(step_tokens, step_ntokens, experts, num_experts, ctab, transfer_ms, link_share,
                            layer_overhead_ms, seed_timing, seed_tab, s0, s1, out):
    """Latency of steps [s0, s1) if no expert were on the GPU: every distinct expert of a layer is copied on
    demand, one after another on an otherwise idle link, then computed (``out[s - s0]``)."""
    L = experts.shape[1]
    K = experts.shape[2]
    mark = np.full(num_experts, -1, dtype=np.int64)
    ntok = np.zeros(num_experts, dtype=np.int64)
    needed = np.empty(num_experts, dtype=np.int64)
    for s in range(s0, s1):
        nt = step_ntokens[s]
        total = 0.0
        for l in range(L):
            nneed = step_layer_experts(step_tokens, s, nt, experts, l, K, s * L + l, mark, ntok, needed)
            if seed_timing:
                total += seed_layer_ms(0, 0, nneed, nneed, seed_tab)
            else:
                compute = 0.0
                for n in range(nneed):
                    compute += ctab[ntok[needed[n]]]
                total += timeline_layer_ms(nneed * transfer_ms / link_share[s], compute, layer_overhead_ms)
        out[s - s0] = total
