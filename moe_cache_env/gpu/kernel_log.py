"""The simulator kernel's own decisions as a ``moe-decision-log/1`` (what ``evaluate --decision-log`` writes).

The kernel logs events (``Simulator.record_decisions``; ``kernel.LOG_*``): each needed expert with its source
(resident, demand load, prefetched), each prefetch issued, each key that leaves the GPU. The kernel tracks tiers,
not physical slots, so slots are assigned here, as an engine's allocator would: a load or a prefetch takes the
slot that the pool freed longest ago (a pool is one layer's cache, or the whole GPU for a global cache), or a new
slot when none is free. A key that is used or evicted without having been loaded was resident from the start
(a preloaded hot set): it gets a slot of its own in ``initial_slots``. ``num_slots`` is the most slots ever in
use, which can exceed the cache's size by the experts that one layer pins beyond it (the kernel lets a tier
overflow while its experts are in use).

The meta carries the kernel's per-step latency (``kernel_step_latency_ms``), so ``replay-gpu --log`` compares
the GPU with the simulator's own estimate.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import numpy as np

from moe_cache_env.gpu.decision_log import (
    SOURCE_DEMAND,
    SOURCE_PREFETCHED,
    SOURCE_RESIDENT,
    DecisionLog,
    DecisionLogError,
    LogBuilder,
)
from moe_cache_env.sim import kernel as K

PRODUCER = "moe_cache_env.sim kernel (Simulator.record_decisions)"
_SOURCE = {K.LOG_SRC_RESIDENT: SOURCE_RESIDENT, K.LOG_SRC_DEMAND: SOURCE_DEMAND,
           K.LOG_SRC_PREFETCHED: SOURCE_PREFETCHED}


def decision_log_from_events(
    events: np.ndarray,
    step_ntokens: np.ndarray,
    *,
    num_layers: int,
    num_experts: int,
    global_pool: bool,
    meta: Mapping[str, Any],
) -> DecisionLog:
    """Build a validated decision log from the kernel's events of steps ``0 .. len(step_ntokens) - 1``.

    ``meta`` must hold the decision log's required keys except ``format`` and ``num_slots`` (set here).
    """
    L, E = int(num_layers), int(num_experts)
    S = int(len(step_ntokens))
    free: dict[int, deque[int]] = {}
    slot_of: dict[int, int] = {}
    initial: dict[int, int] = {}  # slot -> key resident before the first step
    next_slot = 0

    def fresh() -> int:
        nonlocal next_slot
        next_slot += 1
        return next_slot - 1

    def take(pool: int) -> int:
        queue = free.get(pool)
        return queue.popleft() if queue else fresh()

    def slot_for_resident(key: int) -> int:
        if key not in slot_of:  # never loaded in the log: it was there from the start
            slot = fresh()
            slot_of[key] = slot
            initial[slot] = key
        return slot_of[key]

    builder = LogBuilder(dict(meta, num_slots=1))
    current = -1  # the (step, layer) event whose decisions are being listed, as step * L + layer
    rows = np.asarray(events, dtype=np.int64).tolist()
    for kind, s, l, e, tokens, source in rows:
        key = l * E + e
        pool = 0 if global_pool else l
        if kind == K.LOG_NEED:
            event = s * L + l
            if event != current:
                if event != current + 1:
                    raise DecisionLogError(f"kernel log: step {s}, layer {l} follows event {current} out of order")
                if current >= 0:
                    builder.end_layer()
                if l == 0:
                    builder.begin_step(int(step_ntokens[s]))
                current = event
            if source == K.LOG_SRC_DEMAND:
                if key in slot_of:
                    raise DecisionLogError(f"kernel log: step {s}, layer {l}: expert {e} loaded while resident")
                slot_of[key] = take(pool)
                slot = slot_of[key]
            else:
                slot = slot_for_resident(key)
            builder.need(e, slot, tokens, _SOURCE[source])
        elif kind == K.LOG_PREFETCH:
            if key in slot_of:
                raise DecisionLogError(f"kernel log: step {s}: prefetch of layer {l} expert {e}, already resident")
            slot_of[key] = take(pool)
            builder.prefetch(l, e, slot_of[key])
        elif kind == K.LOG_EVICT:
            slot = slot_for_resident(key)
            del slot_of[key]
            free.setdefault(pool, deque()).append(slot)
        else:
            raise DecisionLogError(f"kernel log: unknown event kind {kind}")
    if current != S * L - 1:
        raise DecisionLogError(f"kernel log: {current + 1} of {S * L} step-layer events were logged")
    builder.end_layer()
    builder.meta["num_slots"] = max(next_slot, 1)
    initial_slots = np.full(max(next_slot, 1), -1, dtype=np.int64)
    for slot, key in initial.items():
        initial_slots[slot] = key
    return builder.build(initial_slots)


def simulator_decision_log(sim: Any, *, policy: str, batch: int, extra_meta: Mapping[str, Any] | None = None
                           ) -> DecisionLog:
    """The decision log of everything ``sim`` (a :class:`~moe_cache_env.sim.simulator.Simulator` that ran with
    ``record_decisions()`` from its start) replayed so far, with its per-step latency in the meta."""
    trace, cache = sim.trace, sim.cache
    steps = int(sim.position)
    if steps < 1:
        raise DecisionLogError("the simulator has replayed no step yet")
    ntokens = sim.schedule.step_ntokens[:steps]
    meta: dict[str, Any] = {
        "policy": policy,
        "producer": PRODUCER,
        "trace": trace.name,
        "model": trace.meta.get("model"),
        "phase": trace.meta.get("phase"),
        "num_layers": trace.num_layers,
        "num_experts": trace.num_experts,
        "top_k": trace.top_k,
        "expert_bytes": int(sim.expert_bytes),
        "batch": int(batch),
        "pool": cache.scope,
        "cache_slots": int(cache.total_slots),
        "execution_order": sim.config.execution_order,
        "prefetch_handoff": sim.config.prefetch_handoff,
        "profile": sim.profile.name,
        "kernel_step_latency_ms": [round(float(x), 6) for x in sim.step_latency_ms[:steps]],
    }
    if cache.scope == "per-layer":
        meta["slots_per_layer"] = int(cache.total_slots)
    generator = trace.meta.get("generator")
    if isinstance(generator, Mapping) and generator.get("preset"):
        meta["preset"] = generator["preset"]
    meta.update(extra_meta or {})
    return decision_log_from_events(
        sim.decision_events(), ntokens, num_layers=trace.num_layers, num_experts=trace.num_experts,
        global_pool=cache.scope == "global", meta=meta,
    )
