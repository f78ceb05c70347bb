"""The sim-to-real table of docs/sim-to-real.md: the simulator kernel's estimate beside the H200's measurement.

The GPU measured each decision log once (``experiments/gpu/h200_kernel.sh`` -> ``results/kernel-*.json``). The
kernel's estimate is read from the logs themselves (``results/kernel-logs/*.npz``, meta
``kernel_step_latency_ms``), so that a change to the kernel's timing model is checked against the same
measurements by rewriting the logs on the CPU and rerunning this script, as long as the decisions are unchanged
(the script refuses logs whose decisions differ from those the GPU replayed: their counts must match).

    PYTHONPATH=. python experiments/gpu/kernel_logs.py experiments/gpu/results/kernel-logs   # CPU
    PYTHONPATH=. python experiments/gpu/kernel_table.py                                     # the table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TRACES = {"qwen": "synthetic/qwen1.5-moe", "learned": "learned decode"}
POLICIES = ("no-prefetch", "static", "perfect", "lru")
ORDERS = ("fused", "per-expert")
MEAN_TARGET, P95_TARGET = 0.10, 0.15


def _kernel_stats(log_path: Path) -> dict[str, float]:
    from moe_cache_env.gpu.decision_log import load_log
    from moe_cache_env.gpu.reference_policies import latency_stats

    log = load_log(log_path)
    latency = np.asarray(log.meta["kernel_step_latency_ms"], dtype=np.float64)
    return {**latency_stats(latency, log.step_ntokens), "counts": log.counts()}


def rows(results: Path, logs: Path) -> list[dict[str, Any]]:
    """One row per GPU replay in ``results/kernel-<trace>-b<batch>.json``, with the kernel's current estimate."""
    out = []
    for name, label in TRACES.items():
        for batch in (1, 8):
            data = json.loads((results / f"kernel-{name}-b{batch}.json").read_text())
            for run in data["runs"]:
                stem = f"{name}-b{batch}-{run['order']}-{run['slots_per_layer']}-{run['policy']}"
                kernel = _kernel_stats(logs / f"{stem}.npz")
                if kernel["counts"] != run["log_counts"]:
                    raise SystemExit(f"{stem}: the log's decisions differ from those the GPU replayed "
                                     f"({kernel['counts']} vs {run['log_counts']}); replay the new logs on the GPU")
                gpu = run["measured"]
                out.append({
                    "trace": label, "batch": batch, "policy": run["policy"], "slots": run["slots_per_layer"],
                    "order": run["order"], "hit_rate": run["log_counts"]["hit_rate"],
                    "sim_mean": kernel["mean_ms"], "gpu_mean": gpu["mean_ms"],
                    "err_mean": kernel["mean_ms"] / gpu["mean_ms"] - 1.0,
                    "sim_p95": kernel["p95_ms"], "gpu_p95": gpu["p95_ms"],
                    "err_p95": kernel["p95_ms"] / gpu["p95_ms"] - 1.0,
                    "ref_err_mean": run["error"]["mean_ms"], "counts": run["log_counts"],
                })
    labels = list(TRACES.values())
    out.sort(key=lambda r: (labels.index(r["trace"]), r["batch"], -r["slots"], ORDERS.index(r["order"]),
                            POLICIES.index(r["policy"])))
    return out


def replay_noise(table: list[dict[str, Any]]) -> list[float]:
    """The GPU's spread between replays of identical decisions: rows of one setting whose logs have the same
    counts (no-prefetch and lru, both demand-only LRU, write the same decisions), as |a / b - 1|."""
    spread = []
    groups: dict[tuple, list[float]] = {}
    for r in table:
        key = (r["trace"], r["batch"], r["slots"], r["order"], json.dumps(r["counts"], sort_keys=True))
        groups.setdefault(key, []).append(r["gpu_mean"])
    for means in groups.values():
        if len(means) > 1:
            spread.append(max(means) / min(means) - 1.0)
    return spread


def markdown(table: list[dict[str, Any]]) -> str:
    def err(x: float, target: float) -> str:
        text = f"{x:+.1%}"
        return f"**{text}**" if abs(x) > target else text

    lines = ["| trace | batch | policy | slots/layer | order | hit rate | sim mean | GPU mean | err mean | sim P95 | "
             "GPU P95 | err P95 | ref. est. err mean |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        lines.append(f"| {r['trace']} | {r['batch']} | {r['policy']} | {r['slots']} | {r['order']} | "
                     f"{r['hit_rate']:.3f} | {r['sim_mean']:.2f} | {r['gpu_mean']:.2f} | "
                     f"{err(r['err_mean'], MEAN_TARGET)} | {r['sim_p95']:.2f} | {r['gpu_p95']:.2f} | "
                     f"{err(r['err_p95'], P95_TARGET)} | {r['ref_err_mean']:+.1%} |")
    mean_ok = sum(abs(r["err_mean"]) <= MEAN_TARGET for r in table)
    p95_ok = sum(abs(r["err_p95"]) <= P95_TARGET for r in table)
    worst_mean = max(table, key=lambda r: abs(r["err_mean"]))
    worst_p95 = max(table, key=lambda r: abs(r["err_p95"]))
    lines += ["", f"Mean within {MEAN_TARGET:.0%}: {mean_ok} of {len(table)} rows; P95 within {P95_TARGET:.0%}: "
              f"{p95_ok} of {len(table)}. Largest errors: mean {worst_mean['err_mean']:+.1%} ({worst_mean['trace']}, "
              f"batch {worst_mean['batch']}, {worst_mean['policy']}, {worst_mean['slots']} slots, "
              f"{worst_mean['order']}); P95 {worst_p95['err_p95']:+.1%} ({worst_p95['trace']}, batch "
              f"{worst_p95['batch']}, {worst_p95['policy']}, {worst_p95['slots']} slots, {worst_p95['order']})."]
    spread = replay_noise(table)
    if spread:
        lines += ["", f"GPU replays of identical decisions (no-prefetch and lru) differ in mean latency by "
                  f"{min(spread):.1%} to {max(spread):.1%} (median {float(np.median(spread)):.1%}, {len(spread)} pairs)."]
    return "\n".join(lines)


def repeat_lines(table: list[dict[str, Any]], results: Path) -> list[str]:
    """Rows measured again in a later GPU call (``kernel-<trace>-b<batch>-repeat.json``): both measurements and
    the kernel's error against each and against their mean."""
    lines: list[str] = []
    for name, label in TRACES.items():
        for batch in (1, 8):
            path = results / f"kernel-{name}-b{batch}-repeat.json"
            if not path.exists():
                continue
            data = json.loads(path.read_text())
            again = {(r["policy"], r["slots_per_layer"], r["order"]): r["measured"]["mean_ms"] for r in data["runs"]}
            if not lines:
                lines = ["| trace | batch | policy | slots/layer | order | sim mean | GPU run 1 | GPU run 2 | runs differ "
                         "| err run 1 | err run 2 | err vs mean of runs |",
                         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for r in table:
                key = (r["policy"], r["slots"], r["order"])
                if r["trace"] != label or r["batch"] != batch or key not in again:
                    continue
                second = again[key]
                both = (r["gpu_mean"] + second) / 2
                lines.append(f"| {label} | {batch} | {r['policy']} | {r['slots']} | {r['order']} | {r['sim_mean']:.2f} | "
                             f"{r['gpu_mean']:.2f} | {second:.2f} | {second / r['gpu_mean'] - 1:+.1%} | "
                             f"{r['err_mean']:+.1%} | {r['sim_mean'] / second - 1:+.1%} | {r['sim_mean'] / both - 1:+.1%} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--logs", default=str(RESULTS / "kernel-logs"))
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    table = rows(Path(args.results), Path(args.logs))
    if args.json:
        from moe_cache_env._io import atomic_write_json

        atomic_write_json(Path(args.json), {"rows": table, "mean_target": MEAN_TARGET, "p95_target": P95_TARGET})
    print(markdown(table))
    again = repeat_lines(table, Path(args.results))
    if again:
        print("\nMeasured again in a later call:\n")
        print("\n".join(again))
    return 0


if __name__ == "__main__":
    sys.exit(main())
