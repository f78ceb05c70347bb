"""Build the ``rtx3090-seed`` profile from the seed system's timing table.

The table (``../shared/design/seed-system.md``) was measured on an RTX 3090 copying 28 MB experts from
pageable memory. Run ``python -m moe_cache_env.profiles.seed`` to regenerate ``data/rtx3090-seed.json``.
"""

from __future__ import annotations

from moe_cache_env.profiles.profile import DATA_DIR, PROFILE_FORMAT, fit_transfer, save_profile

#: The seed's expert: 28 MB (read as MiB, the unit GPU tools report).
SEED_EXPERT_BYTES = 28 * 2**20

#: The seed system's timing table, in ms (RTX 3090); ``seed-system.md``, "Timing table".
SEED_TABLE_MS = {
    "h2d_1_expert_ms": 4.35,
    "h2d_4_experts_ms": 19.14,
    "h2d_20_experts_ms": 97.16,
    "l1_access_ms": 0.047,
    "l2l3_access_ms": 0.541,
    "compute_1_expert_ms": 0.106,
    "compute_4_experts_ms": 0.415,
    "alloc_ms": 0.008,
}


def build_seed_profile() -> dict:
    """The seed profile as a JSON-able dict: the table, and the transfer line fitted to its three copies."""
    counts = [1, 4, 20]
    times = [SEED_TABLE_MS["h2d_1_expert_ms"], SEED_TABLE_MS["h2d_4_experts_ms"], SEED_TABLE_MS["h2d_20_experts_ms"]]
    fit = fit_transfer([n * SEED_EXPERT_BYTES for n in counts], times)
    return {
        "format": PROFILE_FORMAT,
        "name": "rtx3090-seed",
        "description": (
            "The seed system's RTX 3090 timing table (pageable host memory, 28 MB experts), with the "
            "host-to-GPU line fitted to its 1 / 4 / 20 expert copies."
        ),
        "source": "seed design note, shared/design/seed-system.md (timing table)",
        "device": {"name": "NVIDIA GeForce RTX 3090", "memory": "pageable"},
        "h2d_overhead_ms": round(fit.overhead_ms, 6),
        "h2d_gbps": round(fit.gbps, 6),
        "h2d_fit": {
            "residual_ms": round(fit.residual_ms, 6),
            "max_rel_error": round(fit.max_rel_error, 6),
            "points": [{"bytes": n * SEED_EXPERT_BYTES, "ms": t} for n, t in zip(counts, times)],
        },
        # One expert computes in 0.106 ms and four in 0.415 ms (0.104 each): the table gives no token
        # dependence, so the time is flat in tokens.
        "compute": {"expert_bytes": SEED_EXPERT_BYTES, "tokens": [1.0], "ms": [SEED_TABLE_MS["compute_1_expert_ms"]]},
        "layer_overhead_ms": 0.0,
        "seed_table": dict(SEED_TABLE_MS),
    }


if __name__ == "__main__":
    out = save_profile(build_seed_profile(), DATA_DIR / "rtx3090-seed.json")
    print(f"wrote {out}")
