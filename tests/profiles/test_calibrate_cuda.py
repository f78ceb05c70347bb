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


def test_cuda_non_expert_host_and_scaling_on_a_tiny_layer(tmp_path):
    from moe_cache_env.profiles.calibrate import CudaBackend, build_profile, run_calibration
    from moe_cache_env.profiles.shapes import LayerShape

    plan = CalibrationPlan(
        transfer_sizes_bytes=(2**20, 2**22), transfer_repeats=3, warmup=1, expert_counts=(1,), expert_repeats=3,
        token_counts=(1, 8), compute_repeats=3, overlap_tokens=8, overlap_repeats=2, scaling_tokens=(1,),
        scaling_repeats=3, non_expert_batches=(1, 2), non_expert_contexts=(16, 64), non_expert_repeats=3,
        default_batch=1, default_context=16, host_layers=3, host_repeats=2,
    )
    shape = ExpertShape(hidden=256, intermediate=384)
    layer = LayerShape(hidden=256, heads=4, kv_heads=2, head_dim=64, num_experts=8, top_k=2, shared_intermediate=512,
                       shared_gate=True, qkv_bias=True)
    backend = CudaBackend(shape, "bf16", plan)
    m = run_calibration(backend, plan, layer=layer, layer_model="tiny",
                        scaling_shapes={"a": ExpertShape(256, 384), "b": ExpertShape(256, 1024)})
    calibration = {"model": None, "hidden": 256, "intermediate": 384, "dtype": "bf16", "plan": plan.to_dict(),
                   "created_utc": "2026-01-01T00:00:00Z"}
    profile = build_profile(m, name="tiny", device=backend.device_info(), calibration=calibration)
    loaded = load_profile(save_profile(profile, tmp_path / "tiny.json"))
    assert len(profile["non_expert"]["rows"]) == 4
    assert all(r["ms"] > 0 and r["shared_expert_ms"] > 0 for r in profile["non_expert"]["rows"])
    assert loaded.layer_overhead_ms == profile["non_expert"]["rows"][0]["ms"]
    host = profile["host"]
    assert host["synced_ms"] > 0 and host["decision_ms"] >= 0
    # the engine timed its decisions over layers that issued 0 to top_k copies
    assert set(host["decision_by_copies_ms"]) >= {"0", "1"} and profile["copy_issue_ms"] >= 0
    assert loaded.copy_issue_ms == profile["copy_issue_ms"]
    assert len(profile["compute_scaling"]["rows"]) == 2


def test_cuda_mla_layer_runs():
    from moe_cache_env.profiles.layer import DecodeLayer
    from moe_cache_env.profiles.shapes import MODEL_LAYER_SHAPES

    layer = DecodeLayer(MODEL_LAYER_SHAPES["deepseek-v2-lite"], batch=2, context=32, device="cuda")
    h, m, w, ids = layer(torch.randn(2, 2048, device="cuda", dtype=torch.bfloat16))
    assert torch.isfinite(h).all() and ids.shape == (2, 6)
