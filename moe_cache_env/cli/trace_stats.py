"""Print a trace's routing statistics: per-layer popularity skew, temporal overlap, cross-layer predictability
and domain specialisation, with a summary and the chance levels.

PATH is a trace file or the name of a bundled trace (e.g. qwen1.5-moe). See docs/trace-format.md for the
definitions and the targets that real routing sets.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="PATH", help="trace file (.npz, format v1) or bundled trace name")
    parser.add_argument("--json", metavar="PATH", help="also write the statistics as JSON (atomically)")


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(stats: dict[str, Any]) -> str:
    """The statistics as readable text: header, per-layer rows, summary, domain mix."""
    info, chance, summary = stats["trace"], stats["chance"], stats["summary"]
    lines = [
        f"trace {info['name']}: {info['model']}, {info['phase']}, {info['tokens']} tokens x {info['layers']} "
        f"layers, top-{info['top_k']} of {info['num_experts']} experts, {info['sequences']} sequences "
        f"(mean {info['mean_sequence_tokens']:.1f} tokens)",
        f"chance: overlap {chance['overlap']:.3f}, same top-1 {chance['same_top1']:.3f}, any shared "
        f"{chance['any_shared']:.3f}, precision {chance['precision']:.3f}",
        "",
    ]
    columns = [
        ("layer", "layer", 0),
        ("skew", "skew", 2),
        ("entropy", "entropy", 3),
        ("dom.skew", "domain_skew", 2),
        ("dom.jacc", "domain_jaccard", 2),
        ("overlap", "overlap", 3),
        ("same.top1", "same_top1", 3),
        ("any.shared", "any_shared", 3),
        ("xl.next", "xlayer_next", 3),
        ("xl.next2", "xlayer_next2", 3),
        ("pop.next", "popularity_next", 3),
        ("xl.top1", "xlayer_top1", 3),
        ("pop.top1", "popularity_top1", 3),
    ]
    lines.append("  ".join(f"{title:>10}" for title, _, _ in columns))
    for row in stats["layers"]:
        cells = []
        for _, key, digits in columns:
            value = row.get(key)
            cells.append(f"{value:>10d}" if key == "layer" else f"{_fmt(value, digits):>10}")
        lines.append("  ".join(cells))
    lines += [
        "",
        "columns: skew = busiest expert's share / uniform share; entropy = normalised entropy of the shares;",
        "  dom.skew = mean skew within a domain; dom.jacc = mean pairwise Jaccard of the domains' top-"
        f"{stats['domains']['specialisation_top_n']} sets;",
        "  overlap / same.top1 / any.shared = vs the previous token of the same sequence;",
        "  xl.next / xl.next2 = precision of a co-occurrence table (fitted on the first half of the sequences)",
        "  predicting the top-k one / two layers ahead on the second half; pop.next = popularity alone;",
        "  xl.top1 / pop.top1 = accuracy of the next layer's first choice from this layer's first choice / popularity.",
        "",
        "summary (mean over layers):",
        f"  skew {_fmt(summary['mean_skew'], 2)} (min / median / max "
        + " / ".join(_fmt(v, 2) for v in summary["skew_min_median_max"])
        + f"), entropy {_fmt(summary['mean_entropy'])}, top 10% share {_fmt(summary['mean_top10pct_share'])}",
        f"  temporal overlap {_fmt(summary['mean_overlap'])} (first / middle / last layer "
        + " / ".join(_fmt(v) for v in summary["overlap_first_mid_last"])
        + f"; peak at layer {summary['peak_overlap_layer']}), chance {chance['overlap']:.3f}",
        f"  same top-1 {_fmt(summary['mean_same_top1'])} (first / middle / last "
        + " / ".join(_fmt(v) for v in summary["same_top1_first_mid_last"])
        + f"), chance {chance['same_top1']:.3f}",
        f"  cross-layer precision: next layer {_fmt(summary['mean_xlayer_next'])}, two ahead "
        f"{_fmt(summary['mean_xlayer_next2'])}, popularity alone {_fmt(summary['mean_popularity_next'])}, "
        f"previous token {_fmt(summary['mean_overlap'])}, chance {chance['precision']:.3f}",
        f"  first choice from the previous layer's first choice {_fmt(summary['mean_xlayer_top1'])}, popularity "
        f"alone {_fmt(summary['mean_popularity_top1'])}, chance {chance['same_top1']:.3f}",
    ]
    if summary.get("mean_domain_jaccard") is not None:
        lines.append(
            "  domain specialisation: Jaccard first / middle / last "
            + " / ".join(_fmt(v, 2) for v in summary["domain_jaccard_first_mid_last"])
            + f", within-domain skew {_fmt(summary['mean_domain_skew'], 2)}"
        )
    mix = stats["domains"]["mix"]
    if mix:
        lines += ["", f"domain mix ({stats['domains']['switches']} domain switches between sequences):"]
        for entry in mix:
            lines.append(
                f"  {entry['domain']:<12} {entry['sequences']:>6} sequences {entry['tokens']:>9} tokens "
                f"({100 * entry['token_share']:.1f}%)"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from moe_cache_env._io import atomic_write_json, check_output_not_input
    from moe_cache_env.traces.format import load_trace
    from moe_cache_env.traces.stats import trace_statistics
    from moe_cache_env.traces.suite import resolve_trace

    from pathlib import Path

    from moe_cache_env.traces.format import check_regular_file

    if Path(args.trace).exists() and not Path(args.trace).is_file():
        check_regular_file(Path(args.trace), "trace file")  # a folder or a FIFO: say so, not "no such trace"
    path = resolve_trace(args.trace)
    check_output_not_input(args.json, path)
    trace = load_trace(path)
    stats = trace_statistics(trace)
    print(format_table(stats))
    if args.json:
        atomic_write_json(args.json, stats)
        print(f"\nwrote {args.json}")
    return 0
