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


# ---- malformed actions: one ValueError naming the action space, never a silent control ----------------------
@pytest.mark.parametrize("name", ["continuous", "extended"])
@pytest.mark.parametrize("shape", [(3,), (2, 2), (1,), (), (1, 2)])
def test_box_action_of_wrong_shape_is_refused(name, shape):
    a = make_action_type(name, **RANGES)
    assert shape != a.space.shape  # every listed shape is wrong for both spaces: (2,) and (8,) are the right ones
    with pytest.raises(ValueError, match=rf"shape .* for the {name} action space Box\(-1\.0, 1\.0, \({a.space.shape[0]},\)"):
        a.decode(np.zeros(shape, dtype=np.float32), Controls())


@pytest.mark.parametrize("name", ["continuous", "extended", "discrete"])
def test_none_action_is_refused(name):
    a = make_action_type(name, **RANGES)
    with pytest.raises(ValueError, match=f"action None is not valid for the {name} action space"):
        a.decode(None, Controls())


@pytest.mark.parametrize("name", ["continuous", "extended"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_component_is_refused_in_every_position(name, bad):
    a = make_action_type(name, **RANGES)
    n = a.space.shape[0]
    for i in range(n):
        action = np.zeros(n, dtype=np.float32)
        action[i] = bad
        with pytest.raises(ValueError, match=rf"component\(s\) \[{i}\] are not finite"):
            a.decode(action, Controls())


def test_nan_lookahead_and_budget_no_longer_become_controls():
    a = make_action_type("extended", **RANGES)
    for i in (2, 3):  # lookahead (NaN < 0 is False: it was 2) and budget (NaN floor: it was unlimited)
        action = np.zeros(8, dtype=np.float32)
        action[i] = np.nan
        with pytest.raises(ValueError, match="extended action space"):
            a.decode(action, Controls())


def test_text_is_refused_for_box_actions():
    a = make_action_type("continuous", **RANGES)
    with pytest.raises(ValueError, match="not an array of numbers"):
        a.decode(["a", "b"], Controls())


@pytest.mark.parametrize("bad", [2.7, 4.0, "4", True, np.float32(3), np.array([1, 2]), np.array(2.0), [4], 9, -1])
def test_discrete_accepts_only_integers_in_range(bad):
    a = make_action_type("discrete", **RANGES)
    with pytest.raises(ValueError, match=r"for the discrete action space Discrete\(9\)"):
        a.decode(bad, Controls())


@pytest.mark.parametrize("good", [4, np.int64(4), np.int32(4), np.array(4), np.array([4])])
def test_discrete_accepts_python_and_numpy_integers(good):
    a = make_action_type("discrete", **RANGES)
    assert a.decode(good, Controls(l2_threshold=0.7, l3_threshold=0.3)) == Controls(l2_threshold=0.7, l3_threshold=0.3)


def test_out_of_range_finite_values_are_still_clipped():
    a = make_action_type("continuous", **RANGES)
    c = a.decode(np.array([5.0, -5.0]), Controls())
    assert (c.l2_threshold, c.l3_threshold) == pytest.approx((0.9, 0.1))


def test_env_step_reports_the_bad_action(make_small_env):
    env = make_small_env("MoECache-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="continuous action space"):
        env.step(np.array([np.nan, 0.0], dtype=np.float32))
    # the episode goes on after a refused action: nothing was applied
    obs, reward, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert np.isfinite(reward)
