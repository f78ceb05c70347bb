"""Gymnasium environments of the expert cache, registered when ``moe_cache_env`` is imported.

Registered configurations (all the same class, :class:`MoECacheEnv`, with other ``config``; see
``docs/environment.md``):

- ``MoECache-v0``: timeline timing on the measured ``h100`` profile, the cross-layer predictor, per-layer tiers
  4 / 10 / 20 of 60 experts, non-stationary serving (batch 1-8, KV cache 0-60% of the slots, background link
  traffic 0-50%, requests in blocks of one domain); continuous thresholds.
- ``MoECache-Discrete-v0``: as v0, each threshold down / keep / up (for DQN).
- ``MoECache-Extended-v0``: as v0, plus lookahead, prefetch budget, tier split and eviction weights.
- ``MoECache-Stationary-v0``: as v0 under constant serving conditions (batch 4, KV 30%, background 25%,
  requests of mixed domains), for comparison.
- ``MoECache-Seed-v0``: the seed's setting: seed timing table, ``rtx3090-seed``, ``noisy-oracle`` predictor at
  0.4755 top-1 accuracy, tiers 4 / 20 / 40 per layer, one sequence at a time.
- ``MoECache-Learned-v0``: as v0 on the bundled real routing traces of the small MoE trained from scratch
  (``traces/learned/``: 12 layers, 64 experts, top-8, three text domains), replayed with OLMoE-1B-7B's expert
  size (3 x 2048 x 1024 bf16 = 12,582,912 bytes) and tiers 8 / 10 / 20 of 64 experts per layer.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium


ENTRY_POINT = "moe_cache_env.envs.moe_cache:MoECacheEnv"

#: registered id -> the config overrides it passes (JSON-able)
VARIANTS: dict[str, dict[str, Any]] = {
    "MoECache-v0": {},
    "MoECache-Discrete-v0": {"action_type": "discrete"},
    "MoECache-Extended-v0": {"action_type": "extended"},
    "MoECache-Stationary-v0": {
        "workload": {
            "batch_min": 4,
            "batch_max": 4,
            "kv_min": 0.3,
            "kv_max": 0.3,
            "background_min": 0.25,
            "background_max": 0.25,
            "domain_shift": False,
        }
    },
    "MoECache-Seed-v0": {
        "timing": "seed",
        "profile": "rtx3090-seed",
        "predictor": "noisy-oracle",
        "oracle_accuracy": 0.4755,
        "cache": {"l1_slots": 4, "l2_slots": 20, "l3_slots": 40, "scope": "per-layer"},
        "workload": {"batch_min": 1, "batch_max": 1},
        "episode_tokens": 4096,
    },
    "MoECache-Learned-v0": {
        "traces": ["learned/tiny-olmoe-12L-64E-prefill", "learned/tiny-olmoe-12L-64E-decode"],
        # the learned model's own experts are tiny (786,432 bytes); its routing geometry is OLMoE's
        "expert_bytes": 3 * 2048 * 1024 * 2,
        "cache": {"l1_slots": 8, "l2_slots": 10, "l3_slots": 20, "scope": "per-layer"},
        "episode_tokens": 4096,
    },
}


def register_envs() -> None:
    """Register every variant with Gymnasium (idempotent)."""
    for env_id, overrides in VARIANTS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(id=env_id, entry_point=ENTRY_POINT, kwargs={"config": copy.deepcopy(overrides)})


def variant_config(env_id: str) -> dict[str, Any]:
    """The full config of a registered variant (defaults merged), e.g. to derive a validation env."""
    from moe_cache_env.envs.config import merge_config

    if env_id not in VARIANTS:
        raise KeyError(f"unknown environment {env_id!r}; registered: {sorted(VARIANTS)}")
    return merge_config(VARIANTS[env_id])


def __getattr__(name: str) -> Any:
    # the environment class (and the simulator behind it) load on first use, so importing the package, as the
    # command line does, stays fast
    if name == "MoECacheEnv":
        from moe_cache_env.envs.moe_cache import MoECacheEnv

        return MoECacheEnv
    if name == "DEFAULT_CONFIG":
        from moe_cache_env.envs.config import DEFAULT_CONFIG

        return DEFAULT_CONFIG
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_envs()

__all__ = ["MoECacheEnv", "VARIANTS", "DEFAULT_CONFIG", "register_envs", "variant_config"]
