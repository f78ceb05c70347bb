"""Execute a decision log on a CUDA GPU: real copies, real slots, real expert and non-expert compute.

The replay engine (:func:`replay`) is device-agnostic: it drives a *device* through a small interface
(:class:`ReplayDevice`), so the same decision logic runs on a CUDA GPU (:class:`CudaReplayDevice`) and, for
tests and dry runs, on :class:`FakeReplayDevice`, which models CUDA's stream semantics with deterministic
durations and needs no GPU.

Per step and layer the engine does what an offloading engine does:

1. launch the layer's non-expert work (attention, router, norms, shared experts) on the compute stream;
2. wait on the host until the router has run (polling an event, and feeding the copy queue meanwhile), then
   read the routing to the host (``.cpu()`` of the top-k ids);
3. issue the layer's demand loads on the copy stream, in the log's order: a needed expert whose prefetch was
   not yet handed to the copy stream is issued now too, ahead of the queued prefetches; then queue the layer's
   prefetches on the host;
4. launch the experts on the compute stream: ``fused`` makes the stream wait for all the layer's copies, then
   runs the experts; ``per-expert`` runs the experts already on the GPU first, then each missing one after its
   own copy's event.

The copy queue: prefetches wait on the host and are handed to the copy stream when fewer than ``window``
copies are in flight (``window=1``: only when the link is idle), so a demand load never waits behind more than
``window`` prefetches that were already started: the simulator's rule that demand loads overtake queued
prefetches. A copy into a slot first waits for the event of the slot's last read.

Per-token latency: CUDA events on the compute stream at each step boundary; a step's latency is the time between
its two events (the host's gaps included).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from moe_cache_env.gpu.decision_log import SOURCE_DEMAND, DecisionLog, LayerDecisions
from moe_cache_env.gpu.reference_policies import ORDERS, ReferenceTiming

GIB = 2**30


class ReplayError(RuntimeError):
    """The replay cannot run here (no CUDA device, not enough memory, a log that does not fit the device)."""


class ReplayDevice(Protocol):
    """What the engine needs from a device. Markers are opaque (CUDA events, or times for the fake)."""

    name: str

    def prepare(self, log: DecisionLog) -> None:
        """Allocate for ``log`` (slots, host weights, layers); untimed."""

    def reset(self, log: DecisionLog) -> None:
        """Load the log's initial slot contents and clear all state; untimed."""

    def start_run(self) -> None:
        """Called before a run's first launch (the CUDA device makes its compute stream current)."""

    def end_run(self) -> None:
        """Called after a run's last launch."""

    def step_marker(self) -> Any:
        """A marker at the current end of the compute stream."""

    def non_expert(self, layer: int) -> Any:
        """Launch layer ``layer``'s non-expert work; returns a marker after its router."""

    def wait(self, marker: Any, poll: Callable[[], None]) -> None:
        """Block the host until ``marker`` has passed, calling ``poll`` meanwhile."""

    def read_routing(self, layer: int) -> None:
        """Copy the router's top-k ids to the host."""

    def copy(self, key: int, slot: int, after: Any | None) -> Any:
        """Copy expert ``key`` from host memory into ``slot`` on the copy stream, after marker ``after``."""

    def done(self, marker: Any) -> bool:
        """Whether ``marker`` has passed (non-blocking)."""

    def expert(self, slot: int, ntokens: int, waits: Sequence[Any]) -> Any:
        """After ``waits``, compute the expert in ``slot`` for ``ntokens`` tokens; returns a marker after it."""

    def end_step(self) -> None:
        """Work between steps (the next token's embedding)."""

    def elapsed_ms(self, markers: Sequence[Any]) -> list[float]:
        """Synchronize; the time between consecutive markers."""


class _Link:
    """The host side of the copy queue (see the module docstring)."""

    def __init__(self, device: ReplayDevice, window: int) -> None:
        self.dev = device
        self.window = window
        self.queue: deque[tuple[int, int]] = deque()
        self.queued: dict[int, int] = {}
        self.inflight: deque[Any] = deque()
        self.pending: dict[int, tuple[Any, int]] = {}
        self.last_read: dict[int, Any] = {}
        self.seq = 0
        self.counts = {"demand": 0, "prefetch": 0, "promoted": 0, "cancelled": 0}

    def _submit(self, slot: int, key: int) -> None:
        marker = self.dev.copy(key, slot, self.last_read.get(slot))
        self.inflight.append(marker)
        self.pending[slot] = (marker, self.seq)
        self.seq += 1

    def demand(self, slot: int, key: int) -> None:
        if slot in self.queued:
            del self.queued[slot]
            self.counts["cancelled"] += 1
        self._submit(slot, key)
        self.counts["demand"] += 1

    def ensure(self, slot: int, key: int) -> None:
        if self.queued.get(slot) == key:
            del self.queued[slot]
            self._submit(slot, key)
            self.counts["promoted"] += 1

    def enqueue(self, slot: int, key: int) -> None:
        if slot in self.queued:
            self.counts["cancelled"] += 1
        self.queued[slot] = key
        self.queue.append((slot, key))

    def pump(self) -> None:
        inflight, done = self.inflight, self.dev.done
        while inflight and done(inflight[0]):
            inflight.popleft()
        while self.queue and len(inflight) < self.window:
            slot, key = self.queue.popleft()
            if self.queued.get(slot) != key:
                continue
            del self.queued[slot]
            self._submit(slot, key)
            self.counts["prefetch"] += 1

    def pending_copy(self, slot: int) -> tuple[Any, int] | None:
        """The slot's copy still in flight (marker, issue order), or None when its content has landed."""
        entry = self.pending.get(slot)
        if entry is not None and self.dev.done(entry[0]):
            del self.pending[slot]
            return None
        return entry


def _run(device: ReplayDevice, log: DecisionLog, decisions: list[LayerDecisions], order: str, window: int) -> dict[str, Any]:
    per_expert = order == "per-expert"
    E = log.num_experts
    L = log.num_layers
    link = _Link(device, window)
    host = np.zeros((len(decisions), 3), dtype=np.float64)
    device.start_run()
    try:
        markers = _run_layers(device, decisions, link, per_expert, E, L, host)
    finally:
        device.end_run()
    latency = np.asarray(device.elapsed_ms(markers), dtype=np.float64)
    return {"latency_ms": latency, "copies": dict(link.counts), "host": host_summary(host)}


#: columns of the per-layer host timing: decision (ms), launches (ms), copies the decision issued
_H_DECIDE, _H_LAUNCH, _H_COPIES = 0, 1, 2


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def host_summary(host: np.ndarray) -> dict[str, Any]:
    """The host's measured time per layer (``perf_counter``), as a profile's host costs are defined:
    ``decision_ms`` from the router's result seen on the host to the copies issued and the prefetches queued
    (``.cpu()`` of the routing, bookkeeping, copy issue), apart for layers that issued no copy and layers that
    issued at least one; ``launch_ms_per_expert``, the expert launches that follow, per expert (median over
    layers); ``decision_ms_by_copies`` and ``decision_fit``, the decision by the number of copies it issued. None
    where no layer of the kind ran."""
    copies = host[:, _H_COPIES]
    out: dict[str, Any] = {"layers": int(len(host))}
    for name, rows in (("no_copy", host[copies == 0]), ("with_copy", host[copies > 0])):
        decide = rows[:, _H_DECIDE]
        out[f"decision_ms_{name}"] = {"layers": int(len(rows)), "median": _percentile(decide, 50),
                                      "mean": float(decide.mean()) if decide.size else None,
                                      "p10": _percentile(decide, 10), "p90": _percentile(decide, 90)}
    launched = host[:, _H_LAUNCH]
    out["launch_ms_per_expert"] = _percentile(launched[launched > 0], 50)
    # the decision against the copies it issued: medians by count (robust to the host's occasional stalls), and
    # a line through them weighted by their layers, ``base_ms + per_copy_ms x copies``
    by_copies = {}
    for n in np.unique(copies).astype(int):
        rows = host[copies == n, _H_DECIDE]
        by_copies[str(n)] = {"layers": int(len(rows)), "median": _percentile(rows, 50)}
    out["decision_ms_by_copies"] = by_copies
    out["decision_fit"] = fit_decision_by_copies(by_copies)
    return out


def fit_decision_by_copies(by_copies: Mapping[str, Mapping[str, Any]]) -> dict[str, float] | None:
    """``base_ms + per_copy_ms x copies`` through the median decision time of each number of copies issued
    (``{"<copies>": {"layers": n, "median": ms}}``), weighted by the square root of their layers; None with fewer
    than two counts."""
    if len(by_copies) < 2:
        return None
    k = np.array([int(n) for n in by_copies], dtype=np.float64)
    med = np.array([v["median"] for v in by_copies.values()], dtype=np.float64)
    w = np.array([v["layers"] for v in by_copies.values()], dtype=np.float64)
    slope, base = np.polyfit(k, med, 1, w=np.sqrt(w))
    return {"base_ms": float(base), "per_copy_ms": float(slope)}


def _run_layers(device: ReplayDevice, decisions: list[LayerDecisions], link: _Link, per_expert: bool, E: int,
                L: int, host: np.ndarray) -> list[Any]:
    markers = [device.step_marker()]
    clock = time.perf_counter
    for i, d in enumerate(decisions):
        layer = d.layer
        device.wait(device.non_expert(layer), link.pump)
        seen = clock()
        issued = link.counts["demand"] + link.counts["promoted"]
        device.read_routing(layer)
        base = layer * E
        for e, slot, _, source in d.need:
            if source == SOURCE_DEMAND:
                link.demand(slot, base + e)
            else:
                link.ensure(slot, base + e)
        for pl, pe, slot in d.prefetch:
            link.enqueue(slot, pl * E + pe)
        link.pump()
        decided = clock()
        host[i, _H_COPIES] = link.counts["demand"] + link.counts["promoted"] - issued
        if per_expert:
            landed, waiting = [], []
            for _, slot, ntok, _ in d.need:
                entry = link.pending_copy(slot)
                if entry is None:
                    landed.append((slot, ntok, None))
                else:
                    waiting.append((entry[1], slot, ntok, entry[0]))
            waiting.sort(key=lambda w: w[0])
            for slot, ntok, marker in landed + [(w[1], w[2], w[3]) for w in waiting]:
                link.last_read[slot] = device.expert(slot, ntok, () if marker is None else (marker,))
        else:
            waits = []
            for _, slot, _, _ in d.need:
                entry = link.pending_copy(slot)
                if entry is not None:
                    waits.append(entry[0])
            for _, slot, ntok, _ in d.need:
                link.last_read[slot] = device.expert(slot, ntok, waits)
                waits = ()
        host[i, _H_DECIDE] = (decided - seen) * 1e3
        host[i, _H_LAUNCH] = (clock() - decided) * 1e3 / max(len(d.need), 1)
        if layer == L - 1:
            device.end_step()
            markers.append(device.step_marker())
    return markers


def replay(
    device: ReplayDevice,
    log: DecisionLog,
    *,
    order: str = "fused",
    window: int = 1,
    warmup_steps: int = 16,
    prepared: bool = False,
) -> dict[str, Any]:
    """Execute ``log`` on ``device`` in execution order ``order``; returns per-step latencies (ms) and counters.

    ``warmup_steps`` steps of the log are run first and discarded (kernel selection, lazy loading), then the
    slots are reset to the log's initial contents and the whole log runs timed.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown execution order {order!r}; choose one of {', '.join(ORDERS)}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not prepared:
        device.prepare(log)
    decisions = list(log.iter_decisions())
    if warmup_steps > 0:
        head = min(warmup_steps, log.num_steps)
        device.reset(log)
        _run(device, log, decisions[: head * log.num_layers], order, window)
    device.reset(log)
    started = time.perf_counter()
    result = _run(device, log, decisions, order, window)
    result["wall_s"] = time.perf_counter() - started
    result["order"] = order
    result["window"] = window
    result["device"] = device.name
    return result


# ------------------------------------------------------------------------------------------ the fake device


class FakeReplayDevice:
    """CUDA's stream semantics with modelled durations, on the CPU (for tests and ``--device fake``).

    A compute stream and a copy stream each run their work in order; work starts when its stream is free, the
    host has issued it, and every marker it waits for has passed. Durations come from a
    :class:`ReferenceTiming`: the host spends ``host_ms`` reading each layer's routing and deciding,
    ``launch_ms`` per expert launch, ``layer_launch_ms`` per non-expert launch and ``copy_launch_ms`` per copy
    issue (default: the timing's ``copy_issue_ms``). Markers are times in ms. Deterministic.
    """

    name = "fake"

    def __init__(self, timing: ReferenceTiming, *, copy_launch_ms: float | None = None) -> None:
        self.timing = timing
        self.launch_ms = float(timing.launch_ms)
        self.layer_launch_ms = float(timing.layer_launch_ms)
        self.copy_launch_ms = float(timing.copy_issue_ms if copy_launch_ms is None else copy_launch_ms)
        self.read_ms = float(timing.host_ms)
        self.reset(None)

    def prepare(self, log: DecisionLog) -> None:
        if log.batch >= len(self.timing.compute_ms):
            raise ReplayError(f"the fake's compute table stops at {len(self.timing.compute_ms) - 1} tokens")

    def reset(self, log: DecisionLog | None) -> None:
        self.host = 0.0
        self.compute_tail = 0.0
        self.copy_tail = 0.0
        self.copy_ends: list[float] = []

    def start_run(self) -> None:
        pass

    def end_run(self) -> None:
        pass

    def step_marker(self) -> float:
        return max(self.compute_tail, self.host)

    def _launch(self, tail: float, duration: float, cost: float, after: float = -math.inf) -> float:
        self.host += cost
        return max(tail, self.host, after) + duration

    def non_expert(self, layer: int) -> float:
        self.compute_tail = self._launch(self.compute_tail, self.timing.non_expert_ms, self.layer_launch_ms)
        return self.compute_tail

    def wait(self, marker: float, poll: Callable[[], None]) -> None:
        poll()
        while self.host < marker:
            i = bisect.bisect_right(self.copy_ends, self.host)
            nxt = self.copy_ends[i] if i < len(self.copy_ends) else math.inf
            self.host = min(marker, nxt)
            poll()

    def read_routing(self, layer: int) -> None:
        self.host += self.read_ms

    def copy(self, key: int, slot: int, after: float | None) -> float:
        self.copy_tail = self._launch(self.copy_tail, self.timing.transfer_ms, self.copy_launch_ms,
                                      -math.inf if after is None else after)
        self.copy_ends.append(self.copy_tail)
        return self.copy_tail

    def done(self, marker: float) -> bool:
        return marker <= self.host

    def expert(self, slot: int, ntokens: int, waits: Sequence[float]) -> float:
        after = max(waits) if waits else -math.inf
        self.compute_tail = self._launch(self.compute_tail, self.timing.compute_ms[ntokens], self.launch_ms, after)
        return self.compute_tail

    def end_step(self) -> None:
        pass

    def elapsed_ms(self, markers: Sequence[float]) -> list[float]:
        return [b - a for a, b in zip(markers, markers[1:])]


# ------------------------------------------------------------------------------------------ the CUDA device


@dataclass(frozen=True)
class CudaReplayConfig:
    """How :class:`CudaReplayDevice` builds the model it replays on.

    Attributes:
        layer: the non-expert geometry (``profiles.shapes.LayerShape``).
        hidden, intermediate: the SwiGLU expert's shape (the copy is the log's full ``expert_bytes``).
        batch, context: the decode batch and the context length the attention reads.
        host_memory_gib: at most this much pinned host memory for expert weights; with more experts than fit,
            experts share weights (key modulo the number stored).
        non_expert: ``"graph"`` (each layer's non-expert work is one CUDA graph launch) or ``"eager"``.
        seed: seed of the random weights.
    """

    layer: Any
    hidden: int
    intermediate: int
    batch: int = 1
    context: int = 512
    host_memory_gib: float = 48.0
    non_expert: str = "graph"
    device_index: int = 0
    seed: int = 0


class CudaReplayDevice:
    """The replay on a CUDA GPU through torch (see the module docstring)."""

    name = "cuda"

    def __init__(self, config: CudaReplayConfig, progress: Callable[[str], None] | None = None) -> None:
        import torch

        if not torch.cuda.is_available():
            raise ReplayError(
                "no CUDA device: replay-gpu executes on a GPU and needs a CUDA build of torch with a visible GPU "
                f"(torch {torch.__version__}: torch.cuda.is_available() is False); --device fake runs the replay "
                "logic with modelled times instead"
            )
        self.torch = torch
        self.config = config
        self.say = progress or (lambda _msg: None)
        self.device = torch.device("cuda", config.device_index)
        torch.cuda.set_device(self.device)
        self.compute = torch.cuda.Stream(self.device)
        self.copy_stream = torch.cuda.Stream(self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(config.seed)
        self._prepared_for: tuple[int, int, int, int] | None = None
        self.timings: dict[str, float] = {}

    # -- setup

    def prepare(self, log: DecisionLog) -> None:
        torch = self.torch
        cfg = self.config
        key = (log.num_layers, log.num_experts, log.num_slots, log.expert_bytes)
        if self._prepared_for is not None:
            if key[:2] == self._prepared_for[:2] and key[3] == self._prepared_for[3] and key[2] <= self._prepared_for[2]:
                return
            raise ReplayError("this device was prepared for a log of another geometry; make a new one")
        if log.batch > cfg.batch:
            raise ReplayError(f"the log's batch {log.batch} exceeds the device's batch {cfg.batch}")
        H, I = cfg.hidden, cfg.intermediate
        if 3 * H * I * 2 > log.expert_bytes:
            raise ReplayError(f"expert {H}x{I} bf16 is larger than the log's expert_bytes {log.expert_bytes}")
        if log.expert_bytes % 2:
            raise ReplayError("expert_bytes must be even (bf16 slots)")
        elems = log.expert_bytes // 2
        t0 = time.perf_counter()
        # GPU slot pool
        self.slots = torch.empty((log.num_slots, elems), dtype=torch.bfloat16, device=self.device)
        IH = I * H
        self.views = [(s[:IH].view(I, H), s[IH:2 * IH].view(I, H), s[2 * IH:3 * IH].view(H, I)) for s in self.slots]
        self.read_events = [torch.cuda.Event() for _ in range(log.num_slots)]
        self.timings["slots_s"] = time.perf_counter() - t0
        # pinned host weights, in chunks of a power of two (the pinned allocator rounds sizes up to one)
        t0 = time.perf_counter()
        keys = log.num_layers * log.num_experts
        per_chunk = max(1, GIB // log.expert_bytes)
        stored = min(keys, max(1, int(cfg.host_memory_gib * GIB) // log.expert_bytes))
        self.host_keys = stored
        chunk_bytes = 1 << math.ceil(math.log2(per_chunk * log.expert_bytes))
        self.host_chunks = []
        self.host_views = []
        filler = torch.empty(per_chunk * elems, dtype=torch.bfloat16, device=self.device)
        remaining = stored
        while remaining > 0:
            n = min(per_chunk, remaining)
            chunk = torch.empty(chunk_bytes // 2, dtype=torch.bfloat16, pin_memory=True)
            filler.normal_(0.0, 0.02, generator=self.gen)
            chunk[: n * elems].copy_(filler[: n * elems])
            self.host_chunks.append(chunk)
            self.host_views.extend(chunk[i * elems:(i + 1) * elems] for i in range(n))
            remaining -= n
        del filler
        torch.cuda.synchronize()
        self.timings["host_weights_s"] = time.perf_counter() - t0
        self.say(f"pinned {stored} experts ({stored * log.expert_bytes / GIB:.1f} GiB) in "
                 f"{self.timings['host_weights_s']:.1f} s")
        # the non-expert layers, each a CUDA graph reading and writing the static hidden state
        t0 = time.perf_counter()
        from moe_cache_env.profiles.layer import DecodeLayer

        B = cfg.batch
        self.h0 = torch.randn((B, H), device=self.device, generator=self.gen).to(torch.bfloat16)
        self.h = self.h0.clone()
        self.layers = [DecodeLayer(cfg.layer, batch=B, context=cfg.context, device=self.device,
                                   dtype=torch.bfloat16, generator=self.gen) for _ in range(log.num_layers)]
        self.layer_out: list[tuple[Any, Any, Any]] = []
        with torch.no_grad():
            for lay in self.layers:
                def step(lay: Any = lay) -> tuple[Any, Any]:
                    h_new, m, _, ids = lay(self.h)
                    self.h.copy_(h_new)
                    return m, ids

                with torch.cuda.stream(self.compute):
                    step()
                self.compute.synchronize()
                if cfg.non_expert == "graph":
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.compute):
                        m, ids = step()
                    self.layer_out.append((graph, m, ids))
                else:
                    self.layer_out.append((step, None, None))
        self.h.copy_(self.h0)
        torch.cuda.synchronize()
        self.router_event = torch.cuda.Event()
        self.timings["layers_s"] = time.perf_counter() - t0
        self._prepared_for = key

    def reset(self, log: DecisionLog) -> None:
        torch = self.torch
        torch.cuda.synchronize()
        for slot, key in enumerate(log.initial_slots.tolist()):
            if key >= 0:
                self.slots[slot].copy_(self.host_views[key % self.host_keys])
        self.h.copy_(self.h0)
        torch.cuda.synchronize()

    # -- the interface (between start_run and end_run the compute stream is current and autograd is off, so
    # that the per-call host work is what an engine's would be: no context managers on the hot path)

    def start_run(self) -> None:
        torch = self.torch
        self._saved = (torch.cuda.current_stream(self.device), torch.is_grad_enabled())
        torch.set_grad_enabled(False)
        torch.cuda.set_stream(self.compute)
        B = self.config.batch
        self._h_rows = [self.h[:n] for n in range(B + 1)]

    def end_run(self) -> None:
        stream, grad = self._saved
        self.torch.cuda.set_stream(stream)
        self.torch.set_grad_enabled(grad)

    def step_marker(self) -> Any:
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record(self.compute)
        return ev

    def non_expert(self, layer: int) -> Any:
        graph, m, ids = self.layer_out[layer]
        if m is None:
            m, ids = graph()
        else:
            graph.replay()
        self.cur_m, self.cur_ids = m, ids
        self._m_rows = None
        self.router_event.record(self.compute)
        return self.router_event

    def wait(self, marker: Any, poll: Callable[[], None]) -> None:
        poll()
        while not marker.query():
            poll()

    def read_routing(self, layer: int) -> None:
        self.cur_ids.cpu()

    def copy(self, key: int, slot: int, after: Any | None) -> Any:
        torch = self.torch
        stream = self.copy_stream
        if after is not None:
            stream.wait_event(after)
        torch.cuda.set_stream(stream)
        self.slots[slot].copy_(self.host_views[key % self.host_keys], non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(stream)
        torch.cuda.set_stream(self.compute)
        return ev

    def done(self, marker: Any) -> bool:
        return marker.query()

    def expert(self, slot: int, ntokens: int, waits: Sequence[Any]) -> Any:
        F = self.torch.nn.functional
        compute = self.compute
        for w in waits:
            compute.wait_event(w)
        gate, up, down = self.views[slot]
        x = self.cur_m if ntokens == self.config.batch else self.cur_m[:ntokens]
        self._h_rows[ntokens].add_(F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down))
        ev = self.read_events[slot]
        ev.record(compute)
        return ev

    def end_step(self) -> None:
        self.h.copy_(self.h0)

    def elapsed_ms(self, markers: Sequence[Any]) -> list[float]:
        self.torch.cuda.synchronize()
        if not bool(self.torch.isfinite(self.h).all()):
            raise ReplayError("the replay's hidden state is not finite: the expert or layer kernels misbehaved")
        return [float(a.elapsed_time(b)) for a, b in zip(markers, markers[1:])]

    def info(self) -> dict[str, Any]:
        torch = self.torch
        props = torch.cuda.get_device_properties(self.device)
        return {"name": torch.cuda.get_device_name(self.device), "torch": torch.__version__,
                "cuda_runtime": torch.version.cuda, "multiprocessors": int(props.multi_processor_count),
                "host_experts_stored": self.host_keys, "setup_s": dict(self.timings)}
