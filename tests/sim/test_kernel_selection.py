"""The predicting path's helpers against plain-Python references: calibration binning and the experts a
calibrated selection pass must see, in the order it takes them (kernel._bin_scores,
kernel._calibrated_candidates)."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.sim import kernel as K

NB = K.NUM_CAL_BINS


def _binned(conf: np.ndarray, slot: int = 1) -> tuple[np.ndarray, np.ndarray]:
    E = conf.shape[0]
    pend_bin = np.full((3, E), -7, dtype=np.int64)
    pend_hist = np.full((3, NB), -3.0)
    cal_hist = np.full(K.CAL_LANES * NB, 99, dtype=np.int64)  # stale counts from an earlier call must not leak
    K._bin_scores(conf.copy(), E, slot, pend_bin, pend_hist, cal_hist)
    return pend_bin, pend_hist


@pytest.mark.parametrize("E", [1, 3, 4, 7, 60, 61, 128])
def test_bin_scores_matches_a_plain_histogram(E: int) -> None:
    rng = np.random.default_rng(E)
    conf = rng.uniform(0.0, 1.0, size=E) ** 3  # most scores low, as a predictor's are
    conf[0] = 1.0  # the top edge belongs to the last bin
    if E > 2:
        conf[1] = 0.05  # a bin edge
        conf[2] = 0.0
    pend_bin, pend_hist = _binned(conf)
    expect_bins = [min(int(c * NB), NB - 1) for c in conf]
    assert pend_bin[1].tolist() == expect_bins
    counts = [0.0] * NB
    for b in expect_bins:
        counts[b] += 1.0
    assert pend_hist[1].tolist() == counts
    # the other slots are untouched
    assert (pend_bin[0] == -7).all() and (pend_hist[2] == -3.0).all()


def _reference_lists(vals: list[float], ntruth: int, thr: float) -> tuple[int, list[int], list[int]]:
    order = sorted(range(len(vals)), key=lambda e: (-vals[e], e))
    return order[0], order[:ntruth], [e for e in order if vals[e] >= thr]


@pytest.mark.parametrize("seed", range(40))
def test_calibrated_candidates_hold_every_expert_a_list_can_take(seed: int) -> None:
    rng = np.random.default_rng(seed)
    E = int(rng.integers(1, 70))
    table = rng.uniform(0.0, 1.0, size=NB)
    if seed % 3 == 0:
        table[rng.integers(NB)] = table[rng.integers(NB)]  # two bins answering the same value (ties across bins)
    if seed % 4 == 1:
        table = np.sort(table)[::-1].copy()  # a table that falls with the score: not monotone the usual way
    conf = rng.uniform(0.0, 1.0, size=E) ** int(rng.integers(1, 4))
    slot = int(rng.integers(3))
    pend_bin = np.zeros((3, E), dtype=np.int64)
    pend_hist = np.zeros((3, NB))
    K._bin_scores(conf.copy(), E, slot, pend_bin, pend_hist, np.zeros(K.CAL_LANES * NB, dtype=np.int64))
    ntruth = int(rng.integers(1, E + 1))
    thr = float(rng.choice([0.0, 0.3, 0.7, 1.01, float(table[pend_bin[slot, 0]])]))
    out_conf = np.full(E, -1.0)
    k_conf = np.full(3 * E, -1.0)
    sel = np.full(E, -1, dtype=np.int64)
    order = np.full(E, -1, dtype=np.int64)
    stale = np.full(NB, 5, dtype=np.int64)  # scratch left over from an earlier call must not matter
    nsel = K._calibrated_candidates(out_conf, E, slot, pend_bin, pend_hist, table, ntruth, thr, k_conf, E, sel,
                                    np.full(NB, 0.5), stale.copy(), stale.copy(), stale.copy(), stale.copy(), order)
    vals = [float(table[min(int(c * NB), NB - 1)]) for c in conf]
    assert out_conf.tolist() == vals
    assert k_conf[E:2 * E].tolist() == vals and (k_conf[:E] == -1.0).all() and (k_conf[2 * E:] == -1.0).all()
    chosen = sel[:nsel].tolist()
    assert chosen == sorted(set(chosen)), "in expert order, each once"
    best, top, cand = _reference_lists(vals, ntruth, thr)
    assert best in chosen
    assert set(top) <= set(chosen)
    assert set(cand) <= set(chosen)
    # and the lists made from the chosen experts alone are the lists made from all of them
    sub = {e: vals[e] for e in chosen}
    by_value = sorted(sub, key=lambda e: (-sub[e], e))
    assert order[:nsel].tolist() == by_value, "highest confidence first, ties to the lower expert"
    assert (order[nsel:] == -1).all()
    assert by_value[0] == best and by_value[:ntruth] == top and [e for e in by_value if sub[e] >= thr] == cand
    # nothing is chosen that no list can take: below both the cut of the recall list and the threshold
    cut = min(vals[top[-1]], thr)
    assert all(vals[e] >= cut for e in chosen)
    assert len(chosen) == sum(1 for v in vals if v >= cut)


def test_layout_key_tells_apart_what_numba_types_differently() -> None:
    # the simulator reuses another simulator's compiled entry point only for arguments with the same key, so
    # the key must differ wherever numba's types differ: dtype, dimensions, contiguity, writeability, tuples
    from collections import namedtuple

    from moe_cache_env.sim.simulator import _layout_key

    a = np.zeros((4, 3), dtype=np.int64)
    assert _layout_key(a) == _layout_key(np.ones((4, 3), dtype=np.int64))  # values do not matter
    frozen = a.copy()
    frozen.flags.writeable = False
    others = [a.astype(np.int32), a.reshape(-1), np.asfortranarray(a), a[:, ::2], frozen]
    keys = {_layout_key(x) for x in others}
    assert len(keys) == len(others) and _layout_key(a) not in keys
    Pair = namedtuple("Pair", "x y")
    Other = namedtuple("Other", "x y")
    assert _layout_key(Pair(a, 1)) != _layout_key(Other(a, 1))
    assert _layout_key(Pair(a, 1)) != _layout_key(Pair(a, 1.0))
    assert _layout_key(Pair(a, True)) != _layout_key(Pair(a, 1))
    assert _layout_key((a, object())) is None  # anything else: numba is asked
    assert _layout_key(2**64) is None
