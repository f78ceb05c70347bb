"""How long the first ``reset()`` of an environment takes in a new process, without and with the trace cache.

    python experiments/trace_cache/first_reset.py [--env MoECache-v0] [--warm-runs 3] [--json PATH]

Every run is a fresh interpreter (nothing kept in memory between runs) pointed at a new, empty cache folder
through ``$MOE_CACHE_ENV_CACHE``. The first run finds the cache empty: it generates the suite's synthetic trace
and writes it (what every first reset cost before the cache existed). The next ``--warm-runs`` runs read it.
Each run reports wall and CPU seconds for ``import``, ``gym.make`` and the first ``reset`` (which resolves the
trace it replays), then, on its own, a second ``catalog.resolve`` of the suite's first trace. A last process
times the parts of a warm reset alone (``warm_parts``, CPU seconds, best of 3): reading the cache file
uncompressed and compressed, validating the trace, and splitting it (all three parts vs the one replayed).
Prints one JSON object (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, sys, time
def clock():
    return time.perf_counter(), time.process_time()
def since(start):
    wall, cpu = clock()
    return {"wall_s": round(wall - start[0], 4), "cpu_s": round(cpu - start[1], 4)}
out = {}
start = clock()
import gymnasium as gym
import moe_cache_env.envs
from moe_cache_env.envs import variant_config
from moe_cache_env.traces import catalog
out["import"] = since(start)
env_id = sys.argv[1]
name = variant_config(env_id)["traces"][0]
start = clock()
env = gym.make(f"moe_cache_env:{env_id}")
out["make"] = since(start)
start = clock()
env.reset(seed=0)
out["first_reset"] = since(start)
# after the reset, so that the reset pays for its own trace; the catalog keeps nothing in memory
start = clock()
catalog.resolve(name)
out["resolve"] = since(start)
out["trace"] = name
print(json.dumps(out))
"""


# the parts of a warm reset, each timed alone in one process (CPU seconds, best of 3)
_PARTS = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np
from moe_cache_env.envs import variant_config
from moe_cache_env.envs.suite import split_part
from moe_cache_env.traces import catalog
from moe_cache_env.traces.format import Trace, save_trace
from moe_cache_env.traces.splits import split_trace
config = variant_config(sys.argv[1])
name, fractions, seed = config["traces"][0], tuple(config["split_fractions"]), config["split_seed"]
trace = catalog.resolve(name)
def best(work):
    times = []
    for _ in range(3):
        start = time.process_time(); work(); times.append(time.process_time() - start)
    return round(min(times), 4)
def read(path):
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}
out = {}
with tempfile.TemporaryDirectory() as folder:
    stored, deflated = Path(folder) / "stored.npz", Path(folder) / "deflated.npz"
    save_trace(trace, stored, compress=False)
    save_trace(trace, deflated, compress=True)
    out["read_uncompressed_cpu_s"] = best(lambda: read(stored))
    out["read_compressed_cpu_s"] = best(lambda: read(deflated))
    out["compressed_bytes"] = deflated.stat().st_size
out["validate_cpu_s"] = best(lambda: Trace(experts=trace.experts, sequence=trace.sequence, meta=trace.meta))
out["split_trace_all_cpu_s"] = best(lambda: split_trace(trace, fractions, seed))
out["split_part_train_cpu_s"] = best(lambda: split_part(trace, "train", fractions, seed))
print(json.dumps(out))
"""


def _run_child(env_id: str, cache: Path, code: str = _CHILD) -> dict:
    env = dict(os.environ, MOE_CACHE_ENV_CACHE=str(cache))
    done = subprocess.run([sys.executable, "-c", code, env_id], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="MoECache-v0")
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.warm_runs < 1:
        parser.error("--warm-runs must be at least 1")

    with tempfile.TemporaryDirectory(prefix="moe-cache-env-bench-") as folder:
        cache = Path(folder) / "cache"
        cold = _run_child(args.env, cache)
        cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        warm = [_run_child(args.env, cache) for _ in range(args.warm_runs)]
        parts = _run_child(args.env, cache, _PARTS)

    def median(key: str, clock: str) -> float:
        return round(statistics.median(run[key][clock] for run in warm), 4)

    result = {
        "env": args.env,
        "trace": cold["trace"],
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cache_bytes": cache_bytes,
        "cold": cold,
        "warm": warm,
        "warm_parts": parts,
        "warm_median": {
            key: {"wall_s": median(key, "wall_s"), "cpu_s": median(key, "cpu_s")}
            for key in ("import", "resolve", "make", "first_reset")
        },
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from moe_cache_env._io import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
