"""The simulator's expert compute time follows the profile's multi-shape fit where one was measured."""

import pytest

from moe_cache_env.profiles import load_profile


def test_h100_compute_matches_each_measured_shape():
    profile = load_profile("h100")
    rows = profile.raw["checks"]["compute_scaling"]["rows"]
    assert len({r["expert_bytes"] for r in rows}) >= 2
    for row in rows:
        predicted = profile.expert_compute_ms(row["tokens"], row["expert_bytes"])
        assert predicted == pytest.approx(row["measured_ms"], rel=0.05), row


def test_single_shape_profile_scales_by_bytes():
    profile = load_profile("rtx3090-seed")
    assert profile.expert_compute_ms(1, profile.compute_expert_bytes) == pytest.approx(0.106)
    assert profile.expert_compute_ms(1, 2 * profile.compute_expert_bytes) == pytest.approx(0.212)
    table = profile.compute_table(profile.compute_expert_bytes, 4)
    assert table[0] == 0.0 and table[1] == pytest.approx(0.106)
