"""Derive ``moe_cache_env/traces/data/routing_popularity.json`` from real routing counts.

Input: the OLMoE repository's routing analysis (allenai/OLMoE at commit 357454f, ``scripts/routing_output/``,
Apache-2.0), as JSON: ``<model>_expert_counts_<domain>.json`` with one ``{expert_id: count}`` dict per measured
layer (0, 7 and 15), counting every top-k assignment on about 208,896 tokens per domain.

Output: per model and domain, the share of top-k assignments of each expert at each measured layer (rounded to
7 decimals), which the synthetic generator uses as its per-domain popularity (``popularity=olmoe-data`` and
``popularity=mixtral-data``). Run from the repository root:

    python traces/tools/derive_routing_popularity.py /path/to/routing-stats/olmoe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moe_cache_env._io import atomic_write_json  # noqa: E402

#: file prefix in the OLMoE routing output -> (name in our data file, model it describes, experts per layer)
MODELS = {
    "olmoe": ("olmoe", "OLMoE-1B-7B-0924 (64 experts, top-8, 16 layers)", 64),
    "mistral": ("mixtral", "Mixtral-8x7B-v0.1 (8 experts, top-2, 32 layers)", 8),
}
DOMAINS = ("arxiv", "book", "c4", "github", "wikipedia")
OUTPUT = Path(__file__).resolve().parents[2] / "moe_cache_env" / "traces" / "data" / "routing_popularity.json"


def derive(source_dir: Path) -> dict:
    """Read the per-domain count files under ``source_dir`` and return the shares as a JSON-able dict."""
    out: dict = {
        "description": (
            "Share of top-k assignments per expert, per domain and measured layer, derived from the routing "
            "counts of allenai/OLMoE (commit 357454f, scripts/routing_output/, Apache-2.0; see LICENSE-OLMoE) "
            "by traces/tools/derive_routing_popularity.py."
        ),
        "models": {},
    }
    for prefix, (name, model, num_experts) in MODELS.items():
        entry: dict = {"model": model, "num_experts": num_experts, "domains": {}}
        layers = None
        for domain in DOMAINS:
            path = source_dir / f"{prefix}_expert_counts_{domain}.json"
            data = json.loads(path.read_text())
            if layers is None:
                layers = [int(x) for x in data["layers"]]
            elif layers != [int(x) for x in data["layers"]]:
                raise SystemExit(f"{path}: layers {data['layers']} differ from {layers}")
            shares = []
            for counts in data["counts"]:
                vector = [float(counts.get(str(e), 0)) for e in range(num_experts)]
                total = sum(vector)
                shares.append([round(v / total, 7) for v in vector])
            entry["domains"][domain] = shares
        entry["layers"] = layers
        out["models"][name] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, help="folder holding <model>_expert_counts_<domain>.json")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    atomic_write_json(args.output, derive(args.source_dir))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
