"""Hand-written agents: the seed's static thresholds and its four adaptive strategies, plus random actions.

Every agent acts only through the environment's API: it reads the observation (through
``moe_cache_env.envs.observation.decode_observation``) and returns an action (through the environment's
``threshold_action``, which encodes wanted thresholds for any action type). The strategies follow
``shared/design/seed-system.md`` ("The four adaptation strategies") exactly where it is precise:

- coverage target 0.39 of *perfect* coverage; base step 0.05;
- performance score = 0.4 * min(coverage / 0.5, 1) + 0.3 * max(0, 1 - (latency_ms - 5) / 10)
  + 0.2 * accuracy / 0.5 + 0.1 * (1 - memory_pressure), where coverage is the window's perfect coverage,
  latency_ms the mean latency of one MoE layer of a step (the seed timed one layer's expert lookup),
  accuracy the predictor's top-1 accuracy and memory_pressure the window's mean memory pressure;
- conservative, aggressive, balanced and dynamic as the design describes (see each class).

Where the design leaves a detail open, the choice made here:

- the adaptation interval is one environment step (a window of tokens), not 10 s of wall clock;
- the memory-pressure adjustment (above 0.8 raises the thresholds, up to +0.15; below 0.3 lowers them, down to
  -0.1) is linear in the pressure and applied to the thresholds sent to the cache, not to the strategy's own
  base thresholds; the seed's per-expert adjustments (popular, recent, well- or badly-predicted experts) have
  no counterpart in a two-threshold action and are left out (the simulator's eviction score already weighs
  recency and confidence);
- thresholds are clipped to the environment's ranges (L2 0.5-0.9, L3 0.1-0.6) after every change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from moe_cache_env.envs.observation import decode_observation

COVERAGE_TARGET = 0.39
BASE_STEP = 0.05
SCORE_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
#: the seed's default thresholds (seed-system.md: L2 default 0.7, L3 default 0.3)
SEED_THRESHOLDS = (0.7, 0.3)


def performance_score(coverage: float, latency_ms: float, accuracy: float, memory_pressure: float) -> float:
    """The seed's weighted performance score (see the module docstring)."""
    w_cov, w_lat, w_acc, w_mem = SCORE_WEIGHTS
    return (
        w_cov * min(coverage / 0.5, 1.0)
        + w_lat * max(0.0, 1.0 - (latency_ms - 5.0) / 10.0)
        + w_acc * accuracy / 0.5
        + w_mem * (1.0 - memory_pressure)
    )


def pressure_adjustment(memory_pressure: float) -> float:
    """Threshold offset for memory pressure: up to +0.15 above 0.8, down to -0.1 below 0.3, else 0."""
    if memory_pressure > 0.8:
        return 0.15 * min(1.0, (memory_pressure - 0.8) / 0.2)
    if memory_pressure < 0.3:
        return -0.1 * min(1.0, (0.3 - memory_pressure) / 0.3)
    return 0.0


class Agent(ABC):
    """An agent: ``reset(env)`` at the start of an episode, then ``act(obs)`` once per step."""

    name = "agent"

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.env = env.unwrapped

    @abstractmethod
    def act(self, obs: np.ndarray) -> Any:
        """The action for observation ``obs``."""


class StaticAgent(Agent):
    """Fixed thresholds (the seed's 0.7 / 0.3 unless given: ``static-tuned`` passes the grid-search winner)."""

    def __init__(self, l2: float = SEED_THRESHOLDS[0], l3: float = SEED_THRESHOLDS[1], name: str = "static") -> None:
        self.l2, self.l3 = float(l2), float(l3)
        self.name = name

    def act(self, obs: np.ndarray) -> Any:
        return self.env.threshold_action(self.l2, self.l3)


class RandomAgent(Agent):
    """Uniformly random actions from the action space, from its own seeded generator."""

    name = "random"

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        self.space = env.action_space
        self.space.seed(seed)

    def act(self, obs: np.ndarray) -> Any:
        return self.space.sample()


class SeedStrategy(Agent):
    """Base of the four adaptive strategies: base thresholds moved by ``update`` once per window."""

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        self.l2, self.l3 = SEED_THRESHOLDS
        self.last_score = float("nan")

    def _clip(self) -> None:
        config = self.env.config
        self.l2 = float(np.clip(self.l2, *config.l2_range))
        self.l3 = float(np.clip(self.l3, *config.l3_range))

    @abstractmethod
    def update(self, coverage: float, score: float, memory_pressure: float) -> None:
        """Move the base thresholds ``self.l2`` / ``self.l3`` by the strategy's rule."""

    def act(self, obs: np.ndarray) -> Any:
        o = decode_observation(obs)
        coverage = o["perfect_coverage"]
        pressure = o["memory_pressure"]
        score = performance_score(coverage, o["layer_latency"], o["predictor_top1_accuracy"], pressure)
        self.last_score = score
        self.update(coverage, score, pressure)
        self._clip()
        offset = pressure_adjustment(pressure)
        return self.env.threshold_action(self.l2 + offset, self.l3 + offset)


class ConservativeStrategy(SeedStrategy):
    """Half step; lowers both thresholds (L3 by half as much) only when coverage is more than 5 points under
    target and the score is below 0.7; raises them only when more than 5 points over and the score is above 0.8."""

    name = "conservative"

    def update(self, coverage: float, score: float, memory_pressure: float) -> None:
        step = 0.5 * BASE_STEP
        if coverage < COVERAGE_TARGET - 0.05 and score < 0.7:
            self.l2 -= step
            self.l3 -= 0.5 * step
        elif coverage > COVERAGE_TARGET + 0.05 and score > 0.8:
            self.l2 += step
            self.l3 += 0.5 * step


class AggressiveStrategy(SeedStrategy):
    """Double step; moves both thresholds toward the coverage target every window (down when under it)."""

    name = "aggressive"

    def update(self, coverage: float, score: float, memory_pressure: float) -> None:
        step = 2.0 * BASE_STEP
        if coverage < COVERAGE_TARGET:
            self.l2 -= step
            self.l3 -= step
        elif coverage > COVERAGE_TARGET:
            self.l2 += step
            self.l3 += step


class BalancedStrategy(SeedStrategy):
    """Acts when coverage is more than 2 points off target or the score is below 0.6: under target it lowers
    L2 by step x (1 - score) and L3 by 0.7 x step; over target it raises L2 by step x score and L3 by 0.7 x step."""

    name = "balanced"

    def update(self, coverage: float, score: float, memory_pressure: float) -> None:
        if abs(coverage - COVERAGE_TARGET) <= 0.02 and score >= 0.6:
            return
        if coverage < COVERAGE_TARGET:
            self.l2 -= BASE_STEP * (1.0 - score)
            self.l3 -= 0.7 * BASE_STEP
        else:
            self.l2 += BASE_STEP * score
            self.l3 += 0.7 * BASE_STEP


class DynamicStrategy(SeedStrategy):
    """Conservative while memory pressure is above 0.9, aggressive while the score is below 0.4, balanced
    otherwise (the three share this agent's thresholds)."""

    name = "dynamic"

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        self.mode = "balanced"

    def update(self, coverage: float, score: float, memory_pressure: float) -> None:
        if memory_pressure > 0.9:
            self.mode = "conservative"
        elif score < 0.4:
            self.mode = "aggressive"
        else:
            self.mode = "balanced"
        STRATEGIES[self.mode].update(self, coverage, score, memory_pressure)  # type: ignore[arg-type]


STRATEGIES: dict[str, type[SeedStrategy]] = {
    "conservative": ConservativeStrategy,
    "aggressive": AggressiveStrategy,
    "balanced": BalancedStrategy,
}

#: the hand-written agents by name
BASELINES: dict[str, Callable[[], Agent]] = {
    "static": StaticAgent,
    "conservative": ConservativeStrategy,
    "aggressive": AggressiveStrategy,
    "balanced": BalancedStrategy,
    "dynamic": DynamicStrategy,
    "random": RandomAgent,
}
#: the five hand-written strategies an RL agent must beat
HAND_WRITTEN = ("static", "conservative", "aggressive", "balanced", "dynamic")
