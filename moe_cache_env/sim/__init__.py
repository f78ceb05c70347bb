"""The three-tier expert-cache simulator (no gymnasium, no torch). See ``docs/simulator.md``."""

from moe_cache_env.sim.config import CacheConfig, ConfigError, Controls, SimConfig, WorkloadConfig
from moe_cache_env.sim.evaluate import POLICIES, EvaluationRequest, evaluate
from moe_cache_env.sim.predictors import PREDICTORS
from moe_cache_env.sim.simulator import Simulator, WindowResult

__all__ = [
    "CacheConfig",
    "ConfigError",
    "Controls",
    "EvaluationRequest",
    "POLICIES",
    "PREDICTORS",
    "SimConfig",
    "Simulator",
    "WindowResult",
    "WorkloadConfig",
    "evaluate",
]
