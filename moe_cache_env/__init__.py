"""moe-cache-env: a simulator and Gymnasium environment for caching Mixture-of-Experts weights on a GPU.

Layers, from the bottom up:

- ``moe_cache_env.traces``: the routing-trace format, synthetic traces, statistics, the bundled suite;
- ``moe_cache_env.profiles``: hardware profiles (transfer and compute times) and GPU calibration;
- ``moe_cache_env.sim``: the three-tier cache simulator (no gymnasium, no torch);
- ``moe_cache_env.envs``: the Gymnasium environments, registered on import.
"""

__version__ = "0.1.0"

# Registers the Gymnasium environments (MoECache-v0 and variants), so gymnasium.make("moe_cache_env:MoECache-v0")
# works after a plain import. gymnasium is a dependency, but the trace tools (record, import, synth) also run
# where it is missing, e.g. on a bare GPU machine that records a model's routing.
try:
    import gymnasium as _gymnasium  # noqa: F401
except ImportError:  # pragma: no cover - only without gymnasium installed
    pass
else:
    from moe_cache_env import envs as _envs  # noqa: E402,F401
