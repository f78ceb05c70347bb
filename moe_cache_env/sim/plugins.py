"""Plug in a predictor or an eviction rule of your own, without touching the kernel.

**Predictors** (:class:`Predictor`) are written in Python. A prediction never reads the cache's state, only
routing, so the simulator asks a plug-in predictor once per window (a ``Simulator.run`` call) for the
confidences of every prediction the window makes, as one array, and the compiled loop reads them; calibration,
admission, prefetching and accounting are the same as for the built-in predictors. Cost: whatever the
predictor's own Python costs per window, plus one array copy (the built-in predictors, compiled, cost nothing
extra).

**Eviction rules** (:class:`EvictionPolicy`) are a small scoring function, ``score(age_steps, uses,
confidence, tier, layer, expert) -> float`` (the lowest score is evicted; ties go to the lower key), in the
subset of Python that numba compiles. Eviction reads the cache's state at every decision, so the rule runs
inside the loop: the simulator compiles a private copy of the kernel with the rule in it, once per rule and
process (not cached on disk; about 150 s of CPU time for a one-line rule on a 2-core machine), after which it runs
at the kernel's speed; ``EvictionPolicy(..., optimize=False)`` compiles in about 45 s and runs about 1.6x slower.

Register either under a name, then use the name like a built-in one::

    from moe_cache_env.sim import plugins
    plugins.register_predictor("my-popularity", MyPopularity)          # a class or factory: () -> Predictor
    plugins.register_eviction(plugins.EvictionPolicy("lfu", lambda age, uses, conf, tier, layer, e: uses))
    SimConfig(predictor="my-popularity", eviction="lfu")
"""

from __future__ import annotations

import sys
import threading
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from moe_cache_env.sim.config import ConfigError
from moe_cache_env.sim.schedule import Schedule
from moe_cache_env.traces.format import Trace


class Predictor(ABC):
    """A predictor of upcoming experts, in Python.

    Lifecycle: ``fit(train)`` (optional offline data), then for each replay ``start(trace, schedule)``, then
    ``confidences(s0, s1, lookahead)`` for consecutive windows of steps.
    """

    #: the name it is registered under
    name: str = "python-predictor"

    def fit(self, train: Trace) -> None:  # noqa: B027 - optional hook
        """Learn from a training trace before replaying (optional)."""

    @abstractmethod
    def start(self, trace: Trace, schedule: Schedule) -> None:
        """A replay of ``trace`` in the order ``schedule`` gives is about to start: reset online state."""

    @abstractmethod
    def confidences(self, s0: int, s1: int, lookahead: int) -> np.ndarray:
        """Confidences for the predictions made during steps [s0, s1): shape (s1 - s0, L, E), values in [0, 1].

        Row ``[s - s0, l]`` is made when step ``s`` reaches layer ``l``, for the step's experts ``lookahead``
        layers ahead in execution order (layer ``l + lookahead`` of step ``s``, or of step ``s + 1`` past the
        last layer): the probability that each expert is among that step's experts at that layer. It may use
        the routing of step ``s`` up to layer ``l`` and of every earlier step (``schedule.step_tokens`` says which
        tokens a step runs), nothing later: the simulator cannot check causality, the predictor must keep it.
        """


@dataclass(frozen=True)
class EvictionPolicy:
    """An eviction rule: ``score(age_steps, uses, confidence, tier, layer, expert)``, lowest evicted.

    ``age_steps``: steps since the key's last use or admission; ``uses``: uses since it entered the GPU;
    ``confidence``: its last predicted confidence; ``tier``: 1-3. The function must compile with
    ``numba.njit`` (plain arithmetic on its arguments).

    ``optimize``: True (default) compiles the kernel copy with its helpers inlined, as the built-in kernel is
    (about 150 s of CPU on a 2-core machine, then the kernel's speed); False leaves the helpers as calls (about
    45 s, then about 1.6x slower per event): for iterating on a rule, where compiling dominates.
    """

    name: str
    score: Callable[..., float]
    optimize: bool = True


_PREDICTORS: dict[str, Callable[[], Predictor]] = {}
_EVICTIONS: dict[str, EvictionPolicy] = {}
_KERNELS: dict[str, types.ModuleType] = {}
_LOCK = threading.Lock()


def register_predictor(name: str, factory: Callable[[], Predictor]) -> None:
    """Make ``SimConfig(predictor=name)`` build a fresh predictor with ``factory()`` for each simulator."""
    from moe_cache_env.sim.predictors import PREDICTORS

    if name in PREDICTORS:
        raise ConfigError(f"predictor name {name!r} is a built-in predictor's; choose another name")
    _PREDICTORS[name] = factory


def register_eviction(policy: EvictionPolicy) -> None:
    """Make ``SimConfig(eviction=policy.name)`` evict by ``policy.score``."""
    from moe_cache_env.sim.config import EVICTION_RULES

    if policy.name in EVICTION_RULES:
        raise ConfigError(f"eviction name {policy.name!r} is a built-in rule's; choose another name")
    _EVICTIONS[policy.name] = policy
    _KERNELS.pop(policy.name, None)


def registered_predictors() -> tuple[str, ...]:
    return tuple(_PREDICTORS)


def registered_evictions() -> tuple[str, ...]:
    return tuple(_EVICTIONS)


def make_predictor(name: str) -> Predictor:
    predictor = _PREDICTORS[name]()
    if not isinstance(predictor, Predictor):
        raise ConfigError(f"predictor {name!r}: its factory returned {type(predictor).__name__}, not a Predictor")
    return predictor


def kernel_for_eviction(name: str) -> types.ModuleType:
    """A private copy of the kernel module whose ``EV_CUSTOM`` rule is the registered policy ``name``.

    The copy is compiled from the kernel's own source (one source, so it cannot drift), with on-disk caching
    off: a cache entry is keyed by the source file, and it would serve the other rule's machine code.
    """
    with _LOCK:
        if name in _KERNELS:
            return _KERNELS[name]
        from numba import njit

        from moe_cache_env.sim import kernel as base

        policy = _EVICTIONS[name]
        source = Path(base.__file__).read_text().replace("cache=True", "cache=False")
        if not policy.optimize:
            # numba re-infers an inlined helper's body at every call site; calls compile each helper once
            source = source.replace('inline="always"', 'inline="never"')
        marker = "s = 0.0  # CUSTOM_SCORE_CALL"
        if source.count(marker) != 1:
            raise RuntimeError("the kernel's custom-score marker is missing; plugins.py and kernel.py disagree")
        source = source.replace(
            marker, "s = custom_score(clock - k_last[key], k_uses[key], k_conf[key], k_tier[key], key // E, key % E)"
        )
        module = types.ModuleType(f"{base.__name__}_custom_{len(_KERNELS)}")
        module.__file__ = base.__file__
        sys.modules[module.__name__] = module  # numba resolves a function's globals through its module
        exec(compile(source, base.__file__, "exec"), module.__dict__)
        module.custom_score = njit(error_model="numpy")(policy.score)
        _KERNELS[name] = module
        return module


def _register_built_in_python_predictors() -> None:
    """Predictors that ship with the package but are written against this interface (no kernel id)."""
    from moe_cache_env.sim.recorded import RECORDED_PREDICTOR, RecordedPredictor

    _PREDICTORS.setdefault(RECORDED_PREDICTOR, RecordedPredictor)


_register_built_in_python_predictors()
