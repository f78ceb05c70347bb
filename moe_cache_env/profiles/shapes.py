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
