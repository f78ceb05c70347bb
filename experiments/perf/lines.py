"""Where the compiled kernel spends its time, by source line: ``perf`` samples mapped through debug information.

numba's compiled code carries no symbols ``perf`` can read, so this script
1. runs a workload once to fill a private numba cache compiled with debug information
   (``NUMBA_ENABLE_PROFILING=1``; the first time compiles the kernel again, several minutes), then again under
   ``perf record``, loading the kernel from that cache,
2. has the workload print where each compiled entry point of the kernel (``ENTRY``) was loaded,
3. takes the kernel's object code out of that cache and maps every sample that fell in it to a source line with
   ``addr2line``, and prints one JSON object: the share of samples per function of ``sim/kernel.py`` (inlined
   helpers count as themselves) and the hottest lines.

Workloads: ``sim`` (``moe-cache-env bench``'s replay: the bundled default trace in one call, 15 times) and
``env`` (``MoECache-v0``'s native vector environment, 64 environments, random actions).

    python experiments/perf/lines.py --workload env --steps 150
    python experiments/perf/lines.py --workload sim --cache-dir /tmp/numba-debug   # reuse a compiled cache

Needs Linux ``perf`` and binutils' ``addr2line``. The figures are shares of CPU samples, not times; compare
workloads or kernels by their shares and with ``ab.py`` for time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL_SOURCE = ROOT / "moe_cache_env" / "sim" / "kernel.py"

#: the workload, run under perf in a child process: ``WORKLOAD mode count entry...``; before the timed part it
#: prints "KERNEL_BASE <address> <symbol> <signature>" for each compiled signature of each entry point it loaded
WORKLOAD = r'''
import importlib, os, sys, time, warnings
import numpy as np
warnings.filterwarnings("ignore")
mode, count, entry_names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if mode == "sim":
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.sim.config import Controls, SimConfig
    from moe_cache_env.sim.evaluate import default_capacity, split_capacity
    from moe_cache_env.sim.simulator import Simulator
    trace = load_named_trace("qwen1.5-moe")
    config = SimConfig(cache=split_capacity(default_capacity(trace.num_experts, trace.top_k), trace.top_k))
    run = lambda: Simulator(trace, config, rng=np.random.default_rng(0)).run(None, Controls())
else:
    import gymnasium as gym
    import moe_cache_env.envs as envs
    with envs.kept_versions_quiet():
        venv = gym.make_vec("MoECache-v0", num_envs=64, vectorization_mode="vector_entry_point")
    venv.reset(seed=0)
    venv.action_space.seed(0)
    run = lambda: venv.step(venv.action_space.sample())
run()
for entry_name in entry_names:
    module, function = entry_name.split(".")
    entry = getattr(importlib.import_module(f"moe_cache_env.sim.{module}"), function)
    for sig, cres in entry.overloads.items():
        name = cres.fndesc.llvm_func_name
        print("KERNEL_BASE", hex(cres.library.get_pointer_to_function(name)), name, sig, flush=True)
start = time.process_time()
for _ in range(count):
    run()
print("CPU_SECONDS", time.process_time() - start, flush=True)
'''


def _fail(message: str) -> int:
    print(f"lines: {message}", file=sys.stderr)
    return 2


#: the compiled entry points whose code each workload runs (``sim``'s module.function, as numba names its cache
#: files). The env's vector step links the kernel into its own library, but as a weak definition: where the
#: process has already loaded kernel.run_steps' library the calls bind there, so both are looked at.
ENTRY = {"sim": ("kernel.run_steps",), "env": ("batch.run_windows", "kernel.run_steps")}


def _kernel_objects(cache_dir: str, entries: tuple[str, ...]) -> dict[str, bytes]:
    """The ELF object of each compiled signature of the ``entries`` (with the kernel each links in), by the
    signature's text, from numba's cache index and files."""
    found = {}
    indexes = (glob.glob(os.path.join(cache_dir, "**", f"{entry}-*.nbi"), recursive=True) for entry in entries)
    for index in (path for paths in indexes for path in paths):
        with open(index, "rb") as f:
            pickle.load(f)  # numba's version
            _, overloads = pickle.loads(f.read())
        for key, name in overloads.items():
            with open(os.path.join(os.path.dirname(index), name), "rb") as f:
                elf = _find_elf(pickle.loads(f.read()))
            if elf is not None:
                found[str(key[0])] = elf
    if not found:
        raise FileNotFoundError(f"no compiled {' or '.join(entries)} in {cache_dir}")
    return found


def _find_elf(obj: object, depth: int = 0) -> bytes | None:
    if isinstance(obj, bytes) and obj[:4] == b"\x7fELF":
        return obj
    if isinstance(obj, (tuple, list)) and depth < 6:
        for item in obj:
            found = _find_elf(item, depth + 1)
            if found is not None:
                return found
    return None


def _function_of_line() -> Callable[[int], str]:
    lines = KERNEL_SOURCE.read_text().splitlines()
    defs = [(i + 1, m.group(1)) for i, text in enumerate(lines) if (m := re.match(r"def (\w+)", text))]

    def name(line: int) -> str:
        current = "(module)"
        for start, fn in defs:
            if start > line:
                break
            current = fn
        return current

    return name


def profile(workload: str, count: int, cache_dir: str, frequency: int, top_lines: int = 30) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, NUMBA_ENABLE_PROFILING="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # compile (or load) the debug-information cache in a process of its own first: when the recorded process
    # compiled the batched kernel itself, almost none of its samples mapped onto the cached objects
    warm = subprocess.run([sys.executable, "-c", WORKLOAD, workload, "0", *ENTRY[workload]], env=env,
                          capture_output=True, text=True)
    if warm.returncode != 0:
        raise RuntimeError(f"the workload failed: {warm.stderr.strip().splitlines()[-1:]}")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        run = subprocess.run(["perf", "record", "-q", "-F", str(frequency), "-o", data, sys.executable, "-c",
                              WORKLOAD, workload, str(count), *ENTRY[workload]],
                             env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"the workload failed under perf: {run.stderr.strip().splitlines()[-1:]}")
        loaded = re.findall(r"KERNEL_BASE (0x[0-9a-f]+) (\S+) (.*)", run.stdout)
        cpu = float(re.search(r"CPU_SECONDS ([0-9.]+)", run.stdout).group(1))
        script = subprocess.run(["perf", "script", "-i", data, "-F", "ip"], capture_output=True, text=True).stdout
        samples = [int(token, 16) for token in script.split()]
        total = len(samples)
        objects = _kernel_objects(cache_dir, ENTRY[workload])
        offsets: collections.Counter = collections.Counter()
        obj = ""
        for i, (entry_hex, entry_name, signature) in enumerate(loaded):  # each signature loaded, its own code
            if signature not in objects:
                continue
            path = os.path.join(tmp, f"kernel{i}.o")
            with open(path, "wb") as f:
                f.write(objects[signature])
            # the entry point need not open the code section (the replay loop it calls is linked in beside it):
            # the section's load address is the entry's address less the entry's offset in the section
            base = int(entry_hex, 16) - _symbol_offset(path, entry_name)
            size = _section_size(path, ".ltext") or _section_size(path, ".text")
            hits = collections.Counter(ip - base for ip in samples if 0 <= ip - base < size)
            if sum(hits.values()) > sum(offsets.values()):
                offsets, obj = hits, path
        if not offsets:
            raise RuntimeError("no sample fell in the kernel's compiled code (is --cache-dir the cache the "
                               "workload loaded its kernel from?)")
        ordered = sorted(offsets)
        mapped = subprocess.run(["addr2line", "-e", obj, "-j", ".ltext"], input="\n".join(map(hex, ordered)),
                                capture_output=True, text=True).stdout.splitlines()
    function_of = _function_of_line()
    source = KERNEL_SOURCE.read_text().splitlines()
    by_function: collections.Counter = collections.Counter()
    by_line: collections.Counter = collections.Counter()
    in_kernel = sum(offsets.values())
    for offset, where in zip(ordered, mapped):
        path, _, line = where.split(" ")[0].rpartition(":")
        if path.endswith("sim/kernel.py") and line.isdigit():
            by_function[function_of(int(line))] += offsets[offset]
            by_line[int(line)] += offsets[offset]
        else:
            by_function[f"{Path(path).name or '?'}:{line}"] += offsets[offset]
    share = lambda n: round(n / max(in_kernel, 1), 4)  # noqa: E731
    return {
        "workload": workload, "runs": count, "cpu_seconds": round(cpu, 3), "samples": total,
        "kernel_samples": in_kernel, "kernel_share_of_samples": round(in_kernel / max(total, 1), 4),
        "functions": {name: share(n) for name, n in by_function.most_common()},
        "lines": [{"line": line, "share": share(n), "source": source[line - 1].strip()}
                  for line, n in by_line.most_common(top_lines)],
    }


def _symbol_offset(obj: str, symbol: str) -> int:
    """The offset of ``symbol`` in its section of the object file ``obj`` (0 if it is not listed)."""
    out = subprocess.run(["readelf", "-sW", obj], capture_output=True, text=True).stdout
    for row in out.splitlines():
        parts = row.split()
        if len(parts) >= 8 and parts[7] == symbol:
            return int(parts[1], 16)
    return 0


def _section_size(obj: str, name: str) -> int:
    out = subprocess.run(["readelf", "-SW", obj], capture_output=True, text=True).stdout
    for row in out.splitlines():
        parts = row.replace("[", " ").replace("]", " ").split()
        if name in parts:
            i = parts.index(name)
            return int(parts[i + 4], 16)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("sim", "env"), default="env")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed repetitions (default: 15 replays for sim, 150 vector steps for env)")
    parser.add_argument("--cache-dir", default=None, help="numba cache with debug information (default: a new one)")
    parser.add_argument("--frequency", type=int, default=4000, help="perf samples per second")
    parser.add_argument("--lines", type=int, default=30, help="how many of the hottest source lines to list")
    args = parser.parse_args()
    for tool in ("perf", "addr2line", "readelf"):
        if shutil.which(tool) is None:
            return _fail(f"{tool} not found; install linux-perf and binutils")
    count = args.steps if args.steps is not None else (15 if args.workload == "sim" else 150)
    if count < 1:
        return _fail(f"--steps must be >= 1, got {count}")
    if args.lines < 0:
        return _fail(f"--lines must be >= 0, got {args.lines}")
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="numba-debug-")
    try:
        result = profile(args.workload, count, cache_dir, args.frequency, args.lines)
    except (RuntimeError, FileNotFoundError, AttributeError) as exc:
        return _fail(str(exc))
    result["cache_dir"] = cache_dir
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
