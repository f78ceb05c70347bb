"""Replay a trace under one or more policies and print their metrics (optionally write them as JSON).

Besides the simulator's policies, an agent that acts through the environment can be evaluated on the same
trace and settings: the seed's strategies (conservative, aggressive, balanced, dynamic), random, or a saved
Stable-Baselines3 model as ALGO:PATH (trained on the environment given by --env, whose action type it uses).
The agent adapts once per window of the environment; the replay covers the whole trace in file order.

Every policy replays the same schedule of steps (batch, serving order, KV-cache share), so rows compare
directly. The `kind` column says what a row is: a deployable policy, a policy fed by an oracle predictor, or a
bound that reads the future (belady: the best hit rate of any demand-only cache with the same slots;
clairvoyant: the reference lower bound of latency).

Examples:
  moe-cache-env evaluate --trace qwen1.5-moe --policy static
  moe-cache-env evaluate --trace qwen1.5-moe --policy clairvoyant,belady,lru,no-prefetch,static,perfect
  moe-cache-env evaluate --trace deepseek-v2-lite --batch 8 --policy belady,lru,no-prefetch
  moe-cache-env evaluate --policy static,dynamic,ppo:runs/ppo/model.zip --batch 4
"""

from __future__ import annotations

import argparse
from typing import Any

from moe_cache_env.cli import CommandError
from moe_cache_env.cli._common import oracle_accuracy_arg
from moe_cache_env.sim.config import (
    DEFAULT_PREFETCH_HANDOFF,
    DEFAULT_PROFILE,
    MEASURED_ORACLE_ACCURACY,
    PREFETCH_HANDOFFS,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", default="qwen1.5-moe", help="trace file or bundled trace name (default: %(default)s)")
    parser.add_argument("--policy", default="static",
                        help="policy or comma-separated policies: static, no-prefetch, perfect, lru, belady, "
                             "clairvoyant; the zoo (docs/policies.md): fifo, lfu, lfru, least-stale, mrs, hot-set, "
                             "layer-alloc, activation-aware (the last three fit on --fit-trace, else on the trace's "
                             "first quarter of sequences); agents conservative, aggressive, balanced, dynamic, "
                             "random, or ALGO:PATH (a saved SB3 model); learned:PATH, a learned eviction rule "
                             "(experiments/eviction/), replayed on lru's cache with its decision time")
    parser.add_argument("--env", default="MoECache-v0",
                        help="environment whose actions and windows agents use (default: %(default)s)")
    parser.add_argument("--predictor", default="cross-layer",
                        help="noisy-oracle, popularity, previous-token, cross-layer, perfect, or recorded (a trace's recorded "
                        "speculative routing, format 1.1) (default: %(default)s)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help="hardware profile name or path (default: %(default)s, measured)")
    parser.add_argument("--timing", default="timeline", choices=["timeline", "seed"])
    parser.add_argument("--execution-order", default="fused", choices=["fused", "per-expert"],
                        help="fused: a layer waits for all its experts, then computes; per-expert: each expert "
                             "computes when its copy lands (default: %(default)s)")
    parser.add_argument("--decision-ms", type=float, default=0.0,
                        help="the policy's own decision time per layer, added to the profile's host cost")
    parser.add_argument("--no-launch-cost", dest="launch_cost", action="store_false",
                        help="do not charge the profile's host time per expert launch (expert_launch_ms): an "
                             "engine that runs a layer's experts as one grouped kernel")
    parser.add_argument("--prefetch-handoff", default=DEFAULT_PREFETCH_HANDOFF, choices=PREFETCH_HANDOFFS,
                        help="when a queued prefetch reaches the link: link, the instant the link frees; host-poll, "
                             "when the host next polls (not while it decides or launches) (default: %(default)s)")
    parser.add_argument("--capacity", type=int, default=None,
                        help="total expert slots (per layer, or in all with --scope global), split L1 = top_k, "
                             "L2 : L3 = 1 : 2; default: 40%% of the experts (at least top_k + 2)")
    parser.add_argument("--scope", default="per-layer", choices=["per-layer", "global"])
    parser.add_argument("--l2-threshold", type=float, default=0.7)
    parser.add_argument("--l3-threshold", type=float, default=0.3)
    parser.add_argument("--lookahead", type=int, default=1, choices=[1, 2])
    parser.add_argument("--prefetch-budget", type=int, default=0, help="experts per prediction; 0 = unlimited")
    parser.add_argument("--batch", type=int, default=1, help="concurrent sequences per step")
    parser.add_argument("--kv", type=float, default=0.0,
                        help="share of the expert slots taken by the KV cache (default: %(default)s)")
    parser.add_argument("--chunk-tokens", type=int, default=0,
                        help="tokens per sequence per step; 0: a whole prompt for prefill traces, 1 for decode")
    parser.add_argument("--oracle-accuracy", type=oracle_accuracy_arg, default=MEASURED_ORACLE_ACCURACY,
                        help="top-1 accuracy of noisy-oracle: one number, or one per lookahead distance (A1,A2; "
                             "docs/traces.md has measured values) (default: %(default)s)")
    parser.add_argument("--expert-bytes", type=int, default=0, help="override the trace's expert size")
    parser.add_argument("--fit-trace", metavar="PATH|NAME",
                        help="pre-fit the cross-layer predictor's co-occurrence table on this (training) trace")
    parser.add_argument("--window", type=int, default=0, help="also report metrics per window of this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the metrics as JSON here")
    parser.add_argument("--tokens", type=int, default=0,
                        help="replay only the trace's first N tokens (0: all; the last sequence is cut short)")
    parser.add_argument("--decision-log", metavar="PATH",
                        help="write the simulator's decisions as a moe-decision-log/1 (.npz) for replay-gpu --log; "
                             "with several policies, PATH gets a -POLICY suffix")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


TABLE_COLUMNS = [
    ("kind", "kind", "{}"),
    ("hit_rate", "hit rate", "{:.3f}"),
    ("late_prefetch_rate", "late", "{:.3f}"),
    ("perfect_coverage", "perfect cov", "{:.3f}"),
    ("mean_latency_ms", "mean ms/tok", "{:.2f}"),
    ("p95_latency_ms", "p95 ms/tok", "{:.2f}"),
    ("bytes_transferred", "GB moved", None),
    ("wasted_prefetch_bytes", "GB wasted", None),
    ("prefetch_precision", "pf prec", "{:.2f}"),
    ("link_utilization", "link util", "{:.2f}"),
]


def format_table(rows: list[tuple[str, dict[str, Any]]], columns=TABLE_COLUMNS) -> str:
    """A plain-text table: one row per (name, metrics)."""
    header = ["policy"] + [title for _, title, _ in columns]
    body = []
    for name, metrics in rows:
        cells = [name]
        for key, _, fmt in columns:
            value = metrics.get(key)
            if value is None:
                cells.append("-")
            elif fmt is None:
                cells.append(f"{value / 1e9:.1f}")
            else:
                cells.append(fmt.format(value))
        body.append(cells)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


#: agents that act through the environment (the simulator's own ``static`` keeps its name)
AGENT_POLICIES = ("conservative", "aggressive", "balanced", "dynamic", "random")


def evaluate_agent(spec: str, trace_name: str, trace, config, env_id: str, seed: int) -> dict[str, Any]:
    """The library's ``evaluate_agent_on_trace`` with the environment id resolved (any form gym.make takes)."""
    from moe_cache_env.agents.evaluation import evaluate_agent_on_trace
    from moe_cache_env.envs import resolve_env_id

    return evaluate_agent_on_trace(spec, trace_name, trace.num_tokens, config, resolve_env_id(env_id), seed)


#: ``learned:PATH``: a learned eviction rule saved by ``agents.eviction`` (``sim/evict.py``)
LEARNED_PREFIX = "learned:"


def evaluate_learned_policy(spec: str, trace, config, seed: int) -> dict[str, Any]:
    """A saved learned eviction rule replayed on the ``lru``/``belady`` cache and schedule, its measured decision
    time added to every layer (``SimConfig.decision_ms``)."""
    from moe_cache_env.sim.evict import EvictionModel, evaluate_learned

    model = EvictionModel.load(spec[len(LEARNED_PREFIX):])
    return evaluate_learned(trace, config, model, seed=seed)


def run(args: argparse.Namespace) -> int:
    from moe_cache_env._io import atomic_write_json, check_output_not_input
    from moe_cache_env.sim.config import Controls, SimConfig, WorkloadConfig, default_capacity, split_capacity
    from moe_cache_env.sim.evaluate import POLICIES, POLICY_KINDS, EvaluationRequest, evaluate, policy_setup
    from moe_cache_env.sim.simulator import check_geometry
    from moe_cache_env.cli._common import load_named_trace

    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    models = [p[len(LEARNED_PREFIX):] for p in policies if p.startswith(LEARNED_PREFIX)]
    check_output_not_input(args.json, args.trace, args.fit_trace, args.profile, *models)
    unknown = [p for p in policies if p not in POLICIES and p not in AGENT_POLICIES and ":" not in p]
    if unknown:
        raise CommandError(
            f"unknown policy {unknown}; choose from {list(POLICIES) + list(AGENT_POLICIES)} or ALGO:PATH"
        )
    trace = load_named_trace(args.trace)
    if args.tokens < 0:
        raise CommandError(f"--tokens must be 0 (all) or a number of tokens, got {args.tokens}")
    if 0 < args.tokens < trace.num_tokens:
        trace = trace.head(args.tokens)
    log_paths = _decision_log_paths(args.decision_log, policies)
    for path in log_paths.values():
        check_output_not_input(path, args.trace, args.fit_trace, args.profile, args.json)
    unloggable = [p for p in log_paths if p not in POLICIES or p == "clairvoyant"]
    if unloggable:
        raise CommandError(f"--decision-log logs the simulator's own policies; {unloggable} cannot be logged "
                           "(learned:PATH rules run in the eviction replay, sim/evict.py, which writes no log; "
                           "clairvoyant keeps the better of two replays)")
    fit_trace = load_named_trace(args.fit_trace) if args.fit_trace else None
    capacity = args.capacity
    if capacity is None:
        capacity = default_capacity(trace.num_experts, trace.top_k, trace.num_layers, args.scope)
    cache = split_capacity(capacity, trace.top_k, args.scope)
    check_geometry(trace, cache)
    config = SimConfig(
        cache=cache,
        workload=WorkloadConfig(batch_min=args.batch, batch_max=args.batch, kv_min=args.kv, kv_max=args.kv,
                                chunk_tokens=args.chunk_tokens),
        timing=args.timing,
        execution_order=args.execution_order,
        decision_ms=args.decision_ms,
        launch_cost=args.launch_cost,
        prefetch_handoff=args.prefetch_handoff,
        profile=args.profile,
        predictor=args.predictor,
        oracle_accuracy=args.oracle_accuracy,
        expert_bytes=args.expert_bytes,
    )
    if any(p not in POLICIES and not p.startswith(LEARNED_PREFIX) for p in policies):
        from moe_cache_env.agents.evaluation import check_agent_config

        # before any policy runs (evaluate_agent_on_trace refuses it too)
        check_agent_config(config, "drop --execution-order / --decision-ms, or evaluate the agents apart from the "
                                   "simulator policies")
    controls = Controls(
        l2_threshold=args.l2_threshold,
        l3_threshold=args.l3_threshold,
        lookahead=args.lookahead,
        prefetch_budget=args.prefetch_budget,
    )
    results: dict[str, dict[str, Any]] = {}
    from moe_cache_env.cli._progress import Progress

    progress = Progress(len(policies), "evaluate", quiet=args.quiet)
    for policy in policies:
        progress.update(0, policy)
        if policy in POLICIES:
            request = EvaluationRequest(policy=policy, config=config, controls=controls, seed=args.seed,
                                        window_steps=args.window, decision_log=policy in log_paths)
            result = evaluate(trace, request, fit_trace=fit_trace)
            if policy in log_paths:
                from moe_cache_env.gpu.decision_log import save_log

                save_log(result["decision_log"], log_paths[policy])
        elif policy.startswith(LEARNED_PREFIX):
            result = {"metrics": evaluate_learned_policy(policy, trace, config, args.seed)}
        else:
            result = {"metrics": evaluate_agent(policy, args.trace, trace, config, args.env, args.seed)}
        progress.update(1, policy)
        entry = dict(result["metrics"])
        entry["kind"] = POLICY_KINDS.get(policy, "policy" if policy.startswith(LEARNED_PREFIX) else "agent")
        if policy in POLICIES:
            used, _ = policy_setup(trace, policy, config, controls)
            predictor = None if used.predictor == "none" else used.predictor
            tiers = [used.cache.l1_slots, used.cache.l2_slots, used.cache.l3_slots]
            eviction = used.eviction
        elif policy.startswith(LEARNED_PREFIX):
            predictor, tiers, eviction = None, [cache.total_slots, 0, 0], "learned"
        else:
            predictor, tiers, eviction = args.predictor, [cache.l1_slots, cache.l2_slots, cache.l3_slots], "weighted"
        entry["config"] = {
            "trace": trace.name,
            "policy": policy,
            "predictor": predictor,
            "eviction": eviction,
            "env": args.env if policy not in POLICIES else None,
            "profile": args.profile,
            "timing": args.timing,
            "execution_order": args.execution_order,
            "decision_ms": args.decision_ms,
            "launch_cost": args.launch_cost,
            "prefetch_handoff": args.prefetch_handoff,
            "capacity": cache.total_slots,
            "tiers": tiers,
            "scope": args.scope,
            "batch": args.batch,
            "kv_fraction": args.kv,
            "seed": args.seed,
            "fit_trace": fit_trace.name if fit_trace is not None else None,
        }
        if "windows" in result:
            entry["windows"] = result["windows"]
        results[policy] = entry

    progress.close()
    print(f"trace {trace.name}: {trace.num_tokens} tokens x {trace.num_layers} layers, {trace.num_experts} experts, "
          f"top-{trace.top_k}; profile {args.profile} ({args.timing}); {cache.total_slots} slots "
          f"({cache.l1_slots}/{cache.l2_slots}/{cache.l3_slots}) {args.scope}; predictor {args.predictor}")
    print(format_table([(name, entry) for name, entry in results.items()]))
    print("kind: policy = deployable; oracle predictor = a policy fed by a predictor that reads the future; "
          "hit-rate bound = no demand-only cache of these slots hits more; latency bound = docs/simulator.md. "
          "late = share of requests whose prefetch was still in flight (not a hit).")
    if args.json:
        payload = results[policies[0]] if len(policies) == 1 else {"policies": results}
        atomic_write_json(args.json, payload)
        print(f"wrote {args.json}")
    for policy, path in log_paths.items():
        print(f"wrote {path}: the simulator's decisions for {policy} (replay-gpu --log {path})")
    return 0


def _decision_log_paths(path: str | None, policies: list[str]) -> dict[str, str]:
    if not path:
        return {}
    if len(policies) == 1:
        return {policies[0]: path}
    from pathlib import Path

    base = Path(path)
    suffix = base.suffix or ".npz"
    return {p: str(base.with_name(f"{base.stem}-{p}{suffix}")) for p in policies}
