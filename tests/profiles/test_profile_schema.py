"""The profile schema: bad profiles fail with the field named; the shipped profiles load and rebuild."""

from __future__ import annotations

import copy
import json
import statistics

import pytest

from moe_cache_env.profiles import ProfileError, list_profiles, load_profile, save_profile
from moe_cache_env.profiles.calibrate import rebuild_profile
from moe_cache_env.profiles.profile import DATA_DIR, profile_from_dict
from moe_cache_env.profiles.seed import build_seed_profile

from .fakes import assert_same_tree, plain_transfer_fit


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


def test_seed_profile_carries_the_seed_table_and_its_fitted_line():
    """The shipped seed profile against the seed design note's timing table (RTX 3090, 28 MiB experts), typed in
    here from the note, and its copy line against a plain-Python least-squares fit of the table's copies."""
    shipped = json.loads((DATA_DIR / "rtx3090-seed.json").read_text())
    note = {"h2d_1_expert_ms": 4.35, "h2d_4_experts_ms": 19.14, "h2d_20_experts_ms": 97.16, "l1_access_ms": 0.047,
            "l2l3_access_ms": 0.541, "compute_1_expert_ms": 0.106, "compute_4_experts_ms": 0.415, "alloc_ms": 0.008}
    assert shipped["seed_table"] == note
    expert = 28 * 2**20
    points = [(1 * expert, 4.35), (4 * expert, 19.14), (20 * expert, 97.16)]
    assert [(p["bytes"], p["ms"]) for p in shipped["h2d_fit"]["points"]] == points
    overhead, gbps = plain_transfer_fit(points, relative=False)
    # the unconstrained line has a negative intercept (-0.47 ms), so the fit runs through the origin
    assert overhead == 0.0
    assert shipped["h2d_overhead_ms"] == 0.0
    assert shipped["h2d_gbps"] == pytest.approx(gbps, abs=1e-6)  # stored rounded to 6 decimals
    assert shipped["compute"] == {"expert_bytes": expert, "tokens": [1.0], "ms": [0.106]}
    assert build_seed_profile() == shipped  # and the generator still writes exactly the shipped file


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
    """The fitted fields of a shipped measured profile follow from its recorded samples: medians and
    least-squares lines recomputed here in plain Python, not by the profile code."""
    data = json.loads((DATA_DIR / f"{name}.json").read_text())
    transfers = data["measurements"]["transfers"]
    for key, fit in data["fits"].items():
        direction, memory = key.split("_")
        points = [(t["bytes"], statistics.median(t["samples_ms"])) for t in transfers
                  if t["direction"] == direction and t["memory"] == memory]
        assert [p["bytes"] for p in fit["points"]] == [b for b, _ in points]
        assert [p["ms"] for p in fit["points"]] == pytest.approx([ms for _, ms in points], rel=1e-12)
        overhead, gbps = plain_transfer_fit(points, relative=True)
        assert fit["overhead_ms"] == pytest.approx(overhead, rel=1e-6, abs=1e-9), key
        assert fit["gbps"] == pytest.approx(gbps, rel=1e-6), key
    assert (data["h2d_overhead_ms"], data["h2d_gbps"]) == (data["fits"]["h2d_pinned"]["overhead_ms"],
                                                           data["fits"]["h2d_pinned"]["gbps"])
    compute = sorted(data["measurements"]["compute"], key=lambda c: c["tokens"])
    assert data["compute"]["tokens"] == [float(c["tokens"]) for c in compute]
    assert data["compute"]["ms"] == pytest.approx([statistics.median(c["graph_samples_ms"]) for c in compute],
                                                  rel=1e-12)
    # and rebuilding from the raw samples changes nothing (the recorded file is a fixed point)
    rebuilt = rebuild_profile(copy.deepcopy(data))
    assert_same_tree(json.loads(json.dumps(rebuilt)), data)


def test_a_loaded_profile_is_reused_until_its_file_changes(tmp_path):
    # every environment reset builds a simulator: a profile file is parsed once, and again when it changes
    path = save_profile(_good(), tmp_path / "p.json")
    first = load_profile(path)
    assert load_profile(str(path)) is first
    data = json.loads(path.read_text())
    data["h2d_gbps"] = first.h2d_gbps * 2
    data.pop("fits", None)  # h2d_gbps is then the file's own value, not a fit of its measurements
    path.write_text(json.dumps(data))
    second = load_profile(path)
    assert second is not first and second.h2d_gbps == pytest.approx(first.h2d_gbps * 2)
    path.unlink()
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(path)  # a profile read before and deleted since is not served from memory
