"""The routing recorder on tiny, randomly initialised models of several MoE families (CPU, no download).

Recorded ids are checked against independent observations of the same forward pass: the ids the MoE block
hands to its ``experts`` module (a pre-hook there), a from-scratch recomputation from the captured hidden
states and gate weights (DeepSeek-V3), and a full forward over prompt + generated tokens (decode).
"""

from __future__ import annotations

import types
import warnings
from typing import Any
from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moe_cache_env.traces import load_trace, save_trace  # noqa: E402
from moe_cache_env.traces.record import RecordedTrace, find_router_modules, record_routing  # noqa: E402
from moe_cache_env.traces.recording.routers import (  # noqa: E402
    RouterError,
    decode_router_output,
    find_router_sites,
    routing_rule_for,
    text_config,
)

VOCAB = 96
PROMPTS = [[5, 17, 33, 2, 71, 64, 8], [90, 3, 3, 41], [12, 60, 29, 77, 15]]

ATTN = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=128, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None,
            pad_token_id=None)
#: Multi-head latent attention sizes (DeepSeek-V2/V3 and their descendants).
MLA = dict(kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
           num_key_value_heads=4)


def _config(name: str, **kwargs: Any) -> Any:
    return getattr(transformers, name)(**kwargs)


#: family -> (config class, kwargs, causal-LM class). Sizes: 1-3 layers, hidden 32, 8 experts, top-2; the first
#: layer is dense where the family allows it, to check that dense layers are skipped.
FAMILIES: dict[str, tuple[str, dict[str, Any], str]] = {
    "mixtral": ("MixtralConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=48, num_local_experts=8,
                                      num_experts_per_tok=2), "MixtralForCausalLM"),
    "qwen2_moe": ("Qwen2MoeConfig", dict(ATTN, num_hidden_layers=3, intermediate_size=48, moe_intermediate_size=24,
                                         shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                         mlp_only_layers=[0], norm_topk_prob=False), "Qwen2MoeForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=48, moe_intermediate_size=24,
                                         num_experts=8, num_experts_per_tok=2, norm_topk_prob=True),
                  "Qwen3MoeForCausalLM"),
    "olmoe": ("OlmoeConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_experts=8,
                                  num_experts_per_tok=2), "OlmoeForCausalLM"),
    "deepseek_v2": ("DeepseekV2Config", dict(ATTN, num_hidden_layers=3, intermediate_size=48,
                                             moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=2,
                                             n_shared_experts=1, first_k_dense_replace=1, topk_method=
                                             "group_limited_greedy", n_group=2, topk_group=1, kv_lora_rank=16,
                                             num_key_value_heads=4,
                                             q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                                             v_head_dim=8, routed_scaling_factor=1.5), "DeepseekV2ForCausalLM"),
    "deepseek_v3": ("DeepseekV3Config", dict(ATTN, num_hidden_layers=3, intermediate_size=48,
                                             moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=2,
                                             n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2,
                                             num_key_value_heads=4,
                                             kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8,
                                             qk_rope_head_dim=8, v_head_dim=8, norm_topk_prob=True,
                                             routed_scaling_factor=2.5), "DeepseekV3ForCausalLM"),
    "gpt_oss": ("GptOssConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_local_experts=8,
                                     num_experts_per_tok=2, layer_types=["full_attention"] * 2),
                "GptOssForCausalLM"),
    "phimoe": ("PhimoeConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_local_experts=8,
                                    num_experts_per_tok=2), "PhimoeForCausalLM"),
    "granitemoe": ("GraniteMoeConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_local_experts=8,
                                            num_experts_per_tok=2), "GraniteMoeForCausalLM"),
    "minimax": ("MiniMaxConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_local_experts=8,
                                      num_experts_per_tok=2, layer_types=["full_attention"] * 2),
                "MiniMaxForCausalLM"),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_experts=8,
                                                  moe_topk=2), "HunYuanMoEV1ForCausalLM"),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(ATTN, num_hidden_layers=3, intermediate_size=48,
                                                moe_intermediate_size=24, moe_num_experts=8, moe_k=2,
                                                moe_layer_start_index=1), "Ernie4_5_MoeForCausalLM"),
    "glm4_moe": ("Glm4MoeConfig", dict(ATTN, num_hidden_layers=3, intermediate_size=48, moe_intermediate_size=24,
                                       n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1,
                                       n_group=2, topk_group=1), "Glm4MoeForCausalLM"),
    "dbrx": ("DbrxConfig", dict(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, max_seq_len=128,
                                attn_config=dict(kv_n_heads=2, rope_theta=1e4, clip_qkv=8.0), tie_word_embeddings=False,
                                ffn_config=dict(ffn_hidden_size=24, moe_num_experts=8, moe_top_k=2)),
             "DbrxForCausalLM"),
    "afmoe": ("AfmoeConfig", dict(ATTN, num_hidden_layers=3, intermediate_size=48, moe_intermediate_size=24,
                                  num_experts=8, num_experts_per_tok=2, num_dense_layers=1), "AfmoeForCausalLM"),
    "exaone_moe": ("ExaoneMoeConfig", dict(ATTN, num_hidden_layers=3, intermediate_size=48, moe_intermediate_size=24,
                                           num_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, n_group=2,
                                           topk_group=1), "ExaoneMoeForCausalLM"),
    "cohere2_moe": ("Cohere2MoeConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=48,
                                             moe_intermediate_size=24, num_experts=8, num_experts_per_tok=2),
                    "Cohere2MoeForCausalLM"),
    "minimax_m2": ("MiniMaxM2Config", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_local_experts=8,
                                           num_experts_per_tok=2), "MiniMaxM2ForCausalLM"),
    "granitemoeshared": ("GraniteMoeSharedConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24,
                                                        num_local_experts=8, num_experts_per_tok=2,
                                                        shared_intermediate_size=16), "GraniteMoeSharedForCausalLM"),
    "glm4_moe_lite": ("Glm4MoeLiteConfig", dict(ATTN, **MLA, num_hidden_layers=3, intermediate_size=48,
                                                moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=2,
                                                first_k_dense_replace=1, n_group=2, topk_group=1),
                      "Glm4MoeLiteForCausalLM"),
    "dots1": ("Dots1Config", dict(ATTN, num_hidden_layers=3, intermediate_size=48, moe_intermediate_size=24,
                                  n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, n_group=2,
                                  topk_group=1, n_shared_experts=1), "Dots1ForCausalLM"),
    "deepseek_v32": ("DeepseekV32Config", dict(ATTN, **MLA, num_hidden_layers=3, intermediate_size=48,
                                               moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=2,
                                               first_k_dense_replace=1, n_group=2, topk_group=1, n_shared_experts=1,
                                               index_n_heads=2, index_head_dim=16, index_topk=4),
                     "DeepseekV32ForCausalLM"),
    "flex_olmo": ("FlexOlmoConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_experts=8,
                                         num_experts_per_tok=2, pad_token_id=0), "FlexOlmoForCausalLM"),
    "jamba": ("JambaConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, num_experts=8,
                                  num_experts_per_tok=2, attn_layer_period=1, attn_layer_offset=0,
                                  expert_layer_period=2, expert_layer_offset=1, use_mamba_kernels=False),
              "JambaForCausalLM"),
    "lfm2_moe": ("Lfm2MoeConfig", dict(ATTN, num_hidden_layers=3, intermediate_size=48, moe_intermediate_size=24,
                                       num_experts=8, num_experts_per_tok=2, num_dense_layers=1,
                                       layer_types=["full_attention"] * 3), "Lfm2MoeForCausalLM"),
    "qwen3_next": ("Qwen3NextConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=48, moe_intermediate_size=24,
                                           num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=16,
                                           layer_types=["full_attention"] * 2), "Qwen3NextForCausalLM"),
    "longcat_flash": ("LongcatFlashConfig", dict(ATTN, **MLA, num_layers=1, ffn_hidden_size=48,
                                                 expert_ffn_hidden_size=24, n_routed_experts=8, moe_topk=2,
                                                 zero_expert_num=0), "LongcatFlashForCausalLM"),
    "jetmoe": ("JetMoeConfig", dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, kv_channels=8,
                                    num_key_value_heads=2, num_hidden_layers=2, intermediate_size=24,
                                    num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=128,
                                    tie_word_embeddings=False), "JetMoeForCausalLM"),
    "llama4": ("Llama4TextConfig", dict(ATTN, num_hidden_layers=2, intermediate_size=24, intermediate_size_mlp=48,
                                        num_local_experts=8, num_experts_per_tok=2, moe_layers=[1],
                                        no_rope_layers=[1, 1]), "Llama4ForCausalLM"),
}


def _randomize(model: Any, seed: int) -> Any:
    """Overwrite every parameter and float buffer from a seeded generator (the model's own init draws from the
    global RNG): norms near 1, everything else N(0, 0.3^2), so routing differs from token to token."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point() or "inv_freq" in name or "rotary" in name:
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and "bias" not in name:
                tensor.copy_(1.0 + 0.1 * noise)
            elif "e_score_correction_bias" in name:
                tensor.copy_(0.5 * noise)  # large enough to change the selection
            else:
                tensor.copy_(0.3 * noise)
    return model.eval()


def build(family: str, seed: int = 0) -> Any:
    config_name, kwargs, model_name = FAMILIES[family]
    if not hasattr(transformers, config_name) or not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = _config(config_name, **kwargs)
        model = getattr(transformers, model_name)(config)
    return _randomize(model, seed)


def experts_inputs(model: Any) -> tuple[list[list[np.ndarray]], Callable[[], None]]:
    """Capture the expert ids each MoE block passes to its ``experts`` module (one list per MoE layer)."""
    sites = find_router_sites(model)
    seen: list[list[np.ndarray]] = [[] for _ in sites]
    handles = []
    for i, site in enumerate(sites):
        def pre_hook(module: Any, args: Any, kwargs: Any, i: int = i) -> None:
            values = list(args[1:]) + list(kwargs.values())
            ids = [v for v in values if isinstance(v, torch.Tensor) and not v.is_floating_point()]
            seen[i].append(ids[0].reshape(ids[0].shape[0], -1).cpu().numpy())
        handles.append(site.block.experts.register_forward_pre_hook(pre_hook, with_kwargs=True))
    return seen, lambda: [h.remove() for h in handles]


def sorted_rows(ids: np.ndarray) -> np.ndarray:
    return np.sort(ids, axis=-1)


# ---------------------------------------------------------------------------------------------------------------
# Every family: recorded ids equal the ids the block handed to its experts, in prefill and in decode.

# Llama 4's experts take pre-weighted inputs; JetMoE has no experts module (tested below).
EXPERT_HOOK_FAMILIES = [f for f in FAMILIES if f not in ("llama4", "jetmoe")]


@pytest.mark.parametrize("family", EXPERT_HOOK_FAMILIES)
def test_recorded_ids_are_the_ids_the_experts_received(family: str) -> None:
    model = build(family)
    seen, remove = experts_inputs(model)
    try:
        traces = record_routing(model, PROMPTS, max_new_tokens=3, stop_at_eos=False, domains=["a", "b", "c"])
    finally:
        remove()
    prefill, decode = traces["prefill"], traces["decode"]
    sites = find_router_sites(model)
    assert prefill.num_layers == len(sites) and prefill.meta["moe_layer_indices"] == [s.layer_index for s in sites]
    # Forward passes run prompt 0 prefill, its 3 decode steps, prompt 1 prefill, ...
    per_forward = 1 + 3
    for layer in range(len(sites)):
        calls = seen[layer]
        assert len(calls) == len(PROMPTS) * per_forward
        want_prefill = np.concatenate([calls[p * per_forward] for p in range(len(PROMPTS))])
        want_decode = np.concatenate(
            [calls[p * per_forward + s] for p in range(len(PROMPTS)) for s in range(1, per_forward)]
        )
        np.testing.assert_array_equal(sorted_rows(prefill.experts[:, layer]), sorted_rows(want_prefill))
        np.testing.assert_array_equal(sorted_rows(decode.experts[:, layer]), sorted_rows(want_decode))
    assert prefill.num_tokens == sum(map(len, PROMPTS)) and decode.num_tokens == 3 * len(PROMPTS)
    assert prefill.meta["phase"] == "prefill" and decode.meta["phase"] == "decode"
    assert prefill.domains() == ["a", "b", "c"]
    assert prefill.weights is not None and (np.diff(prefill.weights, axis=-1) <= 0).all(), "rank 0 = heaviest"


def test_llama4_interleaved_moe_layers_match_router_logits() -> None:
    """Llama 4 (MoE only in layer 1): the recorded ids are the top-k of the logits output_router_logits gives."""
    model = build("llama4")
    traces = record_routing(model, PROMPTS[:1])
    assert traces["prefill"].meta["moe_layer_indices"] == [1]
    with torch.no_grad():
        out = model(torch.tensor([PROMPTS[0]]), output_router_logits=True)
    logits = [t for t in out.router_logits if t is not None]
    assert len(logits) == 1
    want = torch.topk(logits[0].float(), 2, dim=-1).indices.numpy()
    np.testing.assert_array_equal(sorted_rows(traces["prefill"].experts[:, 0]), sorted_rows(want))
    np.testing.assert_allclose(
        traces["prefill"].weights[:, 0], torch.sigmoid(torch.topk(logits[0].float(), 2).values).numpy(), rtol=1e-5
    )


# ---------------------------------------------------------------------------------------------------------------
# Each family's top-k rule, applied to the logits output_router_logits returns, gives the router's own choice.
# This is what the recorder falls back on when a router returns logits only (transformers < 5).

RULE_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "gpt_oss", "phimoe", "granitemoe",
                 "minimax", "hunyuan_v1_moe", "granitemoeshared", "cohere2_moe", "flex_olmo", "jamba", "qwen3_next",
                 "jetmoe"]
BIASED_FAMILIES = ["deepseek_v3", "deepseek_v32", "glm4_moe", "glm4_moe_lite", "dots1", "exaone_moe", "longcat_flash",
                   "afmoe", "minimax_m2", "lfm2_moe", "ernie4_5_moe"]


@pytest.mark.parametrize("family", RULE_FAMILIES)
def test_family_rule_recomputes_the_routers_choice(family: str) -> None:
    model = build(family)
    traces = record_routing(model, PROMPTS[:1])
    with torch.no_grad():
        out = model(torch.tensor([PROMPTS[0]]), output_router_logits=True)
    logits = [t for t in out.router_logits if t is not None]
    sites = find_router_sites(model)
    if family == "jetmoe":  # its attention heads are routed too: attention router, then MLP router, per layer
        logits = logits[1::2]
    assert len(logits) == len(sites)
    rule = routing_rule_for(text_config(model), sites[0].module)
    for layer, layer_logits in enumerate(logits):
        weights, ids = rule.select(layer_logits.float(), 2)
        order = torch.argsort(-weights, dim=-1, stable=True)
        np.testing.assert_array_equal(traces["prefill"].experts[:, layer], ids.gather(-1, order).numpy())
        np.testing.assert_allclose(
            traces["prefill"].weights[:, layer], weights.gather(-1, order).numpy(), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("family", BIASED_FAMILIES)
def test_biased_families_are_never_recomputed(family: str) -> None:
    model = build(family)
    sites = find_router_sites(model)
    with pytest.raises(RouterError, match="never recomputes"):
        routing_rule_for(text_config(model), sites[0].module)
    trace = record_routing(model, PROMPTS[:1])["prefill"]
    assert trace.meta["routing"]["selection"] == ["read from the router output"]


def test_a_family_without_a_known_rule_is_refused() -> None:
    with pytest.raises(RouterError, match="knows no top-k rule"):
        routing_rule_for(types.SimpleNamespace(model_type="made_up_moe"))


def test_jetmoe_mlp_router_is_chosen_and_its_experts_sized() -> None:
    """JetMoE routes attention heads and the MLP with the same router class; the MLP's is recorded, and its
    expert size is read from the block's expert-stacked tensors (it has no 'experts' module)."""
    model = build("jetmoe")
    sites = find_router_sites(model)
    assert [s.name for s in sites] == ["model.layers.0.mlp.router", "model.layers.1.mlp.router"]
    trace = record_routing(model, PROMPTS[:1])["prefill"]
    # input_linear (8, 2 * 24, 32) and output_linear (8, 32, 24) float32 weights per expert.
    assert trace.meta["expert_bytes"] == (2 * 24 * 32 + 32 * 24) * 4
    assert trace.meta["routing"]["selection"][0].startswith("recomputed from router logits: top-k of the logits")


# ---------------------------------------------------------------------------------------------------------------
# DeepSeek-V3: biased, group-limited selection is read, and matches an independent computation.


def _v3_reference(hidden: torch.Tensor, router: Any, top_k: int) -> np.ndarray:
    """DeepSeek-V3 selection written from its paper (arXiv:2412.19437, sec. 2.1.2): sigmoid affinities plus the
    correction bias choose the ``topk_group`` groups with the best sum of their two best scores, then the top-k."""
    scores = torch.sigmoid(hidden.float() @ router.weight.float().T)
    biased = scores + router.e_score_correction_bias
    tokens, experts = biased.shape
    groups = router.num_group
    per_group = biased.view(tokens, groups, experts // groups)
    group_score = per_group.topk(2, dim=-1).values.sum(-1)
    best_groups = group_score.topk(router.topk_group, dim=-1).indices
    allowed = torch.zeros(tokens, groups, dtype=torch.bool).scatter_(1, best_groups, True)
    allowed = allowed.unsqueeze(-1).expand(tokens, groups, experts // groups).reshape(tokens, experts)
    return biased.masked_fill(~allowed, float("-inf")).topk(top_k, dim=-1).indices.numpy()


def test_deepseek_v3_biased_group_limited_selection_is_read_not_recomputed() -> None:
    model = build("deepseek_v3")
    sites = find_router_sites(model)
    hidden: list[torch.Tensor] = []
    handle = sites[0].module.register_forward_pre_hook(lambda m, args: hidden.append(args[0].detach()))
    try:
        trace = record_routing(model, PROMPTS[:1])["prefill"]
    finally:
        handle.remove()
    h = hidden[0].reshape(-1, hidden[0].shape[-1])
    with torch.no_grad():
        want = _v3_reference(h, sites[0].module, 2)
    np.testing.assert_array_equal(sorted_rows(trace.experts[:, 0]), sorted_rows(want))
    # The bias must matter here, or this test could not tell reading from a plain recomputation.
    with torch.no_grad():
        unbiased = torch.sigmoid(h @ sites[0].module.weight.T).topk(2, dim=-1).indices.numpy()
    assert (sorted_rows(unbiased) != sorted_rows(want)).any()
    assert trace.meta["routing"]["selection"] == ["read from the router output"]
    # The weights are the unbiased scores of the chosen experts, renormalised and scaled (x2.5).
    np.testing.assert_allclose(trace.weights[:, 0].sum(-1), 2.5, rtol=1e-5)


def test_biased_router_returning_logits_only_is_refused() -> None:
    model = build("deepseek_v3")
    for _, router in find_router_modules(model):
        original = router.forward
        router.forward = types.MethodType(lambda self, h, original=original: original(h)[0], router)
    # The hook fails inside the router's forward, before the block could misuse the logits.
    with pytest.raises(RouterError, match="never recomputes"):
        record_routing(model, PROMPTS[:1])


# ---------------------------------------------------------------------------------------------------------------
# Router conventions of older transformers releases, emulated on current models.


def _legacy_mixtral(model: Any, normalize: bool) -> None:
    """Mixtral as before transformers 5: the gate returns logits, the block computes softmax + top-k."""
    for _, router in find_router_modules(model):
        router.forward = types.MethodType(lambda self, h: torch.nn.functional.linear(h, self.weight), router)
    for layer in model.model.layers:
        block = layer.mlp

        def forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
            b, s, d = hidden.shape
            flat = hidden.view(-1, d)
            logits = self.gate(flat)
            probs = torch.softmax(logits.float(), dim=-1)
            weights, ids = torch.topk(probs, self.top_k, dim=-1)
            if normalize:
                weights = weights / weights.sum(-1, keepdim=True)
            return self.experts(flat, ids, weights.to(flat.dtype)).view(b, s, d)

        block.forward = types.MethodType(forward, block)


def test_logits_only_router_is_recomputed_with_the_family_rule() -> None:
    model = build("mixtral")
    _legacy_mixtral(model, normalize=True)
    seen, remove = experts_inputs(model)
    try:
        trace = record_routing(model, PROMPTS)["prefill"]
    finally:
        remove()
    for layer in range(trace.num_layers):
        np.testing.assert_array_equal(sorted_rows(trace.experts[:, layer]), sorted_rows(np.concatenate(seen[layer])))
    assert trace.meta["routing"]["selection"][0].startswith("recomputed from router logits: softmax")
    np.testing.assert_allclose(trace.weights.sum(-1), 1.0, rtol=1e-5)


def test_route_tokens_to_experts_is_read_for_a_logits_only_router() -> None:
    """DBRX's router returns logits and its block selects in route_tokens_to_experts (a real, current model)."""
    model = build("dbrx")
    trace = record_routing(model, PROMPTS[:2])["prefill"]
    assert trace.meta["routing"]["selection"] == ["read from the MoE block's route_tokens_to_experts"]
    # The wrapper is gone afterwards: the block's method is the class's again.
    block = find_router_sites(model)[0].block
    assert "route_tokens_to_experts" not in vars(block)


def test_decode_router_output_conventions() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 1.0, -2.0]])
    ids = torch.tensor([[1, 3], [0, 2]])
    weights = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    # transformers 5: (logits, weights, ids)
    out = decode_router_output((logits, weights, ids), 2, 4, logits_index=0)
    assert torch.equal(out.ids, ids) and torch.equal(out.weights, weights) and torch.equal(out.logits, logits)
    # DeepSeek-V3 in transformers 4.5x: (ids, weights)
    out = decode_router_output((ids, weights), 2, 4)
    assert torch.equal(out.ids, ids) and torch.equal(out.weights, weights) and out.logits is None
    # GPT-OSS in transformers 4.55: (dense scores scattered at the ids, ids)
    dense = torch.zeros(2, 4).scatter_(1, ids, weights)
    out = decode_router_output((dense, ids), 2, 4)
    assert torch.equal(out.weights, weights) and out.logits is None
    # logits only; batched (1, T, E) shapes are flattened
    out = decode_router_output(logits.unsqueeze(0), 2, 4)
    assert out.ids is None and torch.equal(out.logits, logits)


# ---------------------------------------------------------------------------------------------------------------
# Decode: the KV-cache steps route the generated tokens exactly as a full forward over prompt + generation.


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_decode_rows_match_a_full_forward_over_the_generated_text(family: str) -> None:
    model = build(family)
    prompt = PROMPTS[0]
    traces = record_routing(model, [prompt], max_new_tokens=4, stop_at_eos=False)
    with torch.no_grad():
        generated = list(map(int, model.generate(
            torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=0)[0, len(prompt):]))
    assert len(generated) == 4
    full = record_routing(model, [prompt + generated])["prefill"]
    np.testing.assert_array_equal(traces["prefill"].experts, full.experts[: len(prompt)])
    np.testing.assert_array_equal(traces["decode"].experts, full.experts[len(prompt):])
    np.testing.assert_allclose(traces["decode"].weights, full.weights[len(prompt):], rtol=1e-4, atol=1e-5)


def test_decode_stops_at_end_of_sequence() -> None:
    model = build("olmoe")
    first = [int(model(torch.tensor([p])).logits[0, -1].argmax()) for p in PROMPTS]
    model.generation_config.eos_token_id = first[1]  # prompt 1 ends at once; the others may end later
    traces = record_routing(model, PROMPTS, max_new_tokens=5, domains=["x", "y", "z"])
    decode = traces["decode"]
    assert 1 not in set(decode.sequence.tolist())
    kept = set(decode.sequence.tolist())
    assert decode.domains() == [d for s, d in enumerate("xyz") if s in kept]
    model.generation_config.eos_token_id = first
    with pytest.raises(RouterError, match="stop_at_eos=False"):
        record_routing(model, PROMPTS, max_new_tokens=5)


# ---------------------------------------------------------------------------------------------------------------
# Meta, expert bytes, logits, determinism, errors


def test_expert_bytes_and_meta() -> None:
    model = build("mixtral")
    trace = record_routing(model, PROMPTS[:1], model_name="tiny-mixtral", source="unit test")["prefill"]
    # SwiGLU expert: gate, up (48 x 32) and down (32 x 48) float32 matrices.
    assert trace.meta["expert_bytes"] == 3 * 32 * 48 * 4
    assert trace.meta["model"] == "tiny-mixtral" and trace.meta["source"] == "unit test"
    assert trace.meta["num_experts"] == 8 and trace.meta["top_k"] == 2
    prov = trace.meta["provenance"]
    assert prov["transformers_version"] == transformers.__version__ and len(prov["config_sha256"]) == 64
    half = record_routing(model.to(torch.bfloat16), PROMPTS[:1])["prefill"]
    assert half.meta["expert_bytes"] == 3 * 32 * 48 * 2 and half.meta["provenance"]["dtype"] == "bfloat16"
    given = record_routing(model, PROMPTS[:1], expert_bytes=12345)["prefill"]
    assert given.meta["expert_bytes"] == 12345


def test_qwen2_moe_dense_layers_are_skipped() -> None:
    model = build("qwen2_moe")
    assert [i for i, _ in find_router_modules(model)] == [1, 2]


def test_router_logits_are_recorded_on_request() -> None:
    model = build("qwen3_moe")
    trace = record_routing(model, PROMPTS[:2], record_logits=True)["prefill"]
    assert isinstance(trace, RecordedTrace) and trace.router_logits.shape == (trace.num_tokens, 2, 8)
    with torch.no_grad():
        out = model(torch.tensor([PROMPTS[0]]), output_router_logits=True)
    n = len(PROMPTS[0])
    np.testing.assert_allclose(trace.router_logits[:n, 1], out.router_logits[1].float().numpy(), rtol=1e-5)
    top = np.argsort(-trace.router_logits[:n, 0], axis=-1, kind="stable")[:, :2]
    np.testing.assert_array_equal(trace.experts[:n, 0], top)  # softmax is monotone: top logits = top weights


def test_same_model_same_traces_and_file_roundtrip(tmp_path: Any) -> None:
    a = record_routing(build("gpt_oss"), PROMPTS, max_new_tokens=2, stop_at_eos=False)
    b = record_routing(build("gpt_oss"), PROMPTS, max_new_tokens=2, stop_at_eos=False)
    for phase in ("prefill", "decode"):
        np.testing.assert_array_equal(a[phase].experts, b[phase].experts)
        np.testing.assert_array_equal(a[phase].weights, b[phase].weights)
        path = save_trace(a[phase], tmp_path / f"{phase}.npz")
        loaded = load_trace(path)
        np.testing.assert_array_equal(loaded.experts, a[phase].experts)
        assert loaded.meta["moe_layer_indices"] == a[phase].meta["moe_layer_indices"]
    np.testing.assert_array_equal(np.unique(a["decode"].sequence), [0, 1, 2])


def test_training_mode_is_restored() -> None:
    model = build("phimoe").train()
    record_routing(model, PROMPTS[:1])
    assert model.training


@pytest.mark.parametrize(
    "sequences, kwargs, message",
    [
        ([], {}, "non-empty"),
        ([[1, 2], []], {}, "sequence 1 must be a non-empty"),
        ([[1, 2.5]], {}, "non-integer"),
        ([[1, VOCAB]], {}, "outside"),
        ([[1, 2]], {"domains": ["a", "b"]}, "one per sequence"),
        ([[1, 2]], {"max_new_tokens": -1}, "max_new_tokens"),
        ([[1, 2]], {"expert_bytes": 0}, "expert_bytes"),
    ],
)
def test_bad_inputs_are_named(sequences: Any, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record_routing(build("olmoe"), sequences, **kwargs)


def test_a_dense_model_has_no_router() -> None:
    config = transformers.LlamaConfig(**{k: v for k, v in ATTN.items()}, num_hidden_layers=1, intermediate_size=32)
    with pytest.raises(RouterError, match="no MoE router"):
        find_router_modules(transformers.LlamaForCausalLM(config))


# ---------------------------------------------------------------------------------------------------------------
# The record command, on a tiny model saved to a local directory with a word-level tokenizer.

WORDS = ["[UNK]", "<s>", "</s>"] + "the a cat dog sat on mat def return x y = + ( ) : , 1 2 3".split()


def run_record(argv: list[str]) -> int:
    import argparse

    from moe_cache_env.cli import record as record_cli

    parser = argparse.ArgumentParser(prog="record")
    record_cli.add_arguments(parser)
    return record_cli.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: Any) -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    path = tmp_path_factory.mktemp("tiny-qwen3-moe")
    build("qwen3_moe").save_pretrained(path)
    word_level = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
    )
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(path)
    return path


def test_record_command_writes_prefill_decode_and_logits(model_dir: Any, tmp_path: Any, capsys: Any) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"text": "the cat sat on the mat", "domain": "prose"}\n\n'
        '{"text": "def f ( x ) : return x + 1", "domain": "code"}\n'
        '{"tokens": [3, 4, 5], "domain": "ids"}\n'
    )
    out = tmp_path / "out" / "tiny.npz"
    code = run_record(["--model", str(model_dir), "--prompts", str(prompts), "-o", str(out),
                       "--max-new-tokens", "3", "--no-stop-at-eos", "--record-logits"])
    assert code == 0
    prefill, decode = load_trace(out), load_trace(tmp_path / "out" / "tiny-decode.npz")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    lengths = [len(tokenizer("the cat sat on the mat")["input_ids"]), len(tokenizer("def f ( x ) : return x + 1")
                                                                        ["input_ids"]), 3]
    assert np.diff(prefill.sequence_bounds(), axis=1).ravel().tolist() == lengths
    assert decode.num_tokens == 9 and decode.domains() == ["prose", "code", "ids"]
    assert prefill.meta["model"] == model_dir.name and prefill.meta["provenance"]["prompts_file"] == str(prompts)
    # The command's traces are the API's: same model, same token ids.
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    api = record_routing(model, [tokenizer("the cat sat on the mat")["input_ids"]])["prefill"]
    np.testing.assert_array_equal(prefill.experts[: lengths[0]], api.experts)
    with np.load(tmp_path / "out" / "tiny-router-logits.npz") as logits:
        assert logits["router_logits"].shape == (sum(lengths), 2, 8)
        np.testing.assert_array_equal(logits["sequence"], prefill.sequence)
    assert "tiny-decode.npz (decode): 9 tokens in 3 sequences" in capsys.readouterr().out


def test_record_command_token_prompts_need_no_tokenizer(tmp_path: Any) -> None:
    build("olmoe").save_pretrained(tmp_path / "bare")  # no tokenizer files
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"tokens": [1, 2, 3]}\n{"tokens": [4, 5]}\n')
    argv = ["--model", str(tmp_path / "bare"), "--prompts", str(prompts), "-o", str(tmp_path / "t.npz")]
    assert run_record(argv) == 0
    trace = load_trace(tmp_path / "t.npz")
    assert trace.num_tokens == 5 and trace.domains() is None and not (tmp_path / "t-decode.npz").exists()
    text_prompts = tmp_path / "p.txt"
    text_prompts.write_text("the cat\n")
    from moe_cache_env.cli import CommandError

    with pytest.raises(CommandError, match="no tokenizer loads"):
        run_record(["--model", str(tmp_path / "bare"), "--prompts", str(text_prompts), "-o", str(tmp_path / "u.npz")])


def test_record_command_refuses_a_model_it_cannot_find_offline(tmp_path: Any) -> None:
    from moe_cache_env.cli import CommandError

    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\n")
    with pytest.raises(CommandError, match="hubs are unreachable"):
        run_record(["--model", "nobody/no-such-model", "--prompts", str(prompts), "-o", str(tmp_path / "t.npz")])
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no prompt"),
        ('{"text": "a"}\nnot json\n', r"p.jsonl:2: not a JSON object"),
        ('[1, 2]\n', r"p.jsonl:1: expected a JSON object"),
        ('{"txt": "a"}\n', r"p.jsonl:1: give exactly one of 'text'"),
        ('{"tokens": [1, -2]}\n', r"p.jsonl:1: 'tokens' must be a non-empty list"),
        ('{"text": "a", "domain": "x"}\n{"text": "b"}\n', r"p.jsonl:2: this prompt has no 'domain'"),
    ],
)
def test_prompts_file_errors_name_the_line(tmp_path: Any, content: str, message: str) -> None:
    from moe_cache_env.traces.record import read_prompts

    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_prompts(path)


def test_prompts_may_be_integer_arrays() -> None:
    model = build("olmoe")
    as_lists = record_routing(model, PROMPTS)["prefill"]
    as_arrays = record_routing(model, [np.array(p, dtype=np.int32) for p in PROMPTS])["prefill"]
    np.testing.assert_array_equal(as_lists.experts, as_arrays.experts)
    stacked = record_routing(model, np.array([PROMPTS[2], PROMPTS[2]]))["prefill"]
    np.testing.assert_array_equal(stacked.experts[:5], stacked.experts[5:])


def test_missing_transformers_names_the_extra(monkeypatch: Any, tmp_path: Any) -> None:
    import sys

    from moe_cache_env.cli import CommandError
    from moe_cache_env.traces.record import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without the extra looks like
    with pytest.raises(ImportError, match=r'pip install -e "\.\[record\]"'):
        require_transformers()
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\n")
    with pytest.raises(CommandError, match=r"the 'record' extra"):
        run_record(["--model", str(tmp_path), "--prompts", str(prompts), "-o", str(tmp_path / "t.npz")])
