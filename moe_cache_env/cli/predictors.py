"""Report every predictor's top-1 accuracy and top-k recall on a trace.

``recorded`` (the trace's recorded speculative routing) is listed when the trace holds one (format 1.1). Each
predictor is run inside the simulator (so it sees exactly what it would see when caching: only routing
that is already known) with prefetching off, and scored against the experts the target step really used.
"""

from __future__ import annotations

import argparse

from moe_cache_env.cli._common import oracle_accuracy_arg
from moe_cache_env.sim.config import MEASURED_ORACLE_ACCURACY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", default="qwen1.5-moe", help="trace file or bundled name (default: %(default)s)")
    parser.add_argument("--lookahead", type=int, default=1, choices=[1, 2])
    parser.add_argument("--batch", type=int, default=1, help="concurrent sequences per step")
    parser.add_argument("--fit-trace", metavar="PATH|NAME", help="pre-fit the cross-layer table on this trace")
    parser.add_argument("--oracle-accuracy", type=oracle_accuracy_arg, default=MEASURED_ORACLE_ACCURACY,
                        help="noisy-oracle's top-1 accuracy: one number or one per lookahead (A1,A2) "
                             "(default: the measured hidden-state accuracy, %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the table as JSON")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from moe_cache_env._io import atomic_write_json, check_output_not_input
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.traces.format import check_table_experts
    from moe_cache_env.sim import Controls, SimConfig, Simulator, WorkloadConfig
    from moe_cache_env.sim.predictors import ORACLE_PREDICTORS, PREDICTORS

    check_output_not_input(args.json, args.trace, args.fit_trace)
    trace = load_named_trace(args.trace)
    fit_trace = load_named_trace(args.fit_trace) if args.fit_trace else None
    for loaded in (trace, fit_trace):  # the predictors hold (E x E) tables: refuse before the simulator allocates
        if loaded is not None:
            check_table_experts(loaded.num_experts, loaded.name)
    controls = Controls(l2_threshold=1.01, l3_threshold=1.01, lookahead=args.lookahead)
    rows = {}
    from moe_cache_env.sim.recorded import RECORDED_PREDICTOR

    names = list(PREDICTORS) + ([RECORDED_PREDICTOR] if trace.has_speculation else [])
    for name in names:
        config = SimConfig(predictor=name, oracle_accuracy=args.oracle_accuracy,
                           workload=WorkloadConfig(batch_min=args.batch, batch_max=args.batch))
        sim = Simulator(trace, config, rng=np.random.default_rng(args.seed), fit_trace=fit_trace)
        m = sim.run(None, controls).metrics
        rows[name] = {
            "oracle": name in ORACLE_PREDICTORS,
            "top1_accuracy": m["predictor_top1_accuracy"],
            "topk_recall": m["predictor_topk_recall"],
            "mean_max_confidence": m["predictor_mean_max_confidence"],
        }
    chance = trace.top_k / trace.num_experts
    print(f"trace {trace.name}: lookahead {args.lookahead}, batch {args.batch}; chance top-k recall ~{chance:.3f}")
    print(f"{'predictor':<16} {'top-1 acc':>9} {'top-k recall':>12} {'mean max conf':>13}")
    for name, r in rows.items():
        label = name + (" (oracle)" if r["oracle"] else "")
        print(f"{label:<16} {r['top1_accuracy']:>9.3f} {r['topk_recall']:>12.3f} {r['mean_max_confidence']:>13.3f}")
    if args.json:
        atomic_write_json(args.json, {"trace": trace.name, "lookahead": args.lookahead, "batch": args.batch,
                                      "predictors": rows})
    return 0
