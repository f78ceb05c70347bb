"""The kernel against one GPU call, with the host costs that call measured (CPU, after a replay-gpu call).

On batch-1 rows the host (its decisions, copy issues and expert launches) sets much of a token's time, and one
call's host can be 1.5x as fast as another's (docs/sim-to-real.md). ``replay-gpu`` times its own host per layer
(``measured.host``: the decision apart for layers that issued copies, a line ``base + per copy`` through the
decision by copies issued, the launches per expert). This script takes the medians of those over a results file's
runs, writes the ``h200`` profile with them (``host_decision_ms`` = base, ``copy_issue_ms`` = per copy,
``expert_launch_ms`` = launch), rewrites the kernel's decision logs for that trace and batch under it (the
decisions do not depend on the timing, only the logs' estimates), and prints, row by row, the error of the
shipped profile's estimate (the one the call printed) beside that of the same-call host.

    PYTHONPATH=. python experiments/gpu/host_check.py experiments/gpu/results/host-timing/kernel-qwen-b1-host2.json \\
        --out /tmp/host-check
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"kernel-([a-z0-9]+)-b(\d+)")


def host_costs(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The medians over ``runs`` (replay-gpu's ``runs``) of the host's measured per-layer decision base, its cost
    per copy issued, and its launch time per expert."""
    fits = [r["measured"]["host"]["decision_fit"] for r in runs if r["measured"]["host"].get("decision_fit")]
    launches = [r["measured"]["host"]["launch_ms_per_expert"] for r in runs
                if r["measured"]["host"].get("launch_ms_per_expert") is not None]
    if not fits or not launches:
        raise SystemExit("the results carry no fit of the host's decision by copies (measured.host.decision_fit); "
                         "replay the logs again with replay-gpu of this version")
    return {"decision_ms": float(np.median([f["base_ms"] for f in fits])),
            "copy_issue_ms": float(np.median([f["per_copy_ms"] for f in fits])),
            "expert_launch_ms": float(np.median(launches)), "runs": len(runs)}


def profile_with_host(profile: Mapping[str, Any], costs: Mapping[str, float], name: str) -> dict[str, Any]:
    """``profile`` (a profile file's JSON) with its host costs replaced by ``costs``."""
    out = dict(profile, name=name, host_decision_ms=costs["decision_ms"], copy_issue_ms=costs["copy_issue_ms"],
               expert_launch_ms=costs["expert_launch_ms"])
    out["host"] = dict(profile.get("host") or {}, decision_ms=costs["decision_ms"],
                       expert_launch_ms=costs["expert_launch_ms"])
    out["description"] = f"{profile.get('description', '')} Host costs measured by one replay-gpu call ({name})."
    return out


def compare(runs: Sequence[Mapping[str, Any]], stem_of: Callable[[Mapping[str, Any]], str],
            kernel_stats: Callable[[str], Mapping[str, float]]) -> list[dict[str, Any]]:
    """Per run: the GPU's mean and P95, the error of the estimate the call printed (``kernel_error``) and of
    ``kernel_stats(stem)`` (the same decisions under the same-call host)."""
    rows = []
    for run in runs:
        stem = stem_of(run)
        same = kernel_stats(stem)
        gpu = run["measured"]
        shipped = run.get("kernel_error") or {}
        rows.append({"stem": stem, "gpu_mean_ms": gpu["mean_ms"], "gpu_p95_ms": gpu["p95_ms"],
                     "shipped_err_mean": shipped.get("mean_ms"), "shipped_err_p95": shipped.get("p95_ms"),
                     "same_call_mean_ms": same["mean_ms"], "same_call_err_mean": same["mean_ms"] / gpu["mean_ms"] - 1,
                     "same_call_err_p95": same["p95_ms"] / gpu["p95_ms"] - 1})
    return rows


def _kernel_stats(logs: Path) -> Callable[[str], dict[str, float]]:
    from moe_cache_env.gpu.decision_log import load_log
    from moe_cache_env.gpu.reference_policies import latency_stats

    def stats(stem: str) -> dict[str, float]:
        log = load_log(logs / f"{stem}.npz")
        return latency_stats(np.asarray(log.meta["kernel_step_latency_ms"], dtype=np.float64), log.step_ntokens)

    return stats


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a replay-gpu --json file of kernel logs (kernel-<trace>-b<batch>*)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the profile, the logs and the JSON")
    parser.add_argument("--prefetch-handoff", default="host-poll", choices=("link", "host-poll"))
    args = parser.parse_args(argv)
    match = _NAME.search(args.results.name)
    if match is None:
        raise SystemExit(f"{args.results}: expected a name kernel-<trace>-b<batch>...json (experiments/gpu/h200_kernel.sh)")
    name, batch = match.group(1), int(match.group(2))
    runs = json.loads(args.results.read_text())["runs"]
    costs = host_costs(runs)
    sys.path.insert(0, str(HERE))
    import kernel_logs
    from moe_cache_env._io import atomic_write_json
    from moe_cache_env.profiles.profile import DATA_DIR

    args.out.mkdir(parents=True, exist_ok=True)
    profile_path = args.out / "profile.json"
    base = json.loads((DATA_DIR / "h200.json").read_text())
    atomic_write_json(profile_path, profile_with_host(base, costs, f"h200-{args.results.stem}"))
    with contextlib.redirect_stdout(io.StringIO()):  # evaluate's tables: the comparison below is the output
        kernel_logs.make_logs(args.out / "logs", args.prefetch_handoff, profile=str(profile_path), names=(name,),
                              batches=(batch,))
    rows = compare(runs, lambda r: f"{name}-b{batch}-{r['order']}-{r['slots_per_layer']}-{r['policy']}",
                   _kernel_stats(args.out / "logs"))
    atomic_write_json(args.out / "host-check.json", {"results": str(args.results), "host": costs,
                                                     "prefetch_handoff": args.prefetch_handoff, "rows": rows})
    print(f"{args.results.name}: same-call host {costs['decision_ms']:.4f} ms per decision + "
          f"{costs['copy_issue_ms']:.4f} ms per copy, launch {costs['expert_launch_ms']:.4f} ms per expert "
          f"(medians over {costs['runs']} runs); hand-off {args.prefetch_handoff}")
    print("| log | GPU mean ms | shipped err mean | same-call err mean | shipped err P95 | same-call err P95 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['stem']} | {r['gpu_mean_ms']:.2f} | {_pct(r['shipped_err_mean'])} | "
              f"{_pct(r['same_call_err_mean'])} | {_pct(r['shipped_err_p95'])} | {_pct(r['same_call_err_p95'])} |")
    for label, key in (("shipped", "shipped_err_mean"), ("same-call", "same_call_err_mean")):
        errs = np.array([r[key] for r in rows if r[key] is not None])
        print(f"{label}: mean within 10% on {int((np.abs(errs) <= 0.10).sum())} of {len(errs)} rows, "
              f"|err| mean {np.abs(errs).mean():.1%}, range {errs.min():+.1%} .. {errs.max():+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
