"""Store a second calibration's headline numbers under checks.repeat_calibration of a profile.

    python experiments/gpu/record_repeat.py --profile moe_cache_env/profiles/data/h200.json \
        --repeat experiments/gpu/results/h200-repeat.json
"""

from __future__ import annotations

import argparse
import json

from moe_cache_env.profiles.calibrate import record_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--repeat", required=True)
    args = parser.parse_args()
    rep = json.load(open(args.repeat, encoding="utf-8"))
    summary = {
        "what": "a second full `moe-cache-env calibrate --model qwen1.5-moe` on a fresh H200 machine, in a later call "
                "(experiments/gpu/h200_repeat.sh); raw file experiments/gpu/results/h200-repeat.json",
        "created_utc": rep["calibration"]["created_utc"],
        "device": rep["device"]["name"],
        "fits": {k: {f: v[f] for f in ("overhead_ms", "gbps", "max_rel_error")} for k, v in rep["fits"].items()},
        "compute": rep["compute"],
        "layer_overhead_ms": rep["layer_overhead_ms"],
        "non_expert_ms": {f"b{r['batch']}_c{r['context']}": r["ms"] for r in rep["non_expert"]["rows"]},
        "host": rep["host"],
        "host_decision_ms": rep["host_decision_ms"],
        "overlap_fraction": rep["overlap"]["overlap_fraction"],
    }
    record_check(args.profile, "repeat_calibration", summary)


if __name__ == "__main__":
    main()
