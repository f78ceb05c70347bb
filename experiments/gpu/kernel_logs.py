"""Write the simulator kernel's decision logs for the sim-to-real table (CPU, before the GPU call).

Each log is ``moe-cache-env evaluate --decision-log`` for one trace, batch, execution order and cache size, for
the simulator's own policies no-prefetch, static, perfect and lru, with the ``h200`` profile; each carries the
kernel's per-step latency, which ``replay-gpu --log`` prints beside the GPU's. The learned trace's routing is
replayed with Qwen1.5-MoE's expert size and layer (``--expert-bytes``, ``replay-gpu --model qwen1.5-moe``): the
profile measured that geometry, the learned model's own experts are 0.75 MB.

    PYTHONPATH=. python experiments/gpu/kernel_logs.py experiments/gpu/results/kernel-logs
    PYTHONPATH=. python experiments/gpu/kernel_logs.py DIR --prefetch-handoff link   # the other hand-off rule
    # the logs of the profile as first shipped (MoECache-v1/v2's rules):
    PYTHONPATH=. python experiments/gpu/kernel_logs.py DIR --prefetch-handoff link --profile h200-2026-12-01

The logs' decisions do not depend on the hand-off rule (only their timing does), so ``kernel_table.py --logs DIR``
compares either set with the same GPU runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_cache_env.cli import main
from moe_cache_env.sim.config import DEFAULT_PREFETCH_HANDOFF, PREFETCH_HANDOFFS

#: name -> (bundled trace, two cache sizes per layer, extra evaluate arguments)
TRACES = {
    "qwen": ("synthetic/qwen1.5-moe", (12, 36), []),
    "learned": ("learned/tiny-olmoe-12L-64E-decode", (16, 40), ["--expert-bytes", "29360128"]),
}
#: batch -> (sequences, tokens of each) replayed: batch 1 replays the trace's first 120 tokens, batch 8 the first
#: 32 tokens of its first 8 sequences, so that all 8 lanes are busy (cut so that the whole table fits one GPU call
#: of under 10 minutes)
CUTS = {1: (None, 120), 8: (8, 32)}
POLICIES = "no-prefetch,static,perfect,lru"


def cut_trace(name: str, sequences: int, tokens_each: int, path: Path) -> str:
    """The first ``tokens_each`` tokens of the trace's first ``sequences`` sequences, saved as a trace file."""
    import numpy as np

    from moe_cache_env.traces.catalog import resolve
    from moe_cache_env.traces.format import save_trace

    trace = resolve(name)
    bounds = trace.sequence_bounds()[:sequences]
    rows = np.concatenate([np.arange(a, min(b, a + tokens_each)) for a, b in bounds])
    meta = dict(trace.meta, name=f"{trace.name}[{sequences}x{tokens_each}]")
    if trace.domains() is not None:
        meta["domains"] = trace.domains()[:sequences]
    save_trace(trace.take_rows(rows, meta), path)
    return str(path)


def make_logs(out: Path, handoff: str = DEFAULT_PREFETCH_HANDOFF, *, profile: str = "h200",
              names: tuple[str, ...] | None = None, batches: tuple[int, ...] | None = None) -> None:
    """The logs (and evaluate's JSON beside them) of every trace in ``names`` and batch in ``batches`` (default:
    all), under ``profile`` (a name or a profile file) and the prefetch hand-off rule ``handoff``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, (trace, sizes, extra) in TRACES.items():
        if names is not None and name not in names:
            continue
        for batch, (sequences, tokens) in CUTS.items():
            if batches is not None and batch not in batches:
                continue
            source, cut = trace, ["--tokens", str(tokens)]
            if sequences is not None:
                source, cut = cut_trace(trace, sequences, tokens, out / f"{name}-b{batch}-trace.npz"), []
            for order in ("fused", "per-expert"):
                for slots in sizes:
                    stem = f"{name}-b{batch}-{order}-{slots}"
                    code = main(["evaluate", "--trace", source, *cut, "--policy", POLICIES,
                                 "--profile", profile, "--capacity", str(slots), "--batch", str(batch),
                                 "--execution-order", order, "--prefetch-handoff", handoff,
                                 "--quiet", "--json", str(out / f"{stem}.json"),
                                 "--decision-log", str(out / f"{stem}.npz"), *extra])
                    if code != 0:
                        raise SystemExit(code)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="experiments/gpu/results/kernel-logs", type=Path)
    parser.add_argument("--prefetch-handoff", default=DEFAULT_PREFETCH_HANDOFF, choices=PREFETCH_HANDOFFS)
    parser.add_argument("--profile", default="h200",
                        help="profile name or file (default %(default)s; h200-2026-12-01: as first shipped)")
    args = parser.parse_args()
    make_logs(args.out, args.prefetch_handoff, profile=args.profile)
