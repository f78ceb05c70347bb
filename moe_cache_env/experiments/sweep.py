"""Grid sweeps: every combination of traces, profiles, workloads, cache sizes, policies and seeds, one row each.

A grid file (YAML) names the settings; every cell of the grid is one evaluation (``sim.evaluate`` for the
simulator's policies, ``agents.evaluation.evaluate_agent_on_trace`` for an agent acting through an
environment). Each finished cell is appended to a JSONL table as one line: the cell's full resolved
configuration, its metrics, and, apart under ``timing``, how long it took where. A cell is keyed by the hash
of its configuration, so a sweep that was interrupted (Ctrl-C, a lost node) skips the cells already in the
table when it is run again, and two backends that run the same grid write the same rows (``timing`` aside).

Grid file::

    name: smoke                      # optional, copied into every row
    defaults:                        # optional: one value per key, for every cell
      predictor: cross-layer
    grid:                            # a mapping, or a list of mappings (the union of their products)
      trace: [learned/tiny-olmoe-12L-64E-decode, engines/qwen3-30b-a3b-decode]
      profile: [h100, rtx3090-seed]
      batch: [1, 4]
      policy: [static, lru, belady, clairvoyant, dynamic]
      seed: 0

A value in ``grid`` is one value or a list of values; the cells are the product of the lists, in the file's
key order. :data:`CELL_KEYS` lists the keys, their types and defaults.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = [
    "AGENT_POLICIES",
    "CELL_KEYS",
    "SweepError",
    "Cell",
    "append_row",
    "cell_key",
    "comparable",
    "expand_grid",
    "load_grid",
    "load_table",
    "run_cell",
    "run_sweep",
]

#: agents that act through an environment, besides ``ALGO:PATH`` (a saved Stable-Baselines3 model)
AGENT_POLICIES = ("conservative", "aggressive", "balanced", "dynamic", "random")

#: the keys of a cell: type (``str``, ``int``, ``float``) and default (``...``: required); None is allowed
#: where the default is None
CELL_KEYS: dict[str, tuple[type, Any]] = {
    "trace": (str, ...),  # bundled name, path or synth:// URI
    "policy": (str, "static"),  # a simulator policy (sim.evaluate.POLICIES), an agent, or ALGO:PATH
    "profile": (str, "h100"),  # hardware profile name or path
    "predictor": (str, "cross-layer"),
    # top-1 accuracy of the noisy-oracle predictor: one number (a grid reads a list as values to sweep), so the
    # seed's 0.4755 rather than SimConfig's per-lookahead default
    "oracle_accuracy": (float, 0.4755),
    "timing": (str, "timeline"),
    "execution_order": (str, "fused"),
    "decision_ms": (float, 0.0),
    # the host's per-expert launch time charged (profiles that measured it), and when a queued prefetch reaches
    # the link: as SimConfig's (and evaluate's) defaults, so that a row says which rules it replayed under
    "launch_cost": (bool, True),
    "prefetch_handoff": (str, "host-poll"),
    "capacity": (int, None),  # total expert slots per layer (or in all, scope global); None: the default rule
    "capacity_share": (float, None),  # alternatively: this share of a layer's experts (at least top_k)
    "scope": (str, "per-layer"),
    "batch": (int, 1),
    "kv": (float, 0.0),  # share of the slots taken by the KV cache (memory pressure)
    "chunk_tokens": (int, 0),
    "background": (float, 0.0),  # share of the host link taken by other traffic
    "l2_threshold": (float, 0.7),
    "l3_threshold": (float, 0.3),
    "lookahead": (int, 1),
    "prefetch_budget": (int, 0),
    "env": (str, "MoECache-v0"),  # the environment an agent acts through (ignored by simulator policies)
    "fit_trace": (str, None),
    "expert_bytes": (int, 0),
    "seed": (int, 0),
}
TOP_LEVEL_KEYS = ("name", "description", "defaults", "grid")


class SweepError(ValueError):
    """A bad grid file, cell or results table; the message is one line naming the problem and the fix."""


# ------------------------------------------------------------------------------------------ the grid file


def _check_value(where: str, key: str, value: Any) -> Any:
    """``value`` normalised to the key's type (ints of a float key become floats, so the hash is stable)."""
    kind, default = CELL_KEYS[key]
    if value is None:
        if default is None:
            return None
        raise SweepError(f"{where}.{key}: a value is required (got null)")
    if kind is bool:
        if not isinstance(value, bool):
            raise SweepError(f"{where}.{key}: expected true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str) or not value:
            raise SweepError(f"{where}.{key}: expected a non-empty string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{where}.{key}: expected a{'n integer' if kind is int else ' number'}, got {value!r}")
    if kind is int:
        if isinstance(value, float) and (not value.is_integer()):
            raise SweepError(f"{where}.{key}: expected an integer, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise SweepError(f"{where}.{key}: expected a finite number, got {value!r}")
    return float(value)


def _check_block(where: str, block: Any, *, lists: bool) -> dict[str, list[Any]]:
    if not isinstance(block, Mapping):
        raise SweepError(f"{where}: expected a mapping of key: value, got {type(block).__name__}")
    unknown = sorted(str(k) for k in block if k not in CELL_KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(CELL_KEYS)}")
    out: dict[str, list[Any]] = {}
    for key, value in block.items():
        if isinstance(value, list):
            if not lists:
                raise SweepError(f"{where}.{key}: one value expected here (lists belong under grid), got {value!r}")
            if not value:
                raise SweepError(f"{where}.{key}: an empty list gives no cells; give at least one value")
            out[key] = [_check_value(where, key, v) for v in value]
        else:
            out[key] = [_check_value(where, key, value)]
    return out


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: its name and the cells' requested settings (defaults filled, not yet resolved)."""

    name: str
    cells: tuple[dict[str, Any], ...]


def parse_grid(data: Any, source: str = "grid") -> Grid:
    """Check a loaded grid document and expand it into cells (a :class:`SweepError` names what is wrong)."""
    if not isinstance(data, Mapping):
        raise SweepError(f"{source}: expected a mapping with the keys {list(TOP_LEVEL_KEYS)}")
    unknown = sorted(str(k) for k in data if k not in TOP_LEVEL_KEYS)
    if unknown:
        raise SweepError(f"{source}: unknown top-level key(s) {unknown}; known: {list(TOP_LEVEL_KEYS)}")
    if "grid" not in data:
        raise SweepError(f"{source}: no 'grid' key; give grid: with at least a trace")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise SweepError(f"{source}: name must be a non-empty string, got {name!r}")
    defaults = {k: v[0] for k, v in _check_block(f"{source}: defaults", data.get("defaults") or {}, lists=False).items()}
    blocks = data["grid"] if isinstance(data["grid"], list) else [data["grid"]]
    if not blocks:
        raise SweepError(f"{source}: grid is an empty list; give at least one mapping")
    cells: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        where = f"{source}: grid" + (f"[{i}]" if isinstance(data["grid"], list) else "")
        axes = _check_block(where, block, lists=True)
        merged = {key: [value] for key, value in defaults.items()}
        merged.update(axes)
        if "trace" not in merged:
            raise SweepError(f"{where}: no trace; give trace: NAME (or a list) in the grid or the defaults")
        keys = list(merged)
        for combo in itertools.product(*(merged[k] for k in keys)):
            cell = {key: default for key, (_, default) in CELL_KEYS.items() if default is not ...}
            cell.update(zip(keys, combo))
            cells.append(cell)
    return Grid(name=name, cells=tuple(cells))


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and expand a YAML grid file."""
    try:
        import yaml
    except ModuleNotFoundError:
        raise SweepError("reading a grid file needs PyYAML; install it with: pip install 'moe-cache-env[sweep]'") \
            from None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"grid file {path} does not exist; give the path of a YAML grid") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepError(f"cannot read grid file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SweepError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_grid(data, str(path))


# ------------------------------------------------------------------------------------------ resolving cells


@lru_cache(maxsize=16)
def _trace(name: str):
    from moe_cache_env.traces.catalog import resolve

    return resolve(name)


@dataclass(frozen=True)
class Cell:
    """One evaluation: its key (hash of ``config``) and the full resolved configuration."""

    key: str
    config: dict[str, Any]

    def label(self) -> str:
        c = self.config
        return f"{c['trace']} {c['profile']} b{c['batch']} kv{c['kv_fraction']:g} {c['capacity']} slots " \
               f"{c['policy']} s{c['seed']}"


def cell_key(config: Mapping[str, Any]) -> str:
    """The hash that identifies a cell: SHA-256 of its configuration as canonical JSON (first 20 hex digits)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _is_agent(policy: str) -> bool:
    return policy in AGENT_POLICIES or ":" in policy


def resolve_cell(cell: Mapping[str, Any], where: str = "cell") -> Cell:
    """Check one cell's settings against the trace and build its full configuration (what a row records).

    Loads the trace (for its geometry and the default cache size), the profile, and builds the simulator's
    configuration objects, so every bad value is reported here, before anything runs.
    """
    from dataclasses import asdict

    from moe_cache_env import __version__
    from moe_cache_env.profiles import load_profile
    from moe_cache_env.sim.config import Controls, SimConfig, WorkloadConfig, default_capacity, split_capacity
    from moe_cache_env.sim.evaluate import POLICIES, policy_setup
    from moe_cache_env.sim.simulator import check_geometry

    c = dict(cell)
    policy = c["policy"]
    if policy not in POLICIES and not _is_agent(policy):
        raise SweepError(f"{where}: unknown policy {policy!r}; choose from {list(POLICIES) + list(AGENT_POLICIES)} "
                         "or ALGO:PATH (a saved Stable-Baselines3 model)")
    if ":" in policy and not Path(policy.split(":", 1)[1]).is_file():
        raise SweepError(f"{where}: policy {policy!r}: no model file {policy.split(':', 1)[1]}")
    try:
        trace = _trace(c["trace"])
        if c["fit_trace"] is not None:
            _trace(c["fit_trace"])
        load_profile(c["profile"])
        if c["capacity"] is not None and c["capacity_share"] is not None:
            raise SweepError("give capacity (slots) or capacity_share (a share of the experts), not both")
        if c["capacity"] is not None:
            capacity = c["capacity"]
        elif c["capacity_share"] is not None:
            share = c["capacity_share"]
            if not 0.0 < share <= 1.0:
                raise SweepError(f"capacity_share={share} is out of range; allowed (0, 1]")
            capacity = max(trace.top_k, int(round(share * trace.num_experts)))
            capacity *= trace.num_layers if c["scope"] == "global" else 1
        else:
            capacity = default_capacity(trace.num_experts, trace.top_k, trace.num_layers, c["scope"])
        cache = split_capacity(capacity, trace.top_k, c["scope"])
        check_geometry(trace, cache)
        config = SimConfig(
            cache=cache,
            workload=WorkloadConfig(batch_min=c["batch"], batch_max=c["batch"], kv_min=c["kv"], kv_max=c["kv"],
                                    chunk_tokens=c["chunk_tokens"], background_min=c["background"],
                                    background_max=c["background"]),
            timing=c["timing"], execution_order=c["execution_order"], decision_ms=c["decision_ms"],
            profile=c["profile"], predictor=c["predictor"], oracle_accuracy=c["oracle_accuracy"],
            expert_bytes=c["expert_bytes"], launch_cost=c["launch_cost"], prefetch_handoff=c["prefetch_handoff"],
        )
        controls = Controls(l2_threshold=c["l2_threshold"], l3_threshold=c["l3_threshold"],
                            lookahead=c["lookahead"], prefetch_budget=c["prefetch_budget"])
        if _is_agent(policy):
            from moe_cache_env.agents.evaluation import check_agent_config
            from moe_cache_env.envs import resolve_env_id

            check_agent_config(config, "drop execution_order and decision_ms from agent cells, or sweep them with "
                                       "simulator policies")
            env = resolve_env_id(c["env"])
            used_predictor, used_tiers, eviction = config.predictor, [cache.l1_slots, cache.l2_slots,
                                                                       cache.l3_slots], "weighted"
        else:
            env = None
            used, _ = policy_setup(trace, policy, config, controls)
            assert used.cache is not None
            used_predictor, eviction = used.predictor, used.eviction
            used_tiers = [used.cache.l1_slots, used.cache.l2_slots, used.cache.l3_slots]
    except SweepError as exc:
        raise SweepError(f"{where}: {exc}") from None
    except (ValueError, KeyError, FileNotFoundError) as exc:  # ConfigError, TraceFormatError, ProfileError, ...
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise SweepError(f"{where}: {message}") from None
    resolved = {
        "version": __version__,
        "trace": c["trace"],
        "trace_name": trace.name,
        "policy": policy,
        "env": env,
        "profile": c["profile"],
        "timing": c["timing"],
        "execution_order": c["execution_order"],
        "decision_ms": c["decision_ms"],
        "launch_cost": c["launch_cost"],
        "prefetch_handoff": c["prefetch_handoff"],
        "predictor": c["predictor"],
        "oracle_accuracy": c["oracle_accuracy"],
        "capacity": cache.total_slots,
        "capacity_share": c["capacity_share"],
        "scope": cache.scope,
        "tiers": [cache.l1_slots, cache.l2_slots, cache.l3_slots],
        "batch": c["batch"],
        "kv_fraction": c["kv"],
        "chunk_tokens": c["chunk_tokens"],
        "background": c["background"],
        "controls": asdict(controls),
        "fit_trace": c["fit_trace"],
        "expert_bytes": c["expert_bytes"],
        "seed": c["seed"],
        # what the policy replays with (a demand-only policy drops the predictor and flattens the tiers)
        "used": {"predictor": None if used_predictor == "none" else used_predictor, "eviction": eviction,
                 "tiers": used_tiers},
    }
    return Cell(key=cell_key(resolved), config=resolved)


def expand_grid(grid: Grid) -> list[Cell]:
    """Every distinct cell of the grid, in the grid's order (a cell listed twice is run once)."""
    seen: set[str] = set()
    cells = []
    for i, raw in enumerate(grid.cells):
        where = f"cell {i} ({raw['trace']}, {raw['policy']})"
        cell = resolve_cell(raw, where)
        if cell.key not in seen:
            seen.add(cell.key)
            cells.append(cell)
    return cells


# ------------------------------------------------------------------------------------------ running one cell


def _finite(value: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN); nested containers too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _finite(value.item())
    return value


def run_cell(key: str, config: Mapping[str, Any], *, sweep: str = "", backend: str = "") -> dict[str, Any]:
    """Evaluate one resolved cell; return its row (``timing`` holds the only fields that vary run to run)."""
    from moe_cache_env.sim.config import CacheConfig, Controls, SimConfig, WorkloadConfig
    from moe_cache_env.sim.evaluate import POLICY_KINDS, EvaluationRequest, evaluate

    start = time.perf_counter()
    c = config
    trace = _trace(c["trace"])
    l1, l2, l3 = c["tiers"]
    sim_config = SimConfig(
        cache=CacheConfig(l1_slots=l1, l2_slots=l2, l3_slots=l3, scope=c["scope"]),
        workload=WorkloadConfig(batch_min=c["batch"], batch_max=c["batch"], kv_min=c["kv_fraction"],
                                kv_max=c["kv_fraction"], chunk_tokens=c["chunk_tokens"],
                                background_min=c["background"], background_max=c["background"]),
        timing=c["timing"], execution_order=c["execution_order"], decision_ms=c["decision_ms"],
        profile=c["profile"], predictor=c["predictor"], oracle_accuracy=c["oracle_accuracy"],
        expert_bytes=c["expert_bytes"], launch_cost=c["launch_cost"], prefetch_handoff=c["prefetch_handoff"],
    )
    if c["env"] is not None:
        from moe_cache_env.agents.evaluation import evaluate_agent_on_trace

        metrics = dict(evaluate_agent_on_trace(c["policy"], c["trace"], trace.num_tokens, sim_config, c["env"],
                                               c["seed"]))
        kind = "agent"
    else:
        fit = _trace(c["fit_trace"]) if c["fit_trace"] is not None else None
        request = EvaluationRequest(policy=c["policy"], config=sim_config, controls=Controls(**c["controls"]),
                                    seed=c["seed"])
        metrics = dict(evaluate(trace, request, fit_trace=fit)["metrics"])
        kind = POLICY_KINDS.get(c["policy"], "policy")
    metrics["kind"] = kind
    return {
        "key": key,
        "sweep": sweep,
        "config": dict(c),
        "metrics": _finite(metrics),
        "timing": {"wall_s": round(time.perf_counter() - start, 3), "backend": backend, "host": socket.gethostname(),
                   "pid": os.getpid()},
    }


def comparable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row without its ``timing`` key: what two runs of the same cell must agree on exactly."""
    return {k: v for k, v in row.items() if k != "timing"}


# ------------------------------------------------------------------------------------------ the results table


def load_table(path: str | os.PathLike, *, repair: bool = True) -> dict[str, dict[str, Any]]:
    """The rows already in a JSONL results table, by key (an absent file is an empty table).

    A last line cut short (the process was killed in the middle of a write) is dropped, and with ``repair``
    the file is rewritten atomically without it, so that the next append starts on a fresh line; any other
    line that is not a row is an error naming the line.
    """
    target = Path(path)
    if not target.exists():
        return {}
    if not target.is_file():
        raise SweepError(f"results table {target} is not a regular file; give a .jsonl file path")
    data = target.read_bytes()
    lines = data.split(b"\n")
    torn = lines[-1] != b""  # a complete table ends with a newline
    rows: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("key"), str) or "config" not in row:
                raise ValueError("not a row")
        except (ValueError, UnicodeDecodeError):
            if torn and number == len(lines):
                break
            raise SweepError(f"{target} line {number} is not a sweep row; give --out a new file or the table of "
                             "this grid") from None
        rows[row["key"]] = row
    if torn:
        kept = data[: data.rfind(b"\n") + 1]
        if repair:
            from moe_cache_env._io import atomic_write

            atomic_write(target, lambda f: f.write(kept))
    return rows


def append_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row as one line, written with one ``write`` on a file opened for appending, then synced:
    a reader sees whole rows only, and a crash leaves at most a cut-short last line (dropped on load)."""
    from moe_cache_env._io import OutputError, _output_error, check_output_path

    target = check_output_path(path)
    line = (json.dumps(row, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _output_error(target, exc) from None
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OutputError(f"cannot write {target}: only {written} of {len(line)} bytes of a row were written "
                              "(is the disk full?); free some room and run the sweep again to resume")
        os.fsync(fd)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise _output_error(target, exc) from None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ backends


def _pool_worker(args: tuple[str, dict[str, Any], str]) -> tuple[str, dict[str, Any] | None, str | None]:
    key, config, sweep = args
    try:
        return key, run_cell(key, config, sweep=sweep, backend="local"), None
    except Exception as exc:  # reported by the parent as one line naming the cell
        return key, None, f"{type(exc).__name__}: {exc}"


def _ignore_sigint() -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the pool)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_local(cells: Sequence[Cell], sweep: str, workers: int,
               on_row: Callable[[dict[str, Any]], None]) -> None:
    jobs = [(cell.key, cell.config, sweep) for cell in cells]
    labels = {cell.key: cell.label() for cell in cells}

    def handle(result: tuple[str, dict[str, Any] | None, str | None]) -> None:
        key, row, error = result
        if error is not None:
            raise SweepError(f"cell {key} ({labels[key]}) failed: {error}")
        assert row is not None
        on_row(row)

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            handle(_pool_worker(job))
        return
    import multiprocessing

    pool = multiprocessing.get_context("spawn" if os.name == "nt" else "fork").Pool(
        min(workers, len(jobs)), initializer=_ignore_sigint)
    try:
        for result in pool.imap_unordered(_pool_worker, jobs):
            handle(result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _tune_trainable(config: dict[str, Any]) -> None:
    """A group of cells as one Ray Tune trial: reports each cell's row as it finishes (as JSON text, which Tune
    keeps whole), so the driver appends it at once."""
    from ray import tune

    for job in json.loads(config["cells"]):
        row = run_cell(job["key"], job["config"], sweep=job["sweep"], backend="ray")
        tune.report({"row_json": json.dumps(row, sort_keys=True, allow_nan=False)})


def _append_rows_callback(on_row: Callable[[dict[str, Any]], None], failures: list[str]) -> Any:
    """A Tune callback that runs in this (the driver) process: each row a trial reports goes to the table at
    once. Its state lives on the instance and is not pickled: Tune pickles its callbacks into the experiment
    folder for a restore this command never does, and the table and progress line stay in this process."""
    from ray import tune

    class AppendRows(tune.Callback):
        def __init__(self, on_row: Callable[[dict[str, Any]], None], failures: list[str]) -> None:
            self.on_row = on_row  # no closure over them: the class itself is pickled by value
            self.failures = failures

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.on_row(json.loads(result["row_json"]))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.failures.append(str(getattr(trial, "error_file", "") or trial))

        def __getstate__(self) -> dict[str, Any]:
            return {}

    return AppendRows(on_row, failures)


def _run_ray(cells: Sequence[Cell], sweep: str, workers: int, address: str | None,
             on_row: Callable[[dict[str, Any]], None]) -> None:
    import tempfile

    # before ray is imported: no TensorBoard/CSV/JSON logger per trial (the rows are the output)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        started = True
    labels = {cell.key: cell.label() for cell in cells}
    failures: list[str] = []

    append_rows = _append_rows_callback(on_row, failures)

    # A trial is a worker process that imports the package and loads the compiled kernel (seconds): cells go
    # in groups, a few per worker slot, so that start-up is paid a few times, not once per cell.
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)) if address else workers)
    groups = min(len(cells), TRIALS_PER_SLOT * slots)
    jobs = [json.dumps([{"key": c.key, "config": c.config, "sweep": sweep} for c in cells[i::groups]],
                       sort_keys=True) for i in range(groups)]
    try:
        with tempfile.TemporaryDirectory(prefix="moe-cache-sweep-") as storage:
            tuner = tune.Tuner(
                tune.with_resources(_tune_trainable, {"cpu": 1}),
                param_space={"cells": tune.grid_search(jobs)},
                tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True,
                                            trial_dirname_creator=lambda trial: f"cell_{trial.trial_id}",
                                            trial_name_creator=lambda trial: f"cell_{trial.trial_id}"),
                run_config=tune.RunConfig(name=f"sweep-{sweep}", storage_path=storage, callbacks=[append_rows],
                                          verbose=0, failure_config=tune.FailureConfig(fail_fast=True)),
            )
            results = tuner.fit()
            for result in results:
                if result.error is not None:
                    keys = [job["key"] for job in json.loads(result.config["cells"])]
                    message = str(result.error).strip().splitlines()
                    raise SweepError(f"a trial of cells {', '.join(labels[k] for k in keys[:3])}"
                                     f"{' ...' if len(keys) > 3 else ''} failed: "
                                     f"{message[-1] if message else type(result.error).__name__}")
    finally:
        if started:
            ray.shutdown()
    if failures:
        raise SweepError(f"{len(failures)} cell(s) failed under Ray; see {failures[0]}")


BACKENDS = ("local", "ray")
#: Ray trials per worker slot (a few, so that a slow group does not leave the other slots idle at the end)
TRIALS_PER_SLOT = 2


@dataclass
class SweepSummary:
    """What :func:`run_sweep` did."""

    cells: int
    already: int
    ran: int


def run_sweep(grid_path: str | os.PathLike, out: str | os.PathLike, *, backend: str = "local", workers: int = 1,
              address: str | None = None, progress: Callable[[str], None] | None = None,
              on_start: Callable[[int], None] | None = None) -> SweepSummary:
    """Run every cell of the grid that is not yet in ``out``; append each row as soon as its cell finishes.

    ``on_start(n)`` is called with the number of cells to run, ``progress(label)`` after each of them.
    """
    if backend not in BACKENDS:
        raise SweepError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SweepError(f"workers must be an integer >= 1, got {workers!r}")
    grid = load_grid(grid_path)
    cells = expand_grid(grid)
    done = load_table(out)
    pending = [cell for cell in cells if cell.key not in done]
    if on_start is not None:
        on_start(len(pending))
    labels = {cell.key: cell.label() for cell in pending}
    expected = set(labels)

    def on_row(row: dict[str, Any]) -> None:
        if row["key"] not in expected:  # never write a row this sweep did not ask for
            raise SweepError(f"a worker returned a row for unknown cell {row['key']}")
        expected.discard(row["key"])
        append_row(out, row)
        if progress is not None:
            progress(labels[row["key"]])

    if pending:
        if backend == "local":
            _run_local(pending, grid.name, workers, on_row)
        else:
            _run_ray(pending, grid.name, workers, address, on_row)
    if expected:
        raise SweepError(f"{len(expected)} cell(s) produced no row; run the sweep again to resume")
    return SweepSummary(cells=len(cells), already=len(cells) - len(pending), ran=len(pending))


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a results table, in file order (a cut-short last line is skipped, the file left as it is)."""
    return list(load_table(path, repair=False).values())


def iter_metric(rows: Iterable[Mapping[str, Any]], metric: str, **where: Any) -> list[Any]:
    """``metric`` of every row whose config matches all of ``where`` (a small helper for scripts)."""
    return [r["metrics"].get(metric) for r in rows if all(r["config"].get(k) == v for k, v in where.items())]
