"""Where in a token the kernel's batch-1 error sits: its per-step error split by the kind of layer.

For each batch-1 decision log of the sim-to-real table (``kernel_table.py``), the kernel's per-step estimate minus
the GPU's per-step latency averaged over every stored run of that log, in ms per token, and that error split by
least squares over the layers of each step, grouped by how many demand loads the layer issued (0: every expert
resident or prefetched, 1, 2, 3 or more): ``error[step] ~ sum_k c_k * layers_with_k_loads[step]``, no intercept.
A ``c_0`` well above zero in every configuration says the model charges a layer with nothing to copy more host
time than the engine spends on it; per-run errors with one sign say the gap is the model's, not noise.

    PYTHONPATH=. python experiments/gpu/kernel_layers.py [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
KINDS = ("0", "1", "2", "3+")


def _kernel_table() -> Any:
    spec = importlib.util.spec_from_file_location("kernel_table", HERE / "kernel_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layer_kinds(log: Any) -> np.ndarray:
    """``[steps, 4]``: per step, the layers that issued 0, 1, 2 and 3 or more demand loads."""
    from moe_cache_env.gpu.decision_log import SOURCE_DEMAND

    counts = np.zeros((log.num_steps, len(KINDS)))
    for ld in log.iter_decisions():
        loads = sum(1 for need in ld.need if need[3] == SOURCE_DEMAND)
        counts[ld.step, min(loads, len(KINDS) - 1)] += 1
    return counts


def split_error(error_ms: np.ndarray, kinds: np.ndarray, min_per_step: float = 0.5) -> list[float | None]:
    """Least-squares error per layer of each kind; None for a kind with fewer than ``min_per_step`` layers per step
    on average (a handful of layers would absorb the steps' noise and give a meaningless coefficient)."""
    present = kinds.mean(axis=0) >= min_per_step
    coef, *_ = np.linalg.lstsq(kinds[:, present], error_ms, rcond=None)
    out: list[float | None] = [None] * len(KINDS)
    for i, c in zip(np.flatnonzero(present), coef):
        out[i] = float(c)
    return out


def rows(results: Path, logs: Path) -> list[dict[str, Any]]:
    from moe_cache_env.gpu.decision_log import load_log

    kt = _kernel_table()
    out = []
    for name, label in kt.TRACES.items():
        runs = [json.loads(p.read_text())["runs"] for p in kt.run_files(results, name, 1)]
        for run in runs[0]:
            key = (run["policy"], run["slots_per_layer"], run["order"])
            stem = f"{name}-b1-{key[2]}-{key[1]}-{key[0]}"
            log = load_log(logs / f"{stem}.npz")
            sim = np.asarray(log.meta["kernel_step_latency_ms"], dtype=np.float64)
            measured = [np.asarray(r["measured_latency_ms"], dtype=np.float64) for rs in runs for r in rs
                        if (r["policy"], r["slots_per_layer"], r["order"]) == key]
            if any(m.shape != sim.shape for m in measured):
                raise SystemExit(f"{stem}: a run measured another number of steps than the log has")
            error = sim - np.mean(measured, axis=0)
            kinds = layer_kinds(log)
            out.append({"trace": label, "policy": key[0], "slots": key[1], "order": key[2], "runs": len(measured),
                        "err_ms": float(error.mean()), "err_ms_runs": [float((sim - m).mean()) for m in measured],
                        "layers_by_loads": kinds.mean(axis=0).tolist(), "err_ms_per_layer": split_error(error, kinds)})
    kinds_order = list(kt.POLICIES)
    out.sort(key=lambda r: (r["trace"] != "synthetic/qwen1.5-moe", -r["slots"], r["order"],
                            kinds_order.index(r["policy"])))
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    def ms(x: float | None) -> str:
        return "" if x is None else f"{x:+.3f}"

    lines = ["| trace | slots/layer | order | policy | runs | err ms/token | err ms/token per run | layers/step by "
             "demand loads 0 / 1 / 2 / 3+ | err ms per layer: 0 loads | 1 | 2 | 3+ |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        c = r["err_ms_per_layer"]
        lines.append(f"| {r['trace']} | {r['slots']} | {r['order']} | {r['policy']} | {r['runs']} | "
                     f"{r['err_ms']:+.2f} | {' / '.join(f'{e:+.2f}' for e in r['err_ms_runs'])} | "
                     f"{' / '.join(f'{n:.1f}' for n in r['layers_by_loads'])} | {ms(c[0])} | {ms(c[1])} | "
                     f"{ms(c[2])} | {ms(c[3])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--logs", default=str(HERE / "results" / "kernel-logs"))
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    table = rows(Path(args.results), Path(args.logs))
    if args.json:
        from moe_cache_env._io import atomic_write_json

        atomic_write_json(Path(args.json), {"rows": table})
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
