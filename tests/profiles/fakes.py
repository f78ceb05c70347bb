"""A CPU stand-in for the CUDA backend: modelled times with seeded noise, for testing the calibration driver."""

from __future__ import annotations

from typing import Any

import numpy as np

from moe_cache_env.profiles.calibrate import SAMPLE_DECIMALS
from moe_cache_env.profiles.shapes import ExpertShape

#: The modelled link: (overhead ms, GB/s) per direction and memory kind.
LINK = {
    ("h2d", "pinned"): (0.012, 52.0),
    ("h2d", "pageable"): (0.030, 18.0),
    ("d2h", "pinned"): (0.011, 50.0),
    ("d2h", "pageable"): (0.040, 9.0),
}


class FakeBackend:
    """Times from a linear model, times (1 + noise), noise from a seeded Generator; no device."""

    def __init__(self, shape: ExpertShape, dtype: str = "bf16", *, noise: float = 0.01, seed: int = 0) -> None:
        self.expert_bytes = shape.expert_bytes(dtype)
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.calls: list[tuple[Any, ...]] = []

    def _samples(self, mean_ms: float, repeats: int) -> list[float]:
        jitter = 1.0 + self.noise * np.abs(self.rng.standard_normal(repeats))
        return [round(float(mean_ms * j), SAMPLE_DECIMALS) for j in jitter]

    def device_info(self) -> dict[str, Any]:
        return {"name": "Fake GPU", "driver": "0.0", "cuda_runtime": "0.0", "torch": "0.0"}

    def transfer_samples_ms(self, direction, memory, nbytes, copies, *, repeats, warmup):
        self.calls.append(("transfer", direction, memory, nbytes, copies))
        overhead, gbps = LINK[(direction, memory)]
        return self._samples(copies * (overhead + nbytes / (gbps * 1e6)), repeats)

    def device_copy_samples_ms(self, nbytes, *, repeats, warmup):
        return self._samples(0.005 + 2 * nbytes / 3e9, repeats), "fake"

    def compute_samples_ms(self, tokens, *, repeats, warmup):
        graph = self._samples(0.02 + 0.0002 * tokens, repeats)
        eager = self._samples(0.06 + 0.0002 * tokens, repeats)
        return {"graph": graph, "eager": eager, "weight_sets": 4}

    def compute_check(self, tokens):
        return {"tokens": tokens, "eager_rel_error": 3e-3, "graph_rel_error": 3e-3}

    def overlap_samples_ms(self, copy_bytes, tokens, *, repeats, warmup):
        copy = copy_bytes / 52e6
        return {
            "copy_bytes": copy_bytes,
            "tokens": tokens,
            "replays": 10,
            "experts_per_replay": 4,
            "copy_alone_samples_ms": self._samples(copy, repeats),
            "compute_alone_samples_ms": self._samples(copy, repeats),
            "compute_with_copy_samples_ms": self._samples(copy * 1.05, repeats),
            "copy_with_compute_samples_ms": self._samples(copy, repeats),
            "total_concurrent_samples_ms": self._samples(copy * 1.1, repeats),
        }


    # -- the parts added for the non-expert time, the host cost and the compute-scaling fit

    def shape_compute_samples_ms(self, shape, tokens, *, repeats, warmup):
        self.calls.append(("shape_compute", shape, tokens))
        return self._samples(COMPUTE_FIXED_MS + shape.expert_bytes("bf16") / (COMPUTE_GBPS * 1e6) + 1e-5 * tokens,
                             repeats)

    def non_expert_samples_ms(self, layer, batch, context, *, repeats, warmup):
        self.calls.append(("non_expert", batch, context))
        attention = 0.03 + 1e-3 * batch + 2e-6 * batch * context
        router = 0.01
        shared = 0.02 + 1e-4 * batch if layer.shared_intermediate else None
        graph = attention + router + (shared or 0.0)
        out = {"instances": 3, "check": {"finite": True, "router_ids_in_range": True},
               "graph": self._samples(graph, repeats), "eager": self._samples(graph * 2.5, repeats),
               "attention": self._samples(attention, repeats), "router": self._samples(router, repeats)}
        if shared is not None:
            out["shared_expert"] = self._samples(shared, repeats)
        return out

    def host_samples_ms(self, layer, batch, context, *, layers, repeats, warmup):
        self.calls.append(("host", batch, context, layers))
        return {"top_k": layer.top_k, "layers": layers, "check": {"finite": True},
                "synced": self._samples(HOST_SYNCED_MS, repeats), "double_top_k": 2 * layer.top_k,
                "synced_double": self._samples(HOST_SYNCED_MS + layer.top_k * 0.03, repeats),
                "expert_launch": self._samples(0.025, repeats), "layer_launch": self._samples(0.01, repeats),
                # the engine's decision by copies issued: HOST_DECISION_BASE_MS + HOST_COPY_ISSUE_MS per copy
                "copies": {str(n): {"layers": layers * (3 - n), "median": HOST_DECISION_BASE_MS + HOST_COPY_ISSUE_MS * n}
                           for n in range(3)}}


#: The fake's compute-scaling truth (fixed cost + weight read) and its non-expert time at batch 1, context 512.
COMPUTE_FIXED_MS = 0.015
COMPUTE_GBPS = 3000.0
NON_EXPERT_B1_MS = 0.03 + 1e-3 + 2e-6 * 512 + 0.01 + 0.02 + 1e-4
HOST_SYNCED_MS = 0.5
HOST_DECISION_BASE_MS = 0.03
HOST_COPY_ISSUE_MS = 0.02


def assert_same_tree(a: Any, b: Any, rel: float = 1e-9, path: str = "profile") -> None:
    """Equal JSON trees, floats equal to ``rel`` (a least-squares solve differs in the last bits across BLAS)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{path}: keys differ: {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same_tree(a[key], b[key], rel, f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: lengths differ ({len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= rel * max(abs(a), abs(b)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def plain_transfer_fit(points: list[tuple[float, float]], relative: bool) -> tuple[float, float]:
    """``(overhead_ms, gbps)`` of the line ``overhead + bytes / bandwidth`` through (bytes, ms) points, by the
    normal equations written out in plain Python: an expectation independent of the profile code's solver.

    Weighted least squares with weight 1/ms per point (``relative``) or 1; a negative intercept is clamped to 0
    and the slope refitted through the origin, as ``docs/hardware-profiles.md`` defines the fit.
    """
    import math

    w = [1.0 / y if relative else 1.0 for _, y in points]
    s00 = math.fsum(wi * wi for wi in w)
    s01 = math.fsum(wi * wi * x for wi, (x, _) in zip(w, points))
    s11 = math.fsum(wi * wi * x * x for wi, (x, _) in zip(w, points))
    t0 = math.fsum(wi * wi * y for wi, (_, y) in zip(w, points))
    t1 = math.fsum(wi * wi * x * y for wi, (x, y) in zip(w, points))
    det = s00 * s11 - s01 * s01
    overhead = (t0 * s11 - t1 * s01) / det
    slope = (s00 * t1 - s01 * t0) / det
    if overhead < 0:
        overhead, slope = 0.0, t1 / s11
    return overhead, 1.0 / (slope * 1e6)
