"""moe-cache-env: a simulator and Gymnasium environment for caching Mixture-of-Experts weights on a GPU.

Layers, from the bottom up:

- ``moe_cache_env.traces``: the routing-trace format, synthetic traces, statistics, the bundled suite;
- ``moe_cache_env.profiles``: hardware profiles (transfer and compute times) and GPU calibration;
- ``moe_cache_env.sim``: the three-tier cache simulator (no gymnasium, no torch);
- ``moe_cache_env.envs``: the Gymnasium environments, registered on import;
- ``moe_cache_env.agents``: baseline agents, Stable-Baselines3 training and comparison (extra ``rl``).
"""

__version__ = "0.1.0"

# Registers the Gymnasium environments (MoECache-v0 and variants) when Gymnasium is in use, so that
# gymnasium.make("moe_cache_env:MoECache-v0") works (Gymnasium imports this package for the prefix). Without
# Gymnasium loaded, importing the package (or moe_cache_env.sim) loads no Gymnasium: the simulator and the trace
# tools stay light. ``import moe_cache_env.envs`` registers explicitly.
import sys as _sys

if "gymnasium" in _sys.modules:
    from moe_cache_env import envs as _envs  # noqa: E402,F401
