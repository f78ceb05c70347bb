"""Weighted percentiles of step latencies against hand-computed cases, and the metrics of many windows at once
against one window at a time."""

import numpy as np
import pytest

from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.metrics import (
    metrics_from_counters,
    metrics_of_windows,
    weighted_mean,
    weighted_percentile,
    weighted_percentiles,
    weighted_percentiles_of_rows,
)


@pytest.mark.parametrize("q, expected", [(10, 1.0), (25, 1.0), (50, 2.0), (75, 2.0), (95, 3.0), (100, 3.0)])
def test_weighted_percentile_by_hand(q, expected):
    # sorted values 1, 2, 3 weigh 1, 2, 1: cumulative weights 1, 3, 4; the q-th percentile is the first value
    # whose cumulative weight reaches q% of 4 (q = 25 reaches 1 exactly at the first value, q = 75 reaches 3 at
    # the second)
    values = np.array([3.0, 1.0, 2.0])
    weights = np.array([1.0, 1.0, 2.0])
    assert weighted_percentile(values, weights, q) == expected


def test_weighted_percentiles_match_one_at_a_time_and_empty():
    rng = np.random.default_rng(3)
    values = rng.random(17)
    weights = rng.integers(1, 5, 17).astype(np.float64)
    qs = (0.0, 50.0, 95.0, 99.0)
    assert weighted_percentiles(values, weights, qs) == [weighted_percentile(values, weights, q) for q in qs]
    assert weighted_percentiles(np.zeros(0), np.zeros(0), qs) == [0.0] * 4


def test_percentiles_of_rows_match_each_row():
    # ties in the values and zero weights are where a sort or a search could differ
    rng = np.random.default_rng(7)
    for length in (1, 2, 5, 8, 13):
        values = rng.integers(0, 4, (40, length)).astype(np.float64) * 0.5
        weights = rng.integers(0, 4, (40, length)).astype(np.float64)
        weights[:, 0] += 1.0  # every row weighs something
        qs = (0.0, 50.0, 95.0, 99.0, 100.0)
        rows = weighted_percentiles_of_rows(values, weights, qs)
        for i in range(values.shape[0]):
            assert rows[i].tolist() == weighted_percentiles(values[i], weights[i], qs)


def test_metrics_of_windows_match_one_window_at_a_time():
    """The columnar metrics are the one-window metrics: same keys in the same order, same types, same bits."""
    rng = np.random.default_rng(11)
    n = 30
    counters = rng.integers(0, 50, (n, K.NUM_COUNTERS)).astype(np.float64)
    counters[:, K.C_LINK_BUSY_MS] = rng.random(n) * 30.0
    counters[:, K.C_ELAPSED_MS] = rng.random(n) * 20.0  # busy > elapsed in some rows: capped at 1
    counters[::4] = 0.0  # empty windows: every ratio's denominator is 0
    lat = rng.random((n, 6)) * 40.0
    tokens = rng.integers(1, 9, (n, 6))
    expert_bytes = rng.integers(1, 2**26, n)
    expected = [metrics_from_counters(counters[i], lat[i], tokens[i], int(expert_bytes[i])) for i in range(n)]
    w = tokens.astype(np.float64)
    means = np.array([weighted_mean(lat[i], w[i]) for i in range(n)])
    columns, got = metrics_of_windows(counters, means, weighted_percentiles_of_rows(lat, w, (50, 95, 99)),
                                      expert_bytes)
    for one, many in zip(expected, got):
        assert list(one) == list(many)
        assert [type(v) for v in one.values()] == [type(v) for v in many.values()]
        assert one == many
    assert list(columns) == list(expected[0])
    for name, column in columns.items():
        assert column.tolist() == [one[name] for one in expected]
