"""Action types map onto the seed's threshold ranges and back."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.envs.actions import make_action_type
from moe_cache_env.sim.config import Controls

RANGES = dict(l2_range=(0.5, 0.9), l3_range=(0.1, 0.6), discrete_step=0.05, max_prefetch_budget=16)


def test_continuous_maps_ends_and_middle():
    a = make_action_type("continuous", **RANGES)
    low = a.decode(np.array([-1, -1], dtype=np.float32), Controls())
    high = a.decode(np.array([1, 1], dtype=np.float32), Controls())
    mid = a.decode(np.array([0, 0], dtype=np.float32), Controls())
    assert (low.l2_threshold, low.l3_threshold) == pytest.approx((0.5, 0.1))
    # L3's top (0.6) is above L2's top (0.9)? no: 0.6 < 0.9, so both ends are reachable
    assert (high.l2_threshold, high.l3_threshold) == pytest.approx((0.9, 0.6))
    assert (mid.l2_threshold, mid.l3_threshold) == pytest.approx((0.7, 0.35))


def test_l3_is_clipped_to_l2():
    a = make_action_type("continuous", **RANGES)
    c = a.decode(np.array([-1, 1], dtype=np.float32), Controls())
    assert c.l2_threshold == pytest.approx(0.5) and c.l3_threshold == pytest.approx(0.5)


def test_continuous_encode_decode_round_trip():
    a = make_action_type("continuous", **RANGES)
    for l2, l3 in [(0.55, 0.15), (0.8, 0.45), (0.9, 0.6)]:
        c = a.decode(a.encode(l2, l3, Controls()), Controls())
        assert (c.l2_threshold, c.l3_threshold) == pytest.approx((l2, l3), abs=1e-6)


def test_discrete_moves_by_one_step_and_clips():
    a = make_action_type("discrete", **RANGES)
    start = Controls(l2_threshold=0.7, l3_threshold=0.3)
    assert a.decode(4, start) == start  # keep, keep
    down = a.decode(0, start)
    assert (down.l2_threshold, down.l3_threshold) == pytest.approx((0.65, 0.25))
    up_l3 = a.decode(5, start)
    assert (up_l3.l2_threshold, up_l3.l3_threshold) == pytest.approx((0.7, 0.35))
    floor = a.decode(0, Controls(l2_threshold=0.5, l3_threshold=0.1))
    assert (floor.l2_threshold, floor.l3_threshold) == pytest.approx((0.5, 0.1))
    assert a.encode(0.6, 0.3, start) == 3 * 0 + 1  # L2 down, L3 keep
    with pytest.raises(ValueError):
        a.decode(9, start)


def test_extended_decodes_every_control():
    a = make_action_type("extended", **RANGES)
    c = a.decode(np.array([1, -1, 1, -1, 1, -1, 1, 0], dtype=np.float32), Controls())
    assert c.lookahead == 2
    assert c.prefetch_budget == 1
    assert c.l2_share == pytest.approx(1.0)
    assert (c.w_recency, c.w_frequency, c.w_confidence) == pytest.approx((0.0, 2.0, 1.0))
    unlimited = a.decode(np.array([0, 0, -1, 1, 0, 0, 0, 0], dtype=np.float32), Controls())
    assert unlimited.prefetch_budget == 0 and unlimited.lookahead == 1
    kept = a.decode(a.encode(0.8, 0.2, Controls()), Controls())
    assert (kept.l2_threshold, kept.l3_threshold, kept.prefetch_budget, kept.lookahead) == pytest.approx((0.8, 0.2, 0, 1))
    assert a.budget_levels == [1, 2, 4, 8, 16, 0]
