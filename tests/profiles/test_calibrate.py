"""The calibration driver, timing statistics, fits and profile assembly, on the CPU with a fake backend."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from moe_cache_env.profiles import ProfileError, fit_transfer, load_profile, save_profile
from moe_cache_env.profiles.calibrate import (
    CalibrationPlan,
    TimingStats,
    build_profile,
    measure_ms,
    rebuild_profile,
    run_calibration,
    summarize_overlap,
)
from moe_cache_env.profiles.shapes import MODEL_EXPERT_SHAPES, ExpertShape, parse_expert_shape

from .fakes import LINK, FakeBackend, plain_transfer_fit

SHAPE = MODEL_EXPERT_SHAPES["qwen1.5-moe"]


class FakeClock:
    """A Timer whose clock only moves when the timed work says so."""

    def __init__(self) -> None:
        self.now_ms = 0.0
        self.started = 0.0

    def start(self) -> None:
        self.started = self.now_ms

    def stop(self) -> float:
        return self.now_ms - self.started


def test_measure_ms_times_each_repeat_after_warmup():
    clock = FakeClock()
    seen = []

    def work(i: int) -> None:
        seen.append(i)
        clock.now_ms += 1.0 + i  # each call takes longer: warm-up calls must not appear in the samples

    samples = measure_ms(work, repeats=4, warmup=2, timer=clock)
    assert seen == [0, 1, 2, 3, 4, 5]
    assert samples == [3.0, 4.0, 5.0, 6.0]


def test_measure_ms_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        measure_ms(lambda i: None, repeats=0, warmup=0, timer=FakeClock())


def test_timing_stats_median_and_percentiles():
    stats = TimingStats.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats.median_ms == 3.0
    assert stats.min_ms == 1.0 and stats.max_ms == 5.0 and stats.n == 5
    assert stats.p10_ms == pytest.approx(1.4) and stats.p90_ms == pytest.approx(4.6)
    with pytest.raises(ValueError):
        TimingStats.from_samples([1.0, float("nan")])


@pytest.mark.parametrize("relative", [False, True])
def test_fit_recovers_exact_overhead_and_bandwidth(relative):
    sizes = [2**k * 2**20 for k in range(11)]
    times = [0.0123 + s / (53.5 * 1e6) for s in sizes]
    fit = fit_transfer(sizes, times, relative=relative)
    assert fit.overhead_ms == pytest.approx(0.0123, rel=1e-9)
    assert fit.gbps == pytest.approx(53.5, rel=1e-9)
    assert fit.residual_ms == pytest.approx(0.0, abs=1e-12)
    assert fit.points == 11


def test_relative_fit_keeps_small_copies_accurate_under_noise():
    rng = np.random.default_rng(7)
    sizes = np.array([2**k * 2**20 for k in range(11)], dtype=float)
    true = 0.01 + sizes / 50e6
    noisy = true * (1 + 0.01 * rng.standard_normal(len(sizes)))
    rel = fit_transfer(sizes, noisy, relative=True)
    assert rel.overhead_ms == pytest.approx(0.01, rel=0.2)
    assert rel.gbps == pytest.approx(50.0, rel=0.02)
    # Every point, the 1 MiB copy included, within a few percent.
    assert rel.max_rel_error < 0.05


def test_fit_clamps_negative_overhead():
    sizes = [1e6, 2e6, 4e6]
    times = [0.018, 0.040, 0.082]  # the line through these crosses zero below 0
    for relative in (False, True):
        fit = fit_transfer(sizes, times, relative=relative)
        assert fit.overhead_ms == 0.0
        assert fit.gbps > 0


def test_fit_rejects_unusable_points():
    with pytest.raises(ProfileError, match="at least two"):
        fit_transfer([1e6], [0.1])
    with pytest.raises(ProfileError, match="positive"):
        fit_transfer([1e6, 2e6], [0.1, -0.2])
    with pytest.raises(ProfileError, match="do not grow"):
        fit_transfer([1e6, 2e6], [0.2, 0.1])


def test_plan_validation_and_round_trip():
    plan = CalibrationPlan.quick()
    assert CalibrationPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert CalibrationPlan().transfer_sizes_bytes[0] == 2**20
    assert CalibrationPlan().transfer_sizes_bytes[-1] == 2**30
    with pytest.raises(ValueError, match="token_counts"):
        CalibrationPlan(token_counts=(4, 1))
    with pytest.raises(ValueError, match="transfer_sizes_bytes"):
        CalibrationPlan(transfer_sizes_bytes=(2**20,))
    with pytest.raises(ValueError, match="unknown fields"):
        CalibrationPlan.from_dict({"repeats": 3})


def _calibration(plan: CalibrationPlan, shape: ExpertShape = SHAPE) -> dict:
    return {"model": "qwen1.5-moe", "hidden": shape.hidden, "intermediate": shape.intermediate, "dtype": "bf16",
            "plan": plan.to_dict(), "created_utc": "2026-01-01T00:00:00Z"}


def _fake_profile(noise: float = 0.01, seed: int = 0) -> dict:
    plan = CalibrationPlan.quick()
    backend = FakeBackend(SHAPE, noise=noise, seed=seed)
    measurements = run_calibration(backend, plan)
    return build_profile(measurements, name="fake", device=backend.device_info(), calibration=_calibration(plan))


def test_run_calibration_covers_the_plan():
    plan = CalibrationPlan.quick()
    backend = FakeBackend(SHAPE)
    m = run_calibration(backend, plan)
    eb = SHAPE.expert_bytes("bf16")
    assert m["expert_bytes"] == eb == 3 * 2048 * 1408 * 2
    assert len(m["transfers"]) == 4 * len(plan.transfer_sizes_bytes)
    assert {(t["direction"], t["memory"]) for t in m["transfers"]} == set(LINK)
    assert all(len(t["samples_ms"]) == plan.transfer_repeats for t in m["transfers"])
    # Separate copies are `count` copies of one expert; a block is one copy of count experts.
    assert ("transfer", "h2d", "pinned", eb, 20) in backend.calls
    assert ("transfer", "h2d", "pinned", 20 * eb, 1) in backend.calls
    assert [c["tokens"] for c in m["compute"]] == list(plan.token_counts)
    assert m["overlap"]["copy_bytes"] == 20 * eb


def test_build_profile_recovers_the_modelled_link():
    profile = _fake_profile(noise=0.0)
    overhead, gbps = LINK[("h2d", "pinned")]
    assert profile["h2d_overhead_ms"] == pytest.approx(overhead, rel=1e-4)
    assert profile["h2d_gbps"] == pytest.approx(gbps, rel=1e-4)
    for (direction, memory), (overhead, gbps) in LINK.items():
        fit = profile["fits"][f"{direction}_{memory}"]
        assert fit["gbps"] == pytest.approx(gbps, rel=1e-4)
        assert fit["overhead_ms"] == pytest.approx(overhead, rel=1e-3)
    assert profile["compute"]["expert_bytes"] == SHAPE.expert_bytes("bf16")
    assert profile["compute"]["ms"][0] == pytest.approx(0.0202)
    pinned_20 = next(e for e in profile["experts"] if e["memory"] == "pinned" and e["experts"] == 20)
    assert pinned_20["separate_ms"] > pinned_20["block_ms"]  # 20 overheads instead of one
    assert pinned_20["fit_block_ms"] == pytest.approx(pinned_20["block_ms"], rel=1e-4)


def test_profile_is_deterministic_saves_loads_and_rebuilds(tmp_path):
    profile = _fake_profile(seed=3)
    assert _fake_profile(seed=3) == profile
    assert _fake_profile(seed=4) != profile
    path = save_profile(profile, tmp_path / "fake.json")
    loaded = load_profile(path)
    on_disk = json.loads(path.read_text())
    # the saved line is the least-squares line of the saved medians (recomputed here in plain Python), and
    # with 1% noise it stays near the fake link's (0.012 ms, 52 GB/s)
    points = [(t["bytes"], statistics.median(t["samples_ms"])) for t in on_disk["measurements"]["transfers"]
              if t["direction"] == "h2d" and t["memory"] == "pinned"]
    overhead, gbps = plain_transfer_fit(points, relative=True)
    assert loaded.h2d_gbps == pytest.approx(gbps, rel=1e-6)
    assert loaded.h2d_overhead_ms == pytest.approx(overhead, rel=1e-6, abs=1e-9)
    assert loaded.h2d_gbps == pytest.approx(LINK[("h2d", "pinned")][1], rel=0.03)
    assert rebuild_profile(on_disk) == json.loads(json.dumps(profile))


def test_build_profile_rejects_a_wrong_expert_output():
    plan = CalibrationPlan.quick()
    m = run_calibration(FakeBackend(SHAPE), plan)
    m["compute_check"]["graph_rel_error"] = float("nan")
    with pytest.raises(ProfileError, match="graph_rel_error"):
        build_profile(m, name="x", device={}, calibration=_calibration(plan))


def test_build_profile_rejects_a_shape_that_does_not_match():
    plan = CalibrationPlan.quick()
    m = run_calibration(FakeBackend(SHAPE), plan)
    with pytest.raises(ProfileError, match="expert_bytes"):
        build_profile(m, name="x", device={}, calibration=_calibration(plan, ExpertShape(4096, 14336)))


def test_overlap_summary():
    med = {"copy_alone": 10.0, "compute_alone": 8.0, "compute_with_copy": 8.8, "copy_with_compute": 10.0,
           "total_concurrent": 10.5}
    raw = {f"{k}_samples_ms": [v] for k, v in med.items()}
    summary = summarize_overlap({"copy_bytes": 1, "tokens": 16, "replays": 2, "experts_per_replay": 3, **raw})
    assert summary["overlap_fraction"] == pytest.approx((10 + 8 - 10.5) / 8)
    assert summary["compute_slowdown"] == pytest.approx(0.1)
    assert summary["expert_calls"] == 6


def test_expert_shapes():
    assert MODEL_EXPERT_SHAPES["mixtral"].expert_bytes("bf16") == 3 * 4096 * 14336 * 2
    assert MODEL_EXPERT_SHAPES["olmoe"].expert_bytes("fp32") == 3 * 2048 * 1024 * 4
    assert parse_expert_shape("2048, 1408") == ExpertShape(2048, 1408)
    for bad in ("2048", "2048,x", "0,5", "-1,3"):
        with pytest.raises(ValueError, match="expert shape"):
            parse_expert_shape(bad)


def test_compute_affine_rows_recover_a_fixed_cost_and_bandwidth():
    from moe_cache_env.profiles.report import compute_affine_rows

    rows = [{"model": m, "expert_bytes": b, "tokens": t, "measured_ms": 0.015 + b / 2.9e9 + 1e-5 * t}
            for m, b in (("a", 12 * 2**20), ("b", 336 * 2**20), ("c", 17 * 2**20)) for t in (1, 16)]
    fits = compute_affine_rows({"checks": {"compute_scaling": {"rows": rows}}})
    assert [f["tokens"] for f in fits] == [1, 16]
    assert fits[0]["fixed_ms"] == pytest.approx(0.01501, rel=1e-6)
    assert fits[1]["weight_gbps"] == pytest.approx(2900, rel=1e-6)
    assert compute_affine_rows({}) == []


# ------------------------------------------------------------------ non-expert time, host cost, compute scaling


def _full_fake_profile(noise: float = 0.0) -> dict:
    from moe_cache_env.profiles.calibrate import default_scaling_shapes
    from moe_cache_env.profiles.shapes import MODEL_LAYER_SHAPES

    plan = CalibrationPlan.quick()
    backend = FakeBackend(SHAPE, noise=noise)
    m = run_calibration(backend, plan, layer=MODEL_LAYER_SHAPES["qwen1.5-moe"], layer_model="qwen1.5-moe",
                        scaling_shapes=default_scaling_shapes())
    return build_profile(m, name="fake", device=backend.device_info(), calibration=_calibration(plan))


def test_non_expert_grid_sets_layer_overhead_and_host_cost(tmp_path):
    from .fakes import HOST_SYNCED_MS, NON_EXPERT_B1_MS

    profile = _full_fake_profile()
    plan = CalibrationPlan.quick()
    table = profile["non_expert"]
    assert table["model"] == "qwen1.5-moe" and table["layer"]["num_experts"] == 60
    assert {(r["batch"], r["context"]) for r in table["rows"]} == {
        (b, c) for b in plan.non_expert_batches for c in plan.non_expert_contexts}
    assert profile["layer_overhead_ms"] == pytest.approx(NON_EXPERT_B1_MS)
    row = table["rows"][0]
    assert row["attention_ms"] + row["router_ms"] + row["shared_expert_ms"] == pytest.approx(row["ms"])
    assert row["eager_ms"] == pytest.approx(2.5 * row["ms"])
    host = profile["host"]
    assert host["synced_ms"] == pytest.approx(HOST_SYNCED_MS)
    assert host["non_expert_ms"] == pytest.approx(NON_EXPERT_B1_MS)
    # launch-bound (0.03 ms per expert launch > 0.02 ms of compute): a layer is the non-expert time, four expert
    # launches, and the last expert's compute (longer than the next layer's launch)
    assert host["expert_launch_ms"] == pytest.approx(0.03)  # the slope between 4 and 8 experts per layer
    assert host["expert_launch_busy_ms"] == pytest.approx(0.025)
    assert host["expert_launch_ms"] > host["compute_ms"] > host["layer_launch_ms"]
    free = NON_EXPERT_B1_MS + 4 * host["expert_launch_ms"] + host["compute_ms"]
    assert host["model_without_decision_ms"] == pytest.approx(free, rel=1e-6)
    HOST_DECISION_MS = HOST_SYNCED_MS - free
    assert profile["host"]["decision_ms"] == pytest.approx(HOST_DECISION_MS)
    assert profile["host_decision_ms"] == pytest.approx(HOST_DECISION_MS)
    # the engine's decision times by copies issued (0.03, 0.05, 0.07 ms for 0, 1, 2 copies): 0.02 ms per copy
    from .fakes import HOST_COPY_ISSUE_MS

    assert profile["copy_issue_ms"] == pytest.approx(HOST_COPY_ISSUE_MS)
    assert profile["host"]["decision_by_copies_ms"]["2"]["median"] == pytest.approx(0.07)
    loaded = load_profile(save_profile(profile, tmp_path / "p.json"))
    assert loaded.layer_overhead_ms == pytest.approx(NON_EXPERT_B1_MS)
    assert loaded.host_decision_ms == pytest.approx(HOST_DECISION_MS)
    assert loaded.expert_launch_ms == pytest.approx(0.03)  # the slope above, which the simulator reads
    assert loaded.copy_issue_ms == pytest.approx(HOST_COPY_ISSUE_MS)
    assert loaded.non_expert_ms() == loaded.layer_overhead_ms
    at_8 = next(r["ms"] for r in table["rows"] if r["batch"] == 8)
    assert loaded.non_expert_ms(8, 512) == pytest.approx(at_8)
    assert loaded.non_expert_ms(4.5, 512) == pytest.approx((at_8 + NON_EXPERT_B1_MS) / 2)
    assert loaded.non_expert_ms(1000, 99999) == pytest.approx(at_8)  # clamped at the grid's edge
    assert rebuild_profile(json.loads((tmp_path / "p.json").read_text())) == json.loads(json.dumps(profile))


def test_compute_scaling_measured_by_calibrate_drives_the_compute_model(tmp_path):
    from .fakes import COMPUTE_FIXED_MS, COMPUTE_GBPS

    profile = _full_fake_profile()
    models = {r["model"] for r in profile["compute_scaling"]["rows"]}
    assert models == set(MODEL_EXPERT_SHAPES) | {"synthetic-28mib"}
    loaded = load_profile(save_profile(profile, tmp_path / "p.json"))
    mixtral = MODEL_EXPERT_SHAPES["mixtral"].expert_bytes("bf16")
    expected = COMPUTE_FIXED_MS + mixtral / (COMPUTE_GBPS * 1e6) + 1e-5
    assert loaded.expert_compute_ms(1, mixtral) == pytest.approx(expected, rel=1e-4)  # samples are rounded to 1 ns


def test_profiles_without_the_new_sections_read_as_before():
    profile = _fake_profile(noise=0.0)
    assert "non_expert" not in profile and "host" not in profile and "compute_scaling" not in profile
    assert profile["layer_overhead_ms"] == 0.0
    from moe_cache_env.profiles.profile import profile_from_dict

    loaded = profile_from_dict(profile)
    assert loaded.host_decision_ms == 0.0
    assert loaded.non_expert_ms(8, 2048) == 0.0
    assert "host_decision_ms" not in loaded.to_dict()
    assert loaded.expert_launch_ms == 0.0 and "expert_launch_ms" not in loaded.to_dict()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["non_expert"]["rows"][0].update(ms=-1.0), "ms"),
        (lambda d: d["non_expert"].update(rows=[]), "non_expert"),
        (lambda d: d["host"].pop("decision_ms"), "decision_ms"),
        (lambda d: d.update(host_decision_ms=-0.5), "host_decision_ms"),
        (lambda d: d.update(expert_launch_ms=float("nan")), "expert_launch_ms"),
        (lambda d: d["compute_scaling"]["rows"][0].update(measured_ms=0), "measured_ms"),
    ],
)
def test_bad_new_sections_are_rejected(edit, field):
    from moe_cache_env.profiles.profile import profile_from_dict

    profile = _full_fake_profile()
    edit(profile)
    with pytest.raises(ProfileError, match=field):
        profile_from_dict(profile)


def test_plan_default_point_must_be_on_the_grid():
    with pytest.raises(ValueError, match="default_context"):
        CalibrationPlan(non_expert_contexts=(1024,))
    with pytest.raises(ValueError, match="default_batch"):
        CalibrationPlan(non_expert_batches=(2, 4))


def test_layer_shapes_of_the_presets():
    from moe_cache_env.profiles.shapes import MODEL_LAYER_SHAPES, LayerShape, expert_shape_for_bytes

    assert set(MODEL_LAYER_SHAPES) == set(MODEL_EXPERT_SHAPES)
    for name, layer in MODEL_LAYER_SHAPES.items():
        assert layer.hidden == MODEL_EXPERT_SHAPES[name].hidden
    seed = expert_shape_for_bytes(2048, 28 * 2**20)
    assert seed == ExpertShape(2048, 2368)  # a multiple of 64, 0.9% short of 28 MiB
    assert 0 <= 28 * 2**20 - seed.expert_bytes("bf16") < 64 * 3 * 2048 * 2
    assert expert_shape_for_bytes(2048, 28 * 2**20, align=1) == ExpertShape(2048, 2389)
    with pytest.raises(ValueError, match="kv_heads"):
        LayerShape(hidden=64, heads=6, kv_heads=4, head_dim=8, num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="MLA"):
        LayerShape(hidden=64, heads=4, kv_heads=4, head_dim=8, num_experts=4, top_k=2, attention="mla")
