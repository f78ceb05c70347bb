"""The policy zoo on every bundled trace, at two capacities and two hardware profiles (docs/policies.md).

Run:  python experiments/policies/zoo_table.py [--tokens 3000] [--out experiments/policies]

Each trace is cut to a head: its first sequences holding at most ``--tokens`` tokens (all of them for a shorter
trace). The fitted policies (hot-set, layer-alloc, activation-aware) fit on the sequences that follow the head,
up to as many tokens again (held out); a trace with nothing after its head fits on the head's own first quarter
of sequences, and its rows say ``in-sample``. Batch 1, no KV cache, timeline timing, seed 0; capacities are 20%
and 40% of a layer's experts per layer (at least top_k + 1, at most all but one). Writes ``results.json`` and
``results.md``; prints one JSON line per row as it goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from moe_cache_env._io import atomic_write_json, atomic_write_text
from moe_cache_env.sim.config import SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.evaluate import POLICY_KINDS, EvaluationRequest, evaluate
from moe_cache_env.traces import load_trace
from moe_cache_env.traces.format import Trace
from moe_cache_env.traces.suite import list_bundled_traces

POLICIES = ("lru", "fifo", "lfu", "lfru", "least-stale", "mrs", "hot-set", "layer-alloc", "activation-aware",
            "belady", "clairvoyant")
FITTED = ("hot-set", "layer-alloc", "activation-aware")
PROFILES = ("h100", "rtx3090-seed")
CAPACITY_SHARES = (0.2, 0.4)
METRICS = ("hit_rate", "perfect_coverage", "mean_latency_ms", "bytes_transferred")


def split_head(trace: Trace, tokens: int) -> tuple[Trace, Trace | None]:
    """The first sequences with at most ``tokens`` tokens (at least one), and the following ones up to as many
    tokens again (None if the head is the whole trace)."""
    bounds = trace.sequence_bounds()
    ids = trace.sequence[bounds[:, 0]]
    ends = bounds[:, 1]
    n_head = max(1, int(np.searchsorted(ends, tokens, side="right")))
    head = trace.select_sequences(ids[:n_head])
    rest_ends = ends[n_head:] - ends[n_head - 1]
    n_fit = int(np.searchsorted(rest_ends, tokens, side="right"))
    if n_head >= len(ids):
        return head, None
    return head, trace.select_sequences(ids[n_head:n_head + max(1, n_fit)])


def capacity(trace: Trace, share: float) -> int:
    return int(min(trace.num_experts - 1, max(trace.top_k + 1, round(share * trace.num_experts))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3000, help="tokens per trace head (default: %(default)s)")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="output folder")
    parser.add_argument("--traces", default="", help="comma-separated bundled trace names (default: all)")
    args = parser.parse_args(argv)
    names = [n for n in args.traces.split(",") if n] or sorted(list_bundled_traces())
    rows = []
    started = time.perf_counter()
    for name in names:
        trace = load_trace(list_bundled_traces()[name])
        head, fit = split_head(trace, args.tokens)
        for share in CAPACITY_SHARES:
            slots = capacity(head, share)
            for profile in PROFILES:
                config = SimConfig(cache=split_capacity(slots, head.top_k), workload=WorkloadConfig(),
                                   profile=profile)
                for policy in POLICIES:
                    t0 = time.perf_counter()
                    m = evaluate(head, EvaluationRequest(policy=policy, config=config), fit_trace=fit)["metrics"]
                    row = {
                        "trace": name, "tokens": head.num_tokens, "layers": head.num_layers,
                        "experts": head.num_experts, "top_k": head.top_k, "slots_per_layer": slots,
                        "profile": profile, "policy": policy, "kind": POLICY_KINDS[policy],
                        "fit": ("held-out" if fit is not None else "in-sample") if policy in FITTED else None,
                        **{k: float(m[k]) for k in METRICS},
                        "run_s": round(time.perf_counter() - t0, 3),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    atomic_write_json(out / "results.json", {"tokens_per_head": args.tokens, "rows": rows,
                                             "total_s": round(time.perf_counter() - started, 1)})
    atomic_write_text(out / "results.md", render(rows, args.tokens))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return 0


def render(rows: list[dict], tokens: int) -> str:
    """One table per trace: a row per (slots, policy), hit rate / perfect coverage / ms per token / GB moved
    under each profile."""
    lines = [f"Trace heads of at most {tokens} tokens; batch 1, no KV cache, timeline timing, seed 0. "
             "hit = hit rate, pcov = perfect coverage (every expert of a step-layer on the GPU), ms = mean "
             "latency per token, GB = GB copied to the GPU. Fitted policies fit on the sequences after the head "
             "(held-out) unless marked in-sample.", ""]
    by_trace: dict[str, list[dict]] = {}
    for r in rows:
        by_trace.setdefault(r["trace"], []).append(r)
    head = "| slots | policy | " + " | ".join(f"hit {p} | pcov {p} | ms {p} | GB {p}" for p in PROFILES) + " |"
    for name, trs in by_trace.items():
        r0 = trs[0]
        lines += [f"### {name}", "",
                  f"{r0['tokens']} tokens, {r0['layers']} layers x {r0['experts']} experts, top-{r0['top_k']}.", "",
                  head, "|" + " --- |" * (2 + 4 * len(PROFILES))]
        cells: dict[tuple[int, str], dict[str, dict]] = {}
        for r in trs:
            cells.setdefault((r["slots_per_layer"], r["policy"]), {})[r["profile"]] = r
        for (slots, policy), per in cells.items():
            label = policy + (" (in-sample)" if per[PROFILES[0]]["fit"] == "in-sample" else "")
            vals = []
            for p in PROFILES:
                r = per[p]
                vals += [f"{r['hit_rate']:.3f}", f"{r['perfect_coverage']:.3f}", f"{r['mean_latency_ms']:.2f}",
                         f"{r['bytes_transferred'] / 1e9:.1f}"]
            lines.append(f"| {slots} | {label} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
