"""Import a per-token routing dump (CSV or JSONL) as a v1 trace.

  moe-cache-env import --format csv dump.csv -o traces/dump.npz --num-experts 64 --expert-bytes 12582912

One row per (sequence, token, layer) with the token's experts (a list column or expert_0..expert_{k-1}),
optionally weights and a domain; see docs/recording.md for the columns. Without --expert-bytes, --model must name
a model preset with a known expert shape (its bf16 size is used).
"""

from __future__ import annotations

import argparse

from moe_cache_env.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("input", help="the routing dump")
    parser.add_argument("--format", choices=["csv", "jsonl"], help="dump format (default: from the file suffix)")
    parser.add_argument("-o", "--output", required=True, help="trace path to write (.npz)")
    parser.add_argument("--num-experts", type=int, required=True, help="routed experts per MoE layer of the model")
    parser.add_argument("--expert-bytes", type=int, help="bytes of one expert's weights")
    parser.add_argument("--model", help="model name stored in the trace (default: the input's file name)")
    parser.add_argument("--phase", choices=["prefill", "decode"], default="prefill", help="default: prefill")
    parser.add_argument("--source", help="where the dump comes from (stored in the trace)")
    parser.add_argument("--name", help="the trace's name (stored in the trace)")


def _preset_expert_bytes(model: str | None) -> int:
    from moe_cache_env.profiles.shapes import MODEL_EXPERT_SHAPES

    if model in MODEL_EXPERT_SHAPES:
        return MODEL_EXPERT_SHAPES[model].expert_bytes("bf16")
    raise CommandError(
        "give --expert-bytes (bytes of one expert's weights), or --model naming a preset with a known expert "
        f"shape: {', '.join(MODEL_EXPERT_SHAPES)}"
    )


def run(args: argparse.Namespace) -> int:
    from moe_cache_env.traces.format import save_trace
    from moe_cache_env.traces.importers import import_trace

    if args.num_experts < 1:
        raise CommandError(f"--num-experts must be a positive integer, got {args.num_experts}")
    if args.expert_bytes is not None and args.expert_bytes < 1:
        raise CommandError(f"--expert-bytes must be a positive number of bytes, got {args.expert_bytes}")
    expert_bytes = args.expert_bytes if args.expert_bytes is not None else _preset_expert_bytes(args.model)
    trace = import_trace(
        args.input,
        fmt=args.format,
        num_experts=args.num_experts,
        expert_bytes=expert_bytes,
        model=args.model,
        phase=args.phase,
        source=args.source,
        name=args.name,
    )
    path = save_trace(trace, args.output)
    layers = trace.meta["moe_layer_indices"]
    print(
        f"wrote {path}: {trace.num_tokens} tokens in {len(trace.sequence_bounds())} sequences, {trace.num_layers} "
        f"MoE layers (indices {layers[0]}..{layers[-1]}), {trace.num_experts} experts, top-{trace.top_k}, "
        f"{'with' if trace.weights is not None else 'without'} weights, {trace.expert_bytes} bytes per expert"
    )
    return 0
