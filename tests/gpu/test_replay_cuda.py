"""The CUDA replay device end to end on a tiny model (skipped without a CUDA device)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moe_cache_env.gpu.reference_policies import ReferenceTiming, estimate_latency, reference_log  # noqa: E402
from moe_cache_env.gpu.replay import CudaReplayConfig, CudaReplayDevice, replay  # noqa: E402
from moe_cache_env.profiles.shapes import LayerShape  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LAYER = LayerShape(hidden=256, heads=4, kv_heads=4, head_dim=64, num_experts=8, top_k=2, shared_intermediate=256)


def _log(policy: str, batch: int = 1):
    rng = np.random.default_rng(0)
    experts = np.stack([rng.permutation(8)[:2] for _ in range(40 * 3)]).reshape(40, 3, 2)
    return reference_log(experts, num_experts=8, expert_bytes=3 * 256 * 512 * 2 + 64, slots_per_layer=4,
                         policy=policy, batch=batch)


@pytest.mark.parametrize("order", ["fused", "per-expert"])
@pytest.mark.parametrize("policy", ["lru", "lru-prefetch"])
def test_cuda_replay_runs_and_counts_the_log_copies(policy, order):
    log = _log(policy)
    device = CudaReplayDevice(CudaReplayConfig(layer=LAYER, hidden=256, intermediate=512, batch=1, context=32,
                                               host_memory_gib=0.01))
    result = replay(device, log, order=order, warmup_steps=2)
    lat = result["latency_ms"]
    assert lat.shape == (log.num_steps,) and (lat > 0).all() and np.isfinite(lat).all()
    est = estimate_latency(log, ReferenceTiming(0.01, (0.0, 0.01)), order)
    assert result["copies"]["demand"] + result["copies"]["promoted"] + result["copies"]["prefetch"] == \
        est["copies"]["demand"] + est["copies"]["promoted"] + est["copies"]["prefetch"]
    assert device.info()["host_experts_stored"] >= 1


def test_cuda_replay_copies_the_right_weights_into_the_slots():
    log = _log("lru", batch=2)
    device = CudaReplayDevice(CudaReplayConfig(layer=LAYER, hidden=256, intermediate=512, batch=2, context=16,
                                               host_memory_gib=1.0, non_expert="eager"))
    replay(device, log, order="fused", warmup_steps=0)
    torch.cuda.synchronize()
    # after the run, each slot holds the expert the log put there last
    content = {}
    E = log.num_experts
    for d in log.iter_decisions():
        for e, slot, _, _ in d.need:
            content[slot] = d.layer * E + e
    for slot, key in content.items():
        assert torch.equal(device.slots[slot], device.host_views[key % device.host_keys].to(device.device))
