"""Record the routing of a Hugging Face MoE causal LM as v1 traces (prefill and greedy decode).

A forward hook on every MoE layer's router (:func:`find_router_modules`) captures what the router returns; after
each forward pass the captures become the selected expert ids and gate weights of every token at every MoE
layer (:mod:`moe_cache_env.traces.recording.routers` explains how each family's output is read). Each prompt
runs alone (batch of one, no padding), so every captured row is a real token:

* prefill: one forward over the prompt; one trace row per prompt token.
* decode: greedy decoding with the KV cache, one forward per generated token; the routing of the forward that
  consumes generated token ``i`` is row ``i`` of the sequence. Stops after ``max_new_tokens`` tokens or, by
  default, when the model emits an end-of-sequence token (which is not fed back).

Sequence ``i`` of both traces is ``sequences[i]``, so prefill and decode rows of one request share a sequence id.
transformers is needed only to load models (the CLI); this module works on any model object that has a
transformers-style ``config`` and forward.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from moe_cache_env.traces.format import FORMAT_ID_SPECULATIVE, Trace, make_meta
from moe_cache_env.traces.recording.routers import (
    RouterError,
    RouterSite,
    decode_router_output,
    expert_bytes_of,
    find_router_modules,
    find_router_sites,
    ids_dtype,
    routing_rule_for,
    text_config,
)

__all__ = [
    "Prompt",
    "RecordedTrace",
    "RouterError",
    "find_router_modules",
    "read_prompts",
    "record_routing",
    "require_transformers",
]

INSTALL_HINT = 'pip install -e ".[record]"'


def require_transformers() -> Any:
    """Import transformers, or fail with the command that installs it."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"recording routing needs the 'record' extra (transformers): {INSTALL_HINT}") from exc
    return transformers


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompts file: its text or its token ids, its domain, and its line (for messages)."""

    line: int
    text: str | None = None
    tokens: list[int] | None = None
    domain: str | None = None


def read_prompts(
    path: str | Path,
    *,
    text_field: str = "text",
    domain_field: str = "domain",
    tokens_field: str = "tokens",
) -> list[Prompt]:
    """Read a prompts file: plain text (one prompt per non-blank line) or, for ``.jsonl`` files, one JSON object
    per line with the prompt's text (``text_field``) or its token ids (``tokens_field``), and optionally its
    domain (``domain_field``; all prompts or none).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    prompts: list[Prompt] = []
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if not jsonl:
                prompts.append(Prompt(line=line_no, text=line.rstrip("\r\n")))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON object ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            text, tokens, domain = obj.get(text_field), obj.get(tokens_field), obj.get(domain_field)
            if (text is None) == (tokens is None):
                raise ValueError(
                    f"{path}:{line_no}: give exactly one of {text_field!r} (a string) or {tokens_field!r} "
                    f"(a list of token ids); keys present: {sorted(obj)}"
                )
            if text is not None and (not isinstance(text, str) or not text):
                raise ValueError(f"{path}:{line_no}: {text_field!r} must be a non-empty string")
            if tokens is not None and (
                not isinstance(tokens, list)
                or not tokens
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens)
            ):
                raise ValueError(f"{path}:{line_no}: {tokens_field!r} must be a non-empty list of non-negative ints")
            if domain is not None and (not isinstance(domain, str) or not domain):
                raise ValueError(f"{path}:{line_no}: {domain_field!r} must be a non-empty string")
            prompts.append(Prompt(line=line_no, text=text, tokens=tokens, domain=domain))
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt")
    with_domain = [p for p in prompts if p.domain is not None]
    if with_domain and len(with_domain) != len(prompts):
        missing = next(p for p in prompts if p.domain is None)
        raise ValueError(
            f"{path}:{missing.line}: this prompt has no {domain_field!r} but others do; label all prompts or none"
        )
    return prompts


@dataclass(frozen=True)
class RecordedTrace(Trace):
    """A :class:`Trace` with, optionally, the router logits of every row: float32 (T, L, E).

    Logits are not part of format v1; the ``record`` command writes them to a separate ``.npz`` file.
    """

    router_logits: np.ndarray | None = None


#: ``record --speculate``'s defaults: predictions for the next 2 layers (the simulator's longest lookahead,
#: ``MAX_LOOKAHEAD``), the 8 most probable experts of each (a top-8 model's whole selection).
DEFAULT_SPECULATE_DEPTH = 2
DEFAULT_SPECULATE_TOP = 8


@dataclass
class _LayerRows:
    """Routing of one forward pass at one MoE layer, still on the model's device."""

    ids: torch.Tensor  # (T, K) int64
    weights: torch.Tensor | None  # (T, K) float32
    logits: torch.Tensor | None  # (T, E) float32
    selection: str  # how the ids were obtained, for the trace's meta


@dataclass
class _ForwardRows:
    """Routing of one forward pass at every MoE layer, on the CPU."""

    ids: np.ndarray  # (T, L, K) int64
    weights: np.ndarray | None  # (T, L, K) float32
    logits: np.ndarray | None  # (T, L, E) float32
    selection: set[str]
    spec_ids: np.ndarray | None = None  # (T, L, D, M) int64
    spec_probs: np.ndarray | None = None  # (T, L, D, M) float32


def _stack_to_cpu(tensors: list[torch.Tensor], dtype: torch.dtype) -> np.ndarray:
    """Stack per-layer (T, X) tensors into (T, L, X) and copy once: one device sync per forward, not per layer."""
    device = tensors[0].device
    stacked = torch.stack([t.to(device=device, dtype=dtype) for t in tensors], dim=1)
    return stacked.cpu().numpy()


class _RouterHooks:
    """Forward hooks on every router (and selection method) of a model; collects one forward at a time."""

    def __init__(
        self, model: nn.Module, sites: list[RouterSite], record_logits: bool, speculate: int = 0, speculate_top: int = 8
    ) -> None:
        self.model = model
        self.sites = sites
        self.record_logits = record_logits
        self.speculate = speculate
        self.speculate_top = speculate_top
        # per site: (D, T, M) ids and probabilities of the later routers applied to this site's input
        self._spec: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in sites]
        self._suspended = False  # set while a later router runs on an earlier layer's hidden state
        self.config = text_config(model)
        self._captured: list[list[Any]] = [[] for _ in sites]
        self._selected: list[list[Any]] = [[] for _ in sites]
        self._handles: list[Any] = []
        self._wrapped: list[tuple[nn.Module, bool, Any]] = []
        self._rule = None

    def __enter__(self) -> _RouterHooks:
        for i, site in enumerate(self.sites):
            self._handles.append(site.module.register_forward_hook(self._router_hook(i)))
            route = getattr(site.block, "route_tokens_to_experts", None) if site.block is not None else None
            if callable(route):
                # The block picks experts itself from the router's logits: capture what it picked.
                had_own = "route_tokens_to_experts" in vars(site.block)
                self._wrapped.append((site.block, had_own, vars(site.block).get("route_tokens_to_experts")))
                site.block.route_tokens_to_experts = self._selection_wrapper(i, route)
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block, had_own, original in self._wrapped:
            if had_own:
                block.route_tokens_to_experts = original
            else:
                del block.route_tokens_to_experts
        self._wrapped.clear()

    def _router_hook(self, i: int) -> Any:
        site = self.sites[i]
        has_selection_method = callable(getattr(site.block, "route_tokens_to_experts", None))

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._suspended:
                return
            output = _detach(output)
            self._captured[i].append(output)
            if self.speculate:
                self._spec[i].append(self._speculate(i, args))
            if self._rule is None and not has_selection_method and not _holds_ids(output):
                # Logits only: choose the recompute rule now, so that a selection that must never be
                # recomputed (DeepSeek-V3 style) stops the forward pass with a clear error.
                self._rule = routing_rule_for(self.config, module)

        return hook

    def _speculate(self, i: int, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the routers of layers i+1..i+D to the hidden state router i was just given.

        That input is known when the layer starts, before its experts run, which is when the simulator's
        predictor is asked (docs/recording.md). Returns (D, T, M) ids and softmax probabilities; distances that
        run past the last layer are zeros.
        """
        hidden = args[0] if isinstance(args, tuple) and args else None
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
            raise RouterError(f"router {self.sites[i].name} was not called with a hidden-state tensor; cannot speculate")
        num_tokens = hidden.numel() // hidden.shape[-1]
        m = self.speculate_top
        ids = torch.zeros((self.speculate, num_tokens, m), dtype=torch.int64, device=hidden.device)
        probs = torch.zeros((self.speculate, num_tokens, m), dtype=torch.float32, device=hidden.device)
        self._suspended = True
        try:
            for d in range(1, self.speculate + 1):
                if i + d >= len(self.sites):
                    break
                later = self.sites[i + d]
                out = later.module(hidden)
                logits = decode_router_output(_detach(out), num_tokens, later.num_experts, later.logits_index).logits
                if logits is None:
                    raise RouterError(f"router {later.name} does not expose its logits; record without --speculate")
                p = torch.softmax(logits.reshape(num_tokens, -1).float(), dim=-1)
                top = torch.topk(p, m, dim=-1)  # sorted: rank 0 is the most probable
                ids[d - 1], probs[d - 1] = top.indices, top.values
        finally:
            self._suspended = False
        return ids, probs

    def _selection_wrapper(self, i: int, route: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = route(*args, **kwargs)
            self._selected[i].append(_detach(result))
            return result

        return wrapped

    def collect(self, num_tokens: int) -> _ForwardRows:
        """The routing of the forward pass just run, at every MoE layer; clears the captures."""
        rows: list[_LayerRows] = []
        for i, site in enumerate(self.sites):
            captured, selected = self._captured[i], self._selected[i]
            self._captured[i], self._selected[i] = [], []
            if len(captured) != 1:
                raise RouterError(
                    f"router {site.name} ran {len(captured)} times in one forward pass; expected once "
                    "(a model that reuses a router across steps is not supported)"
                )
            rows.append(self._resolve(site, captured[0], selected, num_tokens))
        ks = {r.ids.shape[1] for r in rows}
        if len(ks) != 1:
            raise RouterError(f"MoE layers select different numbers of experts {sorted(ks)}; format v1 needs one top-k")
        weights = [r.weights for r in rows]
        logits = [r.logits for r in rows]
        spec_ids = spec_probs = None
        if self.speculate:
            spec = [self._spec[i].pop() for i in range(len(self.sites))]
            self._spec = [[] for _ in self.sites]
            # (D, T, M) per layer -> (T, L, D, M)
            spec_ids = torch.stack([s[0] for s in spec], dim=0).permute(2, 0, 1, 3).cpu().numpy()
            spec_probs = torch.stack([s[1] for s in spec], dim=0).permute(2, 0, 1, 3).cpu().numpy()
        return _ForwardRows(
            ids=_stack_to_cpu([r.ids for r in rows], torch.int64),
            weights=_stack_to_cpu(weights, torch.float32) if all(w is not None for w in weights) else None,
            logits=_stack_to_cpu(logits, torch.float32) if all(x is not None for x in logits) else None,
            selection={r.selection for r in rows},
            spec_ids=spec_ids,
            spec_probs=spec_probs,
        )

    def _resolve(self, site: RouterSite, output: Any, selected: list[Any], num_tokens: int) -> _LayerRows:
        decoded = decode_router_output(output, num_tokens, site.num_experts, site.logits_index)
        ids, weights, selection = decoded.ids, decoded.weights, "read from the router output"
        if len(selected) > 1:
            block_name = site.name.rpartition(".")[0]
            raise RouterError(f"{block_name}.route_tokens_to_experts ran {len(selected)} times in one forward pass")
        if ids is None and selected:
            chosen = decode_router_output(selected[0], num_tokens, site.num_experts)
            ids, weights = chosen.ids, chosen.weights
            selection = "read from the MoE block's route_tokens_to_experts"
        if ids is None:
            if decoded.logits is None:
                raise RouterError(
                    f"router {site.name} returned neither expert ids nor ({num_tokens}, {site.num_experts}) "
                    f"logits; got {_describe(output)}"
                )
            if self._rule is None:
                self._rule = routing_rule_for(self.config, site.module)
            top_k = _config_top_k(self.config, site.module)
            weights, ids = self._rule.select(decoded.logits, top_k)
            selection = f"recomputed from router logits: {self._rule.description}"
        logits = decoded.logits if self.record_logits else None
        if self.record_logits and logits is None:
            raise RouterError(f"router {site.name} does not expose its logits; record without record_logits")
        return _LayerRows(ids=ids, weights=weights, logits=logits, selection=selection)


def _detach(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return tuple(_detach(o) for o in output)
    return output


def _holds_ids(output: Any) -> bool:
    items = output if isinstance(output, (tuple, list)) else [output]
    return any(isinstance(t, torch.Tensor) and not t.is_floating_point() and t.ndim >= 2 for t in items)


def _describe(output: Any) -> str:
    items = output if isinstance(output, (tuple, list)) else [output]
    parts = [f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__ for t in items]
    return "(" + ", ".join(parts) + ")"


def _config_top_k(config: Any, router: nn.Module) -> int:
    value = getattr(router, "top_k", None)
    if isinstance(value, int) and value >= 1:
        return value
    for key in ("num_experts_per_tok", "moe_top_k", "num_selected_experts", "top_k", "moe_topk"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= 1:
            return value
    raise RouterError("cannot tell how many experts a token uses: neither router.top_k nor config.num_experts_per_tok")


def _eos_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _forward_keywords(model: nn.Module) -> tuple[str, dict[str, int]]:
    """The KV-cache argument's name (``cache`` in newer transformers) and the arguments that limit the logits
    to the last position (only the last token's logits are used: greedy decoding)."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    last_only = {}
    for key in ("logits_to_keep", "num_logits_to_keep"):
        if key in params:
            last_only = {key: 1}
            break
    return cache_kw, last_only


def _output_cache(output: Any) -> Any:
    for key in ("cache", "past_key_values"):  # newest name first: reading the old one warns
        value = output.get(key) if hasattr(output, "get") else getattr(output, key, None)
        if value is not None:
            return value
    raise RouterError("the model returned no KV cache; decode recording needs use_cache support")


def _config_fingerprint(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    try:
        text = config.to_json_string(use_diff=False)
    except Exception:  # configs without to_json_string: hash their attribute dictionary
        text = json.dumps(vars(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_token_lists(sequences: Any, vocab: int | None) -> list[list[int]]:
    """Validate the prompts (lists or 1-D integer arrays of token ids) and return them as lists of ints."""
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__") or len(sequences) == 0:
        raise ValueError("sequences must be a non-empty list of token-id lists")
    result = []
    for i, seq in enumerate(sequences):
        array = np.asarray(seq)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"sequence {i} must be a non-empty 1-D list of token ids, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"sequence {i} holds non-integer tokens (dtype {array.dtype})")
        if array.min() < 0 or (vocab is not None and array.max() >= vocab):
            raise ValueError(f"sequence {i} holds token ids outside [0, {vocab}) (the model's vocab_size)")
        result.append(array.astype(np.int64).tolist())
    return result


def _check_options(num_sequences: int, domains: list[str] | None, max_new: int) -> None:
    if domains is not None and len(domains) != num_sequences:
        raise ValueError(f"domains has {len(domains)} entries for {num_sequences} sequences; give one per sequence")
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new!r}")


class _PhaseBuffer:
    """Rows of one phase, assembled into a trace at the end."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []  # per forward: (T, L, K)
        self.weights: list[np.ndarray | None] = []
        self.logits: list[np.ndarray | None] = []
        self.sequence: list[np.ndarray] = []
        self.sequence_order: list[int] = []
        self.selection: set[str] = set()
        self.spec_ids: list[np.ndarray] = []
        self.spec_probs: list[np.ndarray] = []

    def add(self, seq_id: int, rows: _ForwardRows) -> None:
        if rows.spec_ids is not None:
            self.spec_ids.append(rows.spec_ids)
            self.spec_probs.append(rows.spec_probs)  # type: ignore[arg-type]
        self.ids.append(rows.ids)
        self.weights.append(rows.weights)
        self.logits.append(rows.logits)
        self.sequence.append(np.full(rows.ids.shape[0], seq_id, dtype=np.int32))
        if not self.sequence_order or self.sequence_order[-1] != seq_id:
            self.sequence_order.append(seq_id)
        self.selection.update(rows.selection)

    def __bool__(self) -> bool:
        return bool(self.ids)


def _rank_by_weight(ids: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Order each row's experts by descending gate weight (stable), so rank 0 is the heaviest expert.

    Some routers return their top-k unsorted (``torch.topk(..., sorted=False)``); a common rank order keeps
    rank-based statistics comparable across families.
    """
    if weights is None:
        return ids, None
    order = np.argsort(-weights, axis=-1, kind="stable")
    return np.take_along_axis(ids, order, axis=-1), np.take_along_axis(weights, order, axis=-1)


def _build_trace(
    buffer: _PhaseBuffer,
    phase: str,
    *,
    base_meta: dict[str, Any],
    num_experts: int,
    domains: list[str] | None,
    record_logits: bool,
) -> RecordedTrace:
    experts = np.concatenate(buffer.ids, axis=0)
    weights = None
    if all(w is not None for w in buffer.weights):
        weights = np.concatenate(buffer.weights, axis=0).astype(np.float32)  # type: ignore[arg-type]
    meta_extra = dict(base_meta)
    meta_extra["routing"] = dict(meta_extra["routing"], selection=sorted(buffer.selection))
    if weights is not None and (~np.isfinite(weights) | (weights < 0)).any():
        warnings.warn(
            f"{phase}: the router's gate weights include negative or non-finite values; dropping them", stacklevel=3
        )
        weights = None
        meta_extra["routing"]["weights_dropped"] = "negative or non-finite gate weights"
    experts, weights = _rank_by_weight(experts, weights)
    if experts.min() < 0 or experts.max() >= num_experts:
        raise RouterError(
            f"{phase}: recorded expert ids span [{experts.min()}, {experts.max()}], not [0, {num_experts})"
        )
    logits = None
    if record_logits:
        logits = np.concatenate(buffer.logits, axis=0).astype(np.float32)  # type: ignore[arg-type]
    kept_domains = None if domains is None else [domains[i] for i in buffer.sequence_order]
    spec_ids = spec_probs = None
    if buffer.spec_ids:
        spec_ids = np.concatenate(buffer.spec_ids, axis=0).astype(ids_dtype(num_experts))
        spec_probs = np.concatenate(buffer.spec_probs, axis=0).astype(np.float16)
        meta_extra["format"] = FORMAT_ID_SPECULATIVE
        meta_extra["speculation"] = {
            "depth": int(spec_ids.shape[2]),
            "top_m": int(spec_ids.shape[3]),
            "rule": "the routers of layers l+1..l+depth applied to the input of layer l's router; top_m experts "
            "by softmax probability of their logits, descending",
        }
    meta = make_meta(
        model=base_meta["model"],
        num_experts=num_experts,
        top_k=int(experts.shape[2]),
        num_layers=int(experts.shape[1]),
        expert_bytes=base_meta["expert_bytes"],
        phase=phase,
        source=base_meta["source"],
        domains=kept_domains,
        **{k: v for k, v in meta_extra.items() if k not in ("model", "expert_bytes", "source")},
    )
    return RecordedTrace(
        experts=experts.astype(ids_dtype(num_experts)),
        sequence=np.concatenate(buffer.sequence),
        meta=meta,
        weights=weights,
        router_logits=logits,
        speculative_experts=spec_ids,
        speculative_weights=spec_probs,
    )


def record_routing(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 0,
    domains: list[str] | None = None,
    expert_bytes: int | None = None,
    model_name: str | None = None,
    source: str = "",
    record_logits: bool = False,
    device: Any = None,
    stop_at_eos: bool = True,
    prompts_file: str | None = None,
    speculate: int = 0,
    speculate_top: int = DEFAULT_SPECULATE_TOP,
) -> dict[str, RecordedTrace]:
    """Run ``model`` over token sequences and return their routing as v1 traces.

    Args:
        model: a transformers causal LM with MoE layers (any family :func:`find_router_modules` recognises).
        sequences: prompts as lists (or 1-D integer arrays) of token ids; each runs alone, in order.
        max_new_tokens: generated tokens per prompt (greedy); 0 records the prefill only.
        domains: one domain label per sequence, stored in the traces' meta.
        expert_bytes: bytes of one routed expert; by default the experts module's parameter bytes / experts.
        model_name: the meta's ``model``; by default the config's ``_name_or_path`` or ``model_type``.
        source: the meta's ``source``; by default a sentence naming the model and transformers version.
        record_logits: also return the router logits (``RecordedTrace.router_logits``, float32 (T, L, E)).
        device: where to run; the model is moved there if it is elsewhere. Default: the model's device.
        stop_at_eos: end a sequence's decoding when the model emits an end-of-sequence token.
        prompts_file: the file the prompts came from, for the provenance.
        speculate: also record, for each token and layer l, what the routers of layers l+1..l+speculate pick
            from layer l's router input (their ``speculate_top`` most probable experts and probabilities): the
            traces become format 1.1 with ``speculative_experts`` / ``speculative_weights``. 0: not recorded.
        speculate_top: experts kept per speculative prediction (at most the model's expert count).

    Returns:
        ``{"prefill": trace}`` plus ``"decode"`` when ``max_new_tokens > 0``. Each trace's ``sequence`` value is
        the index of the prompt in ``sequences``; meta holds ``moe_layer_indices`` (decoder layers with a
        router, in order), ``routing`` (router class, how ids were obtained) and ``provenance``.
    """
    config = text_config(model)
    vocab = getattr(config, "vocab_size", None)
    sequences = _as_token_lists(sequences, vocab if isinstance(vocab, int) else None)
    _check_options(len(sequences), domains, max_new_tokens)
    for key, value in (("speculate", speculate), ("speculate_top", speculate_top)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "speculate" else 1):
            raise ValueError(f"{key} must be a {'non-negative' if key == 'speculate' else 'positive'} integer, "
                             f"got {value!r}")
    sites = find_router_sites(model)
    if speculate >= len(sites):
        raise ValueError(f"speculate={speculate} reaches past the model's {len(sites)} MoE layers; "
                         f"use at most {len(sites) - 1}")
    num_experts_set = {site.num_experts for site in sites}
    if None in num_experts_set or len(num_experts_set) != 1:
        raise RouterError(f"MoE layers disagree on or hide their expert count: {sorted(map(str, num_experts_set))}")
    num_experts = int(num_experts_set.pop())  # type: ignore[arg-type]
    if expert_bytes is None:
        sizes = {expert_bytes_of(site, num_experts) for site in sites}
        if len(sizes) != 1:
            raise RouterError(f"expert sizes differ across MoE layers {sorted(sizes)}; pass expert_bytes")
        expert_bytes = sizes.pop()
    if speculate_top > num_experts:
        raise ValueError(f"speculate_top={speculate_top} exceeds the model's {num_experts} experts per layer")
    if isinstance(expert_bytes, bool) or not isinstance(expert_bytes, int) or expert_bytes < 1:
        raise ValueError(f"expert_bytes must be a positive integer, got {expert_bytes!r}")

    if device is not None:
        device = torch.device(device)
        if next(model.parameters()).device != device:
            model.to(device)
    run_device = next(model.parameters()).device
    name = (
        model_name or getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__
    )
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = "absent"
    base_meta: dict[str, Any] = {
        "model": str(name),
        "expert_bytes": int(expert_bytes),
        "source": source or f"routing recorded from {name} with transformers {tf_version}",
        "moe_layer_indices": [site.layer_index for site in sites],
        "routing": {
            "family": str(getattr(config, "model_type", "")),
            "router_class": type(sites[0].module).__name__,
            "rank_order": "descending gate weight",
        },
        "provenance": {
            "recorder": "moe_cache_env.traces.record",
            "model_class": type(model).__name__,
            "config_sha256": _config_fingerprint(model),
            "transformers_version": tf_version,
            "torch_version": torch.__version__,
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device": str(run_device),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "decoding": "greedy" + (", stops at end-of-sequence" if stop_at_eos else ""),
            "max_new_tokens": int(max_new_tokens),
            "num_prompts": len(sequences),
            "prompts_file": prompts_file,
        },
    }

    eos = _eos_ids(model) if stop_at_eos else set()
    cache_kw, last_only = _forward_keywords(model)
    prefill, decode = _PhaseBuffer(), _PhaseBuffer()
    was_training = model.training
    model.eval()  # training mode adds router jitter and (Phi-MoE) samples experts
    try:
        with torch.inference_mode(), _RouterHooks(model, sites, record_logits, speculate, speculate_top) as hooks:
            for seq_id, tokens in enumerate(sequences):
                input_ids = torch.tensor([tokens], dtype=torch.long, device=run_device)
                out = model(input_ids=input_ids, use_cache=max_new_tokens > 0, **last_only)
                prefill.add(seq_id, hooks.collect(len(tokens)))
                if max_new_tokens == 0:
                    continue
                cache = _output_cache(out)
                next_token = int(out.logits[0, -1].argmax())
                for _ in range(max_new_tokens):
                    if next_token in eos:
                        break
                    step_ids = torch.tensor([[next_token]], dtype=torch.long, device=run_device)
                    out = model(input_ids=step_ids, use_cache=True, **{cache_kw: cache}, **last_only)
                    decode.add(seq_id, hooks.collect(1))
                    cache = _output_cache(out)
                    next_token = int(out.logits[0, -1].argmax())
    finally:
        model.train(was_training)

    build = dict(base_meta=base_meta, num_experts=num_experts, domains=domains, record_logits=record_logits)
    traces = {"prefill": _build_trace(prefill, "prefill", **build)}
    if max_new_tokens > 0:
        if not decode:
            raise RouterError(
                "every prompt's first generated token is an end-of-sequence token, so decoding recorded nothing; "
                "pass stop_at_eos=False to record past it"
            )
        traces["decode"] = _build_trace(decode, "decode", **build)
    return traces
