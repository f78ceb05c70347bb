"""GPU calibration: measure copy and expert-compute times on a CUDA device and turn them into a profile.

The module has four layers, so that everything except the CUDA calls runs (and is tested) on a CPU:

- timing primitives: :class:`Timer`, :func:`measure_ms`, :class:`TimingStats`;
- :class:`CalibrationPlan`: what to measure (sizes, token counts, repeats);
- :class:`CudaBackend`: the only code that needs torch and a CUDA device; it times one kind of operation
  per method and returns the samples;
- :func:`run_calibration` drives any backend through a plan and returns the raw measurements, and
  :func:`build_profile` (pure) fits them and assembles a ``moe-profile/1`` dictionary. :func:`rebuild_profile`
  recomputes a profile's fitted fields from the raw measurements it carries.

Method (see ``docs/hardware-profiles.md``): every point is timed with CUDA events after warm-up runs, repeated,
and summarised by its median with the 10th and 90th percentiles as spread. Copies use preallocated buffers
filled with random bytes. Expert compute rotates over enough weight sets to overflow the GPU's L2 cache, so
weights are read from device memory as they would be in a real forward pass.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from moe_cache_env.profiles.profile import PROFILE_FORMAT, ProfileError, fit_transfer
from moe_cache_env.profiles.shapes import (
    MODEL_EXPERT_SHAPES,
    ExpertShape,
    LayerShape,
    dtype_bytes,
    expert_shape_for_bytes,
)

MIB = 2**20

#: Copy directions and host memory kinds of the transfer sweep.
DIRECTIONS = ("h2d", "d2h")
MEMORY_KINDS = ("pinned", "pageable")

#: Sample times are stored rounded to this many decimals of a millisecond (1 ns): finer than CUDA events
#: resolve (about 0.5 us), and it keeps the recorded profile a fixed point of :func:`rebuild_profile`.
SAMPLE_DECIMALS = 6


class CalibrationError(RuntimeError):
    """Calibration cannot run here (no CUDA device, not enough memory, a failed sanity check)."""


# --------------------------------------------------------------------------------------------- timing


class Timer(Protocol):
    """Times one region of work: ``start()``, enqueue the work, then ``stop()`` returns elapsed ms."""

    def start(self) -> None: ...

    def stop(self) -> float: ...


def measure_ms(
    work: Callable[[int], None], *, repeats: int, warmup: int, timer: Timer
) -> list[float]:
    """Run ``work(i)`` ``warmup`` times untimed-for-results, then ``repeats`` times, each timed alone.

    ``work`` gets the running iteration index (warm-up included), so it can rotate over inputs. Each timed
    call is bracketed by ``timer.start()`` / ``timer.stop()``, and ``stop`` waits for the work to finish, so
    samples are independent. Returns the samples in ms, rounded to :data:`SAMPLE_DECIMALS`.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for i in range(warmup):
        timer.start()
        work(i)
        timer.stop()
    samples: list[float] = []
    for i in range(warmup, warmup + repeats):
        timer.start()
        work(i)
        samples.append(round(float(timer.stop()), SAMPLE_DECIMALS))
    return samples


@dataclass(frozen=True)
class TimingStats:
    """Median and spread of repeated timings (ms)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "TimingStats":
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all() or (values <= 0).any():
            raise ValueError(f"timing samples must be a non-empty list of positive finite ms, got {samples_ms!r}")
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        return cls(
            median_ms=float(p50),
            p10_ms=float(p10),
            p90_ms=float(p90),
            min_ms=float(values.min()),
            max_ms=float(values.max()),
            n=int(len(values)),
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- plan


def _sizes_mib(exponents: Iterable[int]) -> tuple[int, ...]:
    return tuple(2**k * MIB for k in exponents)


@dataclass(frozen=True)
class CalibrationPlan:
    """What :func:`run_calibration` measures, and how often.

    Attributes:
        transfer_sizes_bytes: sizes of the host<->GPU sweep (default 1 MiB .. 1 GiB in powers of two).
        transfer_repeats: timed repeats of each sweep point.
        warmup: untimed runs before each point's repeats.
        expert_counts: how many experts to copy, separately and as one contiguous block.
        expert_repeats: timed repeats of each expert-copy point.
        token_counts: token counts for the expert-compute measurement.
        compute_repeats: timed repeats of each compute point.
        overlap_tokens: token count of the compute that runs beside a side-stream copy.
        overlap_repeats: timed repeats of the overlap experiment.
        scaling_tokens: token counts at which every preset's own expert shape is timed (the compute-scaling
            fit, ``fixed_ms + bytes / bandwidth``).
        scaling_repeats: timed repeats of each compute-scaling point.
        non_expert_batches, non_expert_contexts: the grid of batch sizes and context lengths at which the
            non-expert part of a layer (attention, router, norms, shared experts) is timed.
        non_expert_repeats: timed repeats of each non-expert point.
        default_batch, default_context: the grid point whose time becomes ``layer_overhead_ms``.
        host_layers: layers in the host-decision-cost loop (distinct layer weights, as in a model).
        host_repeats: timed repeats of each host-cost mode.
    """

    transfer_sizes_bytes: tuple[int, ...] = _sizes_mib(range(11))
    transfer_repeats: int = 30
    warmup: int = 3
    expert_counts: tuple[int, ...] = (1, 4, 20)
    expert_repeats: int = 30
    token_counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    compute_repeats: int = 50
    overlap_tokens: int = 16
    overlap_repeats: int = 20
    scaling_tokens: tuple[int, ...] = (1, 4, 16, 64, 256)
    scaling_repeats: int = 30
    non_expert_batches: tuple[int, ...] = (1, 4, 16, 64)
    non_expert_contexts: tuple[int, ...] = (512, 2048, 8192)
    non_expert_repeats: int = 30
    default_batch: int = 1
    default_context: int = 512
    host_layers: int = 24
    host_repeats: int = 20

    def __post_init__(self) -> None:
        for name in ("transfer_sizes_bytes", "expert_counts", "token_counts", "scaling_tokens",
                     "non_expert_batches", "non_expert_contexts"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"calibration plan: {name} must be a non-empty list of positive integers")
            if list(values) != sorted(set(values)):
                raise ValueError(f"calibration plan: {name} must be strictly increasing, got {list(values)}")
        if len(self.transfer_sizes_bytes) < 2:
            raise ValueError("calibration plan: transfer_sizes_bytes needs at least two sizes to fit a line")
        if self.default_batch not in self.non_expert_batches:
            raise ValueError(f"calibration plan: default_batch {self.default_batch} is not in non_expert_batches")
        if self.default_context not in self.non_expert_contexts:
            raise ValueError(f"calibration plan: default_context {self.default_context} is not in non_expert_contexts")
        for name in ("transfer_repeats", "expert_repeats", "compute_repeats", "overlap_repeats", "overlap_tokens",
                     "scaling_repeats", "non_expert_repeats", "host_layers", "host_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"calibration plan: {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"calibration plan: warmup must be >= 0, got {self.warmup}")

    @classmethod
    def quick(cls) -> "CalibrationPlan":
        """A plan of a few seconds: three sizes, few repeats (for smoke tests, not for shipped profiles)."""
        return cls(
            transfer_sizes_bytes=_sizes_mib((0, 4, 8)),
            transfer_repeats=5,
            warmup=2,
            expert_counts=(1, 4, 20),
            expert_repeats=5,
            token_counts=(1, 16, 256),
            compute_repeats=10,
            overlap_tokens=16,
            overlap_repeats=5,
            scaling_tokens=(1, 16),
            scaling_repeats=5,
            non_expert_batches=(1, 8),
            non_expert_contexts=(512,),
            non_expert_repeats=5,
            host_layers=8,
            host_repeats=3,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CalibrationPlan":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"calibration plan: unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def max_transfer_bytes(self) -> int:
        return max(self.transfer_sizes_bytes)


# -------------------------------------------------------------------------------------------- backend


class CalibrationBackend(Protocol):
    """What :func:`run_calibration` needs from a device. All times are per-repeat samples in ms."""

    expert_bytes: int

    def device_info(self) -> dict[str, Any]: ...

    def transfer_samples_ms(
        self, direction: str, memory: str, nbytes: int, copies: int, *, repeats: int, warmup: int
    ) -> list[float]:
        """``copies`` copies of ``nbytes`` each, issued back to back on one stream, timed together."""
        ...

    def device_copy_samples_ms(self, nbytes: int, *, repeats: int, warmup: int) -> tuple[list[float], str]:
        """GPU-to-GPU copy of ``nbytes``; also returns what kind of copy it was."""
        ...

    def compute_samples_ms(self, tokens: int, *, repeats: int, warmup: int) -> dict[str, Any]:
        """One expert applied to ``tokens`` tokens: ``{"graph": [...], "eager": [...], "weight_sets": n}``."""
        ...

    def compute_check(self, tokens: int) -> dict[str, float]:
        """Relative error of the timed expert (eager and graph-replayed) against a float64 reference."""
        ...

    def overlap_samples_ms(self, copy_bytes: int, tokens: int, *, repeats: int, warmup: int) -> dict[str, Any]:
        """Compute alone, copy alone, and both at once (copy on a side stream); see :class:`CudaBackend`."""
        ...

    def shape_compute_samples_ms(self, shape: ExpertShape, tokens: int, *, repeats: int, warmup: int) -> list[float]:
        """Graph-replayed compute of one expert of another ``shape`` (per expert), for the scaling fit."""
        ...

    def non_expert_samples_ms(
        self, layer: LayerShape, batch: int, context: int, *, repeats: int, warmup: int
    ) -> dict[str, Any]:
        """One layer's non-expert work per layer: ``{"graph", "eager", "attention", "router", "shared_expert"
        (samples, ms), "instances": n, "check": {...}}``; see :class:`CudaBackend`."""
        ...

    def host_samples_ms(
        self, layer: LayerShape, batch: int, context: int, *, layers: int, repeats: int, warmup: int
    ) -> dict[str, Any]:
        """Per-layer time of ``layers`` layers with all experts resident: ``{"graph", "pipelined", "synced"}``
        samples (ms per layer); see :class:`CudaBackend`."""
        ...


def _nvidia_smi_query(index: int, fields: Sequence[str]) -> dict[str, str | None]:
    """Ask nvidia-smi for some ``--query-gpu`` fields; ``None`` for any it cannot answer."""
    empty: dict[str, str | None] = {f: None for f in fields}
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return empty
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", str(index)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return empty
    values = [v.strip() for v in out.split(",")]
    if len(values) != len(fields):
        return empty
    return {f: (None if v in ("", "[N/A]", "N/A") else v) for f, v in zip(fields, values)}


class _CudaEventTimer:
    """:class:`Timer` on CUDA events recorded on one stream; ``stop`` waits for the end event."""

    def __init__(self, torch_module: Any, stream: Any) -> None:
        self._stream = stream
        self._start = torch_module.cuda.Event(enable_timing=True)
        self._end = torch_module.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record(self._stream)

    def stop(self) -> float:
        self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


class CudaBackend:
    """Measurements on one CUDA device through torch.

    Buffers (pinned host, pageable host, device) are allocated once, large enough for the largest sweep
    size and the largest expert block, and filled with random bytes; all work runs on a dedicated stream.
    """

    def __init__(
        self,
        shape: ExpertShape,
        dtype: str,
        plan: CalibrationPlan,
        *,
        device_index: int = 0,
        seed: int = 0,
    ) -> None:
        import torch

        if not torch.cuda.is_available():
            raise CalibrationError(
                "no CUDA device: calibrate measures a GPU and needs a CUDA build of torch with a visible GPU "
                f"(torch {torch.__version__}: torch.cuda.is_available() is False)"
            )
        if not 0 <= device_index < torch.cuda.device_count():
            raise CalibrationError(
                f"CUDA device {device_index} does not exist; this machine has {torch.cuda.device_count()}"
            )
        self.torch = torch
        self.shape = shape
        self.dtype_name = dtype
        self.torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        self.expert_bytes = shape.expert_bytes(dtype)
        self.device_index = device_index
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(self.device)
        self.side_stream = torch.cuda.Stream(self.device)
        self.timer = _CudaEventTimer(torch, self.stream)
        self.side_timer = _CudaEventTimer(torch, self.side_stream)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed)

        buffer_bytes = max(plan.max_transfer_bytes, max(plan.expert_counts) * self.expert_bytes)
        with torch.cuda.stream(self.stream):
            self.dev = torch.randint(0, 256, (buffer_bytes,), dtype=torch.uint8, device=self.device, generator=self._gen)
            self.pinned = torch.empty(buffer_bytes, dtype=torch.uint8, pin_memory=True)
            self.pinned.copy_(self.dev)
        self.stream.synchronize()
        # Pageable memory from the ordinary allocator, touched once so first-use page faults are not timed.
        self.pageable = torch.empty(buffer_bytes, dtype=torch.uint8)
        self.pageable.copy_(self.pinned)
        if self.pageable.is_pinned():
            raise CalibrationError("the pageable test buffer came out pinned; pageable timings would be wrong")
        self.dev_copy_dst = torch.empty(self.expert_bytes, dtype=torch.uint8, device=self.device)
        self._weights: list[tuple[Any, Any, Any]] | None = None
        self._graphs: dict[int, tuple[Any, Any, list[Any]]] = {}

    # -- device facts

    def device_info(self) -> dict[str, Any]:
        torch = self.torch
        props = torch.cuda.get_device_properties(self.device)
        smi = _nvidia_smi_query(
            self.device_index,
            ["driver_version", "pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current",
             "pcie.link.width.max"],
        )
        cuda_driver_api = None
        try:
            cuda_driver_api = int(torch._C._cuda_getDriverVersion())
        except (AttributeError, RuntimeError):
            pass
        return {
            "name": torch.cuda.get_device_name(self.device),
            "index": self.device_index,
            "device_count": torch.cuda.device_count(),
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": int(props.multi_processor_count),
            "total_memory_bytes": int(props.total_memory),
            "l2_cache_bytes": int(getattr(props, "L2_cache_size", 0)) or None,
            "driver": smi["driver_version"],
            "cuda_driver_api_version": cuda_driver_api,
            "cuda_runtime": torch.version.cuda,
            "torch": torch.__version__,
            "pcie_link": {
                "gen_current": smi["pcie.link.gen.current"],
                "gen_max": smi["pcie.link.gen.max"],
                "width_current": smi["pcie.link.width.current"],
                "width_max": smi["pcie.link.width.max"],
            },
            "host": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "os": platform.platform(),
            },
        }

    # -- copies

    def transfer_samples_ms(
        self, direction: str, memory: str, nbytes: int, copies: int, *, repeats: int, warmup: int
    ) -> list[float]:
        if direction not in DIRECTIONS or memory not in MEMORY_KINDS:
            raise ValueError(f"unknown copy {direction}/{memory}")
        host = self.pinned if memory == "pinned" else self.pageable
        # Pinned copies are asynchronous DMA; pageable ones are staged by the driver and block the host.
        non_blocking = memory == "pinned"
        slices = [(self.dev[c * nbytes:(c + 1) * nbytes], host[c * nbytes:(c + 1) * nbytes]) for c in range(copies)]
        if direction == "h2d":
            pairs = slices
        else:
            pairs = [(h, d) for d, h in slices]

        def work(_: int) -> None:
            for dst, src in pairs:
                dst.copy_(src, non_blocking=non_blocking)

        with self.torch.cuda.stream(self.stream):
            return measure_ms(work, repeats=repeats, warmup=warmup, timer=self.timer)

    def device_copy_samples_ms(self, nbytes: int, *, repeats: int, warmup: int) -> tuple[list[float], str]:
        torch = self.torch
        src = self.dev[:nbytes]
        if torch.cuda.device_count() > 1:
            peer = (self.device_index + 1) % torch.cuda.device_count()
            dst = torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", peer))
            access = torch.cuda.can_device_access_peer(self.device_index, peer)
            kind = f"peer cuda:{self.device_index} -> cuda:{peer} (peer access {'on' if access else 'off'})"
        else:
            dst = self.dev_copy_dst[:nbytes]
            kind = "same device (one GPU present): one buffer to another"

        def work(_: int) -> None:
            dst.copy_(src, non_blocking=True)

        with torch.cuda.stream(self.stream):
            return measure_ms(work, repeats=repeats, warmup=warmup, timer=self.timer), kind

    # -- expert compute

    def _expert(self, x: Any, gate: Any, up: Any, down: Any) -> Any:
        functional = self.torch.nn.functional
        return functional.linear(functional.silu(functional.linear(x, gate)) * functional.linear(x, up), down)

    def _weight_sets(self) -> list[tuple[Any, Any, Any]]:
        """Enough expert weight sets to fill 4x the L2 cache (at least 2, at most 8 GiB of weights)."""
        if self._weights is None:
            torch = self.torch
            props = torch.cuda.get_device_properties(self.device)
            l2_bytes = int(getattr(props, "L2_cache_size", 0)) or 64 * MIB
            sets = max(2, math.ceil(4 * l2_bytes / self.expert_bytes))
            sets = max(2, min(sets, (8 * 2**30) // self.expert_bytes, 64))
            h, i = self.shape.hidden, self.shape.intermediate
            scale = 1.0 / math.sqrt(h)
            weights = []
            for _ in range(sets):
                def rand(rows: int, cols: int, s: float) -> Any:
                    w = torch.randn((rows, cols), device=self.device, generator=self._gen, dtype=torch.float32)
                    return (w * s).to(self.torch_dtype)
                weights.append((rand(i, h, scale), rand(i, h, scale), rand(h, i, 1.0 / math.sqrt(i))))
            self._weights = weights
        return self._weights

    def _inputs(self, tokens: int) -> Any:
        torch = self.torch
        return torch.randn((tokens, self.shape.hidden), device=self.device, generator=self._gen).to(self.torch_dtype)

    def _graph(self, tokens: int) -> tuple[Any, Any, list[Any]]:
        """A CUDA graph applying every weight set once to a static input of ``tokens`` tokens."""
        if tokens not in self._graphs:
            torch = self.torch
            weights = self._weight_sets()
            x = self._inputs(tokens)
            # Warm up outside capture (cuBLAS picks and caches its kernels), as torch.cuda.graph requires.
            with torch.cuda.stream(self.stream):
                for w in weights:
                    self._expert(x, *w)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                outs = [self._expert(x, *w) for w in weights]
            self._graphs[tokens] = (graph, x, outs)
        return self._graphs[tokens]

    def compute_samples_ms(self, tokens: int, *, repeats: int, warmup: int) -> dict[str, Any]:
        torch = self.torch
        weights = self._weight_sets()
        x = self._inputs(tokens)

        def eager(i: int) -> None:
            self._expert(x, *weights[i % len(weights)])

        with torch.cuda.stream(self.stream):
            eager_ms = measure_ms(eager, repeats=repeats, warmup=warmup, timer=self.timer)
            graph, _, _ = self._graph(tokens)
            replay_ms = measure_ms(lambda _: graph.replay(), repeats=repeats, warmup=warmup, timer=self.timer)
        per_expert = [round(t / len(weights), SAMPLE_DECIMALS) for t in replay_ms]
        return {"graph": per_expert, "eager": eager_ms, "weight_sets": len(weights)}

    def compute_check(self, tokens: int) -> dict[str, float]:
        torch = self.torch
        graph, x, outs = self._graph(tokens)
        with torch.cuda.stream(self.stream):
            graph.replay()
            w = self._weight_sets()[0]
            eager = self._expert(x, *w)
            ref = self._expert(x.double(), *(t.double() for t in w))
        self.stream.synchronize()

        def rel(out: Any) -> float:
            return float(torch.linalg.vector_norm(out.double() - ref) / torch.linalg.vector_norm(ref))

        return {"tokens": tokens, "eager_rel_error": rel(eager), "graph_rel_error": rel(outs[0])}

    # -- overlap

    def overlap_samples_ms(self, copy_bytes: int, tokens: int, *, repeats: int, warmup: int) -> dict[str, Any]:
        """Does a pinned H2D copy on a side stream overlap expert compute on the main stream?

        Times, each ``repeats`` times: the copy alone (side stream); ``replays`` graph replays alone, with
        ``replays`` chosen so the compute lasts about as long as the copy; and both launched together, giving
        the compute's time, the copy's time and the total until both are done.
        """
        torch = self.torch
        graph, _, _ = self._graph(tokens)
        dst, src = self.dev[:copy_bytes], self.pinned[:copy_bytes]

        def copy(_: int) -> None:
            dst.copy_(src, non_blocking=True)

        with torch.cuda.stream(self.side_stream):
            copy_alone = measure_ms(copy, repeats=repeats, warmup=warmup, timer=self.side_timer)
        with torch.cuda.stream(self.stream):
            one_replay = measure_ms(lambda _: graph.replay(), repeats=repeats, warmup=warmup, timer=self.timer)
        replays = max(1, round(float(np.median(copy_alone)) / float(np.median(one_replay))))

        def compute(_: int) -> None:
            for _ in range(replays):
                graph.replay()

        with torch.cuda.stream(self.stream):
            compute_alone = measure_ms(compute, repeats=repeats, warmup=warmup, timer=self.timer)

        events = {k: torch.cuda.Event(enable_timing=True) for k in ("start", "copy_start", "copy_end", "compute_end", "end")}
        compute_with_copy, copy_with_compute, total = [], [], []
        for i in range(warmup + repeats):
            events["start"].record(self.stream)
            self.side_stream.wait_event(events["start"])
            events["copy_start"].record(self.side_stream)
            with torch.cuda.stream(self.side_stream):
                dst.copy_(src, non_blocking=True)
            events["copy_end"].record(self.side_stream)
            with torch.cuda.stream(self.stream):
                compute(i)
            events["compute_end"].record(self.stream)
            self.stream.wait_event(events["copy_end"])
            events["end"].record(self.stream)
            events["end"].synchronize()
            if i >= warmup:
                compute_with_copy.append(round(events["start"].elapsed_time(events["compute_end"]), SAMPLE_DECIMALS))
                copy_with_compute.append(round(events["copy_start"].elapsed_time(events["copy_end"]), SAMPLE_DECIMALS))
                total.append(round(events["start"].elapsed_time(events["end"]), SAMPLE_DECIMALS))
        return {
            "copy_bytes": copy_bytes,
            "tokens": tokens,
            "replays": replays,
            "experts_per_replay": len(self._weight_sets()),
            "copy_alone_samples_ms": copy_alone,
            "compute_alone_samples_ms": compute_alone,
            "compute_with_copy_samples_ms": compute_with_copy,
            "copy_with_compute_samples_ms": copy_with_compute,
            "total_concurrent_samples_ms": total,
        }



    # -- compute of other expert shapes

    def shape_compute_samples_ms(self, shape: ExpertShape, tokens: int, *, repeats: int, warmup: int) -> list[float]:
        """Like :meth:`compute_samples_ms` (graph replay over weight sets past the L2), for another shape."""
        torch = self.torch
        eb = shape.expert_bytes(self.dtype_name)
        props = torch.cuda.get_device_properties(self.device)
        l2_bytes = int(getattr(props, "L2_cache_size", 0)) or 64 * MIB
        sets = max(2, min(math.ceil(4 * l2_bytes / eb), (8 * 2**30) // eb, 64))
        h, i = shape.hidden, shape.intermediate

        def rand(rows: int, cols: int, s: float) -> Any:
            w = torch.randn((rows, cols), device=self.device, generator=self._gen, dtype=torch.float32)
            return (w * s).to(self.torch_dtype)

        weights = [(rand(i, h, 1 / math.sqrt(h)), rand(i, h, 1 / math.sqrt(h)), rand(h, i, 1 / math.sqrt(i)))
                   for _ in range(sets)]
        x = torch.randn((tokens, h), device=self.device, generator=self._gen).to(self.torch_dtype)
        with torch.cuda.stream(self.stream):
            for w in weights:
                self._expert(x, *w)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            outs = [self._expert(x, *w) for w in weights]
        with torch.cuda.stream(self.stream):
            replay_ms = measure_ms(lambda _: graph.replay(), repeats=repeats, warmup=warmup, timer=self.timer)
        self.stream.synchronize()
        if not bool(torch.isfinite(outs[0]).all()):
            raise CalibrationError(f"expert {h}x{i}: non-finite output")
        del graph, outs, weights
        torch.cuda.empty_cache()
        return [round(t / sets, SAMPLE_DECIMALS) for t in replay_ms]

    # -- the non-expert part of a layer

    def _decode_layers(self, layer: LayerShape, batch: int, context: int, count: int) -> list[Any]:
        from moe_cache_env.profiles.layer import DecodeLayer

        return [DecodeLayer(layer, batch=batch, context=context, device=self.device, dtype=self.torch_dtype,
                            generator=self._gen) for _ in range(count)]

    def _capture(self, fn: Callable[[], Any]) -> tuple[Any, Any]:
        """Warm ``fn`` up on the stream, then capture it in a CUDA graph; returns (graph, fn's output)."""
        torch = self.torch
        with torch.cuda.stream(self.stream):
            fn()
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            out = fn()
        return graph, out

    def non_expert_samples_ms(
        self, layer: LayerShape, batch: int, context: int, *, repeats: int, warmup: int
    ) -> dict[str, Any]:
        """Time the non-expert work of one decode layer (see ``moe_cache_env.profiles.layer``).

        ``instances`` layers with their own weights and KV caches are captured one after another in a CUDA graph
        (enough that their weights overflow the L2 cache 4 times, 2 to 8 of them; fewer when their KV caches
        would pass 24 GiB), and the replay time is divided by their number: device time per layer, without
        launch gaps. The parts (attention, router, shared expert) are captured and timed the same way, alone;
        ``eager`` is one layer's forward called from Python, launches included.
        """
        from moe_cache_env.profiles.layer import kv_cache_bytes, layer_weight_bytes

        torch = self.torch
        props = torch.cuda.get_device_properties(self.device)
        l2_bytes = int(getattr(props, "L2_cache_size", 0)) or 64 * MIB
        count = max(2, min(8, math.ceil(4 * l2_bytes / layer_weight_bytes(layer))))
        count = max(1, min(count, (24 * 2**30) // max(1, kv_cache_bytes(layer, batch, context))))
        layers = self._decode_layers(layer, batch, context, count)
        h = torch.randn((batch, layer.hidden), device=self.device, generator=self._gen).to(self.torch_dtype)
        with torch.no_grad():
            full, outs = self._capture(lambda: [lay(h) for lay in layers])
            attention, _ = self._capture(lambda: [lay.attention(h) for lay in layers])
            router, routed = self._capture(lambda: [lay.route(h) for lay in layers])
            parts = {"attention": attention, "router": router}
            if layer.shared_intermediate:
                m = routed[0][0]
                parts["shared_expert"], _ = self._capture(lambda: [lay.shared(m) for lay in layers])
            result: dict[str, Any] = {"instances": count}
            with torch.cuda.stream(self.stream):
                samples = measure_ms(lambda _: full.replay(), repeats=repeats, warmup=warmup, timer=self.timer)
                result["graph"] = [round(t / count, SAMPLE_DECIMALS) for t in samples]
                for name, graph in parts.items():
                    samples = measure_ms(lambda _, g=graph: g.replay(), repeats=repeats, warmup=warmup, timer=self.timer)
                    result[name] = [round(t / count, SAMPLE_DECIMALS) for t in samples]
                result["eager"] = measure_ms(lambda i: layers[i % count](h), repeats=repeats, warmup=warmup,
                                             timer=self.timer)
            self.stream.synchronize()
            ids = outs[0][3]
            result["check"] = {
                "finite": bool(all(torch.isfinite(o[0]).all() for o in outs)),
                "router_ids_in_range": bool(((ids >= 0) & (ids < layer.num_experts)).all()),
            }
        del full, parts, outs, layers
        torch.cuda.empty_cache()
        return result

    def host_samples_ms(
        self, layer: LayerShape, batch: int, context: int, *, layers: int, repeats: int, warmup: int
    ) -> dict[str, Any]:
        """The host's per-layer cost, measured through ``replay-gpu``'s own engine and CUDA device.

        ``synced``: a decision log in which each of ``layers`` layers needs ``top_k`` resident experts (no
        copies) is replayed ``repeats`` steps (after ``warmup``): per layer, the non-expert work (a CUDA graph of
        the model's layer), a host wait for the router's event, ``.cpu()`` of the top-k ids, the engine's
        bookkeeping, and the experts launched one by one. Each sample is one step's time per layer.
        ``synced_double``: the same with twice as many experts per layer (the slope gives the host's cost per
        expert where launching is slower than computing). ``expert_launch`` / ``layer_launch``: host time to
        launch one expert / one layer's non-expert graph while the GPU is busy (only the launch is timed).
        ``copies``: the engine's own timing of its decisions (``replay``'s ``host``) over a demand-only LRU replay
        of random routing, whose layers issue 0 to ``top_k`` copies: the median decision time by number of copies
        issued (``{"<copies>": {"layers", "median"}}``), whose slope is the host's cost to issue one copy.
        """
        from moe_cache_env.gpu.reference_policies import all_hits_log, reference_log
        from moe_cache_env.gpu.replay import CudaReplayConfig, CudaReplayDevice, replay

        torch = self.torch
        if layer.hidden != self.shape.hidden:
            raise CalibrationError(
                f"host cost: the layer's hidden size {layer.hidden} differs from the expert's {self.shape.hidden}"
            )
        double = min(2 * layer.top_k, layer.num_experts)
        logs = {k: all_hits_log(layers, layer.num_experts, k, self.expert_bytes, steps=repeats, batch=batch)
                for k in (double, layer.top_k)}
        host_gib = layers * double * self.expert_bytes / 2**30 + 0.01
        device = CudaReplayDevice(CudaReplayConfig(
            layer=layer, hidden=self.shape.hidden, intermediate=self.shape.intermediate, batch=batch,
            context=context, host_memory_gib=host_gib, device_index=self.device_index))
        device.prepare(logs[double])
        per_layer = {}
        for k in (layer.top_k, double, layer.top_k, double):  # interleaved, so that drift affects both alike
            result = replay(device, logs[k], order="fused", warmup_steps=warmup, prepared=True)
            per_layer.setdefault(k, []).extend(round(float(t) / layers, SAMPLE_DECIMALS) for t in result["latency_ms"])
        synced = per_layer[layer.top_k]

        def launches(call: Callable[[int], Any], count: int) -> list[float]:
            samples = []
            device.start_run()
            try:
                for _ in range(3 + repeats):
                    torch.cuda._sleep(int(2e8))  # keep the GPU busy: only the host's launch is timed
                    started = time.perf_counter()
                    for i in range(count):
                        call(i)
                    samples.append(round((time.perf_counter() - started) * 1e3 / count, SAMPLE_DECIMALS))
                    torch.cuda.synchronize()
            finally:
                device.end_run()
            return samples[3:]

        # copies: each layer of a demand-only LRU cache of top_k + 2 slots over 2 x top_k experts issues 0 to top_k
        # copies (random routing, fixed seed), so the decision's time can be read against the copies it issued
        experts = min(2 * layer.top_k, layer.num_experts)
        rng = np.random.default_rng(0)
        routing = np.stack([np.stack([rng.choice(experts, layer.top_k, replace=False) for _ in range(layers)])
                            for _ in range(warmup + repeats)])
        copy_log = reference_log(routing, num_experts=experts, expert_bytes=self.expert_bytes,
                                 slots_per_layer=min(layer.top_k + 2, experts), policy="lru")
        copy_device = CudaReplayDevice(CudaReplayConfig(
            layer=layer, hidden=self.shape.hidden, intermediate=self.shape.intermediate, batch=batch,
            context=context, host_memory_gib=layers * experts * self.expert_bytes / 2**30 + 0.01,
            device_index=self.device_index))
        copy_device.prepare(copy_log)
        copies = replay(copy_device, copy_log, order="fused", warmup_steps=warmup, prepared=True)["host"]
        copies_check = bool(torch.isfinite(copy_device.h).all())
        del copy_device
        device.start_run()
        device.non_expert(0)
        device.end_run()
        expert_launch = launches(lambda i: device.expert(i % (layers * layer.top_k), batch, ()), 64)
        layer_launch = launches(lambda i: device.non_expert(i % layers), 32)
        torch.cuda.synchronize()
        check = {"finite": bool(torch.isfinite(device.h).all()) and copies_check}
        del device
        torch.cuda.empty_cache()
        return {"top_k": layer.top_k, "layers": layers, "check": check, "synced": synced,
                "double_top_k": double, "synced_double": per_layer[double],
                "expert_launch": expert_launch, "layer_launch": layer_launch,
                "copies": copies["decision_ms_by_copies"]}


# -------------------------------------------------------------------------------------------- driving


def _entry(samples_ms: list[float], **fields: Any) -> dict[str, Any]:
    """A raw measurement: its identifying fields, the samples, and their median and spread for readers."""
    return {**fields, **TimingStats.from_samples(samples_ms).to_dict(), "samples_ms": samples_ms}


def default_scaling_shapes() -> dict[str, ExpertShape]:
    """The expert shapes the compute-scaling fit is measured on: every preset's own expert, and the 28 MiB
    expert of the synthetic traces (computed as 2048 x 2368: see ``shapes.expert_shape_for_bytes``)."""
    shapes = dict(MODEL_EXPERT_SHAPES)
    shapes["synthetic-28mib"] = expert_shape_for_bytes(2048, 28 * MIB)
    return shapes


def run_calibration(
    backend: CalibrationBackend,
    plan: CalibrationPlan,
    *,
    layer: LayerShape | None = None,
    layer_model: str | None = None,
    scaling_shapes: Mapping[str, ExpertShape] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure everything ``plan`` asks for on ``backend``; returns the raw measurements (JSON-able).

    With ``layer`` (the non-expert geometry of model preset ``layer_model``), also the non-expert time per layer
    over the plan's batch/context grid and the host's per-layer decision cost; with ``scaling_shapes``, also
    the compute of each of those expert shapes (the compute-scaling fit).
    """
    say = progress or (lambda _msg: None)
    eb = backend.expert_bytes
    transfers = []
    for direction in DIRECTIONS:
        for memory in MEMORY_KINDS:
            say(f"{direction} {memory}: {len(plan.transfer_sizes_bytes)} sizes")
            for nbytes in plan.transfer_sizes_bytes:
                samples = backend.transfer_samples_ms(
                    direction, memory, nbytes, 1, repeats=plan.transfer_repeats, warmup=plan.warmup
                )
                transfers.append(_entry(samples, direction=direction, memory=memory, bytes=nbytes))

    experts = []
    for memory in MEMORY_KINDS:
        say(f"h2d {memory}: experts {list(plan.expert_counts)} separately and as one block")
        for count in plan.expert_counts:
            for layout, (nbytes, copies) in (("separate", (eb, count)), ("block", (count * eb, 1))):
                samples = backend.transfer_samples_ms(
                    "h2d", memory, nbytes, copies, repeats=plan.expert_repeats, warmup=plan.warmup
                )
                experts.append(
                    _entry(samples, direction="h2d", memory=memory, experts=count, layout=layout, bytes=nbytes * copies)
                )

    say("GPU-to-GPU copy of one expert")
    d2d_samples, d2d_kind = backend.device_copy_samples_ms(eb, repeats=plan.expert_repeats, warmup=plan.warmup)

    compute = []
    for tokens in plan.token_counts:
        say(f"expert compute, {tokens} tokens")
        result = backend.compute_samples_ms(tokens, repeats=plan.compute_repeats, warmup=plan.warmup)
        compute.append(
            {"tokens": tokens, "graph_samples_ms": result["graph"], "eager_samples_ms": result["eager"],
             "weight_sets": result["weight_sets"]}
        )
    check = backend.compute_check(min(plan.token_counts))

    say("side-stream copy during compute")
    overlap = backend.overlap_samples_ms(
        max(plan.expert_counts) * eb, plan.overlap_tokens, repeats=plan.overlap_repeats, warmup=plan.warmup
    )
    measurements: dict[str, Any] = {
        "expert_bytes": eb,
        "transfers": transfers,
        "experts": experts,
        "device_copy": _entry(d2d_samples, bytes=eb, kind=d2d_kind),
        "compute": compute,
        "compute_check": check,
        "overlap": overlap,
    }
    if scaling_shapes:
        rows = []
        for model, shape in scaling_shapes.items():
            say(f"expert compute of {model} ({shape.hidden}x{shape.intermediate})")
            for tokens in plan.scaling_tokens:
                samples = backend.shape_compute_samples_ms(
                    shape, tokens, repeats=plan.scaling_repeats, warmup=plan.warmup
                )
                rows.append(_entry(samples, model=model, hidden=shape.hidden, intermediate=shape.intermediate,
                                   expert_bytes=shape.expert_bytes(_dtype_of(backend, eb)), tokens=tokens))
        measurements["compute_scaling"] = rows
    if layer is not None:
        rows = []
        for batch in plan.non_expert_batches:
            for context in plan.non_expert_contexts:
                say(f"non-expert layer work ({layer_model}), batch {batch}, context {context}")
                r = backend.non_expert_samples_ms(
                    layer, batch, context, repeats=plan.non_expert_repeats, warmup=plan.warmup
                )
                row = {"batch": batch, "context": context, "instances": r["instances"], "check": r["check"]}
                for part in ("graph", "eager", "attention", "router", "shared_expert"):
                    if part in r:
                        row[f"{part}_samples_ms"] = r[part]
                rows.append(row)
        say(f"host decision cost per layer ({plan.host_layers} layers, batch {plan.default_batch})")
        host = backend.host_samples_ms(
            layer, plan.default_batch, plan.default_context, layers=plan.host_layers, repeats=plan.host_repeats,
            warmup=plan.warmup,
        )
        measurements["non_expert"] = {
            "model": layer_model,
            "layer": layer.to_dict(),
            "default_batch": plan.default_batch,
            "default_context": plan.default_context,
            "rows": rows,
        }
        measurements["host"] = {
            "model": layer_model,
            "batch": plan.default_batch,
            "context": plan.default_context,
            "layers": host["layers"],
            "top_k": host["top_k"],
            "check": host["check"],
            "double_top_k": host["double_top_k"],
            **{f"{mode}_samples_ms": host[mode] for mode in ("synced", "synced_double", "expert_launch",
                                                               "layer_launch")},
        }
        if host.get("copies"):
            measurements["host"]["decision_by_copies_ms"] = host["copies"]
    return measurements


def _dtype_of(backend: Any, expert_bytes: int) -> str:
    """The dtype name of a backend (``dtype_name`` if it has one, else bf16)."""
    return str(getattr(backend, "dtype_name", "bf16"))


# ---------------------------------------------------------------------------------------- the profile


#: A bf16 result against a float64 reference lands near 1e-3..1e-2 (rounding of inputs and outputs);
#: anything above this means the timed kernels did not compute the expert.
MAX_COMPUTE_REL_ERROR = {"bf16": 5e-2, "fp16": 2e-2, "fp32": 1e-3}


def _median(samples: Sequence[float]) -> float:
    return TimingStats.from_samples(samples).median_ms


def transfer_fits(measurements: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Fit ``overhead_ms + bytes / bandwidth`` (relative least squares) per direction and memory kind."""
    fits: dict[str, dict[str, Any]] = {}
    for direction in DIRECTIONS:
        for memory in MEMORY_KINDS:
            points = [t for t in measurements["transfers"] if t["direction"] == direction and t["memory"] == memory]
            if not points:
                continue
            sizes = [p["bytes"] for p in points]
            medians = [_median(p["samples_ms"]) for p in points]
            fit = fit_transfer(sizes, medians, relative=True)
            fits[f"{direction}_{memory}"] = {
                "overhead_ms": fit.overhead_ms,
                "gbps": fit.gbps,
                "residual_ms": fit.residual_ms,
                "max_rel_error": fit.max_rel_error,
                "weighting": "relative",
                "points": [{"bytes": b, "ms": m} for b, m in zip(sizes, medians)],
            }
    return fits


def _predict_ms(fit: Mapping[str, Any], nbytes: float) -> float:
    return float(fit["overhead_ms"] + nbytes / (fit["gbps"] * 1e6))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def summarize_experts(measurements: Mapping[str, Any], fits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Separate vs one-block copies of 1/4/20 experts, with what the fitted line predicts for each."""
    eb = measurements["expert_bytes"]
    rows = []
    keys = sorted({(e["memory"], e["experts"]) for e in measurements["experts"]}, key=lambda k: (k[0] != "pinned", k[1]))
    for memory, count in keys:
        by_layout = {
            e["layout"]: _median(e["samples_ms"])
            for e in measurements["experts"]
            if e["memory"] == memory and e["experts"] == count
        }
        fit = fits.get(f"h2d_{memory}")
        row: dict[str, Any] = {
            "direction": "h2d",
            "memory": memory,
            "experts": count,
            "bytes": count * eb,
            "separate_ms": by_layout.get("separate"),
            "block_ms": by_layout.get("block"),
        }
        if "separate" in by_layout and "block" in by_layout:
            row["block_speedup"] = by_layout["separate"] / by_layout["block"]
        if fit is not None:
            row["fit_separate_ms"] = count * _predict_ms(fit, eb)
            row["fit_block_ms"] = _predict_ms(fit, count * eb)
        rows.append(row)
    return rows


def summarize_overlap(overlap: Mapping[str, Any]) -> dict[str, Any]:
    """Medians of the overlap experiment and what they mean.

    ``overlap_fraction`` = (copy alone + compute alone - total together) / the shorter of the two: 1 when the
    shorter one is hidden entirely, 0 when the two run one after the other. ``compute_slowdown`` is the
    relative growth of the compute's own time when the copy runs beside it.
    """
    med = {
        key[: -len("_samples_ms")]: _median(overlap[key])
        for key in ("copy_alone_samples_ms", "compute_alone_samples_ms", "compute_with_copy_samples_ms",
                    "copy_with_compute_samples_ms", "total_concurrent_samples_ms")
    }
    saved = med["copy_alone"] + med["compute_alone"] - med["total_concurrent"]
    shorter = min(med["copy_alone"], med["compute_alone"])
    return {
        "copy_bytes": overlap["copy_bytes"],
        "tokens": overlap["tokens"],
        "expert_calls": overlap["replays"] * overlap["experts_per_replay"],
        **{f"{k}_ms": v for k, v in med.items()},
        "overlap_fraction": float(min(1.0, max(0.0, saved / shorter))) if shorter > 0 else 0.0,
        "compute_slowdown": med["compute_with_copy"] / med["compute_alone"] - 1.0,
        "copy_slowdown": med["copy_with_compute"] / med["copy_alone"] - 1.0,
    }


def build_profile(
    measurements: Mapping[str, Any],
    *,
    name: str,
    device: Mapping[str, Any],
    calibration: Mapping[str, Any],
    checks: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a ``moe-profile/1`` dictionary from raw measurements (pure: no device, no clock).

    ``calibration`` records how the measurements were taken and must hold ``hidden``, ``intermediate`` and
    ``dtype`` (the expert shape), ``plan`` and ``created_utc``; it is stored verbatim. ``checks`` holds results
    of independent checks run against the profile afterwards (see :func:`record_check`), kept verbatim.
    """
    for key in ("hidden", "intermediate", "dtype", "plan", "created_utc"):
        if key not in calibration:
            raise ProfileError(f"calibration record: missing field {key!r}")
    shape = ExpertShape(int(calibration["hidden"]), int(calibration["intermediate"]))
    expert_bytes = shape.expert_bytes(calibration["dtype"])
    if measurements["expert_bytes"] != expert_bytes:
        raise ProfileError(
            f"measurements.expert_bytes = {measurements['expert_bytes']} does not match the shape "
            f"{shape.hidden}x{shape.intermediate} in {calibration['dtype']} ({expert_bytes} bytes)"
        )
    fits = transfer_fits(measurements)
    if "h2d_pinned" not in fits:
        raise ProfileError("measurements: no pinned host-to-GPU copies, so h2d_overhead_ms/h2d_gbps cannot be fitted")
    check = measurements["compute_check"]
    limit = MAX_COMPUTE_REL_ERROR[calibration["dtype"]]
    for key in ("eager_rel_error", "graph_rel_error"):
        if not check[key] <= limit:  # also catches NaN
            raise ProfileError(f"measurements.compute_check.{key} = {check[key]} exceeds {limit}: wrong expert output")

    compute = sorted(measurements["compute"], key=lambda c: c["tokens"])
    graph_ms = [_median(c["graph_samples_ms"]) for c in compute]
    eager_ms = [_median(c["eager_samples_ms"]) for c in compute]
    d2d = measurements["device_copy"]
    d2d_ms = _median(d2d["samples_ms"])
    h2d = fits["h2d_pinned"]
    profile = {
        "format": PROFILE_FORMAT,
        "name": name,
        "description": (
            f"Measured on {device.get('name', 'an unnamed GPU')} by `moe-cache-env calibrate` "
            f"({shape.hidden}x{shape.intermediate} {calibration['dtype']} SwiGLU expert)."
        ),
        "source": "moe-cache-env calibrate (moe_cache_env/profiles/calibrate.py); raw samples under 'measurements'",
        "device": dict(device),
        "h2d_overhead_ms": h2d["overhead_ms"],
        "h2d_gbps": h2d["gbps"],
        "h2d_fit": h2d,
        "fits": fits,
        # The simulator's compute table: one expert's kernels replayed from a CUDA graph (device time, no
        # host launch gaps), which scales with the expert's bytes as the simulator assumes.
        "compute": {"expert_bytes": expert_bytes, "tokens": [float(c["tokens"]) for c in compute], "ms": graph_ms},
        "compute_detail": {
            "hidden": shape.hidden,
            "intermediate": shape.intermediate,
            "dtype": calibration["dtype"],
            "timing": "graph",
            "graph_p10_ms": [TimingStats.from_samples(c["graph_samples_ms"]).p10_ms for c in compute],
            "graph_p90_ms": [TimingStats.from_samples(c["graph_samples_ms"]).p90_ms for c in compute],
            "eager_ms": eager_ms,
            "weight_sets": compute[0]["weight_sets"],
            "check": dict(check),
        },
        # Attention, router, norms and shared experts: measured per model preset (``non_expert`` below, which
        # then sets this to its default batch and context); 0 when calibrate did not measure them.
        "layer_overhead_ms": 0.0,
        "experts": summarize_experts(measurements, fits),
        "device_copy": {
            "bytes": d2d["bytes"],
            "kind": d2d["kind"],
            "median_ms": d2d_ms,
            "gbps": d2d["bytes"] / (d2d_ms * 1e6),
        },
        "overlap": summarize_overlap(measurements["overlap"]),
        "calibration": dict(calibration),
        "measurements": dict(measurements),
    }
    scaling = measurements.get("compute_scaling")
    if scaling:
        profile["compute_scaling"] = summarize_compute_scaling(scaling)
    non_expert = measurements.get("non_expert")
    if non_expert:
        profile["non_expert"] = summarize_non_expert(non_expert)
        profile["layer_overhead_ms"] = profile["non_expert"]["default_ms"]
    host = measurements.get("host")
    if host:
        if not non_expert:
            raise ProfileError("measurements: a host cost needs the non-expert measurements of the same layer")
        batch = float(host["batch"])
        compute_at_batch = float(np.interp(batch, [c["tokens"] for c in compute], graph_ms))
        profile["host"] = summarize_host(host, profile["non_expert"]["default_ms"], compute_at_batch)
        profile["host_decision_ms"] = profile["host"]["decision_ms"]
        profile["expert_launch_ms"] = profile["host"]["expert_launch_ms"]
        if "copy_issue_ms" in profile["host"]:
            # measured on layers without copies, the decision cost adds nothing per copy: this is that part
            profile["copy_issue_ms"] = profile["host"]["copy_issue_ms"]
    if checks:
        profile["checks"] = dict(checks)
    return profile


def summarize_compute_scaling(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median compute of each measured expert shape and token count (what ``compute_affine_fit`` reads)."""
    return {
        "timing": "graph",
        "rows": [
            {"model": r["model"], "hidden": r["hidden"], "intermediate": r["intermediate"],
             "expert_bytes": r["expert_bytes"], "tokens": r["tokens"], "measured_ms": _median(r["samples_ms"]),
             "p10_ms": TimingStats.from_samples(r["samples_ms"]).p10_ms,
             "p90_ms": TimingStats.from_samples(r["samples_ms"]).p90_ms}
            for r in rows
        ],
    }


def summarize_non_expert(non_expert: Mapping[str, Any]) -> dict[str, Any]:
    """The non-expert time per layer on the batch/context grid: medians of the graph-replayed device time
    (``ms``, what the simulator adds per layer), its spread, the parts, and the eager time for comparison."""
    rows = []
    for r in non_expert["rows"]:
        check = r.get("check", {})
        if not (check.get("finite", True) and check.get("router_ids_in_range", True)):
            raise ProfileError(
                f"measurements.non_expert: batch {r['batch']}, context {r['context']}: failed check {check}"
            )
        graph = TimingStats.from_samples(r["graph_samples_ms"])
        row = {"batch": r["batch"], "context": r["context"], "ms": graph.median_ms, "p10_ms": graph.p10_ms,
               "p90_ms": graph.p90_ms, "instances": r["instances"]}
        for part in ("eager", "attention", "router", "shared_expert"):
            key = f"{part}_samples_ms"
            if key in r:
                row[f"{part}_ms"] = _median(r[key])
        rows.append(row)
    default = [r for r in rows if r["batch"] == non_expert["default_batch"] and r["context"] == non_expert["default_context"]]
    if len(default) != 1:
        raise ProfileError("measurements.non_expert: no row at the default batch and context")
    return {
        "model": non_expert["model"],
        "layer": dict(non_expert["layer"]),
        "timing": "graph",
        "default_batch": non_expert["default_batch"],
        "default_context": non_expert["default_context"],
        "default_ms": default[0]["ms"],
        "rows": rows,
    }


def summarize_host(host: Mapping[str, Any], non_expert_ms: float, compute_ms: float) -> dict[str, Any]:
    """The host's per-layer costs, from the all-resident replays at ``top_k`` and twice as many experts.

    The reference estimate (``gpu.reference_policies.estimate_latency``) times a layer with a host that
    launches the non-expert work (``layer_launch_ms``), waits for the router, decides (``decision_ms``) and
    launches the experts one by one (``expert_launch_ms`` each; an expert cannot start before its launch).
    ``expert_launch_ms`` is the slope of the per-layer time between the two replays (each added expert costs the
    larger of its launch and its compute, so this is the launch cost where launching is the slower; at least
    the expert's compute time otherwise); ``decision_ms`` then makes the estimate of the ``top_k`` replay, with
    this profile's non-expert time ``non_expert_ms`` and expert compute ``compute_ms``, equal the measured
    ``synced_ms``: the host work per layer that nothing overlaps (event poll, ``.cpu()`` of the routing,
    bookkeeping). At least 0. ``expert_launch_busy_ms`` is the launch time measured alone, on a busy GPU.
    ``copy_issue_ms`` (where the calibration measured ``decision_by_copies_ms``): the slope of the engine's own
    decision time in the copies the decision issued, the per-copy host cost that ``decision_ms`` (measured on
    layers without copies) leaves out; at least 0.
    """
    from moe_cache_env.gpu.reference_policies import ReferenceTiming, all_hits_log, estimate_latency

    if not host.get("check", {}).get("finite", True):
        raise ProfileError(f"measurements.host: failed check {host.get('check')}")
    synced = _median(host["synced_samples_ms"])
    layers, top_k, batch = int(host["layers"]), int(host["top_k"]), int(host["batch"])
    double = int(host["double_top_k"])
    synced_double = _median(host["synced_double_samples_ms"])
    slope = (synced_double - synced) / (double - top_k) if double > top_k else compute_ms
    expert_launch = max(slope, 0.0)
    layer_launch = _median(host["layer_launch_samples_ms"])
    log = all_hits_log(layers, max(top_k, 1), top_k, 1, steps=4, batch=batch)
    ctab = tuple([0.0] + [compute_ms] * batch)
    free = ReferenceTiming(1.0, ctab, non_expert_ms, 0.0, expert_launch, layer_launch)
    model = float(estimate_latency(log, free)["latency_ms"][-1]) / layers
    return {
        "model": host["model"],
        "batch": batch,
        "context": host["context"],
        "layers": layers,
        "top_k": top_k,
        "synced_ms": synced,
        "double_top_k": double,
        "synced_double_ms": synced_double,
        "expert_launch_ms": expert_launch,
        "expert_launch_busy_ms": _median(host["expert_launch_samples_ms"]),
        "layer_launch_ms": layer_launch,
        "non_expert_ms": non_expert_ms,
        "compute_ms": compute_ms,
        "model_without_decision_ms": model,
        "decision_ms": max(0.0, synced - model),
        **_copy_issue(host),
    }


def _copy_issue(host: Mapping[str, Any]) -> dict[str, Any]:
    """``copy_issue_ms``: the slope of the engine's decision time in the copies it issued (``decision_by_copies_ms``),
    at least 0; nothing for a calibration that did not measure it."""
    from moe_cache_env.gpu.replay import fit_decision_by_copies

    by_copies = host.get("decision_by_copies_ms")
    if not by_copies:
        return {}
    fit = fit_decision_by_copies(by_copies)
    if fit is None:
        raise ProfileError("measurements.host.decision_by_copies_ms: needs at least two copy counts")
    return {"decision_by_copies_ms": dict(by_copies), "copy_issue_ms": max(0.0, fit["per_copy_ms"])}


def rebuild_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Recompute a measured profile's fitted and summary fields from the raw measurements it carries."""
    for key in ("measurements", "calibration", "device", "name"):
        if key not in profile:
            raise ProfileError(f"profile has no {key!r} section: only measured profiles can be rebuilt")
    rebuilt = build_profile(
        profile["measurements"],
        name=profile["name"],
        device=profile["device"],
        calibration=profile["calibration"],
        checks=profile.get("checks"),
    )
    # host costs fitted after the calibration (experiments/gpu/host_fit.py) come from the replays, not from these
    # measurements: the profile records them in ``host_fit``, which overrides what the measurements give
    fit = profile.get("host_fit")
    if isinstance(fit, Mapping):
        rebuilt["host_decision_ms"] = fit["fit"]["decision_ms"]
        rebuilt["copy_issue_ms"] = fit["fit"]["copy_issue_ms"]
        rebuilt["host_fit"] = dict(fit)
    if "description" in profile:  # words, not a measurement: a profile kept under another name says why
        rebuilt["description"] = profile["description"]
    return rebuilt


def record_check(path: str | os.PathLike, key: str, result: Mapping[str, Any]) -> None:
    """Store ``result`` under ``checks.<key>`` of the profile file at ``path`` (validated, written atomically)."""
    import json

    from moe_cache_env.profiles.profile import profile_from_dict, save_profile

    data = json.loads(open(path, encoding="utf-8").read())
    profile_from_dict(data, where=str(path))
    checks = dict(data.get("checks") or {})
    checks[key] = dict(result)
    data["checks"] = checks
    save_profile(data, path)


def calibrate(
    shape: ExpertShape,
    dtype: str,
    *,
    name: str,
    plan: CalibrationPlan | None = None,
    model: str | None = None,
    layer_model: str | None = None,
    scaling: bool = True,
    device_index: int = 0,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure the CUDA device ``device_index`` and return its profile dictionary (not yet written).

    ``layer_model`` (a preset of ``MODEL_LAYER_SHAPES``) adds the non-expert time and host decision cost of that
    model's layers; ``scaling`` the compute of every preset's expert shape. ``command`` is the command line
    recorded in the profile's ``calibration`` section.
    """
    from moe_cache_env.profiles.shapes import model_layer_shape

    layer = model_layer_shape(layer_model) if layer_model else None
    dtype_bytes(dtype)  # validates the name before any CUDA work
    plan = plan or CalibrationPlan()
    started = time.perf_counter()
    backend = CudaBackend(shape, dtype, plan, device_index=device_index)
    device = backend.device_info()
    measurements = run_calibration(
        backend, plan, layer=layer, layer_model=layer_model,
        scaling_shapes=default_scaling_shapes() if scaling else None, progress=progress,
    )
    calibration = {
        "model": model,
        "layer_model": layer_model,
        "hidden": shape.hidden,
        "intermediate": shape.intermediate,
        "dtype": dtype,
        "plan": plan.to_dict(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.perf_counter() - started, 1),
        "command": command,
    }
    return build_profile(measurements, name=name, device=device, calibration=calibration)
