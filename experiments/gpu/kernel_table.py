"""The sim-to-real table of docs/sim-to-real.md: the simulator kernel's estimate beside the H200's measurements.

The GPU replayed each decision log one or more times (``experiments/gpu/h200_kernel.sh`` writes
``results/kernel-<trace>-b<batch>.json``, the first run; ``h200_kernel_repeats.sh`` the repeats
``kernel-<trace>-b<batch>-repeat<N>.json``; ``-repeat`` with no number is the first repeat). A row's GPU reference
is the mean over all its stored runs of each run's mean per-token latency (and the same for P95): on a host-bound
row one run can sit 20% from the next, so the kernel is judged against the mean of runs, and the first run's error
and the runs' spread are printed beside it.

The kernel's estimate is read from the logs themselves (``results/kernel-logs/*.npz``, meta
``kernel_step_latency_ms``), so that a change to the kernel's timing model is checked against the same
measurements by rewriting the logs on the CPU and rerunning this script, as long as the decisions are unchanged
(the script refuses logs whose decisions differ from those the GPU replayed, in any run: their counts must match).

    PYTHONPATH=. python experiments/gpu/kernel_logs.py experiments/gpu/results/kernel-logs   # CPU
    PYTHONPATH=. python experiments/gpu/kernel_table.py                                     # the table
    PYTHONPATH=. python experiments/gpu/kernel_table.py --first-run-only                    # run 1 alone
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TRACES = {"qwen": "synthetic/qwen1.5-moe", "learned": "learned decode"}
BATCHES = (1, 8)
POLICIES = ("no-prefetch", "static", "perfect", "lru")
ORDERS = ("fused", "per-expert")
MEAN_TARGET, P95_TARGET = 0.10, 0.15
_REPEAT = re.compile(r"-repeat(\d*)\.json$")


def _kernel_stats(log_path: Path, reference: bool = True) -> dict[str, Any]:
    """The kernel's estimate stored in a log, its late prefetches, and (``reference``) the plain-Python reference
    estimate of the same decisions under the log's profile and hand-off rule, at the profile's default context
    (the replays' own)."""
    from moe_cache_env.gpu.decision_log import load_log
    from moe_cache_env.gpu.reference_policies import ReferenceTiming, estimate_latency, latency_stats
    from moe_cache_env.profiles import load_profile

    log = load_log(log_path)
    latency = np.asarray(log.meta["kernel_step_latency_ms"], dtype=np.float64)
    ref_mean = None
    if reference:
        timing = ReferenceTiming.from_profile(load_profile(log.meta["profile"]), log.expert_bytes, batch=log.batch)
        estimate = estimate_latency(log, timing, log.meta["execution_order"], log.meta["prefetch_handoff"])
        ref_mean = latency_stats(estimate["latency_ms"], log.step_ntokens)["mean_ms"]
    # the queued prefetches the kernel loaded on demand (late: not started when their layer ran), from
    # the evaluate JSON written beside the logs (<stem>.json holds every policy of <stem>-<policy>.npz)
    late = None
    stem, policy = log_path.stem.rsplit("-", 1)
    metrics_path = log_path.with_name(f"{stem}.json")
    if metrics_path.exists():
        late = json.loads(metrics_path.read_text())["policies"].get(policy, {}).get("prefetches_overtaken")
    return {**latency_stats(latency, log.step_ntokens), "counts": log.counts(), "late": late, "ref_mean_ms": ref_mean}


def run_files(results: Path, name: str, batch: int) -> list[Path]:
    """The GPU runs of one trace and batch, first run first, then the repeats by number (``-repeat`` is 1)."""
    first = results / f"kernel-{name}-b{batch}.json"
    if not first.exists():
        raise SystemExit(f"{first}: missing; replay the logs on the GPU first (experiments/gpu/h200_kernel.sh)")
    repeats = []
    for path in results.glob(f"kernel-{name}-b{batch}-repeat*.json"):
        match = _REPEAT.search(path.name)
        if match is None:
            raise SystemExit(f"{path}: not a repeat run's name; name repeats kernel-{name}-b{batch}-repeat<N>.json")
        repeats.append((int(match.group(1) or 1), path))
    return [first] + [path for _, path in sorted(repeats)]


def _run_label(path: Path) -> str:
    match = _REPEAT.search(path.name)
    return "first" if match is None else match.group(0)[1:-len(".json")]


def _err(sim: float, gpu: float) -> float:
    return sim / gpu - 1.0


def rows(results: Path, logs: Path, *, first_run_only: bool = False,
         kernel_stats: Callable[[Path], dict[str, Any]] = _kernel_stats) -> list[dict[str, Any]]:
    """One row per decision log the GPU replayed, with the kernel's current estimate against the mean of runs.

    ``kernel_stats(path)`` reads a log's kernel estimate (``mean_ms``, ``p95_ms``, ``counts``); every run of a row
    must have replayed decisions with those counts.
    """
    out = []
    for name, label in TRACES.items():
        for batch in BATCHES:
            files = run_files(results, name, batch)
            if first_run_only:
                files = files[:1]
            runs: dict[tuple[str, int, str], list[tuple[str, dict[str, Any]]]] = {}
            for path in files:
                try:
                    data = json.loads(path.read_text())
                    entries = data["runs"]
                except (OSError, ValueError, KeyError) as exc:
                    raise SystemExit(f"{path}: not a replay-gpu result ({exc}); replace it with the JSON that "
                                     f"replay-gpu --json wrote") from None
                for run in entries:
                    key = (run["policy"], run["slots_per_layer"], run["order"])
                    runs.setdefault(key, []).append((_run_label(path), run))
            for (policy, slots, order), measured in runs.items():
                stem = f"{name}-b{batch}-{order}-{slots}-{policy}"
                if measured[0][0] != "first":
                    raise SystemExit(f"{stem}: measured in a repeat but not in the first run {files[0]}")
                kernel = kernel_stats(logs / f"{stem}.npz")
                for run_label, run in measured:
                    if kernel["counts"] != run["log_counts"]:
                        raise SystemExit(f"{stem}: the log's decisions differ from those the GPU replayed in run "
                                         f"{run_label} ({kernel['counts']} vs {run['log_counts']}); replay the new "
                                         f"logs on the GPU")
                means = [run["measured"]["mean_ms"] for _, run in measured]
                p95s = [run["measured"]["p95_ms"] for _, run in measured]
                gpu_mean, gpu_p95 = float(np.mean(means)), float(np.mean(p95s))
                first = measured[0][1]
                out.append({
                    "trace": label, "batch": batch, "policy": policy, "slots": slots, "order": order,
                    "hit_rate": first["log_counts"]["hit_rate"], "counts": first["log_counts"],
                    "runs": len(measured), "run_labels": [lab for lab, _ in measured],
                    "gpu_mean_runs": means, "gpu_p95_runs": p95s,
                    "gpu_mean_min": min(means), "gpu_mean_max": max(means),
                    "spread": max(means) / min(means) - 1.0,
                    "sim_mean": kernel["mean_ms"], "gpu_mean": gpu_mean, "err_mean": _err(kernel["mean_ms"], gpu_mean),
                    "sim_p95": kernel["p95_ms"], "gpu_p95": gpu_p95, "err_p95": _err(kernel["p95_ms"], gpu_p95),
                    "err_mean_runs": [_err(kernel["mean_ms"], m) for m in means],
                    "err_p95_runs": [_err(kernel["p95_ms"], p) for p in p95s],
                    "err_mean_first": _err(kernel["mean_ms"], means[0]),
                    "err_p95_first": _err(kernel["p95_ms"], p95s[0]),
                    # the plain-Python reference estimate of the same decisions (the same in every run: one profile)
                    "ref_err_mean": (_err(kernel["ref_mean_ms"], gpu_mean) if kernel.get("ref_mean_ms") is not None
                                     else None),
                    # queued prefetches loaded on demand: the kernel's count and the GPU's in each run
                    "sim_late": kernel.get("late"),
                    "gpu_late_runs": [run["measured"].get("copies", {}).get("promoted") for _, run in measured],
                })
    labels = list(TRACES.values())
    out.sort(key=lambda r: (labels.index(r["trace"]), r["batch"], -r["slots"], ORDERS.index(r["order"]),
                            POLICIES.index(r["policy"])))
    return out


def replay_noise(table: list[dict[str, Any]]) -> list[float]:
    """The GPU's spread between replays of identical decisions: rows of one setting whose logs have the same
    counts (no-prefetch and lru, both demand-only LRU, write the same decisions), as |a / b - 1| of their
    references (the mean of each row's runs)."""
    spread = []
    groups: dict[tuple, list[float]] = {}
    for r in table:
        key = (r["trace"], r["batch"], r["slots"], r["order"], json.dumps(r["counts"], sort_keys=True))
        groups.setdefault(key, []).append(r["gpu_mean"])
    for means in groups.values():
        if len(means) > 1:
            spread.append(max(means) / min(means) - 1.0)
    return spread


def _spread_stats(rows_: list[dict[str, Any]]) -> dict[str, Any] | None:
    repeated = [r for r in rows_ if r["runs"] > 1]
    if not repeated:
        return None
    widest = max(repeated, key=lambda r: r["spread"])
    return {"rows": len(repeated), "median": float(np.median([r["spread"] for r in repeated])),
            "max": widest["spread"], "max_row": _row_name(widest)}


def summary(table: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts against the targets: against the mean of runs, against the first run, against at least one run,
    and the runs' spread (max / min - 1 of a row's run means) over all rows and per batch."""
    return {
        "rows": len(table),
        "mean_within_vs_mean_of_runs": sum(abs(r["err_mean"]) <= MEAN_TARGET for r in table),
        "p95_within_vs_mean_of_runs": sum(abs(r["err_p95"]) <= P95_TARGET for r in table),
        "mean_within_vs_first_run": sum(abs(r["err_mean_first"]) <= MEAN_TARGET for r in table),
        "p95_within_vs_first_run": sum(abs(r["err_p95_first"]) <= P95_TARGET for r in table),
        "mean_within_some_run": sum(any(abs(e) <= MEAN_TARGET for e in r["err_mean_runs"]) for r in table),
        "p95_within_some_run": sum(any(abs(e) <= P95_TARGET for e in r["err_p95_runs"]) for r in table),
        "mean_within_every_run": sum(all(abs(e) <= MEAN_TARGET for e in r["err_mean_runs"]) for r in table),
        "spread": _spread_stats(table),
        "spread_by_batch": {str(b): _spread_stats([r for r in table if r["batch"] == b]) for b in BATCHES},
    }


def _row_name(r: dict[str, Any]) -> str:
    return f"{r['trace']}, batch {r['batch']}, {r['policy']}, {r['slots']} slots, {r['order']}"


def _pct(x: float, target: float | None = None) -> str:
    text = f"{x:+.1%}"
    return f"**{text}**" if target is not None and abs(x) > target else text


def markdown(table: list[dict[str, Any]]) -> str:
    """The table, bold where outside the targets against the mean of runs, and the summary lines."""
    lines = ["| trace | batch | policy | slots/layer | order | hit rate | runs | sim mean | GPU mean "
             "| GPU runs min-max | err mean | err mean run 1 | sim P95 | GPU P95 | err P95 | err P95 run 1 "
             "| ref. est. err mean |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        lines.append(f"| {r['trace']} | {r['batch']} | {r['policy']} | {r['slots']} | {r['order']} | "
                     f"{r['hit_rate']:.3f} | {r['runs']} | {r['sim_mean']:.2f} | {r['gpu_mean']:.2f} | "
                     f"{r['gpu_mean_min']:.2f}-{r['gpu_mean_max']:.2f} | {_pct(r['err_mean'], MEAN_TARGET)} | "
                     f"{_pct(r['err_mean_first'], MEAN_TARGET)} | {r['sim_p95']:.2f} | {r['gpu_p95']:.2f} | "
                     f"{_pct(r['err_p95'], P95_TARGET)} | {_pct(r['err_p95_first'], P95_TARGET)} | "
                     f"{'-' if r['ref_err_mean'] is None else _pct(r['ref_err_mean'])} |")
    s = summary(table)
    n = s["rows"]
    worst_mean = max(table, key=lambda r: abs(r["err_mean"]))
    worst_p95 = max(table, key=lambda r: abs(r["err_p95"]))
    lines += ["", f"Against the mean of runs: mean within {MEAN_TARGET:.0%} on {s['mean_within_vs_mean_of_runs']} of "
              f"{n} rows, P95 within {P95_TARGET:.0%} on {s['p95_within_vs_mean_of_runs']} of {n}. Largest errors: "
              f"mean {worst_mean['err_mean']:+.1%} ({_row_name(worst_mean)}); P95 {worst_p95['err_p95']:+.1%} "
              f"({_row_name(worst_p95)}).",
              f"Against the first run alone: mean {s['mean_within_vs_first_run']} of {n}, P95 "
              f"{s['p95_within_vs_first_run']} of {n}. Within target of at least one run: mean "
              f"{s['mean_within_some_run']} of {n}, P95 {s['p95_within_some_run']} of {n}; mean within target of "
              f"every run: {s['mean_within_every_run']} of {n}."]
    if s["spread"] is not None:
        parts = [f"all {s['spread']['rows']} rows with more than one run: median {s['spread']['median']:.1%}, max "
                 f"{s['spread']['max']:.1%} ({s['spread']['max_row']})"]
        for batch, st in s["spread_by_batch"].items():
            if st is not None:
                parts.append(f"batch {batch}: median {st['median']:.1%}, max {st['max']:.1%}")
        lines.append("Run-to-run spread of a row's mean latency (max / min - 1 over its runs): "
                     + "; ".join(parts) + ".")
    spread = replay_noise(table)
    if spread:
        lines += ["", f"GPU references (mean of runs) of identical decisions (no-prefetch and lru) differ by "
                  f"{min(spread):.1%} to {max(spread):.1%} (median {float(np.median(spread)):.1%}, "
                  f"{len(spread)} pairs)."]
    return "\n".join(lines)


def miss_lines(table: list[dict[str, Any]]) -> list[str]:
    """Rows whose mean misses the target against the mean of runs or in any one run: the kernel's error against
    each run, in run order, and whether its sign is the same in every run (a model gap) or not (noise)."""
    lines: list[str] = []
    for r in table:
        errs = r["err_mean_runs"]
        if abs(r["err_mean"]) <= MEAN_TARGET and all(abs(e) <= MEAN_TARGET for e in errs):
            continue
        if not lines:
            lines = ["| trace | batch | policy | slots/layer | order | sim mean | GPU run means | err mean per run | "
                     "err vs mean of runs | sign |",
                     "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        if len(errs) == 1:
            sign = "one run"
        else:
            sign = "same in every run" if all(e > 0 for e in errs) or all(e < 0 for e in errs) else "mixed"
        lines.append(f"| {r['trace']} | {r['batch']} | {r['policy']} | {r['slots']} | {r['order']} | "
                     f"{r['sim_mean']:.2f} | {' / '.join(f'{m:.2f}' for m in r['gpu_mean_runs'])} | "
                     f"{' / '.join(_pct(e) for e in errs)} | {_pct(r['err_mean'], MEAN_TARGET)} | {sign} |")
    return lines


def late_lines(table: list[dict[str, Any]]) -> list[str]:
    """A markdown table of the rows whose prefetches were late on the GPU in some run: how many queued prefetches
    the GPU loaded on demand (not yet handed to the link when their layer ran), against the kernel's count of the
    same (``prefetches_overtaken``)."""
    lines = []
    for r in table:
        gpu = [x for x in r.get("gpu_late_runs", []) if x is not None]
        if not gpu or max(gpu) == 0 or r.get("sim_late") is None:
            continue
        lines.append(f"| {r['trace']} | {r['batch']} | {r['policy']} | {r['slots']} | {r['order']} | {' / '.join(str(x) for x in gpu)} | {min(gpu)}-{max(gpu)} | "
                     f"{r['sim_late']} | {r['sim_late'] / float(np.mean(gpu)) - 1.0:+.1%} |")
    if not lines:
        return []
    head = ["| trace | batch | policy | slots/layer | order | GPU late per run | GPU min-max | kernel late | "
            "kernel vs mean of runs |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    return head + lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--logs", default=str(RESULTS / "kernel-logs"))
    parser.add_argument("--first-run-only", action="store_true",
                        help="use only the first run of each row (kernel-<trace>-b<batch>.json), as before repeats")
    parser.add_argument("--json", default=None, help="also write the rows and the summary here")
    args = parser.parse_args(argv)
    table = rows(Path(args.results), Path(args.logs), first_run_only=args.first_run_only)
    if args.json:
        from moe_cache_env._io import atomic_write_json

        atomic_write_json(Path(args.json), {"rows": table, "summary": summary(table), "mean_target": MEAN_TARGET,
                                            "p95_target": P95_TARGET})
    print(markdown(table))
    misses = miss_lines(table)
    if misses:
        print("\nRows outside the mean target against the mean of runs or in any run (runs in order: first, "
              "repeat, repeat2, ...):\n")
        print("\n".join(misses))
    late = late_lines(table)
    if late:
        print("\nQueued prefetches loaded on demand (late), GPU runs against the kernel:\n")
        print("\n".join(late))
    return 0


if __name__ == "__main__":
    sys.exit(main())
