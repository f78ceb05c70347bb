"""Does expert compute scale with expert bytes, as the simulator assumes? Measure every preset's shape.

    python experiments/compute_scaling_check.py [--profile h100] [--json PATH]

A profile stores the compute time of one reference expert; the simulator scales it linearly by bytes to other
expert sizes. This times the SwiGLU expert of each model preset (bf16, CUDA-graph replay, weights rotated past
the L2 cache: the calibrate module's method) at a few token counts and prints measured vs scaled-from-profile.
"""

from __future__ import annotations

import argparse
import datetime
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--tokens", default="1,16,64,256")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--record-as", metavar="KEY", help="also store the result under checks.KEY of the profile file (a path)"
    )
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch

    from moe_cache_env._io import atomic_write_json
    from moe_cache_env.profiles import load_profile
    from moe_cache_env.profiles.calibrate import CalibrationPlan, CudaBackend, TimingStats, record_check
    from moe_cache_env.profiles.report import format_table
    from moe_cache_env.profiles.shapes import MODEL_EXPERT_SHAPES

    if not torch.cuda.is_available():
        print("no CUDA device: this check measures a GPU", file=sys.stderr)
        return 2
    profile = load_profile(args.profile)
    tokens = tuple(int(t) for t in args.tokens.split(","))
    # Only compute is timed; the copy buffers are kept small.
    plan = CalibrationPlan(transfer_sizes_bytes=(2**20, 2**21), expert_counts=(1,), token_counts=tokens)
    rows = []
    for model, shape in MODEL_EXPERT_SHAPES.items():
        backend = CudaBackend(shape, "bf16", plan)
        for t in tokens:
            samples = backend.compute_samples_ms(t, repeats=args.repeats, warmup=3)["graph"]
            measured = TimingStats.from_samples(samples).median_ms
            scaled = profile.expert_compute_ms(t, backend.expert_bytes)
            rows.append({"model": model, "expert_bytes": backend.expert_bytes, "tokens": t,
                         "measured_ms": measured, "profile_scaled_ms": scaled, "rel_error": scaled / measured - 1})
        del backend
        torch.cuda.empty_cache()
    print(format_table(["model", "MiB", "tokens", "measured ms", "scaled from profile ms", "error"],
                       [[r["model"], r["expert_bytes"] / 2**20, r["tokens"], r["measured_ms"], r["profile_scaled_ms"],
                         f"{r['rel_error']:+.1%}"] for r in rows]))
    result = {"device": torch.cuda.get_device_name(), "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "profile": profile.name, "repeats": args.repeats, "rows": rows}
    if args.json:
        atomic_write_json(args.json, result)
    if args.record_as:
        record_check(args.profile, args.record_as, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
