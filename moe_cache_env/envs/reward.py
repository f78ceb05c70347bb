"""The reward and the latency reference that normalises it.

``reward = coverage_weight * perfect_coverage - latency_weight * latency_ratio``

- ``perfect_coverage``: the window's share of (step, layer) lookups that found all their experts on the GPU
  (the seed's objective).
- ``latency_ratio``: the window's mean per-token latency over its *demand-all reference latency*: the latency
  the same steps would have if no expert were on the GPU and every needed expert were copied on demand, at the
  link bandwidth the window actually had. It removes what the cache cannot control (batch size, background
  traffic) from the latency term, so a reward is comparable across regimes and of order 1: 0 means free,
  1 means no better than loading everything on demand; above 1 is possible when prefetches delay demand loads.

Both terms are reported in ``info["reward_terms"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moe_cache_env.profiles import HardwareProfile
from moe_cache_env.sim.metrics import ArrayOps, ScalarOps, weighted_mean
from moe_cache_env.sim.timing import demand_all_step_latency, seed_table_array
from moe_cache_env.traces.format import Trace


class DemandAllReference:
    """Computes the demand-all reference latency of any window of one replay.

    The latency the steps would have if no expert were on the GPU: every distinct expert of a layer is copied
    on demand, then computed. It is the simulator's own timing model (``moe_cache_env.sim.timing``), under
    either timing mode, at the link share each step actually had.
    """

    def __init__(self, trace: Trace, profile: HardwareProfile, expert_bytes: int, timing: str, width: int,
                 experts: np.ndarray | None = None) -> None:
        """``experts``: ``trace.experts`` already as a contiguous int16 array (a simulator's
        :attr:`~moe_cache_env.sim.simulator.Simulator.routing`), shared instead of converted again."""
        self.trace = trace
        self.seed_timing = timing == "seed"
        self.num_experts = trace.num_experts
        self.transfer_ms = profile.transfer_ms(expert_bytes)
        self.layer_overhead_ms = profile.layer_overhead_ms
        self.compute_table_ms = profile.compute_table(expert_bytes, max(1, width))
        self.seed_table = seed_table_array(profile)
        # the simulator's routing dtype (one compiled specialisation); int32 only for ids int16 cannot hold
        dtype = np.int16 if trace.num_experts <= np.iinfo(np.int16).max else np.int32
        self._experts = np.ascontiguousarray(trace.experts if experts is None else experts, dtype=dtype)

    def step_latency_ms(self, step_tokens: np.ndarray, link_share: np.ndarray) -> np.ndarray:
        """(S,) demand-all latency of each step; ``step_tokens`` is (S, W), -1 padded."""
        steps = self.steps(step_tokens, link_share)
        return steps.window(0, steps.num_steps)

    def steps(self, step_tokens: np.ndarray, link_share: np.ndarray) -> "StepReference":
        """Each step's demand-all latency for one schedule, computed as a replay reaches the steps."""
        return StepReference(self, step_tokens, link_share)

    def mean_latency_ms(self, step_tokens: np.ndarray, step_ntokens: np.ndarray, link_share: np.ndarray) -> float:
        """Token-weighted mean of the steps' demand-all latency (as ``mean_latency_ms`` weights steps)."""
        lat = self.step_latency_ms(step_tokens, link_share)
        return weighted_mean(lat, step_ntokens.astype(np.float64))


class StepReference:
    """The demand-all latency of each step of one schedule (:class:`DemandAllReference`), computed in chunks of
    :attr:`CHUNK_STEPS` as windows ask for them: each step's value depends on that step alone, so the numbers are
    those of one call over the whole schedule, and an environment's reset does not pay for its whole episode
    up front (a few ms per reset, most of a 64-environment vector's first reset)."""

    CHUNK_STEPS = 256

    def __init__(self, reference: DemandAllReference, step_tokens: np.ndarray, link_share: np.ndarray) -> None:
        self._reference = reference
        self._tokens = np.ascontiguousarray(step_tokens, dtype=np.int64)
        # steps are -1 padded at the end of each row, so a row's first ntokens entries are its tokens
        self._ntokens = (self._tokens >= 0).sum(axis=1).astype(np.int64)
        self._share = np.ascontiguousarray(link_share, dtype=np.float64)
        self.num_steps = int(self._tokens.shape[0])
        self._ms = np.zeros(self.num_steps, dtype=np.float64)
        self._ready = 0  # steps [0, _ready) are computed

    def window(self, s0: int, s1: int) -> np.ndarray:
        """(s1 - s0,) the latency of steps [s0, s1) (a view: do not modify)."""
        if s1 > self._ready:
            end = min(self.num_steps, max(s1, self._ready + self.CHUNK_STEPS))
            r = self._reference
            demand_all_step_latency(self._tokens, self._ntokens, r._experts, r.num_experts, r.compute_table_ms,
                                    r.transfer_ms, self._share, r.layer_overhead_ms, r.seed_timing, r.seed_table,
                                    self._ready, end, self._ms[self._ready:end])
            self._ready = end
        return self._ms[s0:s1]


def reward_terms(metrics: dict, reference_latency_ms: float, coverage_weight: float, latency_weight: float) -> dict[str, float]:
    """The reward and its terms for one window's ``metrics``."""
    terms = _term_table(metrics["perfect_coverage"], metrics["mean_latency_ms"], reference_latency_ms,
                        coverage_weight, latency_weight, ScalarOps.ratio)
    return {name: float(value) for name, value in terms.items()}


def reward_terms_of_windows(perfect_coverage: np.ndarray, mean_latency_ms: np.ndarray,
                            reference_latency_ms: np.ndarray, coverage_weight: np.ndarray,
                            latency_weight: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
    """:func:`reward_terms` of n windows from (n,) columns: their latency ratios, and their terms as dicts (the
    same formulas on columns, so the same numbers)."""
    columns = _term_table(perfect_coverage, mean_latency_ms, reference_latency_ms, coverage_weight, latency_weight,
                          ArrayOps.ratio)
    keys = tuple(columns)
    rows = zip(*(np.asarray(column, dtype=np.float64).tolist() for column in columns.values()))
    return columns["latency_ratio"], [dict(zip(keys, row)) for row in rows]


def _term_table(perfect_coverage: Any, mean_latency_ms: Any, reference_latency_ms: Any, coverage_weight: Any,
                latency_weight: Any, ratio: Any) -> dict[str, Any]:
    """The reward's terms, written once for one window (Python floats) and for columns of many (arrays)."""
    latency_ratio = ratio(mean_latency_ms, reference_latency_ms)
    coverage_term = coverage_weight * perfect_coverage
    latency_term = -latency_weight * latency_ratio
    return {
        "reward": coverage_term + latency_term,
        "coverage_term": coverage_term,
        "latency_term": latency_term,
        "perfect_coverage": perfect_coverage,
        "latency_ratio": latency_ratio,
        "reference_latency_ms": reference_latency_ms,
    }
