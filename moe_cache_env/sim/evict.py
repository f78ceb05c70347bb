"""Eviction decisions, one at a time or under a rule: the facade over ``evict_kernel.py``.

:class:`EvictionReplay` replays a trace through the one-tier demand-only cache that ``lru`` and ``belady`` replay
(the same slots and schedule as ``sim/evaluate.py`` gives them), stopping at each eviction with a choice
(``policy="agent"``) or deciding itself (``"lru"``, ``"belady"``, or ``"learned"`` with an
:class:`EvictionModel`). Its metrics are those of ``metrics.metrics_from_counters``, so they compare directly
with ``evaluate``'s.

:class:`EvictionModel` is a learned eviction rule: a small MLP scoring each candidate from its features
(``evict_kernel.F_*``), the candidate with the highest score leaving; it is saved as a ``.npz`` file that
``moe-cache-env evaluate --policy learned:PATH`` replays, with its measured decision time (``decision_ms``)
added to every layer's host time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from moe_cache_env.sim import evict_kernel as EK
from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.config import ConfigError, Controls, SimConfig
from moe_cache_env.sim.metrics import metrics_from_counters
from moe_cache_env.sim.timing import seed_table_array
from moe_cache_env.traces.format import Trace

POLICY_CODES = {"agent": EK.POL_AGENT, "lru": EK.POL_LRU, "belady": EK.POL_BELADY, "learned": EK.POL_LEARNED}
#: the format tag of a saved eviction model
MODEL_FORMAT = "moe-cache-env/eviction-mlp/1"


@dataclass(frozen=True)
class EvictionModel:
    """A learned eviction rule: score = MLP((features - mu) / sd); the highest-scoring candidate leaves.

    Attributes:
        mu, sd: (F,) feature standardisation (F = ``evict_kernel.NUM_MODEL_FEATURES``).
        w1, b1, w2, b2, w3, b3: the layers: (F, H1), (H1,), (H1, H2), (H2,), (H2,), (1,).
        decision_ms: measured CPU time of one decision (features and scores of a full pool), in ms.
        meta: provenance (training traces, split, seed, budget), JSON-able.
    """

    mu: np.ndarray
    sd: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    w3: np.ndarray
    b3: np.ndarray
    decision_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        F = EK.NUM_MODEL_FEATURES
        shapes = {"mu": (F,), "sd": (F,), "w1": (F, None), "b1": (None,), "w2": (None, None), "b2": (None,),
                  "w3": (None,), "b3": (1,)}
        for name, want in shapes.items():
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float64)
            object.__setattr__(self, name, arr)
            if arr.ndim != len(want) or any(w is not None and w != a for w, a in zip(want, arr.shape)):
                raise ConfigError(f"eviction model: {name} has shape {arr.shape}, expected {want} "
                                  f"(None: any); the file is not a model this version reads")
            if not np.isfinite(arr).all():
                raise ConfigError(f"eviction model: {name} holds NaN or infinite values; retrain the model")
        H1, H2 = self.w1.shape[1], self.w2.shape[1]
        if self.b1.shape[0] != H1 or self.w2.shape[0] != H1 or self.b2.shape[0] != H2 or self.w3.shape[0] != H2:
            raise ConfigError("eviction model: layer shapes do not chain (w1 -> w2 -> w3); the file is damaged")
        if (self.sd <= 0).any():
            raise ConfigError("eviction model: every sd must be > 0; the file is damaged")
        if not np.isfinite(self.decision_ms) or self.decision_ms < 0:
            raise ConfigError(f"eviction model: decision_ms={self.decision_ms} must be a finite value >= 0")

    def save(self, path: str | Path) -> Path:
        """Write the model atomically as ``.npz`` (the arrays, ``decision_ms`` and the JSON ``meta``)."""
        from moe_cache_env._io import atomic_write

        arrays = {name: getattr(self, name) for name in ("mu", "sd", "w1", "b1", "w2", "b2", "w3", "b3")}
        header = json.dumps({"format": MODEL_FORMAT, "decision_ms": self.decision_ms, "meta": self.meta})
        return atomic_write(path, lambda f: np.savez(f, header=np.array(header), **arrays))

    @staticmethod
    def load(path: str | Path) -> "EvictionModel":
        """Read a model written by :meth:`save`; a missing, damaged or foreign file raises ``ConfigError``."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"eviction model {str(p)!r} does not exist; train one with "
                              "experiments/eviction/run.py or agents.eviction.train_bc")
        try:
            with np.load(p, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {name: np.array(data[name]) for name in ("mu", "sd", "w1", "b1", "w2", "b2", "w3", "b3")}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ConfigError(f"eviction model {str(p)!r} is not a readable model file ({exc})") from None
        if header.get("format") != MODEL_FORMAT:
            raise ConfigError(f"eviction model {str(p)!r} has format {header.get('format')!r}, "
                              f"expected {MODEL_FORMAT!r}")
        return EvictionModel(**arrays, decision_ms=float(header.get("decision_ms", 0.0)),
                             meta=dict(header.get("meta", {})))


_NO_MODEL = EvictionModel(mu=np.zeros(EK.NUM_MODEL_FEATURES), sd=np.ones(EK.NUM_MODEL_FEATURES),
                          w1=np.zeros((EK.NUM_MODEL_FEATURES, 1)), b1=np.zeros(1), w2=np.zeros((1, 1)),
                          b2=np.zeros(1), w3=np.zeros(1), b3=np.zeros(1))


def demand_cache_config(trace: Trace, config: SimConfig) -> SimConfig:
    """The configuration ``lru`` and ``belady`` replay ``trace`` with (``evaluate.policy_setup``)."""
    from moe_cache_env.sim.evaluate import policy_setup

    used, _ = policy_setup(trace, "lru", config, Controls())
    return used


class EvictionReplay:
    """One replay of ``trace`` through the demand-only cache, decided by ``policy``.

    Args:
        trace: the routing to replay.
        config: the simulator settings (cache slots, workload, timing, profile); the cache is flattened to one
            tier as ``lru``/``belady`` have it.
        seed: the workload schedule is drawn from ``numpy.random.default_rng(seed)``, as ``evaluate`` does.
        policy: ``agent`` (stop at each decision: :meth:`run` returns True), ``lru``, ``belady``, ``learned``.
        model: the rule of ``policy="learned"``.
        record_rows: keep up to this many candidate rows of the decisions met (features, steps to the next
            use, decision index) for imitation learning (:meth:`recorded`).
        record_every: record every this many decisions (spreads ``record_rows`` over a long replay).
    """

    def __init__(self, trace: Trace, config: SimConfig | None = None, *, seed: int = 0, policy: str = "agent",
                 model: EvictionModel | None = None, record_rows: int = 0, record_every: int = 1) -> None:
        from moe_cache_env.sim.simulator import Simulator

        if policy not in POLICY_CODES:
            raise ConfigError(f"eviction policy {policy!r} is not one of {list(POLICY_CODES)}")
        if policy == "learned" and model is None:
            raise ConfigError("policy 'learned' needs an EvictionModel")
        config = demand_cache_config(trace, config or SimConfig())
        # the Simulator validates the settings and draws the schedule exactly as evaluate's lru replay does
        sim = Simulator(trace, config, rng=np.random.default_rng(seed))
        self.trace, self.config, self.schedule, self.cache = trace, sim.config, sim.schedule, sim.cache
        self.policy = policy
        self.model = model or _NO_MODEL
        self.expert_bytes = sim.expert_bytes
        L, E, Kk = trace.num_layers, trace.num_experts, trace.top_k
        profile = sim.profile
        width = self.schedule.step_tokens.shape[1]
        self._ctab = profile.compute_table(self.expert_bytes, width)
        # the simulator's own int16 copy of the routing (a quarter of int64's memory per environment)
        self._experts = sim.routing
        self._iconf = np.array([L, E, Kk, 1 if self.cache.scope == "global" else 0,
                                1 if config.timing == "seed" else 0,
                                1 if config.execution_order == "per-expert" else 0], dtype=np.int64)
        caps = self.schedule.tier_caps[:, 0]
        self._fconf = np.array([profile.transfer_ms(self.expert_bytes), profile.layer_overhead_ms,
                                profile.host_decision_ms + config.decision_ms, config.stats_decay,
                                float(max(int(caps.max()), 1)),
                                profile.expert_launch_ms if config.launch_cost else 0.0,
                                profile.copy_issue_ms], dtype=np.float64)
        self._seed_tab = seed_table_array(profile)
        self._nu_start, self._nu_events = K.build_next_use(self.schedule.step_tokens, self.schedule.step_ntokens,
                                                           self._experts, E)
        self.pools = 1 if self.cache.scope == "global" else L
        pool_keys = L * E if self.cache.scope == "global" else E
        # a pool holds its slots plus, while a layer runs, that layer's misses (at most its distinct experts)
        self.max_slots = int(min(pool_keys, int(caps.max()) + min(E, width * Kk)))
        self._record_rows = int(record_rows)
        if record_every < 1:
            raise ConfigError(f"record_every must be >= 1, got {record_every}")
        self._record_every = int(record_every)
        self.reset()

    def reset(self) -> None:
        """Empty the cache and rewind to the first step."""
        L, E = self.trace.num_layers, self.trace.num_experts
        n_keys = L * E
        self.cur = np.zeros(EK.NUM_CUR, dtype=np.int64)
        self.ki = np.zeros((n_keys, EK.NUM_KI), dtype=np.int64)
        self.ki[:, EK.KI_PIN] = EK._NO_PIN
        self.ki[:, EK.KI_CURSOR] = self._nu_start[:-1]
        self.kf = np.zeros((n_keys, EK.NUM_KF), dtype=np.float64)
        self.mem = np.full((self.pools, self.max_slots + 1), -1, dtype=np.int64)
        self.cnt = np.zeros(self.pools, dtype=np.int64)
        self.link = np.zeros(2, dtype=np.float64)
        self.layer_fsum = np.zeros(L, dtype=np.float64)
        self.layer_ftime = np.zeros(L, dtype=np.float64)
        self.pair = np.zeros((max(L - 1, 1), E, E), dtype=np.int32)
        self.src = np.zeros((max(L - 1, 1), E), dtype=np.int32)
        self.needed_keys = np.zeros(E, dtype=np.int64)
        self.counters = np.zeros(K.NUM_COUNTERS, dtype=np.float64)
        self.step_latency_ms = np.zeros(self.schedule.num_steps, dtype=np.float64)
        self.acc = np.zeros(4, dtype=np.float64)
        self.feats = np.zeros((self.mem.shape[1], EK.NUM_FEATURES), dtype=np.float64)
        self.scores = np.zeros(self.mem.shape[1], dtype=np.float64)
        self.rec_x = np.zeros((self._record_rows, EK.NUM_MODEL_FEATURES), dtype=np.float32)
        self.rec_label = np.zeros(self._record_rows, dtype=np.float64)
        self.rec_group = np.zeros(self._record_rows, dtype=np.int64)
        self.rec_rows = np.array([0, self._record_every], dtype=np.int64)
        self.pending = False

    def run(self, action: int = -1) -> bool:
        """Apply ``action`` (a slot of the pending pool) if a decision is pending, then replay until the next
        decision (True) or the end (False)."""
        m = self.model
        sched = self.schedule
        status = EK.advance(
            self.cur, int(action), POLICY_CODES[self.policy], sched.step_tokens, sched.step_ntokens,
            sched.tier_caps, sched.link_share, self._experts, self._ctab, self._iconf, self._fconf, self._seed_tab,
            self.ki, self.kf, self.mem, self.cnt, self.link, self.layer_fsum, self.layer_ftime, self.pair, self.src,
            self._nu_start, self._nu_events, self.needed_keys, self.counters, self.step_latency_ms, self.acc,
            self.feats, m.mu, m.sd, m.w1, m.b1, m.w2, m.b2, m.w3, m.b3, self.rec_x, self.rec_label, self.rec_group,
            self.rec_rows, self.scores,
        )
        self.pending = status == 1
        return self.pending

    def run_all(self) -> dict[str, Any]:
        """Replay to the end (``policy`` other than ``agent``) and return the metrics."""
        if self.policy == "agent":
            raise ConfigError("run_all needs a deciding policy (lru, belady, learned), not 'agent'")
        self.run()
        return self.metrics()

    # ---- the pending decision ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return int(self.cur[EK.CUR_PHASE]) == EK.PH_DONE

    @property
    def pool(self) -> int:
        return int(self.cur[EK.CUR_POOL])

    def action_mask(self) -> np.ndarray:
        """(max_slots,) bool: the slots of the pending pool that may be evicted (resident, not in use)."""
        return self.feats[: self.max_slots, EK.F_SLOT_STATE] == 1.0

    def slot_keys(self) -> np.ndarray:
        """(max_slots,) the key (layer * E + expert) in each slot of the pending pool, -1 where empty."""
        return self.mem[self.pool, : self.max_slots].copy()

    def _rule_choice(self, rule: int) -> int:
        return int(EK._pick_rule(self.pool, int(self.cur[EK.CUR_EVENT]), rule, self.mem, self.cnt, self.ki,
                                 self.kf, self._nu_start, self._nu_events))

    def belady_action(self) -> int:
        """The slot Belady evicts now: the candidate needed farthest in the future (ties: the lower key)."""
        return self._rule_choice(EK.POL_BELADY)

    def lru_action(self) -> int:
        """The slot LRU evicts now: the least recently used candidate (ties: the lower key)."""
        return self._rule_choice(EK.POL_LRU)

    def next_use_steps(self) -> np.ndarray:
        """(max_slots,) steps until each slot's key is needed again (inf: never; nan: empty slot). Reads the
        future: for analysis and labels, never for a policy."""
        out = np.full(self.max_slots, np.nan)
        L = self.trace.num_layers
        now = (int(self.cur[EK.CUR_STEP]) * L + int(self.cur[EK.CUR_LAYER])) / L
        for i, key in enumerate(self.slot_keys().tolist()):
            if key < 0:
                continue
            nu = int(EK._next_use(key, self._nu_start, self._nu_events, self.ki))
            out[i] = np.inf if nu >= K.NEVER else nu / L - now
        return out

    # ---- results -------------------------------------------------------------------------------------------------
    @property
    def decisions(self) -> int:
        return int(self.cur[EK.CUR_DECISIONS])

    def metrics(self) -> dict[str, Any]:
        """The metrics of the steps replayed so far (``metrics_from_counters``), plus ``decisions``."""
        s1 = int(min(self.cur[EK.CUR_STEP], self.schedule.num_steps))
        out = metrics_from_counters(self.counters, self.step_latency_ms[:s1], self.schedule.step_ntokens[:s1],
                                    self.expert_bytes)
        out["decisions"] = self.decisions
        return out

    def recorded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The recorded candidate rows: features (n, F) float32, steps until each candidate's next use (n,)
        (``evict_kernel.NEVER_STEPS``: never), decision index (n,)."""
        n = int(self.rec_rows[0])
        return self.rec_x[:n].copy(), self.rec_label[:n].copy(), self.rec_group[:n].copy()


def measure_decision_ms(model: EvictionModel, slots: int, repeats: int = 2000) -> float:
    """CPU time (ms) of one decision of ``model`` over a pool of ``slots`` candidates: the features of every slot
    and the MLP's scores, timed over ``repeats`` decisions on synthetic pool states (median of 5 rounds).

    The clock is the process's CPU time (``time.process_time``), not wall time: on a shared machine, time spent
    waiting for a core is not the decision's cost."""
    slots = max(int(slots), 2)
    E = slots + 1
    mem = np.arange(slots, dtype=np.int64)[None, :]
    cnt = np.array([slots], dtype=np.int64)
    ki = np.zeros((E, EK.NUM_KI), dtype=np.int64)
    ki[:, EK.KI_PIN] = EK._NO_PIN
    ki[:, EK.KI_RES] = 1
    ki[:, EK.KI_USES] = np.arange(E) % 7
    kf = np.zeros((E, EK.NUM_KF), dtype=np.float64)
    kf[:, EK.KF_LAST] = np.linspace(0.0, 50.0, E)
    kf[:, EK.KF_FREQ] = np.linspace(1.0, 9.0, E)[::-1]
    kf[:, EK.KF_GAP] = 3.0
    feats = np.zeros((slots, EK.NUM_FEATURES), dtype=np.float64)
    scores = np.zeros(slots, dtype=np.float64)
    fsum = np.full(1, 100.0)
    ftime = np.zeros(1)
    order = np.zeros(slots, dtype=np.int64)
    m = model
    _time_decisions(1, mem, cnt, ki, kf, fsum, ftime, feats, order, scores, m.mu, m.sd, m.w1, m.b1, m.w2, m.b2,
                    m.w3, m.b3, E)  # compile outside the timing
    rounds = []
    for _ in range(5):
        t0 = time.process_time()
        _time_decisions(repeats, mem, cnt, ki, kf, fsum, ftime, feats, order, scores, m.mu, m.sd, m.w1, m.b1,
                        m.w2, m.b2, m.w3, m.b3, E)
        rounds.append((time.process_time() - t0) * 1000.0 / repeats)
    return float(np.median(rounds))



@njit(cache=True)
def _time_decisions(repeats, mem, cnt, ki, kf, fsum, ftime, feats, order, scores, mu, sd, w1, b1, w2, b2, w3, b3,
                    E):
    total = 0.0
    n = cnt[0]
    for r in range(repeats):
        clock = 60.0 + r * 1e-6
        EK.fill_features(0, -1, clock, 1, mem, cnt, ki, kf, fsum, ftime, 0.995, 1, E, 1, 1, 1.0, feats, order)
        EK.mlp_scores(feats, n, mu, sd, w1, b1, w2, b2, w3, b3, scores)
        best = 0
        for i in range(n):
            if scores[i] > scores[best]:
                best = i
        total += best
    return total


def evaluate_learned(trace: Trace, config: SimConfig, model: EvictionModel, seed: int = 0,
                     decision_ms: float | None = None) -> dict[str, Any]:
    """The metrics of ``model`` replaying ``trace`` under ``config`` (the ``lru``/``belady`` cache and schedule
    of ``seed``), its decision time added to every layer's host time (``SimConfig.decision_ms``):
    ``decision_ms`` if given (e.g. measured for this pool size), else the model's own measurement."""
    cost = model.decision_ms if decision_ms is None else float(decision_ms)
    config = replace(config, decision_ms=config.decision_ms + cost)
    replay = EvictionReplay(trace, config, seed=seed, policy="learned", model=model)
    metrics = replay.run_all()
    metrics["decision_ms"] = cost
    return metrics
