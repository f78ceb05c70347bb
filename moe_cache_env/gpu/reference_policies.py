"""Reference decision logs from a trace, and a plain-Python timing estimate of any decision log.

Two policies, both over per-layer pools of ``slots_per_layer`` GPU slots (layer ``l`` owns slots
``l * C .. (l + 1) * C - 1``), starting empty:

- ``lru``: demand-only, least recently used. At each step and layer the step's experts (deduplicated over its
  tokens, in token and rank order) are looked up; a missing one is loaded on demand into a free slot or the
  slot of the least recently used expert that this layer does not need.
- ``lru-prefetch``: the same cache, plus a perfect next-layer prefetch: after its demand loads, each layer
  prefetches every expert that the next layer in execution order (the next layer of this step, or layer 0 of
  the next step) needs and that is not in that layer's pool, evicting that pool's least recently used experts
  that the next layer does not need. Prefetched experts count as used at the moment of the prefetch.

A step is ``batch`` consecutive tokens of the trace (sequence boundaries are ignored: one decode batch of
``batch`` streams, as a simple stand-in for the simulator's schedules).

:func:`estimate_latency` times a decision log in the simulator's units (``transfer_ms`` per expert copy,
the profile's per-expert compute table, the non-expert time per layer, a host decision cost per layer) under
the replay rules of ``decision_log`` and the execution order of a layer:

- the host launches the layer's non-expert work (``layer_launch_ms``), which runs (``non_expert_ms``: attention,
  router, norms, shared experts) once the previous layer's experts are done;
- the host waits for the router, reads the routing and decides: ``host_ms`` later the demand loads are issued
  (ahead of every prefetch not yet started) and then the layer's prefetches are queued;
- the host launches the experts one by one (``launch_ms`` each); an expert starts when it is launched, the
  previous one is done, and its weights are on the GPU: ``fused``: all the layer's experts; ``per-expert``:
  its own (experts already on the GPU first, then the others in the order their copies land);
- a step's latency runs from the end of the previous step (its last expert done and the host past its last
  launch) to the end of this one. With a free host (``host_ms = launch_ms = layer_launch_ms = 0``) a layer
  takes its non-expert time, the wait for its copies and its experts' compute, as in the simulator.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from moe_cache_env.gpu.decision_log import (
    SOURCE_DEMAND,
    SOURCE_PREFETCHED,
    SOURCE_RESIDENT,
    DecisionLog,
    LogBuilder,
)
from moe_cache_env.sim.config import DEFAULT_PREFETCH_HANDOFF, PREFETCH_HANDOFFS

POLICIES = ("lru", "lru-prefetch")
ORDERS = ("fused", "per-expert")
#: the simulator's prefetch hand-off rules (``SimConfig.prefetch_handoff``)
HANDOFFS = PREFETCH_HANDOFFS
PRODUCER = "moe_cache_env.gpu.reference_policies/1"


def _step_needs(experts: np.ndarray, tokens: Sequence[int], layer: int) -> list[tuple[int, int]]:
    """(expert, tokens) of one step at one layer, deduplicated, in token and rank order."""
    counts: dict[int, int] = {}
    for t in tokens:
        for e in experts[t, layer].tolist():
            counts[e] = counts.get(e, 0) + 1
    return list(counts.items())


class _Pool:
    """One layer's slots under LRU: expert -> slot in recency order (least recent first)."""

    def __init__(self, first_slot: int, capacity: int) -> None:
        self.lru: OrderedDict[int, int] = OrderedDict()
        self.free = list(range(first_slot + capacity - 1, first_slot - 1, -1))  # pop() gives the lowest

    def touch(self, expert: int) -> None:
        self.lru.move_to_end(expert)

    def admit(self, expert: int, protected: set[int]) -> int:
        """A slot for ``expert`` (free, or the least recently used expert's outside ``protected``); MRU."""
        if self.free:
            slot = self.free.pop()
        else:
            victim = next((e for e in self.lru if e not in protected), None)
            if victim is None:
                raise ValueError("a layer needs more experts at once than it has slots")
            slot = self.lru.pop(victim)
        self.lru[expert] = slot
        return slot


def reference_log(
    experts: np.ndarray,
    *,
    num_experts: int,
    expert_bytes: int,
    slots_per_layer: int,
    policy: str,
    batch: int = 1,
    steps: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> DecisionLog:
    """The decision log of ``policy`` (``lru`` or ``lru-prefetch``) over routing ``experts`` (T, L, K)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown reference policy {policy!r}; choose one of {', '.join(POLICIES)}")
    experts = np.asarray(experts)
    T, L, K = experts.shape
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if slots_per_layer < min(num_experts, K * batch):
        raise ValueError(
            f"slots_per_layer={slots_per_layer} is fewer than the experts one step can need at a layer "
            f"({min(num_experts, K * batch)}: top-{K} x batch {batch})"
        )
    n_steps = -(-T // batch)
    if steps is not None:
        n_steps = min(n_steps, int(steps))
    step_tokens = [list(range(s * batch, min(T, (s + 1) * batch))) for s in range(n_steps)]
    C = slots_per_layer
    pools = [_Pool(l * C, C) for l in range(L)]
    prefetched: list[set[int]] = [set() for _ in range(L)]  # prefetched and not used since
    builder = LogBuilder({
        **(dict(meta) if meta else {}),
        "policy": policy,
        "producer": PRODUCER,
        "num_layers": L,
        "num_experts": int(num_experts),
        "top_k": K,
        "expert_bytes": int(expert_bytes),
        "num_slots": L * C,
        "slots_per_layer": C,
        "pool": "per-layer",
        "batch": int(batch),
    })
    prefetch = policy == "lru-prefetch"
    for s in range(n_steps):
        builder.begin_step(len(step_tokens[s]))
        for l in range(L):
            pool = pools[l]
            needs = _step_needs(experts, step_tokens[s], l)
            wanted = {e for e, _ in needs}
            for e, ntok in needs:
                if e in pool.lru:
                    source = SOURCE_PREFETCHED if e in prefetched[l] else SOURCE_RESIDENT
                    prefetched[l].discard(e)
                    pool.touch(e)
                    builder.need(e, pool.lru[e], ntok, source)
                else:
                    slot = pool.admit(e, wanted)
                    builder.need(e, slot, ntok, SOURCE_DEMAND)
            if prefetch:
                ns, nl = (s, l + 1) if l + 1 < L else (s + 1, 0)
                if ns < n_steps:
                    target = pools[nl]
                    upcoming = [e for e, _ in _step_needs(experts, step_tokens[ns], nl)]
                    protected = set(upcoming)
                    for e in upcoming:
                        if e in target.lru:
                            continue
                        slot = target.admit(e, protected)
                        prefetched[nl].add(e)
                        builder.prefetch(nl, e, slot)
            builder.end_layer()
    return builder.build()


def reference_log_for_trace(trace: Any, policy: str, slots_per_layer: int, *, batch: int = 1,
                            steps: int | None = None, expert_bytes: int | None = None) -> DecisionLog:
    """:func:`reference_log` over a loaded :class:`~moe_cache_env.traces.format.Trace`."""
    meta = {"trace": trace.name, "model": trace.meta.get("model"), "phase": trace.meta.get("phase")}
    preset = (trace.meta.get("generator") or {}).get("preset") if isinstance(trace.meta.get("generator"), Mapping) else None
    if preset:
        meta["preset"] = preset
    return reference_log(
        trace.experts, num_experts=trace.num_experts, expert_bytes=int(expert_bytes or trace.expert_bytes),
        slots_per_layer=slots_per_layer, policy=policy, batch=batch, steps=steps, meta=meta,
    )


def all_hits_log(num_layers: int, num_experts: int, top_k: int, expert_bytes: int, *, steps: int,
                 batch: int = 1) -> DecisionLog:
    """A log in which every layer needs the same ``top_k`` experts, all resident from the start (no copies):
    what ``calibrate`` replays to measure the host's per-layer cost."""
    builder = LogBuilder({"policy": "all-hits", "producer": PRODUCER, "num_layers": num_layers,
                          "num_experts": num_experts, "top_k": top_k, "expert_bytes": expert_bytes,
                          "num_slots": num_layers * top_k, "slots_per_layer": top_k, "pool": "per-layer",
                          "batch": batch})
    for _ in range(steps):
        builder.begin_step(batch)
        for layer in range(num_layers):
            for j in range(top_k):
                builder.need(j, layer * top_k + j, batch, SOURCE_RESIDENT)
            builder.end_layer()
    initial = np.array([layer * num_experts + j for layer in range(num_layers) for j in range(top_k)])
    return builder.build(initial)


# ------------------------------------------------------------------------------------------ the estimate


@dataclass(frozen=True)
class ReferenceTiming:
    """The numbers the estimate uses, in ms (the simulator's units).

    Attributes:
        transfer_ms: one expert's host-to-GPU copy (the profile's line at the log's expert bytes).
        compute_ms: one expert's compute by token count (index = tokens; index 0 unused).
        non_expert_ms: the non-expert work of one layer at the replay's batch and context.
        host_ms: the host's decision cost per layer (from the router's end to the demand loads' issue: event
            poll, ``.cpu()`` of the routing, bookkeeping, copy issue).
        launch_ms: host time to launch one expert (its kernels); an expert cannot start before the host has
            launched it.
        layer_launch_ms: host time to launch one layer's non-expert work.
        copy_issue_ms: host time to issue one copy; a layer's copies are issued one by one after its decision, a
            copy cannot start before it is issued, and the experts' launches follow the layer's copies.
    """

    transfer_ms: float
    compute_ms: tuple[float, ...]
    non_expert_ms: float = 0.0
    host_ms: float = 0.0
    launch_ms: float = 0.0
    layer_launch_ms: float = 0.0
    copy_issue_ms: float = 0.0

    @classmethod
    def from_profile(cls, profile: Any, expert_bytes: int, *, batch: int = 1, context: int | None = None,
                     include_host: bool = True) -> "ReferenceTiming":
        table = profile.compute_table(expert_bytes, max(1, batch))
        host = profile.raw.get("host") if include_host else None
        host = host if isinstance(host, Mapping) else {}
        return cls(
            transfer_ms=float(profile.transfer_ms(expert_bytes)),
            compute_ms=tuple(float(x) for x in table),
            non_expert_ms=float(profile.non_expert_ms(batch, context)),
            host_ms=float(profile.host_decision_ms) if include_host else 0.0,
            launch_ms=float(host.get("expert_launch_ms", 0.0)),
            layer_launch_ms=float(host.get("layer_launch_ms", 0.0)),
            copy_issue_ms=float(profile.copy_issue_ms) if include_host else 0.0,
        )

    def without_host(self) -> "ReferenceTiming":
        """The same timing with a free host (no decision cost, no launch cost)."""
        return ReferenceTiming(self.transfer_ms, self.compute_ms, self.non_expert_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"transfer_ms": self.transfer_ms, "compute_ms": list(self.compute_ms),
                "non_expert_ms": self.non_expert_ms, "host_ms": self.host_ms, "launch_ms": self.launch_ms,
                "layer_launch_ms": self.layer_launch_ms, "copy_issue_ms": self.copy_issue_ms}


def estimate_latency(log: DecisionLog, timing: ReferenceTiming, order: str = "fused",
                     handoff: str = DEFAULT_PREFETCH_HANDOFF) -> dict[str, Any]:
    """Per-step latency (ms) of ``log`` under ``timing``, and link counters; see the module docstring.

    ``handoff`` is the simulator's prefetch hand-off rule (``SimConfig.prefetch_handoff``): ``link``, a queued
    prefetch starts once the link is free; ``host-poll``, only when the host polls (not while it decides a layer
    or launches its experts)."""
    if order not in ORDERS:
        raise ValueError(f"unknown execution order {order!r}; choose one of {', '.join(ORDERS)}")
    if handoff not in HANDOFFS:
        raise ValueError(f"unknown prefetch hand-off {handoff!r}; choose one of {', '.join(HANDOFFS)}")
    host_poll = handoff == "host-poll"
    per_expert = order == "per-expert"
    T = timing.transfer_ms
    ctab = timing.compute_ms
    A, H = timing.non_expert_ms, timing.host_ms
    launch, layer_launch, issue = timing.launch_ms, timing.layer_launch_ms, timing.copy_issue_ms
    host = 0.0  # the host's clock: it launches work, waits for the router, decides
    E = log.num_experts
    arrival = [-np.inf] * log.num_slots  # when the slot's latest submitted write lands
    read_done = [-np.inf] * log.num_slots  # when the last computation reading the slot ends
    queued: dict[int, int] = {}  # slot -> key of a prefetch not yet started
    queue: deque[tuple[int, int, float]] = deque()  # (slot, key, issue time), FIFO; stale entries skipped
    link_free = 0.0
    busy = 0.0
    # host-poll: the host's last busy spans, the last layer's expert launches [launch_from, launch_to) and the
    # current layer's decision [decide_from, decide)
    launch_from = launch_to = decide_from = 0.0
    copies = {"demand": 0, "prefetch": 0, "promoted": 0, "cancelled": 0}
    latency = np.zeros(log.num_steps)
    t = 0.0

    def start_copy(slot: int, at: float) -> float:
        nonlocal link_free, busy
        begin = max(at, link_free, read_done[slot])
        link_free = begin + T
        busy += T
        arrival[slot] = link_free
        return link_free

    def advance(now: float) -> None:
        # start every queued prefetch that the link reaches by `now`, in FIFO order
        while queue:
            slot, key, issued = queue[0]
            if queued.get(slot) != key:
                queue.popleft()
                continue
            # the host hands a prefetch to the copy queue once the link is idle; the copy itself may then wait
            # for the last read of its slot (as a CUDA copy stream waits on an event)
            at = max(link_free, issued)
            if host_poll:
                if at < launch_from:  # held back by the last decision: goes once that layer's loads are issued
                    at = launch_from
                elif launch_from < at < launch_to:
                    at = launch_to
                if decide_from <= at < now:
                    return  # the host is deciding: this layer's demand loads go first
            if at > now:
                return
            queue.popleft()
            del queued[slot]
            start_copy(slot, at + issue if host_poll else at)  # host-poll: the host issues it when it hands it over
            copies["prefetch"] += 1

    boundary = 0.0
    for decisions in log.iter_decisions():
        s, l = decisions.step, decisions.layer
        host += layer_launch
        if host_poll:
            launch_to = host  # the host polls again once it has launched the next layer's non-expert work
        router = max(t, host) + A
        host = max(host, router) + H
        decide = host
        if host_poll:
            decide_from = decide - H
        advance(decide)
        for e, slot, _, source in decisions.need:
            if source == SOURCE_DEMAND:
                if slot in queued:
                    del queued[slot]
                    copies["cancelled"] += 1
                host += issue
                start_copy(slot, host)
                copies["demand"] += 1
            elif queued.get(slot) == l * E + e:
                del queued[slot]  # its prefetch has not started: load it now, ahead of the queue
                host += issue
                start_copy(slot, host)
                copies["promoted"] += 1
        for pl, pe, slot in decisions.prefetch:
            if slot in queued:
                copies["cancelled"] += 1
            queued[slot] = pl * E + pe
            queue.append((slot, pl * E + pe, decide))
        pumped = host  # the host queues the prefetches and pumps the queue once the copies are issued
        ready = [(arrival[slot], ctab[ntok], slot) for _, slot, ntok, _ in decisions.need]
        cur = t
        if per_expert:
            landed = [r for r in ready if r[0] <= decide]
            pending = sorted((r for r in ready if r[0] > decide), key=lambda r: r[0])
            for at, dur, slot in landed + pending:
                host += launch
                cur = max(cur, host, at) + dur
                read_done[slot] = cur
        else:
            all_in = max(r[0] for r in ready)
            for _, dur, slot in ready:
                host += launch
                cur = max(cur, host, all_in) + dur
                read_done[slot] = cur
        t = cur
        if host_poll:
            launch_from = pumped
        if l == log.num_layers - 1:
            end = max(t, host)  # the step's event is recorded once the host has launched everything
            latency[s] = end - boundary
            boundary = end
    return {"latency_ms": latency, "copies": copies, "link_busy_ms": busy, "elapsed_ms": t}


def latency_stats(latency_ms: np.ndarray, ntokens: np.ndarray | None = None) -> dict[str, float]:
    """Mean, P50 and P95 per-token latency over steps (each of a step's tokens waits the whole step)."""
    lat = np.asarray(latency_ms, dtype=np.float64)
    weights = np.ones_like(lat) if ntokens is None else np.asarray(ntokens, dtype=np.float64)
    order = np.argsort(lat)
    cum = np.cumsum(weights[order]) / weights.sum()

    def pct(q: float) -> float:
        return float(lat[order][np.searchsorted(cum, q / 100.0)])

    return {"mean_ms": float(lat @ weights / weights.sum()), "p50_ms": pct(50), "p95_ms": pct(95),
            "steps": int(len(lat)), "tokens": int(weights.sum())}
