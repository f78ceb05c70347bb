"""The three-tier expert-cache simulator: a thin typed facade over the compiled kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_cache_env.profiles import HardwareProfile, load_profile
from moe_cache_env.profiles.profile import SEED_TABLE_KEYS
from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.config import ConfigError, Controls, SimConfig
from moe_cache_env.sim.metrics import metrics_from_counters
from moe_cache_env.sim.predictors import PREDICTORS, fit_cooccurrence
from moe_cache_env.sim.schedule import Schedule, build_schedule
from moe_cache_env.traces.format import Trace


@dataclass(frozen=True)
class WindowResult:
    """What one call of :meth:`Simulator.run` produced."""

    first_step: int
    num_steps: int
    counters: np.ndarray
    step_latency_ms: np.ndarray
    step_tokens: np.ndarray
    metrics: dict[str, Any]


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
        self.config = config or SimConfig()
        self.profile = profile or load_profile(self.config.profile)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.schedule: Schedule = build_schedule(trace, self.config.workload, self.config.cache, rng)
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
        self._experts = np.ascontiguousarray(trace.experts, dtype=np.int64)
        width = self.schedule.step_tokens.shape[1]
        self._ctab = self.profile.compute_table(self.expert_bytes, width)
        L, E, Kk = trace.num_layers, trace.num_experts, trace.top_k
        cache = self.config.cache
        self._iconf = np.zeros(K.NUM_ICONF, dtype=np.int64)
        self._iconf[K.I_LAYERS] = L
        self._iconf[K.I_EXPERTS] = E
        self._iconf[K.I_TOPK] = Kk
        self._iconf[K.I_GLOBAL] = 1 if cache.scope == "global" else 0
        self._iconf[K.I_SEED_TIMING] = 1 if self.config.timing == "seed" else 0
        self._iconf[K.I_PREDICTOR] = PREDICTORS[self.config.predictor]
        self._iconf[K.I_TOTAL_SLOTS] = cache.total_slots
        self._iconf[K.I_CALIBRATE] = 1 if self.config.calibrate_confidence else 0
        self._fconf = np.zeros(K.NUM_FCONF, dtype=np.float64)
        self._fconf[K.F_TRANSFER_MS] = self.profile.transfer_ms(self.expert_bytes)
        self._fconf[K.F_LAYER_OVERHEAD_MS] = self.profile.layer_overhead_ms
        self._fconf[K.F_DECAY] = self.config.stats_decay
        self._fconf[K.F_ORACLE_ACC] = self.config.oracle_accuracy
        if self.profile.seed_table is not None:
            for i, key in enumerate(SEED_TABLE_KEYS):
                self._fconf[K.F_SEED_H2D_1 + i] = self.profile.seed_table[key]
        self.reset()

    # ---- state -------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the cache, the link and the online statistics; rewind to the first step."""
        L, E, Kk = self.trace.num_layers, self.trace.num_experts, self.trace.top_k
        n_keys = L * E
        cache = self.config.cache
        pools = 1 if cache.scope == "global" else L
        width = self.schedule.step_tokens.shape[1]
        slots = cache.total_slots + width * Kk + E + 8
        self._k_tier = np.zeros(n_keys, dtype=np.int8)
        self._k_state = np.zeros(n_keys, dtype=np.int8)
        self._k_arrival = np.zeros(n_keys, dtype=np.float64)
        self._k_last = np.zeros(n_keys, dtype=np.float64)
        self._k_uses = np.zeros(n_keys, dtype=np.int64)
        self._k_conf = np.zeros(n_keys, dtype=np.float64)
        self._k_prefetched = np.zeros(n_keys, dtype=np.int8)
        self._k_qpos = np.zeros(n_keys, dtype=np.int64)
        self._k_pin = np.full(n_keys, -10, dtype=np.int64)
        self._k_pos = np.zeros(n_keys, dtype=np.int64)
        self._mem = np.zeros((pools, 3, slots), dtype=np.int64)
        self._cnt = np.zeros((pools, 3), dtype=np.int64)
        self._link = np.zeros(2, dtype=np.float64)
        q = 2 * n_keys + 64
        self._q_key = np.full(q, -1, dtype=np.int64)
        self._q_issue = np.zeros(q, dtype=np.float64)
        self._qht = np.zeros(2, dtype=np.int64)
        self._pop_cnt = np.zeros((L, E), dtype=np.float64)
        self._pop_obs = np.zeros(L, dtype=np.float64)
        self._pop_weight = np.ones(L, dtype=np.float64)
        self._reuse_hit = np.zeros(L, dtype=np.float64)
        self._reuse_tot = np.zeros(L, dtype=np.float64)
        if self._fit_trace is not None:
            self._pair, self._src = fit_cooccurrence(self._fit_trace.experts, E)
        else:
            # int32 counts: half the memory of float64 keeps the table in cache (it is updated every event)
            self._pair = np.zeros((2, L, E, E), dtype=np.int32)
            self._src = np.zeros((2, L, E), dtype=np.int32)
        self._cal_hits = np.zeros(K.NUM_CAL_BINS, dtype=np.float64)
        self._cal_count = np.zeros(K.NUM_CAL_BINS, dtype=np.float64)
        self._pend_bin = np.zeros((3, E), dtype=np.int64)
        self._pend_hist = np.zeros((3, K.NUM_CAL_BINS), dtype=np.float64)
        self._pend_target = np.full(3, -1, dtype=np.int64)
        S = self.schedule.num_steps
        self.counters = np.zeros(K.NUM_COUNTERS, dtype=np.float64)
        self.step_latency_ms = np.zeros(S, dtype=np.float64)
        self.position = 0

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def done(self) -> bool:
        return self.position >= self.schedule.num_steps

    # ---- running -------------------------------------------------------------------------------------------------
    def run(self, num_steps: int | None = None, controls: Controls | None = None) -> WindowResult:
        """Replay the next ``num_steps`` steps (all remaining if None) under ``controls``."""
        controls = controls or Controls()
        s0 = self.position
        s1 = self.schedule.num_steps if num_steps is None else min(self.schedule.num_steps, s0 + int(num_steps))
        if num_steps is not None and num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        u = self.controls_vector(controls)
        # the kernel accumulates into the run's totals, so replaying in windows sums exactly as one long call
        before = self.counters.copy()
        sch = self.schedule
        K.run_steps(
            s0, s1,
            sch.step_tokens, sch.step_ntokens, sch.prev_token, sch.step_of_token, sch.tier_caps, sch.link_share,
            sch.kv_fraction, self._experts, self._ctab,
            self._iconf, self._fconf, u, self._rng_seed,
            self._k_tier, self._k_state, self._k_arrival, self._k_last, self._k_uses, self._k_conf,
            self._k_prefetched, self._k_qpos, self._k_pin, self._k_pos,
            self._mem, self._cnt, self._link, self._q_key, self._q_issue, self._qht,
            self._pop_cnt, self._pop_obs, self._pop_weight, self._reuse_hit, self._reuse_tot, self._pair, self._src,
            self._cal_hits, self._cal_count, self._pend_bin, self._pend_hist, self._pend_target,
            self.counters, self.step_latency_ms,
        )
        window = self.counters - before
        self.position = s1
        lat = self.step_latency_ms[s0:s1]
        ntok = sch.step_ntokens[s0:s1]
        return WindowResult(
            first_step=s0,
            num_steps=s1 - s0,
            counters=window,
            step_latency_ms=lat,
            step_tokens=ntok,
            metrics=metrics_from_counters(window, lat, ntok, self.expert_bytes),
        )

    def controls_vector(self, controls: Controls) -> np.ndarray:
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
        u[K.U_PRESSURE_LIMIT] = self.config.cache.l3_pressure_limit
        return u

    def metrics(self) -> dict[str, Any]:
        """Metrics of everything replayed since the last reset."""
        s1 = self.position
        return metrics_from_counters(
            self.counters, self.step_latency_ms[:s1], self.schedule.step_ntokens[:s1], self.expert_bytes
        )

    # ---- views for observers -----------------------------------------------------------------------------------
    def current_capacities(self) -> np.ndarray:
        """(3,) tier capacities per pool at the next step."""
        s = min(self.position, self.schedule.num_steps - 1)
        return self.schedule.tier_caps[s].astype(np.float64)
