"""Write a synthetic routing trace (format v1) from a model preset.

The generator reproduces the properties of real MoE routing (popularity skew, domain specialisation,
temporal locality shaped over depth, learnable cross-layer dependence, shifting domains); every property has
a knob (--knob key=value, repeatable). See docs/trace-format.md for the model and the knobs, and
`moe-cache-env trace-stats PATH` to check a trace's statistics.
"""

from __future__ import annotations

import argparse

#: Most tokens one synth run generates: the generator holds (tokens x experts) float32 logits per layer, about
#: 1 GiB at this size for 64 experts. Larger suites: several runs with different seeds.
MAX_SYNTH_TOKENS = 4_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moe_cache_env.traces.synth import KNOB_NAMES, PRESETS

    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="model preset (geometry + knobs)")
    parser.add_argument("--tokens", type=int, required=True, help="number of tokens to generate (>= 1)")
    parser.add_argument("--seed", type=int, required=True, help="seed of the token stream (>= 0)")
    parser.add_argument("-o", "--output", required=True, help="path of the .npz trace to write (atomically)")
    parser.add_argument("--phase", choices=("decode", "prefill"), default="decode", help="phase recorded in the meta")
    parser.add_argument(
        "--knob",
        action="append",
        metavar="KEY=VALUE",
        help=f"override a knob, repeatable; knobs: {', '.join(KNOB_NAMES)}",
    )
    parser.add_argument("--weights", action="store_true", help="also store gate weights (larger file)")
    parser.add_argument("--name", help="trace name recorded in the meta (default: a loaded trace takes its file name)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from moe_cache_env._io import check_output_path
    from moe_cache_env.cli import CommandError
    from moe_cache_env.traces.format import check_trace_size, save_trace
    from moe_cache_env.traces.synth import PRESETS, generate, parse_knobs

    if args.tokens < 1:
        raise CommandError(f"--tokens must be at least 1, got {args.tokens}")
    if args.tokens > MAX_SYNTH_TOKENS:
        raise CommandError(
            f"--tokens {args.tokens:,} is past the limit of {MAX_SYNTH_TOKENS:,} tokens per run; generate several "
            "traces with different --seed values instead"
        )
    preset = PRESETS[args.preset]
    check_trace_size(args.tokens, preset.num_layers, preset.top_k, f"synth --preset {args.preset}")
    check_output_path(args.output)  # before generating, not after
    if args.seed < 0:
        raise CommandError(f"--seed must be a non-negative integer, got {args.seed}")
    knobs = parse_knobs(args.knob)
    trace = generate(
        args.preset,
        args.tokens,
        np.random.default_rng(args.seed),
        phase=args.phase,
        with_weights=args.weights,
        seed=args.seed,
        name=args.name,
        **knobs,
    )
    path = save_trace(trace, args.output)
    bounds = trace.sequence_bounds()
    print(
        f"wrote {path}: {trace.num_tokens} tokens x {trace.num_layers} layers x top-{trace.top_k} of "
        f"{trace.num_experts} experts, {len(bounds)} sequences, preset {args.preset}, seed {args.seed}"
    )
    return 0
