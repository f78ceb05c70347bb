"""Replay one window of many simulators in one compiled call (the native vector environment's hot path).

:func:`run_windows` loops over the environments of a vector inside compiled code, calling the kernel's
``run_steps`` for each, so a vector step crosses from Python into the kernel once instead of once per
environment, and the kernel's arguments (the named tuples of ``kernel.py``, tens of arrays each) are unboxed
once per episode (when a simulator is put into the :class:`BatchArgs` lists) instead of once per window.

:func:`run_windows` is sequential; :func:`run_windows_threaded` is the same loop over numba's threads
(``prange``), chosen by ``BatchArgs(threads=N)``. Environments are independent, so both give the same numbers. On
two idle cores the threaded loop doubles the windows per second of wall time at about the same CPU per window;
on a loaded machine it only adds CPU, so one thread is the default (docs/performance.md).

Only simulators with the built-in predictors and eviction rules go through here; a plug-in predictor or
eviction rule (``sim/plugins.py``) runs its own Python or privately compiled code and is replayed one
simulator at a time with :meth:`Simulator.run` (the vector environment does this by itself).

Caching: numba's on-disk cache of a function is keyed on the stamp (modification time and size) of the file
that defines it, not of the files it calls. ``run_windows`` compiles the kernel into itself, so its stamp here
also covers ``kernel.py`` and ``timing.py``: an edited kernel recompiles this function instead of loading a
stale copy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numba
from numba import njit, prange
from numba.typed import List

from moe_cache_env.sim import kernel as K
from moe_cache_env.sim import timing as _timing


@njit(cache=True, error_model="numpy")
def run_windows(active, s0, s1, scheds, cfgs, u, states, outs, ext_conf):
    """Replay steps ``[s0[i], s1[i])`` of simulator ``i`` for every ``i`` with ``active[i]``.

    ``scheds``, ``cfgs``, ``states``, ``outs``: typed lists of each simulator's ``ScheduleArrays``,
    ``KernelConfig``, ``KernelState`` and ``KernelOutput``; ``u`` (N, NUM_CONTROLS): each one's controls;
    ``ext_conf``: the empty external-confidence array the built-in predictors ignore.
    """
    for i in range(len(states)):
        if active[i]:
            K.run_steps(s0[i], s1[i], scheds[i], cfgs[i], u[i], states[i], ext_conf, outs[i])


@njit(cache=True, error_model="numpy", parallel=True)
def run_windows_threaded(active, s0, s1, scheds, cfgs, u, states, outs, ext_conf):
    """:func:`run_windows` with the environments spread over numba's threads (``prange``). Environments share no
    state, so the numbers are the same as the sequential loop's, whatever the thread count."""
    for j in prange(len(states)):
        i = np.int64(j)  # prange counts in uint64; the typed lists index in int64
        if active[i]:
            K.run_steps(s0[i], s1[i], scheds[i], cfgs[i], u[i], states[i], ext_conf, outs[i])


@njit(cache=True)
def _new_lists(sched, cfg, state, out, n):
    # built in compiled (and cached) code: the typed list's methods called from Python would be compiled afresh
    # in every process, for seconds, because numba does not cache them
    scheds = List()
    scheds.append(sched)  # the first append outside the loop gives numba the lists' item types
    cfgs = List()
    cfgs.append(cfg)
    states = List()
    states.append(state)
    outs = List()
    outs.append(out)
    for _ in range(n - 1):
        scheds.append(sched)
        cfgs.append(cfg)
        states.append(state)
        outs.append(out)
    return scheds, cfgs, states, outs


@njit(cache=True)
def _set_item(scheds, cfgs, states, outs, i, sched, cfg, state, out):
    scheds[i] = sched
    cfgs[i] = cfg
    states[i] = state
    outs[i] = out


def _stamp(path: str) -> tuple[float, int]:
    st = os.stat(path)
    return st.st_mtime, st.st_size


def _cover_dependencies(dispatcher: Any) -> None:
    """Make the on-disk cache of ``dispatcher`` stale whenever the kernel's sources change (module docstring)."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if cache_file is None or not hasattr(cache_file, "_source_stamp"):
        return  # numba's layout changed: its own stamp (this file) still applies
    cache_file._source_stamp = (cache_file._source_stamp, _stamp(K.__file__), _stamp(_timing.__file__))


for _dispatcher in (run_windows, run_windows_threaded, _new_lists, _set_item):
    _cover_dependencies(_dispatcher)

def check_threads(threads: Any) -> int:
    """``threads`` as an int in 1..numba's thread count (NUMBA_NUM_THREADS), else ``ValueError`` naming the range."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads={threads} is more than numba's {numba.config.NUMBA_NUM_THREADS} threads "
                         "(NUMBA_NUM_THREADS, by default the machine's cores); ask for fewer")
    return int(threads)


def _output(sim: Any) -> Any:
    return K.KernelOutput(sim.counters, sim.step_latency_ms)


#: the external-confidence argument of the built-in predictors (never read)
NO_EXTERNAL = np.zeros((0, 0), dtype=np.float64)


class BatchArgs:
    """The kernel arguments of N simulators, kept in numba typed lists across windows.

    ``set(i, sim)`` puts simulator ``i``'s arrays in place (once per episode: the simulator keeps these arrays
    for its whole replay); ``run(active, s0, s1, u)`` replays every active one's window in one call.
    """

    def __init__(self, threads: int = 1) -> None:
        from moe_cache_env.sim.compile_note import note_if_compiling

        self.threads = check_threads(threads)
        # the batch loop compiles the kernel into itself: as long as the kernel's own first compile, once
        note_if_compiling(run_windows_threaded if self.threads > 1 else run_windows)
        self.scheds: Any = None
        self.cfgs: Any = None
        self.states: Any = None
        self.outs: Any = None

    def set_all(self, sims: list[Any]) -> None:
        """Fill the lists from ``sims`` (a list of :class:`~moe_cache_env.sim.simulator.Simulator`)."""
        first = sims[0]
        self.scheds, self.cfgs, self.states, self.outs = _new_lists(
            first._sched, first._kconf, first.state, _output(first), len(sims))
        for i, sim in enumerate(sims[1:], start=1):
            self.set(i, sim)

    def set(self, i: int, sim: Any) -> None:
        """Replace simulator ``i`` (after a reset built a new one)."""
        _set_item(self.scheds, self.cfgs, self.states, self.outs, i, sim._sched, sim._kconf, sim.state, _output(sim))

    def run(self, active: np.ndarray, s0: np.ndarray, s1: np.ndarray, u: np.ndarray) -> None:
        if self.threads > 1:
            numba.set_num_threads(self.threads)
            run_windows_threaded(active, s0, s1, self.scheds, self.cfgs, u, self.states, self.outs, NO_EXTERNAL)
        else:
            run_windows(active, s0, s1, self.scheds, self.cfgs, u, self.states, self.outs, NO_EXTERNAL)
