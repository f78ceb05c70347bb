"""The three-tier expert-cache simulator: a thin typed facade over the compiled kernel."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from moe_cache_env.profiles import HardwareProfile, load_profile
from moe_cache_env.sim import kernel as K
from moe_cache_env.sim import plugins
from moe_cache_env.sim.config import EVICTION_RULES, CacheConfig, ConfigError, Controls, SimConfig, default_cache
from moe_cache_env.sim.timing import seed_table_array
from moe_cache_env.sim.metrics import metrics_from_counters
from moe_cache_env.sim.predictors import PREDICTORS, fit_cooccurrence
from moe_cache_env.sim.schedule import Schedule, build_schedule
from moe_cache_env.sim import zoo
from moe_cache_env.sim.state import ZooArrays, allocate_state, schedule_arrays
from moe_cache_env.traces.format import MAX_TABLE_EXPERTS, Trace


@dataclass(frozen=True)
class WindowResult:
    """What one call of :meth:`Simulator.run` produced.

    ``metrics`` (the window's named metrics, from ``metrics_from_counters``) is computed on first read, so a
    caller that works from ``counters`` does not pay for it (about a fifth of an 8-step window's replay).
    """

    first_step: int
    num_steps: int
    counters: np.ndarray
    step_latency_ms: np.ndarray
    step_tokens: np.ndarray
    expert_bytes: int = 0

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """The window's named metrics (the keys of ``evaluate --json``)."""
        return metrics_from_counters(self.counters, self.step_latency_ms, self.step_tokens, self.expert_bytes)


#: fitted co-occurrence tables by the id of the Trace they were fitted on (with a weak reference to that Trace,
#: which removes the entry when the Trace goes): an environment passes the same fit trace at every reset
_FITTED: dict[int, tuple[weakref.ref, int, tuple[np.ndarray, np.ndarray]]] = {}


def fitted_cooccurrence(fit_trace: Trace, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """``fit_cooccurrence(fit_trace.experts, num_experts)``, computed once per Trace object and kept read-only
    (a simulator copies the tables into its state before learning online)."""
    key = id(fit_trace)
    hit = _FITTED.get(key)
    if hit is not None and hit[0]() is fit_trace and hit[1] == num_experts:
        return hit[2]
    pair, src = fit_cooccurrence(fit_trace.experts, num_experts)
    pair.flags.writeable = False
    src.flags.writeable = False
    _FITTED[key] = (weakref.ref(fit_trace, lambda _ref, key=key: _FITTED.pop(key, None)), num_experts, (pair, src))
    return pair, src


class Simulator:
    """Replays a trace through a three-tier GPU expert cache under a timing model.

    Usage::

        sim = Simulator(trace, SimConfig(), rng=np.random.default_rng(0))
        while not sim.done:
            window = sim.run(num_steps=32, controls=Controls(l2_threshold=0.7, l3_threshold=0.3))
        print(sim.metrics())

    Args:
        trace: the routing trace to replay.
        config: cache, workload, timing, profile and predictor settings.
        rng: the source of all randomness (workload schedule, the noisy oracle); never the global RNG.
        fit_trace: a training trace to pre-fit the cross-layer predictor's co-occurrence table on.
        profile: a loaded profile, overriding ``config.profile``.
    """

    def __init__(
        self,
        trace: Trace,
        config: SimConfig | None = None,
        *,
        rng: np.random.Generator | None = None,
        fit_trace: Trace | None = None,
        profile: HardwareProfile | None = None,
    ) -> None:
        from moe_cache_env.sim.compile_note import note_if_compiling  # a note on stderr before a long first compile
        note_if_compiling(K.run_steps)
        self.trace = trace
        config = config or SimConfig()
        if config.cache is None:
            config = replace(config, cache=default_cache(trace.num_experts, trace.top_k, trace.num_layers))
        self.config = config
        self.cache: CacheConfig = config.cache
        check_geometry(trace, self.cache, allow_full=True)
        if trace.num_experts > MAX_TABLE_EXPERTS:
            raise ConfigError(
                f"trace {trace.name or ''!r} declares {trace.num_experts} experts per layer; the simulator keeps "
                f"per-layer expert-by-expert tables and supports at most {MAX_TABLE_EXPERTS}"
            )
        self.profile = profile or load_profile(self.config.profile)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.schedule: Schedule = build_schedule(trace, self.config.workload, self.cache, rng)
        self._rng_seed = int(rng.integers(0, 2**62))
        self.expert_bytes = int(self.config.expert_bytes or trace.expert_bytes)
        if self.config.timing == "seed" and self.profile.seed_table is None:
            raise ConfigError(
                f"timing='seed' needs a profile with a seed_table (e.g. 'rtx3090-seed'); "
                f"profile {self.profile.name!r} has none"
            )
        if fit_trace is not None and (
            fit_trace.num_layers != trace.num_layers or fit_trace.num_experts != trace.num_experts
        ):
            raise ConfigError("fit_trace must have the same layers and experts as the replayed trace")
        self._fit_trace = fit_trace
        self._fitted: tuple[np.ndarray, np.ndarray] | None = None
        # int16 holds every id (MAX_TABLE_EXPERTS above) at a quarter of int64's memory per environment
        self._experts = np.ascontiguousarray(trace.experts, dtype=np.int16)
        width = self.schedule.step_tokens.shape[1]
        self._ctab = self.profile.compute_table(self.expert_bytes, width)
        L, E, Kk = trace.num_layers, trace.num_experts, trace.top_k
        cache = self.cache
        self._iconf = np.zeros(K.NUM_ICONF, dtype=np.int64)
        self._iconf[K.I_LAYERS] = L
        self._iconf[K.I_EXPERTS] = E
        self._iconf[K.I_TOPK] = Kk
        self._iconf[K.I_GLOBAL] = 1 if cache.scope == "global" else 0
        self._iconf[K.I_SEED_TIMING] = 1 if self.config.timing == "seed" else 0
        self._plugin_predictor: plugins.Predictor | None = None
        self._replay: Any = None  # the kernel's compiled replay for this simulator's argument types (run)
        if self.config.predictor in PREDICTORS:
            self._iconf[K.I_PREDICTOR] = PREDICTORS[self.config.predictor]
        else:
            self._iconf[K.I_PREDICTOR] = K.P_EXTERNAL
            self._plugin_predictor = plugins.make_predictor(self.config.predictor)
            if fit_trace is not None:
                self._plugin_predictor.fit(fit_trace)
        self._iconf[K.I_TOTAL_SLOTS] = cache.total_slots
        self._iconf[K.I_CALIBRATE] = 1 if self.config.calibrate_confidence else 0
        if self.config.eviction in EVICTION_RULES:
            self._iconf[K.I_EVICTION] = EVICTION_CODES[self.config.eviction]
        else:
            self._iconf[K.I_EVICTION] = K.EV_CUSTOM
            plugins.kernel_for_eviction(self.config.eviction)  # compile the rule's kernel now, not mid-replay
        self._iconf[K.I_FLAT] = 1 if cache.flat else 0
        self._fconf = np.zeros(K.NUM_FCONF, dtype=np.float64)
        self._fconf[K.F_TRANSFER_MS] = self.profile.transfer_ms(self.expert_bytes)
        self._fconf[K.F_LAYER_OVERHEAD_MS] = self.profile.layer_overhead_ms
        self._fconf[K.F_DECAY] = self.config.stats_decay
        self._fconf[K.F_ORACLE_ACC] = self._oracle_accuracy(1)
        self._fconf[K.F_SEED_H2D_1:K.F_SEED_H2D_1 + len(seed_table_array(self.profile))] = \
            seed_table_array(self.profile)
        self._fconf[K.F_MRS_ALPHA] = self.config.mrs_alpha
        self._fconf[K.F_HOST_MS] = self.profile.host_decision_ms + self.config.decision_ms
        self._fconf[K.F_LAUNCH_MS] = self.profile.expert_launch_ms if self.config.launch_cost else 0.0
        self._fconf[K.F_COPY_ISSUE_MS] = self.profile.copy_issue_ms
        self._iconf[K.I_PER_EXPERT] = 1 if self.config.execution_order == "per-expert" else 0
        self._iconf[K.I_HOST_POLL] = 1 if self.config.prefetch_handoff == "host-poll" else 0
        self._zoo = self._zoo_arrays(trace, fit_trace)
        self._iconf[K.I_LAYER_CAPS] = 1 if self._zoo.layer_caps.size else 0
        if self.config.eviction == "belady":
            self._nu_start, self._nu_events = K.build_next_use(
                self.schedule.step_tokens, self.schedule.step_ntokens, self._experts, E
            )
        else:
            self._nu_start = np.zeros(L * E + 1, dtype=np.int64)
            self._nu_events = np.zeros(0, dtype=np.int64)
        self._sched = schedule_arrays(self.schedule, self._experts, self._ctab)
        self._kconf = K.KernelConfig(self._iconf, self._fconf, self._rng_seed)
        self.reset()

    # ---- state -------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the cache, the link and the online statistics; rewind to the first step."""
        fitted = None
        if self._fit_trace is not None:
            if self._fitted is None:
                self._fitted = fitted_cooccurrence(self._fit_trace, self.trace.num_experts)
            fitted = self._fitted
        self.state: K.KernelState = allocate_state(
            self.trace.num_layers, self.trace.num_experts, self.trace.top_k, self.cache,
            self.schedule.step_tokens.shape[1], fitted, (self._nu_start, self._nu_events), self._zoo,
            lookahead_depth=self.config.max_lookahead,
        )
        S = self.schedule.num_steps
        self.counters = np.zeros(K.NUM_COUNTERS, dtype=np.float64)
        self.step_latency_ms = np.zeros(S, dtype=np.float64)
        self.position = 0
        self._log_rows: list[np.ndarray] | None = [] if getattr(self, "_log_rows", None) is not None else None
        if self._plugin_predictor is not None:
            self._plugin_predictor.start(self.trace, self.schedule)

    # ---- the decision log ----------------------------------------------------------------------------------------
    def record_decisions(self) -> None:
        """From now on (until the next :meth:`reset`, which keeps it on) the kernel logs its decisions: every
        needed expert with its source, every prefetch issued and every eviction, in order (``kernel.LOG_*``).
        :meth:`decision_events` returns them; ``moe_cache_env.gpu.kernel_log`` turns them into a decision log."""
        if self._log_rows is None:
            self._log_rows = []

    def decision_events(self) -> np.ndarray:
        """(N, kernel.LOG_COLUMNS) int32 events logged since :meth:`record_decisions` (or the last reset)."""
        if self._log_rows is None:
            raise ConfigError("decision logging is off: call Simulator.record_decisions() before running")
        if not self._log_rows:
            return np.zeros((0, K.LOG_COLUMNS), dtype=np.int32)
        return np.concatenate(self._log_rows)

    def _log_capacity(self, steps: int) -> int:
        # per event at most: every needed expert (W * K), E prefetches, and an eviction for each admission; plus
        # the pool's whole content for the evictions a shrinking KV cache causes at a step's start
        L, E, Kk = self.trace.num_layers, self.trace.num_experts, self.trace.top_k
        width = self.schedule.step_tokens.shape[1]
        return steps * L * 2 * (width * Kk + E) + 3 * self.state.tiers.mem.shape[0] * self.state.tiers.mem.shape[2] + 8

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_replay"] = None  # machine code does not pickle or copy; the next run finds it again
        return state

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def done(self) -> bool:
        return self.position >= self.schedule.num_steps

    def _zoo_arrays(self, trace: Trace, fit_trace: Trace | None) -> ZooArrays:
        """The fitted inputs of the zoo's rules (docs/policies.md); empty arrays for rules that read none."""
        config, cache = self.config, self.cache
        empty = ZooArrays.empty(trace.num_layers * trace.num_experts)
        k_static, route_w, caps = empty.k_static, empty.route_w, empty.layer_caps
        if config.eviction == "static":
            if fit_trace is None:
                raise ConfigError("eviction='static' chooses its resident experts from recorded frequencies: give a "
                                  "fit trace (evaluate --fit-trace, or the policy fits on the trace's first part)")
            k_static = zoo.key_frequencies(fit_trace.experts, trace.num_experts)
        if config.eviction == "mrs":
            route_w = zoo.routing_weights(trace)
        if config.layer_slots == "fitted":
            if fit_trace is None or cache.scope != "per-layer" or not cache.flat:
                raise ConfigError("layer_slots='fitted' needs a one-tier per-layer cache (l2_slots = l3_slots = 0) "
                                  "and a fit trace to measure each layer's misses on")
            curves = zoo.lru_miss_curves(fit_trace.experts, trace.num_experts)
            caps = zoo.layer_caps(self.schedule.tier_caps[:, 0], curves, trace.top_k, trace.num_experts)
        return ZooArrays(k_static, route_w, caps)

    # ---- running -------------------------------------------------------------------------------------------------
    @property
    def routing(self) -> np.ndarray:
        """The replayed trace's expert ids, (T, L, K) contiguous int16 (at most MAX_TABLE_EXPERTS experts are
        accepted): the array the kernel reads (do not modify)."""
        return self._experts

    def run(self, num_steps: int | None = None, controls: Controls | None = None) -> WindowResult:
        """Replay the next ``num_steps`` steps (all remaining if None) under ``controls``."""
        controls = controls or Controls()
        s0 = self.position
        s1 = self.schedule.num_steps if num_steps is None else min(self.schedule.num_steps, s0 + int(num_steps))
        if num_steps is not None and num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        u = self.controls_vector(controls)
        self._fconf[K.F_ORACLE_ACC] = self._oracle_accuracy(controls.lookahead)
        # the kernel accumulates into the run's totals, so replaying in windows sums exactly as one long call
        before = self.counters.copy()
        ext_conf = self._external_confidences(s0, s1, controls)
        if self._log_rows is not None:
            kernel = K if self._iconf[K.I_EVICTION] != K.EV_CUSTOM else plugins.kernel_for_eviction(self.config.eviction)
            self._run_logged(kernel, s0, s1, u, ext_conf)
        else:
            args = (s0, s1, self._sched, self._kconf, u, self.state, ext_conf,
                    K.KernelOutput(self.counters, self.step_latency_ms))
            if self._replay is None:
                kernel = K if self._iconf[K.I_EVICTION] != K.EV_CUSTOM else plugins.kernel_for_eviction(
                    self.config.eviction)
                self._replay = _known_entry(kernel.run_steps, args)  # another simulator's, for the same types
                if self._replay is None:
                    kernel.run_steps(*args)  # the first call types the arguments (and loads or compiles the kernel)
                    self._replay = _typed_entry(kernel.run_steps, args)
                else:
                    self._replay(*args)
            else:
                self._replay(*args)
        window = self.counters - before
        self.position = s1
        lat = self.step_latency_ms[s0:s1]
        ntok = self.schedule.step_ntokens[s0:s1]
        return WindowResult(
            first_step=s0,
            num_steps=s1 - s0,
            counters=window,
            step_latency_ms=lat,
            step_tokens=ntok,
            expert_bytes=self.expert_bytes,
        )

    def _oracle_accuracy(self, lookahead: int) -> float:
        """noisy-oracle's accuracy at this lookahead distance (the last value serves longer distances)."""
        acc = self.config.oracle_accuracy
        if isinstance(acc, tuple):
            return float(acc[min(int(lookahead), len(acc)) - 1])
        return float(acc)

    def _run_logged(self, kernel: Any, s0: int, s1: int, u: np.ndarray, ext_conf: np.ndarray) -> None:
        """Replay [s0, s1) in chunks whose events fit a bounded log buffer (the numbers are those of one call)."""
        chunk = 64
        L = self.trace.num_layers
        log = np.zeros((self._log_capacity(chunk), K.LOG_COLUMNS), dtype=np.int32)
        log_pos = np.zeros(2, dtype=np.int64)
        for a in range(s0, s1, chunk):
            b = min(s1, a + chunk)
            conf = ext_conf if ext_conf.shape[0] == 0 else ext_conf[(a - s0) * L:(b - s0) * L]
            log_pos[:] = 0
            kernel.run_steps(a, b, self._sched, self._kconf, u, self.state, conf,
                             K.KernelOutput(self.counters, self.step_latency_ms, log, log_pos))
            if log_pos[1]:
                raise RuntimeError(f"decision log overflow: {int(log_pos[1])} events past {len(log)} rows")
            self._log_rows.append(log[: int(log_pos[0])].copy())  # type: ignore[union-attr]

    def _external_confidences(self, s0: int, s1: int, controls: Controls) -> np.ndarray:
        """A plug-in predictor's confidences for the window's events, or an empty array for a built-in one."""
        if self._plugin_predictor is None:
            return _NO_EXTERNAL
        E, L = self.trace.num_experts, self.trace.num_layers
        conf = np.asarray(self._plugin_predictor.confidences(s0, s1, controls.lookahead), dtype=np.float64)
        if conf.shape != (s1 - s0, L, E) or not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1:
            raise ConfigError(
                f"predictor {self.config.predictor!r} returned confidences of shape {conf.shape}; expected "
                f"({s1 - s0}, {L}, {E}) finite values in [0, 1] for steps [{s0}, {s1})"
            )
        return np.ascontiguousarray(conf.reshape((s1 - s0) * L, E))

    def controls_vector(self, controls: Controls) -> np.ndarray:
        """``controls`` as the kernel's control vector (``U_*``)."""
        if controls.lookahead > self.config.max_lookahead:
            raise ConfigError(
                f"controls.lookahead={controls.lookahead} exceeds this simulator's sim.max_lookahead="
                f"{self.config.max_lookahead}; build it with max_lookahead={controls.lookahead} to look that far"
            )
        u = np.zeros(K.NUM_CONTROLS, dtype=np.float64)
        u[K.U_L2_THRESHOLD] = controls.l2_threshold
        u[K.U_L3_THRESHOLD] = controls.l3_threshold
        u[K.U_LOOKAHEAD] = controls.lookahead
        u[K.U_BUDGET] = controls.prefetch_budget
        u[K.U_L2_SHARE] = controls.l2_share
        u[K.U_W_RECENCY] = controls.w_recency
        u[K.U_W_FREQUENCY] = controls.w_frequency
        u[K.U_W_CONFIDENCE] = controls.w_confidence
        u[K.U_OVERTAKE] = 1.0 if controls.demand_overtakes else 0.0
        u[K.U_PRESSURE_LIMIT] = self.cache.l3_pressure_limit
        return u

    def metrics(self) -> dict[str, Any]:
        """Metrics of everything replayed since the last reset."""
        s1 = self.position
        return metrics_from_counters(
            self.counters, self.step_latency_ms[:s1], self.schedule.step_ntokens[:s1], self.expert_bytes
        )

    # ---- batched replay (sim/batch.py) -------------------------------------------------------------------------
    @property
    def batchable(self) -> bool:
        """Whether ``sim/batch.py`` can replay this simulator: built-in predictor and eviction rule (no plug-in),
        and no decision log being recorded."""
        return self._plugin_predictor is None and self._iconf[K.I_EVICTION] != K.EV_CUSTOM and self._log_rows is None

    def window_bounds(self, num_steps: int) -> tuple[int, int]:
        """The steps ``[s0, s1)`` that ``run(num_steps)`` would replay next."""
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        return self.position, min(self.schedule.num_steps, self.position + int(num_steps))

    def finish_window(self, s0: int, s1: int, before: np.ndarray) -> WindowResult:
        """Close a window replayed by ``sim/batch.py`` (``before``: the counters before it), as ``run`` does."""
        window = self.counters - before
        self.position = s1
        lat = self.step_latency_ms[s0:s1]
        ntok = self.schedule.step_ntokens[s0:s1]
        return WindowResult(first_step=s0, num_steps=s1 - s0, counters=window, step_latency_ms=lat, step_tokens=ntok,
                            expert_bytes=self.expert_bytes)

    # ---- views for observers -----------------------------------------------------------------------------------
    def tier_occupancy(self) -> np.ndarray:
        """(3,) keys held in L1, L2 and L3 now, averaged over pools."""
        return self.state.tiers.cnt.mean(axis=0).astype(np.float64)

    def current_capacities(self) -> np.ndarray:
        """(3,) tier capacities per pool at the next step."""
        s = min(self.position, self.schedule.num_steps - 1)
        return self.schedule.tier_caps[s].astype(np.float64)


_NO_EXTERNAL = np.zeros((0, 0), dtype=np.float64)


def _typed_entry(dispatcher: Any, args: tuple) -> Any:
    """The machine code numba compiled for the types of ``args``, callable without the dispatcher.

    The dispatcher works out the numba type of every argument on every call, and for the nested state tuples
    (some forty arrays) that costs about 15 us, as much as replaying a few dozen routing events. A simulator's
    arguments keep their types for its lifetime (the state is always allocated by ``state.allocate_state``, the
    schedule and settings are fixed), so the entry point found once serves every later window. Falls back to
    the dispatcher itself where numba does not expose the compiled overload.
    """
    layout = _layout_key(args)
    try:
        signature = tuple(dispatcher.typeof_pyval(a) for a in args)
        entry = dispatcher.overloads[signature].entry_point
    except (AttributeError, KeyError):
        return dispatcher
    if layout is not None:
        _ENTRIES[(dispatcher, layout)] = entry
    return entry


def _known_entry(dispatcher: Any, args: tuple) -> Any:
    """The entry point :func:`_typed_entry` found for arguments of the same types as ``args``, or None."""
    layout = _layout_key(args)
    return _ENTRIES.get((dispatcher, layout)) if layout is not None else None


#: (dispatcher, :func:`_layout_key` of the arguments) -> the compiled entry point :func:`_typed_entry` found: numba's
#: typing of the arguments (some forty arrays in nested tuples) cost ~1.5 ms of every environment reset
_ENTRIES: dict[tuple[Any, Any], Any] = {}


def _layout_key(value: Any) -> Any:
    """Everything numba's ``typeof`` reads from ``value`` to type it, cheaply: per array its dtype, dimensions,
    contiguity, writeability and alignment; per named tuple its class and fields; per Python scalar its type.
    None for anything else (the caller then asks numba)."""
    if isinstance(value, np.ndarray):
        flags = value.flags
        if value.dtype.hasobject or value.dtype.fields is not None:
            return None
        return (value.dtype.str, value.ndim, flags.c_contiguous, flags.f_contiguous, flags.writeable, flags.aligned)
    if isinstance(value, tuple):
        parts = tuple(_layout_key(v) for v in value)
        return None if any(p is None for p in parts) else (type(value), parts)
    if type(value) in (bool, float) or (type(value) is int and -2**63 <= value < 2**63):
        return type(value)
    return None


#: SimConfig.eviction -> the kernel's rule (kernel.EV_*)
EVICTION_CODES = {
    "weighted": K.EV_WEIGHTED, "lru": K.EV_LRU, "belady": K.EV_BELADY, "lfu": K.EV_LFU, "lfru": K.EV_LFRU,
    "least-stale": K.EV_LEAST_STALE, "mrs": K.EV_MRS, "static": K.EV_STATIC, "fifo": K.EV_FIFO,
}


def check_geometry(trace: Trace, cache: CacheConfig, *, allow_full: bool = False) -> None:
    """Refuse a cache that cannot serve the trace (L1 below top_k) or, unless ``allow_full``, one that holds all
    of it (every expert resident: nothing left to decide), with a message naming the trace and its geometry."""
    name = trace.name or "the trace"
    geometry = f"{trace.num_layers} layers x {trace.num_experts} experts, top-{trace.top_k}"
    tiers = f"{cache.l1_slots}/{cache.l2_slots}/{cache.l3_slots}"
    if cache.l1_slots < trace.top_k:
        raise ConfigError(
            f"cache.l1_slots={cache.l1_slots} is below top_k={trace.top_k} of {name} ({geometry}): L1 holds a "
            f"token's active experts; give l1_slots >= {trace.top_k}"
        )
    if not allow_full and holds_every_expert(trace, cache):
        experts = trace.num_experts * (trace.num_layers if cache.scope == "global" else 1)
        where = "in all" if cache.scope == "global" else "per layer"
        raise ConfigError(
            f"cache of {cache.total_slots} slots {where} (tiers {tiers}) holds every expert of {name} ({geometry}): "
            f"nothing would ever be copied twice; give fewer than {experts} slots {where}"
        )


def holds_every_expert(trace: Trace, cache: CacheConfig) -> bool:
    """Whether the cache's slots hold every expert of the trace (per layer, or in all for a global cache)."""
    experts = trace.num_experts * (trace.num_layers if cache.scope == "global" else 1)
    return cache.total_slots >= experts
