"""Import the routing an engine or library recorded as a v1 trace.

  moe-cache-env import dump.csv -o traces/dump.npz --num-experts 64 --expert-bytes 12582912
  moe-cache-env import qwen.route.csv --format route-trace --phase decode -o traces/qwen-decode.npz
  moe-cache-env import routed.npy --format vllm --num-experts 128 --expert-bytes 3145728 -o traces/v.npz
  moe-cache-env import logits.npz --format hf --top-k 8 --expert-bytes 3145728 -o traces/hf.npz

Formats: csv / jsonl (one row per sequence, token and MoE layer), route-trace (llama.cpp-style
'# route_trace v1' CSV: its preamble gives the experts and their sizes), vllm (routed-experts array
[tokens, MoE layers, top_k] as .npy/.npz), hf (transformers routing stacked layer-first in a .npz). The
format defaults to what the file's suffix and first bytes say. docs/importers.md gives the exact layouts and
an example of each. Without --expert-bytes (and outside a route trace), --model must name a model preset with a
known expert shape (its bf16 size is used).
"""

from __future__ import annotations

import argparse

from moe_cache_env.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moe_cache_env.traces.importers import IMPORT_FORMATS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("input", help="the routing dump or capture")
    parser.add_argument("--format", choices=IMPORT_FORMATS, help="input format (default: from the file)")
    parser.add_argument("-o", "--output", required=True, help="trace path to write (.npz)")
    parser.add_argument("--num-experts", type=int,
                        help="routed experts per MoE layer (needed unless the file says: route-trace, router logits)")
    parser.add_argument("--expert-bytes", type=int, help="bytes of one expert's weights")
    parser.add_argument("--model", help="model name stored in the trace (default: the input's file name)")
    parser.add_argument("--phase", choices=["prefill", "decode"],
                        help="route-trace: the rows to import (default: the file's only phase); otherwise the "
                             "phase stored (default prefill)")
    parser.add_argument("--top-k", type=int, help="hf router logits: experts per token to pick")
    parser.add_argument("--sequence-lengths", metavar="N,N,...",
                        help="vllm single array: token counts of its sequences, in order")
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


def _lengths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--sequence-lengths must be comma-separated token counts, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moe_cache_env._io import check_output_not_input, check_output_path
    from moe_cache_env.traces.format import save_trace
    from moe_cache_env.traces.importers import import_trace, sniff_format

    check_output_not_input(args.output, args.input)
    check_output_path(args.output)  # before a long import, not after
    for flag, value in (("--num-experts", args.num_experts), ("--expert-bytes", args.expert_bytes),
                        ("--top-k", args.top_k)):
        if value is not None and value < 1:
            raise CommandError(f"{flag} must be a positive integer, got {value}")
    fmt = args.format or sniff_format(Path(args.input))
    expert_bytes = args.expert_bytes
    if expert_bytes is None and fmt != "route-trace":
        expert_bytes = _preset_expert_bytes(args.model)
    trace = import_trace(
        args.input,
        fmt=fmt,
        num_experts=args.num_experts,
        expert_bytes=expert_bytes,
        model=args.model,
        phase=args.phase,
        source=args.source,
        name=args.name,
        top_k=args.top_k,
        sequence_lengths=_lengths(args.sequence_lengths),
    )
    path = save_trace(trace, args.output)
    layers = trace.meta["moe_layer_indices"]
    print(
        f"wrote {path}: {trace.num_tokens} tokens in {len(trace.sequence_bounds())} sequences, {trace.num_layers} "
        f"MoE layers (indices {layers[0]}..{layers[-1]}), {trace.num_experts} experts, top-{trace.top_k}, "
        f"{'with' if trace.weights is not None else 'without'} weights, {trace.expert_bytes} bytes per expert, "
        f"{trace.meta['phase']}"
    )
    return 0
