"""Measure this machine's CUDA GPU and write a hardware profile.

Times host<->GPU copies (pinned and pageable host memory, 1 MB to 1 GB, and 1/4/20 experts copied separately
or as one block), a GPU-to-GPU copy of one expert, one SwiGLU expert's compute for 1 to 256 tokens, every
preset's expert shape (the compute-scaling fit) and a side-stream copy overlapping compute; then, for the
model preset's layer geometry, the non-expert time per layer (attention, router, norms, shared experts; random
weights, batch x context grid) and the host's per-layer decision cost (router sync, copy issue, launches).
Fits overhead_ms + bytes / bandwidth per direction and memory kind, and writes the profile (fitted fields and
raw samples) atomically. Needs torch with CUDA and a GPU; takes about a minute (a few seconds with --quick).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from moe_cache_env.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moe_cache_env.profiles.shapes import DTYPE_BYTES, MODEL_EXPERT_SHAPES

    shape = parser.add_mutually_exclusive_group()
    shape.add_argument(
        "--model",
        choices=sorted(MODEL_EXPERT_SHAPES),
        help="model preset whose expert shape to measure (default: qwen1.5-moe)",
    )
    shape.add_argument(
        "--expert-shape",
        metavar="HIDDEN,INTERMEDIATE",
        help="explicit SwiGLU expert shape instead of a preset, e.g. 2048,1408",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16", help="weight dtype (default bf16)")
    parser.add_argument("-o", "--output", required=True, metavar="PATH", help="profile JSON file to write")
    parser.add_argument("--name", help="profile name (default: the output file's stem)")
    parser.add_argument("--device", type=int, default=0, metavar="INDEX", help="CUDA device index (default 0)")
    parser.add_argument(
        "--quick", action="store_true", help="few sizes and repeats: a smoke test, not a profile to ship"
    )
    parser.add_argument(
        "--layer-model",
        choices=sorted(MODEL_EXPERT_SHAPES),
        help="model preset whose non-expert layer work (attention, router, norms, shared experts) and host "
        "decision cost to measure (default: the --model preset; none with --expert-shape)",
    )
    parser.add_argument(
        "--no-non-expert", action="store_true", help="skip the non-expert layer time and the host decision cost"
    )
    parser.add_argument(
        "--no-scaling", action="store_true", help="skip timing every preset's expert shape (the compute-scaling fit)"
    )


def run(args: argparse.Namespace) -> int:
    from moe_cache_env._io import check_output_path
    from moe_cache_env.profiles.calibrate import CalibrationError, CalibrationPlan, calibrate
    from moe_cache_env.profiles.report import format_calibration
    from moe_cache_env.profiles.profile import save_profile
    from moe_cache_env.profiles.shapes import model_expert_shape, parse_expert_shape

    if args.expert_shape:
        shape, model = parse_expert_shape(args.expert_shape), None
    else:
        model = args.model or "qwen1.5-moe"
        shape = model_expert_shape(model)
    layer_model = None if args.no_non_expert else (args.layer_model or model)
    output = Path(args.output)
    if output.suffix != ".json":
        raise CommandError(f"--output must name a .json file, got {str(output)!r}")
    check_output_path(output)  # before the measurements, not after
    name = args.name or output.stem
    plan = CalibrationPlan.quick() if args.quick else CalibrationPlan()
    command = shlex.join(["moe-cache-env", "calibrate", *_argv_after("calibrate")])
    try:
        profile = calibrate(
            shape,
            args.dtype,
            name=name,
            plan=plan,
            model=model,
            layer_model=layer_model,
            scaling=not args.no_scaling,
            device_index=args.device,
            command=command,
            progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True),
        )
    except CalibrationError as exc:
        raise CommandError(str(exc)) from None
    path = save_profile(profile, output)
    print(format_calibration(profile))
    print(f"wrote {path}")
    return 0


def _argv_after(word: str) -> list[str]:
    """The command-line words after ``word`` (for the record in the profile)."""
    argv = sys.argv[1:]
    return argv[argv.index(word) + 1:] if word in argv else argv
