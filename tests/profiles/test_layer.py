"""The non-expert decode layer (``moe_cache_env.profiles.layer``) on the CPU: shapes, routing, static writes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moe_cache_env.profiles.layer import DecodeLayer, kv_cache_bytes, layer_weight_bytes  # noqa: E402
from moe_cache_env.profiles.shapes import MODEL_LAYER_SHAPES, LayerShape  # noqa: E402


@pytest.mark.parametrize("name", sorted(MODEL_LAYER_SHAPES))
def test_every_preset_layer_runs_and_routes(name):
    shape = MODEL_LAYER_SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    layer = DecodeLayer(shape, batch=2, context=8, dtype=torch.float32, generator=gen)
    h = torch.randn(2, shape.hidden, generator=gen)
    out, m, weights, ids = layer(h)
    assert out.shape == m.shape == (2, shape.hidden)
    assert ids.shape == weights.shape == (2, shape.top_k)
    assert ((ids >= 0) & (ids < shape.num_experts)).all()
    assert torch.isfinite(out).all()
    assert (weights[:, :-1] >= weights[:, 1:]).all()  # top-k in rank order
    assert layer_weight_bytes(shape) > 0 and kv_cache_bytes(shape, 2, 8) == layer.k_cache.numel() * 2 + layer.v_cache.numel() * 2


def test_attention_writes_the_new_key_at_the_context_position():
    shape = LayerShape(hidden=32, heads=4, kv_heads=2, head_dim=8, num_experts=4, top_k=2)
    layer = DecodeLayer(shape, batch=1, context=5, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    before = layer.k_cache.clone()
    layer.attention(torch.randn(1, 32))
    changed = (layer.k_cache != before).any(dim=(0, 1, 3))
    assert changed.tolist() == [False] * 5 + [True]


def test_shared_expert_is_added_only_where_the_model_has_one():
    no_shared = LayerShape(hidden=32, heads=4, kv_heads=4, head_dim=8, num_experts=4, top_k=2)
    layer = DecodeLayer(no_shared, batch=1, context=3, dtype=torch.float32)
    m = torch.randn(1, 32)
    assert torch.equal(layer.shared(m), torch.zeros_like(m))
    with pytest.raises(ValueError, match="batch"):
        DecodeLayer(no_shared, batch=0, context=3)
