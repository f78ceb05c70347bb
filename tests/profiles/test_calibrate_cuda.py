"""The CUDA path of calibrate, end to end on a tiny plan (skipped without a CUDA device)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from moe_cache_env.profiles import load_profile, save_profile  # noqa: E402
from moe_cache_env.profiles.calibrate import CalibrationPlan, calibrate, rebuild_profile  # noqa: E402
from moe_cache_env.profiles.shapes import ExpertShape  # noqa: E402

from .fakes import assert_same_tree  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = CalibrationPlan(
    transfer_sizes_bytes=(2**20, 2**22, 2**24),
    transfer_repeats=5,
    warmup=2,
    expert_counts=(1, 4),
    expert_repeats=5,
    token_counts=(1, 8, 64),
    compute_repeats=5,
    overlap_tokens=8,
    overlap_repeats=3,
)


def test_cuda_calibrate_tiny_plan_writes_a_valid_profile(tmp_path):
    shape = ExpertShape(hidden=512, intermediate=768)
    profile = calibrate(shape, "bf16", name="tiny", plan=TINY, command="test")
    path = save_profile(profile, tmp_path / "tiny.json")
    loaded = load_profile(path)
    assert loaded.name == "tiny"
    assert profile["device"]["name"] == torch.cuda.get_device_name()
    assert profile["device"]["torch"] == torch.__version__
    # Any CUDA GPU's pinned link is faster than 0.5 GB/s and slower than 1 TB/s.
    assert 0.5 < loaded.h2d_gbps < 1000
    for key in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"):
        assert profile["fits"][key]["gbps"] > 0
    assert profile["compute"]["expert_bytes"] == 3 * 512 * 768 * 2
    assert all(ms > 0 for ms in profile["compute"]["ms"])
    assert profile["compute_detail"]["check"]["graph_rel_error"] < 5e-2
    assert 0.0 <= profile["overlap"]["overlap_fraction"] <= 1.0
    assert_same_tree(rebuild_profile(json.loads(path.read_text())), json.loads(json.dumps(profile)))


def test_cuda_pinned_copy_is_faster_than_pageable_for_large_copies(tmp_path):
    profile = calibrate(ExpertShape(256, 512), "fp16", name="tiny2", plan=TINY)
    big = max(TINY.transfer_sizes_bytes)
    by_key = {(t["direction"], t["memory"]): t for t in profile["measurements"]["transfers"] if t["bytes"] == big}
    assert by_key[("h2d", "pinned")]["median_ms"] < by_key[("h2d", "pageable")]["median_ms"]
