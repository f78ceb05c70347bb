"""Decision logs (``moe-decision-log/1``): what a cache policy decided, step by step and layer by layer.

A decision log is what ``replay-gpu`` executes on a GPU. It says, for every step (a batch of tokens decoded
together) and every layer, in execution order:

- the experts the step needs at that layer (deduplicated over the batch), each with the GPU slot it is read
  from, how many of the step's tokens it serves, and where it came from: already resident (``SOURCE_RESIDENT``),
  loaded on demand at this layer (``SOURCE_DEMAND``), or brought in by an earlier prefetch and not used since
  (``SOURCE_PREFETCHED``). Demand loads are issued in the order of this list;
- the prefetches the policy issued at that layer, after its demand loads, in issue order: the target layer,
  expert and slot of each.

Slots are numbered ``0 .. num_slots - 1`` over the whole GPU pool (a per-layer pool gives each layer a range;
``meta["slots_per_layer"]`` records it, the replay needs only ``num_slots``). A load or prefetch into a slot
evicts whatever the slot held; evictions are implicit. ``initial_slots`` says what each slot holds before the
first step (``layer * num_experts + expert``, or -1 for empty).

Replay rules, shared by ``replay-gpu`` and the reference estimate (``reference_policies.estimate_latency``):

- the host-to-GPU link is one FIFO copy queue; a demand load goes ahead of every prefetch that has not started
  (the simulator's ``demand_overtakes``); a needed expert whose prefetch has not started is loaded at once,
  ahead of the queue, and one whose copy is in flight is waited for;
- a write into a slot cancels a prefetch into that slot that has not started;
- a copy into a slot waits until the last computation that read the slot has finished.

The file is a ``.npz`` archive (``allow_pickle=False``) of the arrays of :class:`DecisionLog` and its meta as a
JSON string. Per-(step, layer) lists are stored flat with offsets: the entries of step ``s``, layer ``l`` are
``[offsets[s * L + l], offsets[s * L + l + 1])``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from moe_cache_env._io import atomic_write

FORMAT_ID = "moe-decision-log/1"
SOURCE_RESIDENT = 0
SOURCE_DEMAND = 1
SOURCE_PREFETCHED = 2
SOURCE_NAMES = ("resident", "demand", "prefetched")
REQUIRED_META = ("format", "policy", "num_layers", "num_experts", "top_k", "expert_bytes", "num_slots", "batch")

#: arrays of a log, their dtypes
ARRAYS: dict[str, Any] = {
    "step_ntokens": np.int32,
    "need_offsets": np.int64,
    "need_expert": np.int16,
    "need_slot": np.int32,
    "need_tokens": np.int32,
    "need_source": np.int8,
    "pref_offsets": np.int64,
    "pref_layer": np.int16,
    "pref_expert": np.int16,
    "pref_slot": np.int32,
    "initial_slots": np.int32,
}


class DecisionLogError(ValueError):
    """A decision log that breaks the format or its own slot bookkeeping; the message says where."""


@dataclass(frozen=True)
class LayerDecisions:
    """One step's decisions at one layer, as plain Python lists (what the replay loops read)."""

    step: int
    layer: int
    need: list[tuple[int, int, int, int]]  # (expert, slot, tokens, source)
    prefetch: list[tuple[int, int, int]]  # (layer, expert, slot)


@dataclass(frozen=True, eq=False)
class DecisionLog:
    """A validated decision log (see the module docstring for the meaning of each array)."""

    meta: Mapping[str, Any]
    step_ntokens: np.ndarray
    need_offsets: np.ndarray
    need_expert: np.ndarray
    need_slot: np.ndarray
    need_tokens: np.ndarray
    need_source: np.ndarray
    pref_offsets: np.ndarray
    pref_layer: np.ndarray
    pref_expert: np.ndarray
    pref_slot: np.ndarray
    initial_slots: np.ndarray
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name, dtype in ARRAYS.items():
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        validate(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DecisionLog):
            return NotImplemented
        return dict(self.meta) == dict(other.meta) and all(
            np.array_equal(getattr(self, name), getattr(other, name)) for name in ARRAYS)

    __hash__ = None  # type: ignore[assignment]

    # -- shape

    @property
    def num_steps(self) -> int:
        return int(len(self.step_ntokens))

    @property
    def num_layers(self) -> int:
        return int(self.meta["num_layers"])

    @property
    def num_experts(self) -> int:
        return int(self.meta["num_experts"])

    @property
    def num_slots(self) -> int:
        return int(self.meta["num_slots"])

    @property
    def expert_bytes(self) -> int:
        return int(self.meta["expert_bytes"])

    @property
    def batch(self) -> int:
        return int(self.meta["batch"])

    def layer_decisions(self, step: int, layer: int) -> LayerDecisions:
        i = step * self.num_layers + layer
        a, b = int(self.need_offsets[i]), int(self.need_offsets[i + 1])
        c, d = int(self.pref_offsets[i]), int(self.pref_offsets[i + 1])
        need = list(zip(self.need_expert[a:b].tolist(), self.need_slot[a:b].tolist(), self.need_tokens[a:b].tolist(),
                        self.need_source[a:b].tolist()))
        prefetch = list(zip(self.pref_layer[c:d].tolist(), self.pref_expert[c:d].tolist(), self.pref_slot[c:d].tolist()))
        return LayerDecisions(step, layer, need, prefetch)

    def iter_decisions(self, steps: range | None = None) -> Iterator[LayerDecisions]:
        for s in steps if steps is not None else range(self.num_steps):
            for l in range(self.num_layers):
                yield self.layer_decisions(s, l)

    def head(self, steps: int) -> "DecisionLog":
        """The first ``steps`` steps (all of them if fewer)."""
        steps = min(int(steps), self.num_steps)
        L = self.num_layers
        n = int(self.need_offsets[steps * L])
        p = int(self.pref_offsets[steps * L])
        meta = dict(self.meta)
        # prefetches issued in the kept steps may target a step that was cut: they stay (the link still moves them)
        return DecisionLog(
            meta=meta,
            step_ntokens=self.step_ntokens[:steps],
            need_offsets=self.need_offsets[: steps * L + 1],
            need_expert=self.need_expert[:n],
            need_slot=self.need_slot[:n],
            need_tokens=self.need_tokens[:n],
            need_source=self.need_source[:n],
            pref_offsets=self.pref_offsets[: steps * L + 1],
            pref_layer=self.pref_layer[:p],
            pref_expert=self.pref_expert[:p],
            pref_slot=self.pref_slot[:p],
            initial_slots=self.initial_slots,
        )

    # -- summary

    def counts(self) -> dict[str, Any]:
        """Requests by source (per step and layer, over distinct experts) and the resulting hit rates."""
        by_source = np.bincount(self.need_source, minlength=3)
        total = int(by_source.sum())
        tokens = np.bincount(self.need_source, weights=self.need_tokens, minlength=3)
        return {
            "expert_requests": total,
            "resident": int(by_source[SOURCE_RESIDENT]),
            "demand_loads": int(by_source[SOURCE_DEMAND]),
            "prefetch_hits": int(by_source[SOURCE_PREFETCHED]),
            "prefetches_issued": int(len(self.pref_slot)),
            # per token-expert request, as the simulator counts hits: resident or prefetched is a hit
            "hit_rate": float((tokens[SOURCE_RESIDENT] + tokens[SOURCE_PREFETCHED]) / tokens.sum()) if total else 0.0,
            "resident_rate": float(tokens[SOURCE_RESIDENT] / tokens.sum()) if total else 0.0,
        }


def _fail(message: str) -> None:
    raise DecisionLogError(message)


def validate(log: DecisionLog) -> None:
    """Check the meta, the array shapes and ranges, and replay the slot bookkeeping: every needed expert must be
    in its slot when its layer runs, and no load or prefetch may overwrite a slot that its own layer reads."""
    meta = log.meta
    if not isinstance(meta, Mapping):
        _fail("decision log: meta must be a mapping")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        _fail(f"decision log: meta lacks {missing}")
    if meta["format"] != FORMAT_ID:
        _fail(f"decision log: format is {meta['format']!r}, expected {FORMAT_ID!r} (a newer or foreign file?)")
    for key in ("num_layers", "num_experts", "top_k", "expert_bytes", "num_slots", "batch"):
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            _fail(f"decision log: meta[{key!r}] must be a positive integer, got {value!r}")
    L, E, slots = int(meta["num_layers"]), int(meta["num_experts"]), int(meta["num_slots"])
    S = len(log.step_ntokens)
    for name in ARRAYS:
        if getattr(log, name).ndim != 1:
            _fail(f"decision log: {name} must be one-dimensional")
    if S < 1:
        _fail("decision log: no steps")
    if (log.step_ntokens < 1).any() or (log.step_ntokens > int(meta["batch"])).any():
        _fail(f"decision log: step_ntokens must lie in 1..batch ({meta['batch']})")
    for prefix, arrays in (("need", ("expert", "slot", "tokens", "source")), ("pref", ("layer", "expert", "slot"))):
        offsets = getattr(log, f"{prefix}_offsets")
        if len(offsets) != S * L + 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
            _fail(f"decision log: {prefix}_offsets must be S*L+1 = {S * L + 1} non-decreasing offsets from 0")
        for a in arrays:
            if len(getattr(log, f"{prefix}_{a}")) != offsets[-1]:
                _fail(f"decision log: {prefix}_{a} has {len(getattr(log, f'{prefix}_{a}'))} entries, offsets say {offsets[-1]}")
    if (np.diff(log.need_offsets) < 1).any():
        _fail("decision log: every step and layer needs at least one expert")
    for name, high in (("need_expert", E), ("pref_expert", E), ("pref_layer", L), ("need_slot", slots),
                       ("pref_slot", slots)):
        values = getattr(log, name)
        if len(values) and (values.min() < 0 or values.max() >= high):
            _fail(f"decision log: {name} out of range 0..{high - 1}")
    if (log.need_tokens < 1).any():
        _fail("decision log: need_tokens must be >= 1")
    if len(log.need_source) and (log.need_source.min() < 0 or log.need_source.max() > 2):
        _fail("decision log: need_source must be 0 (resident), 1 (demand) or 2 (prefetched)")
    if len(log.initial_slots) != slots:
        _fail(f"decision log: initial_slots must have num_slots = {slots} entries")
    if (log.initial_slots < -1).any() or (log.initial_slots >= L * E).any():
        _fail("decision log: initial_slots entries must be -1 or layer * num_experts + expert")
    _check_bookkeeping(log, L, E)


def _check_bookkeeping(log: DecisionLog, L: int, E: int) -> None:
    content = log.initial_slots.astype(np.int64).tolist()
    n_off, p_off = log.need_offsets.tolist(), log.pref_offsets.tolist()
    need_e, need_s, need_src = log.need_expert.tolist(), log.need_slot.tolist(), log.need_source.tolist()
    pref_l, pref_e, pref_s = log.pref_layer.tolist(), log.pref_expert.tolist(), log.pref_slot.tolist()
    for i in range(len(n_off) - 1):
        s, l = divmod(i, L)
        used: set[int] = set()
        seen: set[int] = set()
        for j in range(n_off[i], n_off[i + 1]):
            key, slot = l * E + need_e[j], need_s[j]
            if key in seen:
                _fail(f"decision log: step {s}, layer {l}: expert {need_e[j]} is listed twice")
            seen.add(key)
            if slot in used:
                _fail(f"decision log: step {s}, layer {l}: slot {slot} is read by two experts")
            used.add(slot)
            if need_src[j] == SOURCE_DEMAND:
                content[slot] = key
            elif content[slot] != key:
                _fail(f"decision log: step {s}, layer {l}: expert {need_e[j]} is {SOURCE_NAMES[need_src[j]]} in slot "
                      f"{slot}, but the slot holds {_key_name(content[slot], E)}")
        for j in range(p_off[i], p_off[i + 1]):
            if pref_s[j] in used:
                _fail(f"decision log: step {s}, layer {l}: a prefetch overwrites slot {pref_s[j]}, which this layer reads")
            content[pref_s[j]] = pref_l[j] * E + pref_e[j]


def _key_name(key: int, E: int) -> str:
    return "nothing" if key < 0 else f"layer {key // E} expert {key % E}"


# ------------------------------------------------------------------------------------------------- files


def save_log(log: DecisionLog, path: str | os.PathLike) -> Path:
    """Write a decision log atomically as ``.npz`` (compressed)."""
    arrays = {name: getattr(log, name) for name in ARRAYS}
    arrays["meta"] = np.array(json.dumps(dict(log.meta), sort_keys=True))

    def write(handle: Any) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        handle.write(buffer.getvalue())

    return atomic_write(path, write)


def load_log(path: str | os.PathLike) -> DecisionLog:
    """Read and validate a decision log; errors name the file and the problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                _fail(f"{path}: not a decision log (no 'meta')")
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT_ID:
                _fail(f"{path}: format is {meta.get('format')!r}, expected {FORMAT_ID!r}")
            missing = [name for name in ARRAYS if name not in data.files]
            if missing:
                _fail(f"{path}: missing arrays {missing}")
            arrays = {name: data[name] for name in ARRAYS}
    except (OSError, ValueError) as exc:
        if isinstance(exc, DecisionLogError):
            raise
        raise DecisionLogError(f"{path}: cannot read a decision log ({exc})") from None
    return DecisionLog(meta=meta, path=str(path), **arrays)


class LogBuilder:
    """Builds a :class:`DecisionLog` step by step and layer by layer (what a policy calls as it decides)."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self.meta = dict(meta)
        self.meta.setdefault("format", FORMAT_ID)
        self._ntokens: list[int] = []
        self._need: list[list[int]] = [[], [], [], []]
        self._pref: list[list[int]] = [[], [], []]
        self._need_offsets = [0]
        self._pref_offsets = [0]

    def begin_step(self, ntokens: int) -> None:
        self._ntokens.append(int(ntokens))

    def need(self, expert: int, slot: int, tokens: int, source: int) -> None:
        for column, value in zip(self._need, (expert, slot, tokens, source)):
            column.append(int(value))

    def prefetch(self, layer: int, expert: int, slot: int) -> None:
        for column, value in zip(self._pref, (layer, expert, slot)):
            column.append(int(value))

    def end_layer(self) -> None:
        self._need_offsets.append(len(self._need[0]))
        self._pref_offsets.append(len(self._pref[0]))

    def build(self, initial_slots: np.ndarray | None = None) -> DecisionLog:
        slots = int(self.meta["num_slots"])
        return DecisionLog(
            meta=self.meta,
            step_ntokens=np.asarray(self._ntokens),
            need_offsets=np.asarray(self._need_offsets),
            need_expert=np.asarray(self._need[0]),
            need_slot=np.asarray(self._need[1]),
            need_tokens=np.asarray(self._need[2]),
            need_source=np.asarray(self._need[3]),
            pref_offsets=np.asarray(self._pref_offsets),
            pref_layer=np.asarray(self._pref[0]),
            pref_expert=np.asarray(self._pref[1]),
            pref_slot=np.asarray(self._pref[2]),
            initial_slots=np.full(slots, -1) if initial_slots is None else np.asarray(initial_slots),
        )
