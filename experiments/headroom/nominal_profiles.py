"""Write the two nominal hardware profiles: the measured H200's GPU behind another host link.

Run:  python experiments/headroom/nominal_profiles.py

- ``pcie4-x16-nominal``: a consumer PCIe Gen4 x16 slot. 16 GT/s per lane, 128b/130b encoding: 31.5 GB/s per
  direction nominal (PCI-SIG, PCI Express Base Specification 4.0); pinned host-to-device copies reach about
  25 GB/s of it in practice (``H2D_GBPS`` below; not measured here).
- ``gh200-c2c-nominal``: the NVLink-C2C host link of Grace Hopper, 450 GB/s per direction (900 GB/s total,
  NVIDIA GH200 Grace Hopper Superchip datasheet). Nominal: a copy reaches less.

Everything the simulator reads besides the link (expert compute and its scaling over expert shapes, the
non-expert time per layer, the host's decision cost) is the measured ``h200`` profile's, so that between
``h200`` and these two only the link changes; the per-copy overhead is the H200's measured one. The raw
measurements are not copied: these profiles measured nothing. ``docs/hardware-profiles.md`` cites each figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from moe_cache_env._io import atomic_write_json
from moe_cache_env.profiles import load_profile

DATA = Path(__file__).resolve().parents[2] / "moe_cache_env" / "profiles" / "data"
#: the fields of the base profile that the simulator reads (docs/hardware-profiles.md, "What the simulator reads")
KEEP = ("format", "compute", "compute_scaling", "non_expert", "layer_overhead_ms", "host_decision_ms",
        "expert_launch_ms", "copy_issue_ms", "h2d_overhead_ms")
NOMINAL = {
    "pcie4-x16-nominal": {
        "h2d_gbps": 25.0,
        "description": "Nominal: a consumer PCIe Gen4 x16 host link (31.5 GB/s per direction nominal, ~25 GB/s "
                       "effective for pinned copies) in front of the measured H200's compute.",
        "source": "PCI-SIG PCI Express Base Specification 4.0 (16 GT/s x 16 lanes, 128b/130b); effective rate "
                  "assumed, not measured; compute, non-expert and host costs copied from profiles/data/h200.json "
                  "by experiments/headroom/nominal_profiles.py",
    },
    "gh200-c2c-nominal": {
        "h2d_gbps": 450.0,
        "description": "Nominal: the NVLink-C2C host link of Grace Hopper (450 GB/s per direction) in front of the "
                       "measured H200's compute.",
        "source": "NVIDIA GH200 Grace Hopper Superchip datasheet (NVLink-C2C 900 GB/s total, 450 GB/s per "
                  "direction); compute, non-expert and host costs copied from profiles/data/h200.json by "
                  "experiments/headroom/nominal_profiles.py",
    },
}


def main() -> None:
    base = json.loads((DATA / "h200.json").read_text())
    for name, link in NOMINAL.items():
        profile = {key: base[key] for key in KEEP if key in base}
        profile.update(name=name, nominal=True, base_profile="h200", **link)
        path = atomic_write_json(DATA / f"{name}.json", profile)
        loaded = load_profile(path)
        print(f"{name}: {loaded.h2d_gbps} GB/s, a 17.3 MB expert in {loaded.transfer_ms(17_301_504):.3f} ms")


if __name__ == "__main__":
    main()
