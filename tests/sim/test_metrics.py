"""Weighted percentiles of step latencies, against hand-computed cases."""

import numpy as np
import pytest

from moe_cache_env.sim.metrics import weighted_percentile, weighted_percentiles


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
