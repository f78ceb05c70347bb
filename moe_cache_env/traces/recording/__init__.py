"""Building blocks of the routing recorder (:mod:`moe_cache_env.traces.record`).

``routers`` finds the router module of every MoE layer of a Hugging Face model and turns what each router
returns into (top-k expert ids, gate weights), across model families and transformers versions.
"""
