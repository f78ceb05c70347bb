"""The hardware profile format (``moe-profile/1``), loading, validation and the transfer-time fit."""

from __future__ import annotations

import functools
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from moe_cache_env._io import atomic_write_json

PROFILE_FORMAT = "moe-profile/1"
DATA_DIR = Path(__file__).resolve().parent / "data"


class ProfileError(ValueError):
    """A profile file that is missing, malformed or out of range; the message names the field."""


@dataclass(frozen=True)
class TransferFit:
    """``time_ms = overhead_ms + bytes / (gbps * 1e6)``, fitted by least squares; residual in ms (RMS)."""

    overhead_ms: float
    gbps: float
    residual_ms: float
    max_rel_error: float
    points: int


def fit_transfer(
    sizes_bytes: Sequence[float], times_ms: Sequence[float], *, relative: bool = False
) -> TransferFit:
    """Least-squares fit of ``overhead_ms + bytes / bandwidth`` to measured copy times.

    With ``relative=False`` the squared errors in ms are minimised, so the largest copies dominate. With
    ``relative=True`` the squared *relative* errors are minimised (each point weighted by ``1 / time``), so a
    sweep from 1 MB to 1 GB is fitted about equally well at every size; measured profiles use this.

    The overhead is clamped at zero (a negative fixed cost has no physical meaning); the slope then is
    refitted through the origin. Raises :class:`ProfileError` if the data cannot define a bandwidth.
    """
    x = np.asarray(sizes_bytes, dtype=np.float64)
    y = np.asarray(times_ms, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ProfileError("a transfer fit needs at least two (bytes, ms) pairs of equal length")
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or (x <= 0).any() or (y <= 0).any():
        raise ProfileError("transfer sizes and times must be positive finite numbers")
    weight = 1.0 / y if relative else np.ones_like(y)
    design = np.stack([np.ones_like(x), x], axis=1) * weight[:, None]
    (overhead, ms_per_byte), *_ = np.linalg.lstsq(design, y * weight, rcond=None)
    if overhead < 0:
        overhead = 0.0
        xw, yw = x * weight, y * weight
        ms_per_byte = float(xw @ yw / (xw @ xw))
    if ms_per_byte <= 0:
        raise ProfileError("transfer times do not grow with size; cannot fit a bandwidth")
    predicted = overhead + ms_per_byte * x
    residual = float(np.sqrt(np.mean((predicted - y) ** 2)))
    return TransferFit(
        overhead_ms=float(overhead),
        gbps=float(1.0 / (ms_per_byte * 1e6)),
        residual_ms=residual,
        max_rel_error=float(np.max(np.abs(predicted - y) / y)),
        points=int(len(x)),
    )


@dataclass(frozen=True)
class HardwareProfile:
    """The fitted numbers of one GPU + host link, as the simulator uses them.

    Attributes:
        name: profile name (file stem).
        h2d_overhead_ms, h2d_gbps: pinned host-to-GPU copy time = overhead + bytes / bandwidth.
        compute_tokens, compute_ms: compute time of one expert of ``compute_expert_bytes`` bytes for each
            token count (interpolated linearly, clamped at the ends); other expert sizes scale linearly with bytes
            (a SwiGLU expert's FLOPs and weight reads are proportional to its parameter count).
        layer_overhead_ms: non-expert time per layer (attention, router, norms, shared experts), added to every
            layer's time: the ``non_expert`` table's value at its default batch and context where the profile
            measured one (see :meth:`non_expert_ms` for other batches and contexts).
        host_decision_ms: the host's per-layer decision cost (router sync, copy issue, expert launches beyond
            their device time), measured by ``calibrate`` (``host.decision_ms``); 0 where not measured.
        expert_launch_ms: the host's time to launch one expert's kernels (an expert cannot start before its
            launch, so a layer of resident experts is launch-bound), measured by ``calibrate``
            (``host.expert_launch_ms``); 0 where not measured, and for an engine that launches a layer's experts
            as one grouped kernel or CUDA graph.
        copy_issue_ms: the host's time to issue one host-to-GPU copy (the engine's copy call, its event and
            stream bookkeeping): a layer's k-th copy cannot start before k of them were issued after its
            decision, and the layer's expert launches start after its copies were issued; the per-copy part of
            the host's decision as ``replay-gpu`` measures it. 0 where not measured.
        seed_table: the seed's table-driven latencies (only in seed-style profiles), used by ``timing="seed"``.
        raw: everything else in the file (measurements, provenance), kept verbatim.
    """

    name: str
    h2d_overhead_ms: float
    h2d_gbps: float
    compute_tokens: tuple[float, ...]
    compute_ms: tuple[float, ...]
    compute_expert_bytes: int
    layer_overhead_ms: float = 0.0
    seed_table: Mapping[str, float] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    host_decision_ms: float = 0.0
    expert_launch_ms: float = 0.0
    copy_issue_ms: float = 0.0

    def non_expert_ms(self, batch: int | None = None, context: int | None = None) -> float:
        """Non-expert time per layer at ``batch`` tokens of ``context`` context (ms).

        Interpolated linearly in batch, then in context, over the profile's ``non_expert`` grid (clamped at its
        edges); ``layer_overhead_ms`` when the profile has no grid or when neither argument is given.
        """
        table = self.raw.get("non_expert")
        if not isinstance(table, Mapping) or not table.get("rows") or (batch is None and context is None):
            return self.layer_overhead_ms
        rows = table["rows"]
        batch = table["default_batch"] if batch is None else batch
        context = table["default_context"] if context is None else context
        contexts = sorted({r["context"] for r in rows})
        per_context = []
        for c in contexts:
            points = sorted((r["batch"], r["ms"]) for r in rows if r["context"] == c)
            per_context.append(float(np.interp(batch, [b for b, _ in points], [m for _, m in points])))
        return float(np.interp(context, contexts, per_context))

    def transfer_ms(self, nbytes: float) -> float:
        """Host-to-GPU time of one copy of ``nbytes`` (pinned memory)."""
        return self.h2d_overhead_ms + nbytes / (self.h2d_gbps * 1e6)

    def expert_compute_ms(self, tokens: float, expert_bytes: float) -> float:
        """Compute time of one expert of ``expert_bytes`` bytes applied to ``tokens`` tokens."""
        return float(self._compute_curve(np.asarray([float(tokens)]), expert_bytes)[0])

    def compute_table(self, expert_bytes: float, max_tokens: int) -> np.ndarray:
        """Per-expert compute time for 0..max_tokens tokens (index = tokens), for the simulator's kernels."""
        table = self._compute_curve(np.arange(max_tokens + 1, dtype=np.float64), expert_bytes)
        table[0] = 0.0
        return table

    def _compute_curve(self, tokens: np.ndarray, expert_bytes: float) -> np.ndarray:
        # Where the profile measured several expert shapes (checks.compute_scaling), a fixed cost per call plus
        # a weight-read term fits every shape (within a few % on the H100); scaling one reference expert by
        # bytes does not (3x off for Mixtral's large experts). Otherwise scale the reference expert by bytes.
        affine = self._affine_fit
        if affine:
            at = np.array([r["tokens"] for r in affine], dtype=np.float64)
            ms = np.array([r["fixed_ms"] + expert_bytes / (r["weight_gbps"] * 1e6) for r in affine])
            return np.interp(tokens, at, ms)
        base = np.interp(tokens, self.compute_tokens, self.compute_ms)
        return base * (expert_bytes / self.compute_expert_bytes)

    @functools.cached_property
    def _affine_fit(self) -> list[dict[str, Any]]:
        # fitted once per profile object (least squares over the measured shapes): every simulator asks for it
        return compute_affine_fit(self.raw)

    def to_dict(self) -> dict[str, Any]:
        """The profile as written to JSON (raw fields first, fitted fields on top)."""
        data = dict(self.raw)
        data.update(
            {
                "format": PROFILE_FORMAT,
                "name": self.name,
                "h2d_overhead_ms": self.h2d_overhead_ms,
                "h2d_gbps": self.h2d_gbps,
                "compute": {
                    "expert_bytes": self.compute_expert_bytes,
                    "tokens": list(self.compute_tokens),
                    "ms": list(self.compute_ms),
                },
                "layer_overhead_ms": self.layer_overhead_ms,
            }
        )
        if self.host_decision_ms or "host_decision_ms" in self.raw:
            data["host_decision_ms"] = self.host_decision_ms
        if self.expert_launch_ms or "expert_launch_ms" in self.raw:
            data["expert_launch_ms"] = self.expert_launch_ms
        if self.copy_issue_ms or "copy_issue_ms" in self.raw:
            data["copy_issue_ms"] = self.copy_issue_ms
        if self.seed_table is not None:
            data["seed_table"] = dict(self.seed_table)
        return data


def compute_affine_fit(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per token count, ``fixed_ms + expert_bytes / weight_gbps`` fitted to the compute times a profile measured
    for several expert shapes (``compute_scaling``, else ``checks.compute_scaling``); empty when the profile has
    fewer than two shapes."""
    scaling = raw.get("compute_scaling")  # measured by calibrate itself
    if not isinstance(scaling, Mapping) or not scaling.get("rows"):
        checks = raw.get("checks") or {}  # or recorded afterwards by experiments/compute_scaling_check.py
        scaling = checks.get("compute_scaling") if isinstance(checks, Mapping) else None
    if not isinstance(scaling, Mapping) or not scaling.get("rows"):
        return []
    rows = []
    for tokens in sorted({r["tokens"] for r in scaling["rows"]}):
        points = [r for r in scaling["rows"] if r["tokens"] == tokens]
        if len({r["expert_bytes"] for r in points}) < 2:
            continue
        fit = fit_transfer([r["expert_bytes"] for r in points], [r["measured_ms"] for r in points], relative=True)
        rows.append({"tokens": tokens, "fixed_ms": fit.overhead_ms, "weight_gbps": fit.gbps,
                     "max_rel_error": fit.max_rel_error, "points": len(points)})
    return rows


SEED_TABLE_KEYS = (
    "h2d_1_expert_ms",
    "h2d_4_experts_ms",
    "h2d_20_experts_ms",
    "l1_access_ms",
    "l2l3_access_ms",
    "compute_1_expert_ms",
    "compute_4_experts_ms",
    "alloc_ms",
)


def _number(data: Mapping[str, Any], key: str, where: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    if key not in data:
        raise ProfileError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"{where}: field {key!r} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ProfileError(f"{where}: field {key!r} = {value} is out of range (must be {bound})")
    return float(value)


def _check_compute_scaling(data: Mapping[str, Any], where: str) -> None:
    """``checks.compute_scaling.rows``: the measured compute of several expert shapes, which the simulator's
    compute model fits (``compute_affine_fit``), so each row must be an object of positive finite numbers."""
    checks = data.get("checks")
    if checks is None:
        return
    if not isinstance(checks, Mapping):
        raise ProfileError(f"{where}: field 'checks' must be an object of named checks")
    scaling = checks.get("compute_scaling")
    if scaling is None:
        return
    if not isinstance(scaling, Mapping):
        raise ProfileError(f"{where}: field 'checks.compute_scaling' must be an object with a 'rows' list")
    rows = scaling.get("rows")
    if rows is None:
        return
    if not isinstance(rows, list):
        raise ProfileError(f"{where}: field 'checks.compute_scaling.rows' must be a list of objects, got {rows!r:.80}")
    for i, row in enumerate(rows):
        here = f"{where}.checks.compute_scaling.rows[{i}]"
        if not isinstance(row, Mapping):
            raise ProfileError(
                f"{here}: must be an object with tokens, expert_bytes and measured_ms, got {row!r:.80}"
            )
        _number(row, "tokens", here, minimum=1.0)
        _number(row, "expert_bytes", here, strict=True)
        _number(row, "measured_ms", here, strict=True)


def _check_optional_sections(data: Mapping[str, Any], where: str) -> None:
    """Validate the optional sections that tools read (``device``, ``fits``, ``checks.compute_scaling``)."""
    _check_compute_scaling(data, where)
    device = data.get("device")
    if device is not None and not isinstance(device, Mapping):
        raise ProfileError(f"{where}: field 'device' must be an object (name, driver, ...)")
    _check_non_expert(data, where)
    fits = data.get("fits")
    if fits is None:
        return
    if not isinstance(fits, Mapping):
        raise ProfileError(f"{where}: field 'fits' must be an object of transfer fits (e.g. 'h2d_pinned')")
    for key, fit in fits.items():
        if not isinstance(fit, Mapping):
            raise ProfileError(f"{where}: field 'fits.{key}' must be an object with overhead_ms and gbps")
        _number(fit, "overhead_ms", f"{where}.fits.{key}")
        _number(fit, "gbps", f"{where}.fits.{key}", strict=True)


def _check_non_expert(data: Mapping[str, Any], where: str) -> None:
    """Validate the optional ``non_expert``, ``host`` and ``compute_scaling`` sections."""
    table = data.get("non_expert")
    if table is not None:
        if not isinstance(table, Mapping) or not isinstance(table.get("rows"), list) or not table["rows"]:
            raise ProfileError(f"{where}: field 'non_expert' must be an object with a non-empty list 'rows'")
        for i, row in enumerate(table["rows"]):
            at = f"{where}.non_expert.rows[{i}]"
            if not isinstance(row, Mapping):
                raise ProfileError(f"{at}: must be an object with batch, context and ms")
            _number(row, "batch", at, minimum=1)
            _number(row, "context", at)
            _number(row, "ms", at, strict=True)
        _number(table, "default_batch", f"{where}.non_expert", minimum=1)
        _number(table, "default_context", f"{where}.non_expert")
    host = data.get("host")
    if host is not None:
        if not isinstance(host, Mapping):
            raise ProfileError(f"{where}: field 'host' must be an object")
        _number(host, "decision_ms", f"{where}.host")
    scaling = data.get("compute_scaling")
    if scaling is not None:
        if not isinstance(scaling, Mapping) or not isinstance(scaling.get("rows"), list):
            raise ProfileError(f"{where}: field 'compute_scaling' must be an object with a list 'rows'")
        for i, row in enumerate(scaling["rows"]):
            at = f"{where}.compute_scaling.rows[{i}]"
            if not isinstance(row, Mapping):
                raise ProfileError(f"{at}: must be an object")
            _number(row, "expert_bytes", at, strict=True)
            _number(row, "tokens", at, minimum=1)
            _number(row, "measured_ms", at, strict=True)


def profile_from_dict(data: Mapping[str, Any], where: str = "profile") -> HardwareProfile:
    """Validate a profile dictionary (as read from JSON) and build a :class:`HardwareProfile`."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: a profile must be a JSON object")
    if data.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{where}: field 'format' is {data.get('format')!r}; expected {PROFILE_FORMAT!r}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{where}: field 'name' must be a non-empty string")
    overhead = _number(data, "h2d_overhead_ms", where)
    gbps = _number(data, "h2d_gbps", where, strict=True)
    compute = data.get("compute")
    if not isinstance(compute, Mapping):
        raise ProfileError(f"{where}: field 'compute' must be an object with expert_bytes, tokens and ms")
    expert_bytes = int(_number(compute, "expert_bytes", f"{where}.compute", strict=True))
    tokens = compute.get("tokens")
    ms = compute.get("ms")
    if not isinstance(tokens, list) or not isinstance(ms, list) or len(tokens) != len(ms) or not tokens:
        raise ProfileError(f"{where}: compute.tokens and compute.ms must be non-empty lists of equal length")
    tokens_arr = np.asarray(tokens, dtype=np.float64)
    ms_arr = np.asarray(ms, dtype=np.float64)
    if (np.diff(tokens_arr) <= 0).any() or (tokens_arr < 1).any():
        raise ProfileError(f"{where}: compute.tokens must be increasing token counts >= 1, got {tokens}")
    if not np.isfinite(ms_arr).all() or (ms_arr <= 0).any():
        raise ProfileError(f"{where}: compute.ms must be positive finite times, got {ms}")
    layer_overhead = _number(data, "layer_overhead_ms", where) if "layer_overhead_ms" in data else 0.0
    host_decision = _number(data, "host_decision_ms", where) if "host_decision_ms" in data else 0.0
    expert_launch = _number(data, "expert_launch_ms", where) if "expert_launch_ms" in data else 0.0
    copy_issue = _number(data, "copy_issue_ms", where) if "copy_issue_ms" in data else 0.0
    _check_optional_sections(data, where)
    seed_table = data.get("seed_table")
    if seed_table is not None:
        if not isinstance(seed_table, Mapping):
            raise ProfileError(f"{where}: field 'seed_table' must be an object")
        seed_table = {k: _number(seed_table, k, f"{where}.seed_table", strict=True) for k in SEED_TABLE_KEYS}
    return HardwareProfile(
        name=name,
        h2d_overhead_ms=overhead,
        h2d_gbps=gbps,
        compute_tokens=tuple(float(t) for t in tokens_arr),
        compute_ms=tuple(float(m) for m in ms_arr),
        compute_expert_bytes=expert_bytes,
        layer_overhead_ms=layer_overhead,
        seed_table=seed_table,
        raw=dict(data),
        host_decision_ms=host_decision,
        expert_launch_ms=expert_launch,
        copy_issue_ms=copy_issue,
    )


def list_profiles() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in DATA_DIR.glob("*.json"))


def load_profile(name_or_path: str | os.PathLike) -> HardwareProfile:
    """Load a shipped profile by name, or any profile file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".json") or path.exists()):
        path = DATA_DIR / f"{text}.json"
        if not path.exists():
            raise ProfileError(f"unknown profile {text!r}; shipped profiles: {', '.join(list_profiles())}")
    try:
        info = os.stat(path)
        key = (os.path.realpath(path), info.st_ino, info.st_mtime_ns, info.st_size)
    except OSError:
        key = None  # _read_profile_json names the problem
    profile = _LOADED.get(key) if key is not None else None
    if profile is None:
        profile = profile_from_dict(_read_profile_json(path), where=str(path))
        if key is not None and stat.S_ISREG(info.st_mode):
            _LOADED[key] = profile
    return profile


#: profiles already read, by file and stamp: every environment reset builds a simulator, and parsing and fitting
#: a measured profile again each time cost a few ms (a profile is frozen, so the object is shared)
_LOADED: dict[tuple[str, int, int, int], HardwareProfile] = {}


#: Largest profile file read (a measured profile with all its raw samples is a few hundred KiB).
MAX_PROFILE_BYTES = 16 * 2**20


def _read_profile_json(path: Path) -> Any:
    """The JSON of a profile file; a missing file, a directory, a FIFO (never opened: it would block), an
    unreadable, oversized or non-UTF-8 file, or invalid JSON is a ProfileError naming the file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist") from None
    except OSError as exc:
        raise ProfileError(f"profile file {path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ProfileError(f"profile file {path}: is a directory; give a profile's .json file or a profile name")
    if not stat.S_ISREG(info.st_mode):
        raise ProfileError(f"profile file {path}: is not a regular file (a FIFO, socket or device)")
    if info.st_size > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile file {path}: {info.st_size:,} bytes, larger than a profile can be "
                           f"({MAX_PROFILE_BYTES // 2**20} MiB)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"profile file {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"profile file {path}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at offset {exc.start}); "
            "profiles are UTF-8 JSON"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ProfileError(f"{path}: not valid JSON (nested too deeply)") from None


def save_profile(profile: HardwareProfile | Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Validate and write a profile atomically."""
    data = profile.to_dict() if isinstance(profile, HardwareProfile) else dict(profile)
    profile_from_dict(data, where=str(path))
    return atomic_write_json(path, data)
