"""Expert shapes of the model presets, for calibration and for comparing profiles.

A routed expert of these models is a SwiGLU MLP: ``down(silu(gate(x)) * up(x))`` with ``gate`` and ``up`` of
shape ``intermediate x hidden`` and ``down`` of shape ``hidden x intermediate``, no biases. Its parameter count is
therefore ``3 * hidden * intermediate``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bytes per parameter of the dtypes ``calibrate`` accepts.
DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class ExpertShape:
    """The two sizes that define a SwiGLU expert."""

    hidden: int
    intermediate: int

    def __post_init__(self) -> None:
        for field_name in ("hidden", "intermediate"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expert shape: {field_name} must be a positive integer, got {value!r}")

    @property
    def params(self) -> int:
        """Parameters of one expert (gate, up and down projections)."""
        return 3 * self.hidden * self.intermediate

    def expert_bytes(self, dtype: str = "bf16") -> int:
        """Bytes of one expert's weights in ``dtype``."""
        return self.params * dtype_bytes(dtype)


def dtype_bytes(dtype: str) -> int:
    """Bytes per parameter of ``dtype`` (one of :data:`DTYPE_BYTES`)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}") from None


#: Routed-expert shapes, from each model's Hugging Face ``config.json`` (``hidden_size`` and
#: ``moe_intermediate_size``, or ``intermediate_size`` where the model has no separate MoE size):
#: Qwen/Qwen1.5-MoE-A2.7B, allenai/OLMoE-1B-7B-0924, mistralai/Mixtral-8x7B-v0.1, deepseek-ai/DeepSeek-V2-Lite.
MODEL_EXPERT_SHAPES: dict[str, ExpertShape] = {
    "qwen1.5-moe": ExpertShape(hidden=2048, intermediate=1408),
    "olmoe": ExpertShape(hidden=2048, intermediate=1024),
    "mixtral": ExpertShape(hidden=4096, intermediate=14336),
    "deepseek-v2-lite": ExpertShape(hidden=2048, intermediate=1408),
}


def model_expert_shape(preset: str) -> ExpertShape:
    """The expert shape of a model preset."""
    try:
        return MODEL_EXPERT_SHAPES[preset]
    except KeyError:
        raise ValueError(
            f"unknown model preset {preset!r}; choose one of {', '.join(MODEL_EXPERT_SHAPES)} "
            "or give --expert-shape HIDDEN,INTERMEDIATE"
        ) from None


def parse_expert_shape(text: str) -> ExpertShape:
    """Parse ``"HIDDEN,INTERMEDIATE"`` (e.g. ``"2048,1408"``)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expert shape must be HIDDEN,INTERMEDIATE (two positive integers), got {text!r}")
    return ExpertShape(hidden=int(parts[0]), intermediate=int(parts[1]))


# ------------------------------------------------------------------------------------ the non-expert layer


ATTENTION_KINDS = ("gqa", "mla")


@dataclass(frozen=True)
class LayerShape:
    """What one decoder layer of a MoE model computes besides its routed experts, for timing it.

    Attributes:
        hidden: model width.
        heads, kv_heads, head_dim: attention heads (grouped-query attention when ``kv_heads < heads``).
        num_experts, top_k: the router's output width and how many experts each token takes.
        shared_intermediate: total intermediate size of the shared expert(s), 0 if the model has none.
        shared_gate: a sigmoid gate (``Linear(hidden, 1)``) scales the shared expert's output (Qwen1.5-MoE).
        qkv_bias: q, k and v projections have biases (Qwen1.5-MoE).
        qk_norm: RMSNorm over the full q and k projections (OLMoE).
        attention: ``"gqa"`` (q, k, v, o projections, RoPE over the whole head) or ``"mla"`` (DeepSeek-V2's
            multi-head latent attention, computed naively with a decompressed KV cache: a low-rank KV projection
            ``kv_lora_rank`` plus a shared RoPE key ``rope_dim``, then per-head keys of ``head_dim + rope_dim``
            and values of ``v_head_dim``).
        kv_lora_rank, rope_dim, v_head_dim: MLA only.
    """

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    shared_intermediate: int = 0
    shared_gate: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    attention: str = "gqa"
    kv_lora_rank: int = 0
    rope_dim: int = 0
    v_head_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "heads", "kv_heads", "head_dim", "num_experts", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"layer shape: {name} must be a positive integer, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"layer shape: heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.top_k > self.num_experts:
            raise ValueError(f"layer shape: top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"layer shape: attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.attention == "mla" and min(self.kv_lora_rank, self.rope_dim, self.v_head_dim) < 1:
            raise ValueError("layer shape: MLA needs positive kv_lora_rank, rope_dim and v_head_dim")
        if self.shared_intermediate < 0:
            raise ValueError(f"layer shape: shared_intermediate must be >= 0, got {self.shared_intermediate}")

    def to_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


#: The non-expert part of each preset's decoder layer, from each model's Hugging Face ``config.json``:
#: Qwen/Qwen1.5-MoE-A2.7B (16 heads of 128, qkv bias, shared expert of 5632 with a sigmoid gate),
#: allenai/OLMoE-1B-7B-0924 (16 heads of 128, q/k RMSNorm, no shared expert), mistralai/Mixtral-8x7B-v0.1
#: (32 query heads, 8 KV heads of 128), deepseek-ai/DeepSeek-V2-Lite (16 heads, MLA with kv_lora_rank 512,
#: qk_nope 128 + qk_rope 64, v 128; 2 shared experts of 1408).
MODEL_LAYER_SHAPES: dict[str, LayerShape] = {
    "qwen1.5-moe": LayerShape(hidden=2048, heads=16, kv_heads=16, head_dim=128, num_experts=60, top_k=4,
                              shared_intermediate=5632, shared_gate=True, qkv_bias=True),
    "olmoe": LayerShape(hidden=2048, heads=16, kv_heads=16, head_dim=128, num_experts=64, top_k=8, qk_norm=True),
    "mixtral": LayerShape(hidden=4096, heads=32, kv_heads=8, head_dim=128, num_experts=8, top_k=2),
    "deepseek-v2-lite": LayerShape(hidden=2048, heads=16, kv_heads=16, head_dim=128, num_experts=64, top_k=6,
                                   shared_intermediate=2 * 1408, attention="mla", kv_lora_rank=512, rope_dim=64,
                                   v_head_dim=128),
}


def model_layer_shape(preset: str) -> LayerShape:
    """The non-expert layer geometry of a model preset."""
    try:
        return MODEL_LAYER_SHAPES[preset]
    except KeyError:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(MODEL_LAYER_SHAPES)}") from None


def expert_shape_for_bytes(hidden: int, expert_bytes: int, dtype: str = "bf16", align: int = 64) -> ExpertShape:
    """The SwiGLU expert of width ``hidden`` with the largest intermediate size that is a multiple of ``align``
    and whose weights fit in ``expert_bytes``.

    A synthetic trace's 28 MiB expert is no whole SwiGLU shape (2048 x 2389 is 4 KiB short); an intermediate size
    that is not a multiple of 8 also makes cuBLAS fall back to slow kernels (measured on the H200: 2048 x 2389 took
    0.13 ms at 256 tokens, 5x a 2048 x 1408 expert). So the 28 MiB expert is computed as 2048 x 2368 (0.9% fewer
    weights) and copied as the full 28 MiB.
    """
    unit = 3 * hidden * dtype_bytes(dtype)
    intermediate = (expert_bytes // unit) // align * align
    if intermediate < 1:
        intermediate = expert_bytes // unit
    if intermediate < 1:
        raise ValueError(f"an expert of {expert_bytes} bytes is smaller than one row of width {hidden}")
    return ExpertShape(hidden=hidden, intermediate=int(intermediate))
