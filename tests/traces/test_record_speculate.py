"""``record --speculate``: the later routers applied to each layer's router input (tiny random OLMoE, CPU).

The recorded predictions are checked against an independent computation: forward pre-hooks capture each
router's input, and plain ``softmax(x @ W.T)`` with the later router's weight gives the expected top-m.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moe_cache_env.traces import load_trace, save_trace  # noqa: E402
from moe_cache_env.traces.format import FORMAT_ID, FORMAT_ID_SPECULATIVE, TraceFormatError  # noqa: E402
from moe_cache_env.traces.record import record_routing  # noqa: E402
from moe_cache_env.traces.recording.routers import find_router_sites  # noqa: E402

PROMPTS = [[5, 17, 33, 2, 71, 64, 8], [90, 3, 3, 41]]


def tiny_olmoe(layers: int = 4, experts: int = 8) -> Any:
    config = transformers.OlmoeConfig(
        vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=128, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None,
        pad_token_id=None, num_hidden_layers=layers, intermediate_size=24, num_experts=experts,
        num_experts_per_tok=2,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.OlmoeForCausalLM(config)
    with torch.no_grad():  # a random init with visible structure: routers far from uniform
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def router_inputs(model: Any, tokens: list[int]) -> list[np.ndarray]:
    sites = find_router_sites(model)
    seen: list[np.ndarray] = []
    handles = [s.module.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])
                                                                            .float().numpy().copy()))
               for s in sites]
    try:
        with torch.no_grad():
            model(torch.tensor([tokens]))
    finally:
        for h in handles:
            h.remove()
    return seen


def test_speculative_rows_are_the_later_routers_on_this_layers_input() -> None:
    model = tiny_olmoe()
    trace = record_routing(model, PROMPTS, speculate=2, speculate_top=3)["prefill"]
    assert trace.meta["format"] == FORMAT_ID_SPECULATIVE
    assert trace.speculative_experts.shape == (trace.num_tokens, 4, 2, 3)
    assert trace.speculative_weights.dtype == np.float16
    weights = [s.module.weight.detach().float().numpy() for s in find_router_sites(model)]
    start = 0
    for tokens in PROMPTS:
        inputs = router_inputs(model, tokens)
        rows = slice(start, start + len(tokens))
        start += len(tokens)
        for layer in range(4):
            for d in (1, 2):
                got_ids = trace.speculative_experts[rows, layer, d - 1]
                got_p = trace.speculative_weights[rows, layer, d - 1].astype(np.float64)
                if layer + d >= 4:  # past the last layer: no prediction
                    assert not got_ids.any() and not got_p.any()
                    continue
                logits = inputs[layer] @ weights[layer + d].T
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                want = np.argsort(-p, axis=1, kind="stable")[:, :3]
                np.testing.assert_array_equal(got_ids, want)
                np.testing.assert_allclose(got_p, np.take_along_axis(p, want, axis=1), atol=2e-3)
    # distance 1 from layer l predicts layer l+1; the router of l+1 on its own input picked trace.experts
    # (not equal in general: a different hidden state), but the speculation never changes the real routing
    plain = record_routing(model, PROMPTS)["prefill"]
    np.testing.assert_array_equal(plain.experts, trace.experts)
    assert plain.meta["format"] == FORMAT_ID and plain.speculative_experts is None


def test_decode_speculation_roundtrips_through_a_file(tmp_path: Any) -> None:
    model = tiny_olmoe(layers=3)
    traces = record_routing(model, PROMPTS, max_new_tokens=3, stop_at_eos=False, speculate=1, speculate_top=2)
    decode = traces["decode"]
    assert decode.speculative_experts.shape == (6, 3, 1, 2)
    path = save_trace(decode, tmp_path / "d.npz")
    loaded = load_trace(path)
    np.testing.assert_array_equal(loaded.speculative_experts, decode.speculative_experts)
    np.testing.assert_array_equal(loaded.speculative_weights, decode.speculative_weights)
    half = loaded.select_sequences([1])
    np.testing.assert_array_equal(half.speculative_experts, decode.speculative_experts[3:])


def test_a_format_1_reader_refuses_speculation_by_name(tmp_path: Any) -> None:
    model = tiny_olmoe(layers=2)
    path = save_trace(record_routing(model, PROMPTS, speculate=1)["prefill"], tmp_path / "s.npz")
    with np.load(path) as z:
        arrays = dict(z)
    import json

    meta = json.loads(str(arrays["meta"][()]))
    # what a reader of format 1 checks: meta.format must be exactly "moe-trace/1"
    assert meta["format"] == "moe-trace/1.1" != "moe-trace/1"
    # a 1.1 label without the arrays, or the arrays under a 1 label, is refused
    meta["format"] = FORMAT_ID
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TraceFormatError, match="must be 'moe-trace/1.1'"):
        load_trace(tmp_path / "bad.npz")
    del arrays["speculative_weights"]
    meta["format"] = FORMAT_ID_SPECULATIVE
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(TraceFormatError, match="without speculative_weights"):
        load_trace(tmp_path / "bad2.npz")


@pytest.mark.parametrize("kwargs, message", [
    (dict(speculate=-1), "speculate must be"),
    (dict(speculate=4), "reaches past"),
    (dict(speculate=1, speculate_top=9), "exceeds the model's 8 experts"),
])
def test_bad_speculation_options_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record_routing(tiny_olmoe(), PROMPTS, **kwargs)
