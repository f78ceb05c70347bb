"""Execute a cache policy's decisions on a CUDA GPU and compare the measured latency with the estimate.

For each policy and cache size, a decision log is made from the trace (``lru``: demand-only per-layer LRU;
``lru-prefetch``: the same with a perfect next-layer prefetch; or --log replays a decision log file), then run
on the GPU with real expert weights in pinned host memory, a real GPU slot pool, copies on a copy stream
(demand loads ahead of queued prefetches), real SwiGLU experts of the trace's expert size and the model's real
non-expert layer work (random weights), in each execution order (fused: a layer waits for all its experts;
per-expert: each expert runs when its own copy lands, resident ones first). Prints the reference estimate
(the profile's copy, compute, non-expert and host-decision times, under the same rules) beside the measured
per-token latency (mean, P50, P95) and the error. The estimate is this package's plain-Python model of the
log's decisions; a log written by ``evaluate --decision-log`` (the simulator kernel's own decisions) also
carries the kernel's per-step estimate, printed beside it (``sim``) with its error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
from pathlib import Path
from typing import Any

from moe_cache_env.cli import CommandError


def _csv(kind: type, text: str) -> list[Any]:
    try:
        return [kind(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moe_cache_env.gpu.reference_policies import HANDOFFS, ORDERS, POLICIES
    from moe_cache_env.sim.config import DEFAULT_PREFETCH_HANDOFF

    parser.add_argument("--trace", default="synthetic/qwen1.5-moe", help="trace file or bundled name (default %(default)s)")
    parser.add_argument("--policy", type=lambda t: _csv(str, t), default=list(POLICIES),
                        help=f"reference policies, comma-separated: {', '.join(POLICIES)} (default: both)")
    parser.add_argument("--log", metavar="PATH[,PATH...]",
                        help="replay these decision logs (.npz, comma-separated, one geometry) instead of reference "
                             "policies; a log written by evaluate --decision-log runs in its own execution order")
    parser.add_argument("--slots", type=lambda t: _csv(int, t), default=[12, 36],
                        help="GPU slots per layer, comma-separated (default 12,36)")
    parser.add_argument("--order", type=lambda t: _csv(str, t), default=list(ORDERS),
                        help=f"execution orders, comma-separated: {', '.join(ORDERS)} (default: both)")
    parser.add_argument("--tokens", type=int, default=2000, help="replay the first N tokens of the trace (default 2000)")
    parser.add_argument("--batch", type=int, default=1, help="tokens decoded together per step (default 1)")
    parser.add_argument("--context", type=int, help="context length the attention reads (default: the profile's "
                        "non-expert default, else 512)")
    parser.add_argument("--profile", default="h200", help="hardware profile of the estimate (default %(default)s)")
    parser.add_argument("--model", help="model preset of the non-expert layer geometry (default: the trace's preset)")
    parser.add_argument("--device", choices=("cuda", "fake"), default="cuda",
                        help="cuda (default) or fake: the replay logic on modelled times, no GPU")
    parser.add_argument("--window", type=int, default=1,
                        help="prefetches handed to the copy stream while others are in flight (default 1: only when idle)")
    parser.add_argument("--prefetch-handoff", choices=HANDOFFS, default=DEFAULT_PREFETCH_HANDOFF,
                        help="the estimate's prefetch hand-off rule (the simulator's --prefetch-handoff) for logs "
                             "that do not carry their own (evaluate --decision-log logs do) (default %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=16, help="steps run and discarded first (default 16)")
    parser.add_argument("--host-memory-gib", type=float, default=48.0,
                        help="pinned host memory for expert weights at most (default 48; experts share weights beyond)")
    parser.add_argument("--non-expert", choices=("graph", "eager"), default="graph",
                        help="run each layer's non-expert work as one CUDA graph (default) or eagerly")
    parser.add_argument("--json", metavar="PATH", help="write every result here (rewritten after each run)")
    parser.add_argument("--save-logs", metavar="DIR", help="also write the decision logs here")


def run(args: argparse.Namespace) -> int:
    from moe_cache_env._io import atomic_write_json
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.gpu.decision_log import load_log, save_log
    from moe_cache_env.gpu.reference_policies import (
        HANDOFFS,
        ORDERS,
        POLICIES,
        ReferenceTiming,
        estimate_latency,
        latency_stats,
        reference_log_for_trace,
    )
    from moe_cache_env.gpu.replay import CudaReplayConfig, CudaReplayDevice, FakeReplayDevice, ReplayError, replay
    from moe_cache_env.profiles import load_profile
    from moe_cache_env.profiles.report import format_table
    from moe_cache_env.profiles.shapes import expert_shape_for_bytes, model_layer_shape

    for order in args.order:
        if order not in ORDERS:
            raise CommandError(f"unknown --order {order!r}; choose from {', '.join(ORDERS)}")
    if args.tokens < 1 or args.batch < 1 or args.window < 1:
        raise CommandError("--tokens, --batch and --window must be >= 1")
    profile = load_profile(args.profile)
    say = lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)  # noqa: E731

    logs = []
    if args.log:
        for path in [p for p in args.log.split(",") if p.strip()]:
            log = load_log(path)
            logs.append((log.meta.get("policy", Path(path).stem), log.meta.get("slots_per_layer"), log))
        preset = logs[0][2].meta.get("preset")
    else:
        for policy in args.policy:
            if policy not in POLICIES:
                raise CommandError(f"unknown --policy {policy!r}; choose from {', '.join(POLICIES)}")
        trace = load_named_trace(args.trace)
        gen = trace.meta.get("generator")
        preset = gen.get("preset") if isinstance(gen, dict) else None
        steps = -(-args.tokens // args.batch)
        for slots in sorted(args.slots, reverse=True):
            for policy in args.policy:
                say(f"decision log: {policy}, {slots} slots per layer, {steps} steps")
                log = reference_log_for_trace(trace, policy, slots, batch=args.batch, steps=steps)
                logs.append((policy, slots, log))
                if args.save_logs:
                    save_log(log, Path(args.save_logs) / f"{policy}-{slots}.npz")
    model = args.model or preset
    if not model:
        raise CommandError("the trace names no model preset: give --model (the non-expert layer geometry)")
    layer = model_layer_shape(model)
    table = profile.raw.get("non_expert") or {}
    if table and table.get("model") not in (None, model):
        say(f"warning: profile {profile.name} measured the non-expert work of {table.get('model')}, not {model}")
    context = args.context if args.context is not None else int(table.get("default_context", 512))
    first = logs[0][2]
    expert = expert_shape_for_bytes(layer.hidden, first.expert_bytes)

    if args.device == "fake":
        device = None
    else:
        try:
            device = CudaReplayDevice(
                CudaReplayConfig(layer=layer, hidden=expert.hidden, intermediate=expert.intermediate,
                                 batch=args.batch, context=context, host_memory_gib=args.host_memory_gib,
                                 non_expert=args.non_expert),
                progress=say,
            )
            device.prepare(max((entry[2] for entry in logs), key=lambda lg: lg.num_slots))
        except ReplayError as exc:
            raise CommandError(str(exc)) from None

    results: dict[str, Any] = {
        "command": shlex.join(["moe-cache-env", "replay-gpu", *_argv_after("replay-gpu")]),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "trace": None if args.log else args.trace,
        "profile": profile.name,
        "model": model,
        "expert": {"hidden": expert.hidden, "intermediate": expert.intermediate, "bytes": first.expert_bytes},
        "batch": args.batch,
        "context": context,
        "window": args.window,
        "non_expert_execution": args.non_expert,
        "device": device.info() if device is not None else {"name": "fake"},
        "comparison": "measured against this package's reference estimate (gpu/reference_policies.estimate_latency) "
                      "and, for a log written by evaluate --decision-log, the simulator kernel's own estimate",
        "runs": [],
    }
    rows, host_rows = [], []
    import numpy as np

    for policy, slots, log in logs:
        # a log the simulator kernel wrote (evaluate --decision-log) carries the kernel's own per-step estimate
        kernel_lat = log.meta.get("kernel_step_latency_ms")
        kernel_order = log.meta.get("execution_order")
        kernel = (latency_stats(np.asarray(kernel_lat, dtype=np.float64), log.step_ntokens)
                  if isinstance(kernel_lat, list) and len(kernel_lat) == log.num_steps else None)
        timing = ReferenceTiming.from_profile(profile, log.expert_bytes, batch=log.batch, context=context)
        no_host = timing.without_host()
        counts = log.counts()
        own_order = log.meta.get("execution_order") if isinstance(kernel_lat, list) else None
        handoff = log.meta.get("prefetch_handoff", args.prefetch_handoff)
        if handoff not in HANDOFFS:
            raise CommandError(f"decision log {policy}: unknown prefetch_handoff {handoff!r} in its meta; "
                               f"expected one of {', '.join(HANDOFFS)}")
        for order in args.order:
            if own_order is not None and order != own_order:
                continue  # the kernel decided under its own order: replaying it in another compares nothing
            estimate = estimate_latency(log, timing, order, handoff)
            estimate_no_host = estimate_latency(log, no_host, order, handoff)
            dev = device if device is not None else FakeReplayDevice(timing)
            say(f"replay: {policy}, {slots} slots, {order} ({log.num_steps} steps on {dev.name})")
            try:
                measured = replay(dev, log, order=order, window=args.window, warmup_steps=args.warmup_steps,
                                  prepared=device is not None)
            except ReplayError as exc:
                raise CommandError(str(exc)) from None
            sim = latency_stats(estimate["latency_ms"], log.step_ntokens)
            sim_nh = latency_stats(estimate_no_host["latency_ms"], log.step_ntokens)
            gpu = latency_stats(measured["latency_ms"], log.step_ntokens)
            error = {k: sim[k] / gpu[k] - 1.0 for k in ("mean_ms", "p50_ms", "p95_ms")}
            kernel_here = kernel if kernel is not None and kernel_order in (None, order) else None
            kernel_error = ({k: kernel_here[k] / gpu[k] - 1.0 for k in ("mean_ms", "p50_ms", "p95_ms")}
                            if kernel_here is not None else None)
            run_result = {
                "policy": policy, "slots_per_layer": slots, "order": order, "steps": log.num_steps,
                "log_counts": counts, "timing": timing.to_dict(),
                "estimate": {**sim, "copies": estimate["copies"], "link_busy_ms": estimate["link_busy_ms"]},
                "estimate_without_host": sim_nh,
                "measured": {**gpu, "copies": measured["copies"], "wall_s": measured["wall_s"],
                             "host": measured["host"]},
                "error": error,
                "kernel_estimate": kernel_here,
                "kernel_error": kernel_error,
                "estimate_latency_ms": [round(x, 5) for x in estimate["latency_ms"].tolist()],
                "measured_latency_ms": [round(x, 5) for x in measured["latency_ms"].tolist()],
            }
            results["runs"].append(run_result)
            rows.append([policy, slots, order, counts["hit_rate"], measured["copies"]["promoted"],
                         sim["mean_ms"], sim["p50_ms"], sim["p95_ms"], gpu["mean_ms"], gpu["p50_ms"], gpu["p95_ms"],
                         f"{error['mean_ms']:+.1%}", f"{error['p50_ms']:+.1%}", f"{error['p95_ms']:+.1%}",
                         sim_nh["mean_ms"],
                         kernel_here["mean_ms"] if kernel_here else "-", kernel_here["p95_ms"] if kernel_here else "-",
                         f"{kernel_error['mean_ms']:+.1%}" if kernel_error else "-",
                         f"{kernel_error['p95_ms']:+.1%}" if kernel_error else "-"])
            host = measured["host"]
            host_rows.append([policy, slots, order, *(_ms(host[f"decision_ms_{kind}"]["median"])
                                                      for kind in ("no_copy", "with_copy")),
                              *(host[f"decision_ms_{kind}"]["layers"] for kind in ("no_copy", "with_copy")),
                              _ms(host["launch_ms_per_expert"]),
                              _ms(host["decision_fit"]["base_ms"]) if host["decision_fit"] else "-",
                              _ms(host["decision_fit"]["per_copy_ms"]) if host["decision_fit"] else "-"])
            if args.json:
                atomic_write_json(args.json, results)
    print(f"replay-gpu on {results['device'].get('name')}: {model} layers, expert {expert.hidden}x{expert.intermediate} "
          f"({first.expert_bytes / 2**20:.1f} MiB copies), batch {args.batch}, context {context}, profile {profile.name}")
    print(format_table(
        ["policy", "slots/layer", "order", "hit rate", "late prefetches (GPU)", "est mean ms", "est P50", "est P95",
         "GPU mean ms", "GPU P50", "GPU P95", "err mean", "err P50", "err P95", "est mean w/o host",
         "sim mean ms", "sim P95", "sim err mean", "sim err P95"],
        rows,
    ))
    print("est = the reference estimate (gpu/reference_policies) of the log's decisions; err = est / GPU - 1; "
          "sim = the simulator kernel's own estimate, for a log written by evaluate --decision-log in the same "
          "execution order; sim err = sim / GPU - 1")
    print(format_table(["policy", "slots/layer", "order", "host decision ms, no copy", "with copies",
                        "layers no copy", "layers with copies", "launch ms/expert", "fit: base ms",
                        "fit: ms per copy"], host_rows))
    print(f"host = the engine's own time per layer on this host (medians; perf_counter): the decision from the "
          f"router's result to the copies issued, apart for layers that issued none; profile {profile.name}: "
          f"decision {profile.host_decision_ms:.4g} ms, launch {profile.expert_launch_ms:.4g} ms/expert")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _argv_after(word: str) -> list[str]:
    argv = sys.argv[1:]
    return argv[argv.index(word) + 1:] if word in argv else argv
