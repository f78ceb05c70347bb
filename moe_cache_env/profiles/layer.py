"""The non-expert part of a MoE decoder layer at decode time, as real torch modules with random weights.

``calibrate`` times it (``CudaBackend.non_expert_samples_ms``) and ``replay-gpu`` runs it between the experts of
each layer, so both measure the same work. One :class:`DecodeLayer` holds one layer's weights and KV cache for a
fixed batch and context length and computes, for ``batch`` tokens that each attend to ``context`` earlier
tokens plus themselves:

- ``attention``: input RMSNorm, the q/k/v projections (with bias, q/k RMSNorm or MLA as the model has them),
  RoPE, the write of the new key and value into the cache, scaled-dot-product attention over the cache, the
  output projection and the residual add;
- ``route``: the post-attention RMSNorm, the router (``Linear(hidden, num_experts)``), a float32 softmax and
  the top-k;
- ``shared``: the shared expert(s) (a SwiGLU MLP, optionally scaled by a sigmoid gate), added to the residual.

Shapes are static (the new key is always written at position ``context``), so a layer can be captured in a CUDA
graph. Nothing is downloaded: weights and caches are random, drawn from a seeded generator.

This module imports torch; import it only where torch is wanted.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moe_cache_env.profiles.shapes import LayerShape

ROPE_THETA = 10000.0
NORM_EPS = 1e-6


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_tables(position: int, dim: int, device: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = position * inv_freq
    angles = torch.cat((angles, angles))
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


class DecodeLayer(nn.Module):
    """One decoder layer minus its routed experts, for ``batch`` tokens at context length ``context``."""

    def __init__(
        self,
        shape: LayerShape,
        *,
        batch: int,
        context: int,
        device: Any = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if batch < 1 or context < 0:
            raise ValueError(f"batch must be >= 1 and context >= 0, got batch={batch}, context={context}")
        self.shape = shape
        self.batch = batch
        self.context = context
        H = shape.hidden
        factory = {"device": device, "dtype": dtype}

        def linear(n_in: int, n_out: int, bias: bool = False) -> nn.Linear:
            layer = nn.Linear(n_in, n_out, bias=bias, **factory)
            with torch.no_grad():
                layer.weight.normal_(0.0, 1.0 / math.sqrt(n_in), generator=generator)
                if bias:
                    layer.bias.normal_(0.0, 0.02, generator=generator)
            return layer

        def norm_weight(n: int) -> nn.Parameter:
            return nn.Parameter(torch.ones(n, **factory))

        def cache(*dims: int) -> torch.Tensor:
            return torch.randn(dims, device=device, generator=generator, dtype=torch.float32).to(dtype)

        self.input_norm = norm_weight(H)
        self.post_norm = norm_weight(H)
        slots = context + 1
        if shape.attention == "gqa":
            self.q_proj = linear(H, shape.heads * shape.head_dim, shape.qkv_bias)
            self.k_proj = linear(H, shape.kv_heads * shape.head_dim, shape.qkv_bias)
            self.v_proj = linear(H, shape.kv_heads * shape.head_dim, shape.qkv_bias)
            self.o_proj = linear(shape.heads * shape.head_dim, H)
            if shape.qk_norm:
                self.q_norm = norm_weight(shape.heads * shape.head_dim)
                self.k_norm = norm_weight(shape.kv_heads * shape.head_dim)
            self.register_buffer("k_cache", cache(batch, shape.kv_heads, slots, shape.head_dim), persistent=False)
            self.register_buffer("v_cache", cache(batch, shape.kv_heads, slots, shape.head_dim), persistent=False)
            rope_dim = shape.head_dim
        else:
            qk_dim = shape.head_dim + shape.rope_dim
            self.q_proj = linear(H, shape.heads * qk_dim)
            self.kv_a_proj = linear(H, shape.kv_lora_rank + shape.rope_dim)
            self.kv_a_norm = norm_weight(shape.kv_lora_rank)
            self.kv_b_proj = linear(shape.kv_lora_rank, shape.heads * (shape.head_dim + shape.v_head_dim))
            self.o_proj = linear(shape.heads * shape.v_head_dim, H)
            self.register_buffer("k_cache", cache(batch, shape.heads, slots, qk_dim), persistent=False)
            self.register_buffer("v_cache", cache(batch, shape.heads, slots, shape.v_head_dim), persistent=False)
            rope_dim = shape.rope_dim
        cos, sin = _rope_tables(context, rope_dim, device, dtype)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.router = linear(H, shape.num_experts)
        if shape.shared_intermediate:
            self.shared_gate_proj = linear(H, shape.shared_intermediate)
            self.shared_up_proj = linear(H, shape.shared_intermediate)
            self.shared_down_proj = linear(shape.shared_intermediate, H)
            if shape.shared_gate:
                self.shared_expert_gate = linear(H, 1)

    # -- parts

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.rope_cos + _rotate_half(x) * self.rope_sin

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """``h + o_proj(attention(norm(h)))`` for ``h`` of shape (batch, hidden)."""
        s = self.shape
        B = h.shape[0]
        a = F.rms_norm(h, (s.hidden,), self.input_norm, NORM_EPS)
        pos = self.context
        if s.attention == "gqa":
            q, k, v = self.q_proj(a), self.k_proj(a), self.v_proj(a)
            if s.qk_norm:
                q = F.rms_norm(q, (q.shape[-1],), self.q_norm, NORM_EPS)
                k = F.rms_norm(k, (k.shape[-1],), self.k_norm, NORM_EPS)
            q = self._rope(q.view(B, s.heads, 1, s.head_dim))
            k = self._rope(k.view(B, s.kv_heads, 1, s.head_dim))
            v = v.view(B, s.kv_heads, 1, s.head_dim)
        else:
            qk_dim = s.head_dim + s.rope_dim
            q = self.q_proj(a).view(B, s.heads, 1, qk_dim)
            q = torch.cat((q[..., : s.head_dim], self._rope(q[..., s.head_dim:])), dim=-1)
            kv = self.kv_a_proj(a)
            latent = F.rms_norm(kv[:, : s.kv_lora_rank], (s.kv_lora_rank,), self.kv_a_norm, NORM_EPS)
            k_rope = self._rope(kv[:, s.kv_lora_rank:].view(B, 1, 1, s.rope_dim))
            kv = self.kv_b_proj(latent).view(B, s.heads, 1, s.head_dim + s.v_head_dim)
            k = torch.cat((kv[..., : s.head_dim], k_rope.expand(B, s.heads, 1, s.rope_dim)), dim=-1)
            v = kv[..., s.head_dim:]
        self.k_cache[:B, :, pos:pos + 1].copy_(k)
        self.v_cache[:B, :, pos:pos + 1].copy_(v)
        gqa = {"enable_gqa": True} if s.attention == "gqa" and s.kv_heads != s.heads else {}
        o = F.scaled_dot_product_attention(q, self.k_cache[:B], self.v_cache[:B], **gqa)
        return h + self.o_proj(o.reshape(B, -1))

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The MoE input ``norm(h)``, and the top-k weights and expert ids of each token (router in float32)."""
        m = F.rms_norm(h, (self.shape.hidden,), self.post_norm, NORM_EPS)
        probs = torch.softmax(self.router(m), dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.shape.top_k, dim=-1)
        return m, weights, ids

    def shared(self, m: torch.Tensor) -> torch.Tensor:
        """The shared expert(s) applied to the MoE input (zeros if the model has none)."""
        if not self.shape.shared_intermediate:
            return torch.zeros_like(m)
        out = self.shared_down_proj(F.silu(self.shared_gate_proj(m)) * self.shared_up_proj(m))
        if self.shape.shared_gate:
            out = out * torch.sigmoid(self.shared_expert_gate(m))
        return out

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything but the routed experts: returns (residual with attention and shared expert added, MoE
        input, top-k weights, top-k expert ids)."""
        h = self.attention(h)
        m, weights, ids = self.route(h)
        if self.shape.shared_intermediate:
            h = h + self.shared(m)
        return h, m, weights, ids


def kv_cache_bytes(shape: LayerShape, batch: int, context: int, dtype_size: int = 2) -> int:
    """Bytes of one layer's KV cache as :class:`DecodeLayer` allocates it."""
    if shape.attention == "gqa":
        per_token = 2 * shape.kv_heads * shape.head_dim
    else:
        per_token = shape.heads * (shape.head_dim + shape.rope_dim + shape.v_head_dim)
    return batch * (context + 1) * per_token * dtype_size


def layer_weight_bytes(shape: LayerShape, dtype_size: int = 2) -> int:
    """Bytes of one layer's non-expert weights (projections, router, shared expert; norms ignored)."""
    H = shape.hidden
    if shape.attention == "gqa":
        attn = H * shape.heads * shape.head_dim * 2 + H * shape.kv_heads * shape.head_dim * 2
    else:
        qk = shape.head_dim + shape.rope_dim
        attn = (H * shape.heads * qk + H * (shape.kv_lora_rank + shape.rope_dim)
                + shape.kv_lora_rank * shape.heads * (shape.head_dim + shape.v_head_dim) + shape.heads * shape.v_head_dim * H)
    shared = 3 * H * shape.shared_intermediate + (H if shape.shared_gate else 0)
    return (attn + H * shape.num_experts + shared) * dtype_size
