"""Action types: how an agent's action becomes the simulator's :class:`~moe_cache_env.sim.config.Controls`.

Each type owns its Gymnasium space, decodes an action into controls (given the current ones, for relative
moves) and encodes desired thresholds back into an action, so hand-written agents can act on any type.

- ``continuous``: ``Box(-1, 1, (2,))``; each component maps linearly onto its threshold's range
  (L2 ``l2_range``, L3 ``l3_range``).
- ``discrete``: ``Discrete(9)``; action ``3 * i + j`` moves L2 by ``(i - 1)`` and L3 by ``(j - 1)`` times
  ``discrete_step`` (down / keep / up), clipped to the ranges.
- ``extended``: ``Box(-1, 1, (8,))``: the two thresholds as ``continuous``, then lookahead (< 0: 1 layer,
  >= 0: 2 layers), prefetch budget (one of ``budget_levels``, the last = unlimited), the L2 share of a finite
  budget [0, 1], and the eviction weights of recency, frequency and confidence, each in [0, 2].

Actions are checked before they are decoded: a box action must have exactly the space's shape and finite
components (values outside [-1, 1] are clipped, as SB3's policies expect); a discrete action must be an integer
(a Python or NumPy integer, or a one-element integer array) in 0..8. Anything else raises ``ValueError``
naming the action space.

Every type keeps L3 at or below L2: when the L3 range reaches above the L2 threshold (the seed's ranges overlap
in 0.5-0.6), the L3 threshold is clipped down to the L2 threshold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any

import numpy as np
from gymnasium import spaces

from moe_cache_env.sim.config import Controls

EVICTION_WEIGHT_MAX = 2.0


# Scalars are clipped with min/max on Python floats, not np.clip: the same IEEE values (NaN is refused before
# decoding) at a tenth of the cost, which matters once per environment and window.
def _clip(x: float, lo: float, hi: float) -> float:
    return float(min(max(x, lo), hi))


def _to_unit(value: float, lo: float, hi: float) -> float:
    """[lo, hi] -> [-1, 1]."""
    return _clip(2.0 * (float(value) - lo) / (hi - lo) - 1.0, -1.0, 1.0)


def _from_unit(u: float, lo: float, hi: float) -> float:
    """[-1, 1] -> [lo, hi] (clipped)."""
    return float(lo + (_clip(float(u), -1.0, 1.0) + 1.0) * 0.5 * (hi - lo))


def _describe(action: Any) -> str:
    text = repr(action)
    return text if len(text) <= 80 else text[:77] + "..."


def _where(name: str, space: spaces.Space) -> str:
    # built only for an error message: a space's repr costs more than decoding a valid action
    return f"for the {name} action space {space}"


def check_box_action(action: Any, space: spaces.Box, name: str) -> np.ndarray:
    """``action`` as a float64 array of ``space``'s shape with finite components, or ``ValueError``."""
    if action is None:
        raise ValueError(f"action None is not valid {_where(name, space)}: give an array of shape {space.shape}")
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"action {_describe(action)} is not valid {_where(name, space)}: it is not an array of "
                         "numbers") from None
    if a.shape != space.shape:
        raise ValueError(f"action of shape {a.shape} is not valid {_where(name, space)}: the shape must be "
                         f"{space.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"action {_describe(action)} is not valid {_where(name, space)}: component(s) "
                         f"{bad.tolist()} are not "
                         f"finite (NaN or infinity); every component must be a number in [-1, 1]")
    return a


def check_discrete_action(action: Any, space: spaces.Discrete, name: str) -> int:
    """``action`` as a Python int in the space, or ``ValueError`` (floats, strings and booleans are refused)."""
    value = action
    if isinstance(value, np.ndarray) and value.size == 1 and value.ndim <= 1:
        value = value.reshape(-1)[0]  # SB3's predict on one observation gives a 0-d or 1-element array
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"action {_describe(action)} is not valid {_where(name, space)}: it must be an integer in "
                         f"0..{space.n - 1}, got {type(action).__name__}")
    index = int(value)
    if not 0 <= index < space.n:
        raise ValueError(f"action {index} is not valid {_where(name, space)}: it must be in 0..{space.n - 1}")
    return index


class ActionType(ABC):
    """Base class: a space, ``decode`` (action -> controls) and ``encode`` (thresholds -> action)."""

    name = "base"
    #: the largest lookahead (layers) an action of this type can set; the environment's simulator learns its
    #: co-occurrence counts for these distances only (``SimConfig.max_lookahead``)
    max_lookahead = 1

    def __init__(self, l2_range: tuple[float, float], l3_range: tuple[float, float], discrete_step: float,
                 max_prefetch_budget: int) -> None:
        self.l2_range = l2_range
        self.l3_range = l3_range
        self.discrete_step = discrete_step
        self.budget_levels = self._budget_levels(max_prefetch_budget)

    @staticmethod
    def _budget_levels(max_budget: int) -> list[int]:
        """Powers of two up to ``max_budget``, then 0 (unlimited)."""
        levels = [1]
        while levels[-1] * 2 <= max_budget:
            levels.append(levels[-1] * 2)
        if levels[-1] != max_budget:
            levels.append(max_budget)
        return levels + [0]

    def clip_thresholds(self, l2: float, l3: float) -> tuple[float, float]:
        l2 = _clip(float(l2), *self.l2_range)
        l3 = _clip(float(l3), *self.l3_range)
        return l2, min(l3, l2)

    @property
    @abstractmethod
    def space(self) -> spaces.Space:
        """The Gymnasium action space."""

    @abstractmethod
    def decode(self, action: Any, current: Controls) -> Controls:
        """The controls an action sets, starting from ``current``."""

    @abstractmethod
    def encode(self, l2: float, l3: float, current: Controls) -> Any:
        """The action that sets the thresholds as close to (l2, l3) as this type can from ``current``."""


class ContinuousThresholds(ActionType):
    name = "continuous"

    @cached_property
    def space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def decode(self, action: Any, current: Controls) -> Controls:
        a = check_box_action(action, self.space, self.name)
        l2, l3 = self.clip_thresholds(_from_unit(a[0], *self.l2_range), _from_unit(a[1], *self.l3_range))
        return current.with_thresholds(l2, l3)

    def encode(self, l2: float, l3: float, current: Controls) -> np.ndarray:
        return np.array([_to_unit(l2, *self.l2_range), _to_unit(l3, *self.l3_range)], dtype=np.float32)


class DiscreteThresholds(ActionType):
    name = "discrete"

    @cached_property
    def space(self) -> spaces.Discrete:
        return spaces.Discrete(9)

    def decode(self, action: Any, current: Controls) -> Controls:
        index = check_discrete_action(action, self.space, self.name)
        d2, d3 = index // 3 - 1, index % 3 - 1
        l2, l3 = self.clip_thresholds(
            current.l2_threshold + d2 * self.discrete_step, current.l3_threshold + d3 * self.discrete_step
        )
        return current.with_thresholds(l2, l3)

    def encode(self, l2: float, l3: float, current: Controls) -> int:
        # the move of each threshold that lands closest to its target (keep when within half a step)
        def move(target: float, now: float) -> int:
            delta = target - now
            if abs(delta) < 0.5 * self.discrete_step:
                return 0
            return 1 if delta > 0 else -1

        return 3 * (move(l2, current.l2_threshold) + 1) + (move(l3, current.l3_threshold) + 1)


class ExtendedControls(ActionType):
    name = "extended"
    max_lookahead = 2

    @cached_property
    def space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(8,), dtype=np.float32)

    def decode(self, action: Any, current: Controls) -> Controls:
        a = np.clip(check_box_action(action, self.space, self.name), -1.0, 1.0)
        l2, l3 = self.clip_thresholds(_from_unit(a[0], *self.l2_range), _from_unit(a[1], *self.l3_range))
        n = len(self.budget_levels)
        level = int(min(n - 1, np.floor((a[3] + 1.0) * 0.5 * n)))
        return Controls(
            l2_threshold=l2,
            l3_threshold=l3,
            lookahead=1 if a[2] < 0 else 2,
            prefetch_budget=self.budget_levels[level],
            l2_share=_from_unit(a[4], 0.0, 1.0),
            w_recency=_from_unit(a[5], 0.0, EVICTION_WEIGHT_MAX),
            w_frequency=_from_unit(a[6], 0.0, EVICTION_WEIGHT_MAX),
            w_confidence=_from_unit(a[7], 0.0, EVICTION_WEIGHT_MAX),
            demand_overtakes=current.demand_overtakes,
        )

    def encode(self, l2: float, l3: float, current: Controls) -> np.ndarray:
        """Thresholds (l2, l3) with every other control kept at its value in ``current``."""
        n = len(self.budget_levels)
        budget = current.prefetch_budget if current.prefetch_budget in self.budget_levels else 0
        level = self.budget_levels.index(budget)
        return np.array(
            [
                _to_unit(l2, *self.l2_range),
                _to_unit(l3, *self.l3_range),
                -0.5 if current.lookahead == 1 else 0.5,
                2.0 * (level + 0.5) / n - 1.0,
                _to_unit(current.l2_share, 0.0, 1.0),
                _to_unit(current.w_recency, 0.0, EVICTION_WEIGHT_MAX),
                _to_unit(current.w_frequency, 0.0, EVICTION_WEIGHT_MAX),
                _to_unit(current.w_confidence, 0.0, EVICTION_WEIGHT_MAX),
            ],
            dtype=np.float32,
        )


ACTION_CLASSES: dict[str, type[ActionType]] = {
    cls.name: cls for cls in (ContinuousThresholds, DiscreteThresholds, ExtendedControls)
}


def make_action_type(name: str, l2_range: tuple[float, float], l3_range: tuple[float, float], discrete_step: float,
                     max_prefetch_budget: int) -> ActionType:
    """The action type called ``name`` (``continuous``, ``discrete`` or ``extended``)."""
    return ACTION_CLASSES[name](l2_range, l3_range, discrete_step, max_prefetch_budget)
