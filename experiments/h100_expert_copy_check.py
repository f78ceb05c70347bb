"""Independent check of a profile's host-to-GPU prediction for one 28 MiB expert (pinned memory).

    python experiments/h100_expert_copy_check.py [--profile h100] [--repeats 200] [--json PATH]

Run in its own process, with its own timing code (not the calibrate module's): copies 28 * 2**20 random bytes
from pinned host memory to the GPU, times each copy with CUDA events and, separately, with the host clock
around copy + synchronize, and compares the median with what the profile predicts
(``h2d_overhead_ms + bytes / h2d_gbps``). Exits 1 when the event-timed median is off by more than 10%
(the bar of the calibration issue), 2 without CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

EXPERT_BYTES = 28 * 2**20  # the seed's 28 MB expert (shared/design/seed-system.md), as MiB
TOLERANCE = 0.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="h100", help="profile name or path (default h100)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--record-as", metavar="KEY", help="also store the result under checks.KEY of the profile file (a path)"
    )
    parser.add_argument("--json", help="also write the result as JSON here")
    args = parser.parse_args()

    import torch

    from moe_cache_env.profiles import load_profile

    if not torch.cuda.is_available():
        print("no CUDA device: this check measures a GPU", file=sys.stderr)
        return 2
    profile = load_profile(args.profile)
    stream = torch.cuda.Stream()
    src = torch.randint(0, 256, (EXPERT_BYTES,), dtype=torch.uint8).pin_memory()
    dst = torch.empty(EXPERT_BYTES, dtype=torch.uint8, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    event_ms, wall_ms = [], []
    with torch.cuda.stream(stream):
        for i in range(args.warmup + args.repeats):
            start.record(stream)
            dst.copy_(src, non_blocking=True)
            end.record(stream)
            end.synchronize()
            if i >= args.warmup:
                event_ms.append(start.elapsed_time(end))
        for i in range(args.warmup + args.repeats):
            stream.synchronize()
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            stream.synchronize()
            if i >= args.warmup:
                wall_ms.append((time.perf_counter() - t0) * 1e3)
    if not torch.equal(dst.cpu(), src):
        print("copy check failed: the GPU buffer differs from the host buffer", file=sys.stderr)
        return 1

    predicted = profile.transfer_ms(EXPERT_BYTES)
    measured = statistics.median(event_ms)
    result = {
        "device": torch.cuda.get_device_name(),
        "profile": profile.name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "profile_device": (profile.raw.get("device") or {}).get("name"),
        "bytes": EXPERT_BYTES,
        "repeats": args.repeats,
        "predicted_ms": predicted,
        "event_median_ms": measured,
        "event_p10_ms": statistics.quantiles(event_ms, n=10)[0],
        "event_p90_ms": statistics.quantiles(event_ms, n=10)[-1],
        "wall_median_ms": statistics.median(wall_ms),
        "event_gbps": EXPERT_BYTES / (measured * 1e6),
        "rel_error": (predicted - measured) / measured,
        "tolerance": TOLERANCE,
    }
    result["pass"] = abs(result["rel_error"]) <= TOLERANCE
    print(json.dumps(result, indent=2))
    if args.json:
        from moe_cache_env._io import atomic_write_json

        atomic_write_json(args.json, result)
    if args.record_as:
        from moe_cache_env.profiles.calibrate import record_check

        record_check(args.profile, args.record_as, result)
    print(
        f"28 MiB pinned h2d on {result['device']}: measured {measured:.4f} ms (events; wall clock "
        f"{result['wall_median_ms']:.4f} ms), profile {profile.name} predicts {predicted:.4f} ms: "
        f"{result['rel_error']:+.1%} -> {'PASS' if result['pass'] else 'FAIL'} (bar: within {TOLERANCE:.0%})"
    )
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
