"""Fit the ``h200`` profile's host costs to the stored GPU replays of the sim-to-real table (CPU only).

The host's per-layer decision time (``host_decision_ms``, before a layer's first copy) and its time per copy issued
(``copy_issue_ms``) are the profile's least stable numbers: measured on the H200 they move up to 2.5x between
calls and within one (``results/host-timing/``; per call, the median decision base ranged 0.026-0.072 ms and the
median cost per copy 0.016-0.040 ms). One calibrate call cannot pin them. This script picks the pair that best
explains every GPU replay the project stored (``results/kernel-*.json``: 64 rows, 2-6 runs each, made in several
calls): for each point of a grid it rewrites the kernel's decision logs with that pair under the ``host-poll``
hand-off (``kernel_logs.py``; the decisions do not depend on it, only their timing) and scores the kernel's mean
per-token latency against the mean of each row's runs (``kernel_table.py``). The objective is the mean |error|
over the rows; a leave-one-trace-out check fits on one trace's rows and scores the other's.

    PYTHONPATH=. python experiments/gpu/host_fit.py                    # the grid and the fit, printed as JSON
    PYTHONPATH=. python experiments/gpu/host_fit.py --apply            # also write the fit into h200.json

``--apply`` writes ``host_decision_ms`` and ``copy_issue_ms`` of ``moe_cache_env/profiles/data/h200.json`` and a
``host_fit`` block (the command, the grid, the objective and the check) beside the calibrated measurements, which
stay in ``host``; then run ``experiments/headroom/nominal_profiles.py`` to copy them into the nominal profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kernel_logs  # noqa: E402
import kernel_table  # noqa: E402

ROOT = HERE.parents[1]
PROFILE = ROOT / "moe_cache_env" / "profiles" / "data" / "h200.json"
OUT = HERE / "results" / "host-timing" / "host-fit.json"
HANDOFF = "host-poll"
#: the grid (ms): decision base 0 .. 0.14 by 0.01, cost per copy 0 .. 0.04 by 0.01. It spans every per-call
#: median measured on the H200 and the single calibrations (0.020 and 0.135 ms), and stops the cost per copy at the
#: largest per-call median measured (0.040): unbounded, the fit takes more (0.06-0.08 ms per copy scores 1.85%
#: against 2.0%), a sign that the host spends time per copy where the model places none (prefetches issued while
#: it polls), which a fitted number should not stand in for
DECISIONS = tuple(round(0.01 * i, 2) for i in range(15))
PER_COPY = tuple(round(0.01 * i, 2) for i in range(5))


def score(point: tuple[float, float], base: dict[str, Any]) -> dict[str, Any]:
    """Every row's error with the profile's host costs set to ``point`` (decision, per copy)."""
    decision, per_copy = point
    profile = dict(base, host_decision_ms=decision, copy_issue_ms=per_copy)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        path = out / "profile.json"
        path.write_text(json.dumps(profile))
        with contextlib.redirect_stdout(io.StringIO()):  # evaluate's lines, one per log
            kernel_logs.make_logs(out, HANDOFF, profile=str(path))
        # the reference estimate would read the shipped profile, not this point's: not needed for the fit
        stats = functools.partial(kernel_table._kernel_stats, reference=False)
        table = kernel_table.rows(kernel_table.RESULTS, out, kernel_stats=stats)
    return {"decision_ms": decision, "copy_issue_ms": per_copy,
            "rows": [{"name": kernel_table._row_name(r), "trace": r["trace"], "err_mean": r["err_mean"],
                      "err_p95": r["err_p95"]} for r in table],
            "summary": kernel_table.summary(table)}


def objective(point: dict[str, Any], trace: str | None = None) -> float:
    """Mean |error of the mean latency| over the rows (of one trace, or all)."""
    errs = [abs(r["err_mean"]) for r in point["rows"] if trace is None or r["trace"] == trace]
    return sum(errs) / len(errs)


def worst(point: dict[str, Any], trace: str | None = None) -> dict[str, Any]:
    rows = [r for r in point["rows"] if trace is None or r["trace"] == trace]
    row = max(rows, key=lambda r: abs(r["err_mean"]))
    return {"row": row["name"], "err_mean": row["err_mean"]}


def fit(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The best point over all rows, and the leave-one-trace-out check."""
    best = min(points, key=objective)
    traces = sorted({r["trace"] for r in best["rows"]})
    held_out = {}
    for fitted_on in traces:
        chosen = min(points, key=lambda p: objective(p, fitted_on))
        for other in traces:
            if other != fitted_on:
                held_out[f"fit on {fitted_on}, scored on {other}"] = {
                    "decision_ms": chosen["decision_ms"], "copy_issue_ms": chosen["copy_issue_ms"],
                    "mean_abs_err": objective(chosen, other), "worst": worst(chosen, other),
                    "mean_within_10pct": sum(abs(r["err_mean"]) <= kernel_table.MEAN_TARGET
                                             for r in chosen["rows"] if r["trace"] == other),
                    "rows": sum(r["trace"] == other for r in chosen["rows"])}
    summary = best["summary"]
    return {"decision_ms": best["decision_ms"], "copy_issue_ms": best["copy_issue_ms"],
            "mean_abs_err": objective(best), "worst": worst(best),
            "mean_within_10pct": summary["mean_within_vs_mean_of_runs"],
            "p95_within_15pct": summary["p95_within_vs_mean_of_runs"], "rows": summary["rows"],
            "leave_one_trace_out": held_out}


def apply(result: dict[str, Any], command: str) -> None:
    from moe_cache_env._io import atomic_write_json

    profile = json.loads(PROFILE.read_text())
    profile["host_decision_ms"] = result["fit"]["decision_ms"]
    profile["copy_issue_ms"] = result["fit"]["copy_issue_ms"]
    profile["host_fit"] = {
        "what": "host_decision_ms and copy_issue_ms fitted to the stored H200 replays of the sim-to-real table "
                "(experiments/gpu/host_fit.py): the pair of the grid with the least mean |error| of the mean "
                "per-token latency, under the host-poll hand-off; the calibrated measurements stay in host",
        "command": command,
        "handoff": HANDOFF,
        "grid": {"decision_ms": list(DECISIONS), "copy_issue_ms": list(PER_COPY)},
        "fit": result["fit"],
    }
    atomic_write_json(PROFILE, profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="processes (default %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON written (default %(default)s)")
    parser.add_argument("--apply", action="store_true", help="write the fit into h200.json")
    args = parser.parse_args(argv)
    base = json.loads(PROFILE.read_text())
    grid = [(d, c) for d in DECISIONS for c in PER_COPY]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        points = list(pool.map(score, grid, [base] * len(grid)))
    result = {
        "handoff": HANDOFF,
        "objective": "mean over the table's rows of |kernel mean / mean of the GPU runs' means - 1|",
        "fit": fit(points),
        "grid": [{"decision_ms": p["decision_ms"], "copy_issue_ms": p["copy_issue_ms"],
                  "mean_abs_err": objective(p), "worst": worst(p),
                  "mean_within_10pct": p["summary"]["mean_within_vs_mean_of_runs"],
                  "p95_within_15pct": p["summary"]["p95_within_vs_mean_of_runs"]} for p in points],
    }
    from moe_cache_env._io import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps(result["fit"], indent=1))
    if args.apply:
        apply(result, "PYTHONPATH=. python experiments/gpu/host_fit.py --apply")
        print(f"wrote {PROFILE.relative_to(ROOT)}: host_decision_ms {result['fit']['decision_ms']}, "
              f"copy_issue_ms {result['fit']['copy_issue_ms']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
