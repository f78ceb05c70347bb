"""Find the router of every MoE layer of a Hugging Face causal LM and decode what it returns.

Routers differ across model families and transformers versions:

* Since transformers 5 most routers return a tuple ``(router_logits, top_k_weights, top_k_index)``; older
  ones return ``(top_k_index, top_k_weights)`` or dense ``(T, E)`` scores scattered at the selected ids.
  Whenever the output holds the selected ids, they are read as they are.
* Some routers return logits only and the MoE block selects the experts, either in a method
  ``route_tokens_to_experts`` (DBRX, DeepSeek-V3 and GLM-4-MoE in some transformers releases) whose return
  value we capture, or inline (Mixtral, Qwen-MoE, OLMoE, Phi-MoE, ... before transformers 5). In the last case
  the top-k is recomputed from the logits with the family's own rule (:func:`routing_rule_for`); a family
  without a known rule is refused rather than guessed.
* Selection with a learned score-correction bias and group limits (DeepSeek-V3 style ``noaux_tc``) is never
  recomputed: the ids are read from the router or from ``route_tokens_to_experts``; if neither exposes them the
  recorder stops with an error rather than guess.

Torch is imported at module level: this module is only imported by the recorder.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

#: Attribute names under which MoE blocks keep their router, for models that do not declare the router
#: class in ``_can_record_outputs`` (transformers < 5, remote code).
ROUTER_ATTRIBUTE_NAMES = ("gate", "router", "gating", "moe_gate")

#: Path components that mark the feed-forward part of a layer, to choose between several routers of a layer
#: (JetMoE routes both its attention heads and its MLP).
FFN_PATH_MARKERS = ("mlp", "moe", "ffn", "feed_forward", "block_sparse_moe")


class RouterError(ValueError):
    """The model's routers cannot be found or their output cannot be turned into expert ids."""


@dataclass(frozen=True)
class RouterSite:
    """One MoE layer's router inside a model.

    Attributes:
        layer_index: index of the decoder layer (dense layers included) the router belongs to.
        name: qualified module name, e.g. ``model.layers.3.mlp.gate``.
        module: the router module, where the forward hook goes.
        block: the MoE block holding the router (its parent module), or None for a top-level router.
        logits_index: position of the logits in the router's tuple output, when the model declares it.
        num_experts: routed experts of the layer (from the router's weight or attributes).
    """

    layer_index: int
    name: str
    module: nn.Module
    block: nn.Module | None
    logits_index: int | None
    num_experts: int | None


def text_config(model: nn.Module) -> Any:
    """The language-model part of a model's config (multimodal configs nest it)."""
    config = getattr(model, "config", None)
    if config is None:
        raise RouterError(f"{type(model).__name__} has no .config; pass a Hugging Face PreTrainedModel")
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def config_num_experts(config: Any) -> int | None:
    """Routed experts per MoE layer as the config names them (the key differs by family)."""
    for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    ffn = getattr(config, "ffn_config", None)  # DBRX
    if ffn is not None:
        return config_num_experts(ffn)
    return None


def _declared_router_classes(model: nn.Module) -> list[tuple[type, int | None, str | None, str | None]]:
    """(class, logits index, layer-name suffix, class-name suffix) of routers declared by the model.

    transformers >= 5 declares the router class of a model in ``_can_record_outputs["router_logits"]`` (used by
    ``output_router_logits=True``); reading it avoids guessing from module names.
    """
    found = []
    for sub in model.modules():
        declared = getattr(type(sub), "_can_record_outputs", None)
        if not isinstance(declared, dict) or "router_logits" not in declared:
            continue
        entry = declared["router_logits"]
        if isinstance(entry, type):
            found.append((entry, None, None, None))
        elif getattr(entry, "target_class", None) is not None or getattr(entry, "class_name", None):
            found.append(
                (
                    getattr(entry, "target_class", None),
                    getattr(entry, "index", None),
                    getattr(entry, "layer_name", None),
                    getattr(entry, "class_name", None),
                )
            )
    return found


def _layer_index(name: str) -> int | None:
    """The decoder-layer index in a module path: its first all-digit component."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def _module_num_experts(module: nn.Module, config_value: int | None) -> int | None:
    value = getattr(module, "num_experts", None)
    if isinstance(value, int) and value > 1:
        return value
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[0])
    inner = getattr(module, "layer", None)  # DBRX wraps an nn.Linear
    if isinstance(inner, nn.Linear):
        return int(inner.out_features)
    return config_value


def find_router_sites(model: nn.Module) -> list[RouterSite]:
    """Every MoE layer's router, in layer order; dense layers have none.

    Raises :class:`RouterError` when no router is found or a layer has several that cannot be told apart.
    """
    config = text_config(model)
    expected_experts = config_num_experts(config)
    modules = dict(model.named_modules())
    parents = {name: modules.get(name.rpartition(".")[0]) if "." in name else model for name in modules}

    candidates: list[tuple[str, nn.Module, int | None]] = []
    declared = _declared_router_classes(model)
    if declared:
        for name, module in modules.items():
            for cls, index, layer_name, class_name in declared:
                if cls is not None and not isinstance(module, cls):
                    continue
                if cls is None and not type(module).__name__.endswith(class_name or "\0"):
                    continue
                if layer_name and not name.endswith(layer_name):
                    continue
                candidates.append((name, module, index))
                break
    if not candidates:
        # Older transformers and remote code: a child called gate/router of a block that holds experts.
        for name, module in modules.items():
            last = name.rpartition(".")[2]
            parent = parents.get(name)
            if last not in ROUTER_ATTRIBUTE_NAMES or parent is None:
                continue
            if not (hasattr(parent, "experts") or hasattr(module, "top_k")):
                continue
            n = _module_num_experts(module, None)
            if expected_experts is not None and n is not None and n != expected_experts:
                continue
            candidates.append((name, module, None))

    by_layer: dict[int, list[tuple[str, nn.Module, int | None]]] = {}
    for name, module, index in candidates:
        layer = _layer_index(name)
        if layer is None:
            raise RouterError(f"router {name!r} ({type(module).__name__}) is not inside a numbered layer list")
        by_layer.setdefault(layer, []).append((name, module, index))

    sites: list[RouterSite] = []
    for layer in sorted(by_layer):
        options = by_layer[layer]
        if len(options) > 1:
            ffn = [o for o in options if any(m in o[0].split(".") for m in FFN_PATH_MARKERS)]
            if len(ffn) != 1:
                names = ", ".join(o[0] for o in options)
                raise RouterError(f"layer {layer} has several routers ({names}); cannot tell which routes the MLP")
            options = ffn
        name, module, index = options[0]
        sites.append(
            RouterSite(
                layer_index=layer,
                name=name,
                module=module,
                block=parents.get(name),
                logits_index=index,
                num_experts=_module_num_experts(module, expected_experts),
            )
        )
    if not sites:
        raise RouterError(
            f"found no MoE router in {type(model).__name__}: neither a router class declared in "
            "_can_record_outputs['router_logits'] nor a 'gate'/'router' module next to an 'experts' module"
        )
    return sites


def find_router_modules(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(decoder-layer index, router module) of every MoE layer, in layer order."""
    return [(site.layer_index, site.module) for site in find_router_sites(model)]


# --------------------------------------------------------------------------------------------------------------
# Decoding a router's output


@dataclass
class RouterOutput:
    """What one router call returned, reduced to per-token arrays (tokens in the order the router saw them).

    ``ids`` (T, K) int64 and ``weights`` (T, K) float32 are the selection when the output holds it;
    ``logits`` (T, E) float32 when the output holds them.
    """

    ids: torch.Tensor | None
    weights: torch.Tensor | None
    logits: torch.Tensor | None


def _tensors(output: Any) -> list[Any]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return list(output)
    if hasattr(output, "to_tuple"):  # ModelOutput
        return list(output.to_tuple())
    return [output]


def _is_dense_scores(candidate: torch.Tensor, ids: torch.Tensor) -> bool:
    """True when ``candidate`` (T, E) is zero everywhere except at the selected ids (scattered scores)."""
    outside = torch.ones_like(candidate, dtype=torch.bool).scatter_(1, ids, False)
    return bool((candidate[outside] == 0).all())


def decode_router_output(
    output: Any, num_tokens: int, num_experts: int | None, logits_index: int | None = None
) -> RouterOutput:
    """Pull selected ids, gate weights and logits out of whatever a router (or selection method) returned.

    Selected ids are an integer tensor with ``num_tokens * K`` elements and last dimension ``K``; weights a
    float tensor of the same shape, or a dense (T, E) float tensor that is zero outside the selected ids;
    logits the float tensor at ``logits_index`` (or the first (T, E) float tensor that is not dense scores).
    """
    items = _tensors(output)
    tensors = [t for t in items if isinstance(t, torch.Tensor)]
    ids = None
    for t in tensors:
        if t.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8) and t.ndim >= 2:
            k = int(t.shape[-1])
            if k >= 1 and t.numel() == num_tokens * k:
                ids = t.reshape(num_tokens, k).long()
                break
    floats = [t for t in tensors if t.is_floating_point()]
    weights = None
    dense_scores = None
    if ids is not None:
        for t in floats:
            if t.numel() == ids.numel() and t.shape[-1] == ids.shape[1]:
                weights = t.reshape(ids.shape).float()
                break
        if weights is None and num_experts is not None:
            for t in floats:
                if t.numel() == num_tokens * num_experts and t.shape[-1] == num_experts:
                    flat = t.reshape(num_tokens, num_experts).float()
                    if _is_dense_scores(flat, ids):
                        dense_scores = t
                        weights = flat.gather(1, ids)
                        break
    logits = None
    if num_experts is not None:
        ordered = floats
        declared = items[logits_index] if logits_index is not None and 0 <= logits_index < len(items) else None
        if isinstance(declared, torch.Tensor):
            ordered = [declared] + floats
        for t in ordered:
            if t is dense_scores or not t.is_floating_point():
                continue
            if t.numel() == num_tokens * num_experts and t.shape[-1] == num_experts:
                logits = t.reshape(num_tokens, num_experts).float()
                break
    return RouterOutput(ids=ids, weights=weights, logits=logits)


# --------------------------------------------------------------------------------------------------------------
# Recomputing the top-k from logits with a family's own rule


@dataclass(frozen=True)
class RoutingRule:
    """A family's top-k rule: ``select(logits (T, E) float32, top_k) -> (weights (T, K), ids (T, K))``."""

    name: str
    description: str
    select: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def softmax_topk(normalize: bool) -> RoutingRule:
    """Softmax over all experts, top-k of the probabilities, optionally renormalised to sum to 1."""

    def select(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits.float(), dim=-1)
        weights, ids = torch.topk(probs, top_k, dim=-1)
        if normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids

    name = "softmax-topk-renormalised" if normalize else "softmax-topk"
    text = "softmax over experts, top-k" + (", weights renormalised to sum to 1" if normalize else "")
    return RoutingRule(name, text, select)


def _topk_softmax(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = torch.topk(logits.float(), top_k, dim=-1)
    return torch.softmax(values, dim=-1), ids


def _topk_sigmoid(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = torch.topk(logits.float(), top_k, dim=-1)
    return torch.sigmoid(values), ids


def sparsemixer(jitter_eps: float) -> RoutingRule:
    """Phi-MoE's SparseMixer in evaluation mode (top-2; arXiv:2409.12136, transformers ``sparsemixer``).

    Rank 1 is the arg-max; its weight is the softmax over the experts whose relative gap to the max is within
    ``2 * jitter_eps``. Rank 2 is the arg-max with rank 1 masked out, weighted the same way.
    """

    def masked_softmax_at_max(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top, arg = scores.max(dim=-1, keepdim=True)
        factor = scores.abs().clamp(min=top)
        far = ((top - scores) / factor) > (2 * jitter_eps)
        probs = torch.softmax(scores.masked_fill(far, float("-inf")), dim=-1)
        return probs.gather(-1, arg), arg

    def select(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if top_k != 2:
            raise RouterError(f"Phi-MoE's sparsemixer selects exactly 2 experts, the config asks for {top_k}")
        scores = logits.float()
        w1, i1 = masked_softmax_at_max(scores)
        w2, i2 = masked_softmax_at_max(scores.scatter(-1, i1, float("-inf")))
        return torch.cat([w1, w2], dim=-1), torch.cat([i1, i2], dim=-1)

    return RoutingRule("sparsemixer", f"Phi-MoE sparsemixer, eval mode (jitter_eps={jitter_eps})", select)


def deepseek_v2(topk_method: str, num_group: int, topk_group: int, scaling: float) -> RoutingRule:
    """DeepSeek-V2: softmax, top-k either greedy or within the ``topk_group`` best of ``num_group`` groups."""

    def select(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.softmax(logits.float(), dim=-1)
        if topk_method == "group_limited_greedy":
            tokens, experts = scores.shape
            group_best = scores.view(tokens, num_group, experts // num_group).max(dim=-1).values
            groups = torch.topk(group_best, topk_group, dim=-1).indices
            keep = torch.zeros_like(group_best, dtype=torch.bool).scatter_(1, groups, True)
            keep = keep.unsqueeze(-1).expand(tokens, num_group, experts // num_group).reshape(tokens, experts)
            scores = scores.masked_fill(~keep, 0.0)
        elif topk_method != "greedy":
            raise RouterError(f"DeepSeek-V2 topk_method {topk_method!r} is not one this recorder can recompute")
        weights, ids = torch.topk(scores, top_k, dim=-1)
        return weights * scaling, ids

    text = f"DeepSeek-V2 {topk_method} (groups {topk_group}/{num_group}), weights x {scaling}"
    return RoutingRule(f"deepseek-v2-{topk_method}", text, select)


#: Families whose router scores experts with softmax over all experts, then takes the top-k and renormalises
#: iff ``config.norm_topk_prob`` (transformers modeling_<family>.py).
_SOFTMAX_NORM_FLAG_FAMILIES = ("qwen2_moe", "qwen3_moe", "qwen3_next", "olmoe", "flex_olmo", "jamba")
#: Softmax top-k, always renormalised (Mixtral and its descendants, Hunyuan, Qwen3.5-MoE and Qwen3-VL-MoE).
_SOFTMAX_RENORM_FAMILIES = (
    "mixtral", "minimax", "hunyuan_v1_moe", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_vl_moe", "qwen3_vl_moe_text",
)
#: Top-k of the raw logits, softmax over the k selected (GPT-OSS, Granite-MoE, JetMoE).
_TOPK_SOFTMAX_FAMILIES = ("gpt_oss", "granitemoe", "granitemoeshared", "granitemoehybrid", "jetmoe")
#: Top-k of the raw logits, sigmoid of each (Llama 4).
_TOPK_SIGMOID_FAMILIES = ("llama4", "llama4_text")


#: Families whose selection adds a learned bias to the scores (DeepSeek-V3's auxiliary-loss-free balancing) or
#: limits it to groups of experts; their ids are read, never recomputed.
_BIASED_FAMILIES = (
    "deepseek_v3", "deepseek_v32", "glm4_moe", "glm4_moe_lite", "dots1", "exaone_moe", "longcat_flash", "afmoe",
    "minimax_m2", "kimi_linear", "ernie4_5_moe",
)


def uses_biased_selection(config: Any, router: nn.Module | None = None) -> bool:
    """True for DeepSeek-V3-style selection: a score-correction bias (a router buffer, or a bias the block passes
    to the router's forward), sigmoid scores with ``noaux_tc``, or a family known to select that way."""
    if router is not None:
        named = [n for n, _ in router.named_buffers()] + [n for n, _ in router.named_parameters()]
        if any("e_score_correction_bias" in n for n in named):
            return True
        try:
            params = inspect.signature(router.forward).parameters
        except (TypeError, ValueError):
            params = {}
        if any("bias" in name for name in params):
            return True
    if getattr(config, "topk_method", None) == "noaux_tc" or getattr(config, "scoring_func", None) == "sigmoid":
        return True
    if getattr(config, "use_expert_bias", False):
        return True
    return getattr(config, "model_type", "") in _BIASED_FAMILIES


def routing_rule_for(config: Any, router: nn.Module | None = None) -> RoutingRule:
    """The top-k rule of ``config``'s family, to recompute a selection from logits.

    Raises :class:`RouterError` for biased or group-limited selection (DeepSeek-V3 style), which must be read,
    and for families without a known rule: guessing would record wrong ids silently.
    """
    model_type = str(getattr(config, "model_type", ""))
    if uses_biased_selection(config, router):
        raise RouterError(
            f"{model_type or 'this model'} selects experts with a score-correction bias or group limits; "
            "the recorder reads such selections from the router output or route_tokens_to_experts and never "
            "recomputes them, but this router returned logits only"
        )
    if model_type in _SOFTMAX_RENORM_FAMILIES:
        return softmax_topk(True)
    if model_type in _SOFTMAX_NORM_FLAG_FAMILIES:
        return softmax_topk(bool(getattr(config, "norm_topk_prob", False)))
    if model_type in _TOPK_SOFTMAX_FAMILIES or (
        model_type == "cohere2_moe" and getattr(config, "expert_selection_fn", "softmax") == "softmax"
    ):
        return RoutingRule("topk-softmax", "top-k of the logits, softmax over the k selected", _topk_softmax)
    if model_type in _TOPK_SIGMOID_FAMILIES:
        return RoutingRule("topk-sigmoid", "top-k of the logits, sigmoid of each", _topk_sigmoid)
    if model_type == "phimoe":
        return sparsemixer(float(getattr(config, "router_jitter_noise", 0.01)))
    if model_type == "deepseek_v2":
        return deepseek_v2(
            str(getattr(config, "topk_method", "greedy")),
            int(getattr(config, "n_group", 1) or 1),
            int(getattr(config, "topk_group", 1) or 1),
            float(getattr(config, "routed_scaling_factor", 1.0)),
        )
    raise RouterError(
        f"the router of model type {model_type!r} returns logits only and this recorder knows no top-k rule for "
        "that family; add it to routing_rule_for (moe_cache_env/traces/recording/routers.py) after checking it "
        "against the model's own selection"
    )


# --------------------------------------------------------------------------------------------------------------
# Expert size


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def expert_bytes_of(site: RouterSite, num_experts: int) -> int:
    """Bytes of one routed expert's weights, from the ``experts`` module next to the router.

    Fused experts hold all experts in each tensor, stacked on dimension 0 (``(E, out, in)`` in transformers >= 5,
    ``(E * out, in)`` in DBRX); a ModuleList holds one module per expert. Shared (always-active) experts are not
    counted.
    """
    experts = getattr(site.block, "experts", None) if site.block is not None else None
    if not isinstance(experts, nn.Module) and site.block is not None:
        # No 'experts' module (JetMoE keeps input_linear and output_linear): count the block's tensors that are
        # stacked over the experts, leaving out the router's.
        router_params = {id(p) for p in site.module.parameters()}
        stacked = [
            p for p in site.block.parameters()
            if id(p) not in router_params and p.ndim >= 2 and p.shape[0] == num_experts
        ]
        if stacked:
            return sum(p.numel() * p.element_size() for p in stacked) // num_experts
    if not isinstance(experts, nn.Module):
        raise RouterError(
            f"no 'experts' module next to router {site.name}; pass expert_bytes (bytes of one expert's weights)"
        )
    if isinstance(experts, (nn.ModuleList, nn.Sequential)):
        sizes = {_param_bytes(e) for e in experts}
        if len(sizes) != 1:
            raise RouterError(f"experts of {site.name} differ in size ({sorted(sizes)}); pass expert_bytes")
        return sizes.pop()
    total = 0
    for pname, p in experts.named_parameters():
        if p.ndim == 0 or p.shape[0] % num_experts:
            raise RouterError(
                f"parameter {pname} {tuple(p.shape)} of {site.name.rpartition('.')[0]}.experts is not stacked "
                f"over the {num_experts} experts; pass expert_bytes"
            )
        total += p.numel() * p.element_size()
    if total == 0 or total % num_experts:
        raise RouterError(f"cannot split {total} bytes of {site.name} experts over {num_experts}; pass expert_bytes")
    return total // num_experts


def ids_dtype(num_experts: int) -> np.dtype:
    """The smallest integer dtype that holds expert ids below ``num_experts`` (keeps bundled traces small)."""
    return np.dtype(np.int16) if num_experts <= np.iinfo(np.int16).max else np.dtype(np.int32)
