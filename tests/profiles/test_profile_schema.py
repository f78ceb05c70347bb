"""The profile schema: bad profiles fail with the field named; the shipped profiles load and rebuild."""

from __future__ import annotations

import copy
import json

import pytest

from moe_cache_env.profiles import ProfileError, list_profiles, load_profile, save_profile
from moe_cache_env.profiles.calibrate import rebuild_profile
from moe_cache_env.profiles.profile import DATA_DIR, profile_from_dict
from moe_cache_env.profiles.seed import build_seed_profile

from .fakes import assert_same_tree


def _good() -> dict:
    return build_seed_profile()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("h2d_gbps"), "h2d_gbps"),
        (lambda d: d.update(h2d_gbps=0), "h2d_gbps"),
        (lambda d: d.update(h2d_overhead_ms=-0.1), "h2d_overhead_ms"),
        (lambda d: d.update(h2d_overhead_ms="fast"), "h2d_overhead_ms"),
        (lambda d: d.update(format="moe-profile/0"), "format"),
        (lambda d: d.update(name=""), "name"),
        (lambda d: d.update(layer_overhead_ms=float("inf")), "layer_overhead_ms"),
        (lambda d: d.update(compute=[1.0]), "compute"),
        (lambda d: d["compute"].update(expert_bytes=0), "expert_bytes"),
        (lambda d: d["compute"].update(tokens=[1.0, 2.0]), "compute.tokens"),
        (lambda d: d["compute"].update(tokens=[4.0, 2.0], ms=[0.1, 0.1]), "compute.tokens"),
        (lambda d: d["compute"].update(ms=[-0.1]), "compute.ms"),
        (lambda d: d.update(device="H100"), "device"),
        (lambda d: d.update(fits={"h2d_pinned": {"overhead_ms": 0.01, "gbps": -5}}), "gbps"),
        (lambda d: d.update(fits={"h2d_pinned": {"gbps": 5}}), "overhead_ms"),
        (lambda d: d.update(fits=[1]), "fits"),
        (lambda d: d["seed_table"].pop("alloc_ms"), "alloc_ms"),
    ],
)
def test_bad_profiles_are_rejected_naming_the_field(edit, field):
    data = _good()
    edit(data)
    with pytest.raises(ProfileError, match=field):
        profile_from_dict(data)


def test_save_refuses_an_invalid_profile(tmp_path):
    data = _good()
    data["h2d_gbps"] = -1
    with pytest.raises(ProfileError, match="h2d_gbps"):
        save_profile(data, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*rtx3090-seed"):
        load_profile("nope")
    bad = tmp_path / "broken.json"
    bad.write_text("{")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)


def test_seed_profile_is_unchanged_by_the_fit_options():
    shipped = json.loads((DATA_DIR / "rtx3090-seed.json").read_text())
    assert build_seed_profile() == shipped


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profiles_load(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.h2d_gbps > 0
    assert profile.transfer_ms(28 * 2**20) > profile.h2d_overhead_ms


def test_h100_profile_is_shipped_with_its_measurements():
    assert "h100" in list_profiles()
    data = json.loads((DATA_DIR / "h100.json").read_text())
    assert "H100" in data["device"]["name"]
    for key in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"):
        assert len(data["fits"][key]["points"]) == 11  # 1 MiB .. 1 GiB
    assert data["measurements"]["transfers"]


@pytest.mark.parametrize("name", [n for n in list_profiles() if "measurements" in json.loads((DATA_DIR / f"{n}.json").read_text())])
def test_measured_profiles_rebuild_from_their_raw_measurements(name):
    """The fitted fields of a shipped measured profile follow from its recorded samples, exactly."""
    data = json.loads((DATA_DIR / f"{name}.json").read_text())
    rebuilt = rebuild_profile(copy.deepcopy(data))
    assert_same_tree(json.loads(json.dumps(rebuilt)), data)
