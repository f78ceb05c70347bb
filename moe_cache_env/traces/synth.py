"""Synthetic routing traces with the statistics of real MoE routing.

The generator is a small latent-variable model of a router (see ``docs/trace-format.md`` for the full model):

- every sequence has a domain; consecutive sequences keep their domain with probability
  ``domain_persistence``, so the workload shifts in runs;
- every token carries a hidden state ``h[t, l]`` (dimension ``latent_dim``) that mixes two parts:
  a *token* part ``z[t, l]`` that drifts from layer to layer (an AR(1) process over depth with coefficient
  ``depth_memory``: the residual stream changes little between layers, which makes layer ``l + 1``'s choice
  predictable from layer ``l``'s) and a *context* part ``m[t]`` that drifts from token to token within a
  sequence (AR(1) over tokens with coefficient ``context_memory``); the context's share of the hidden state at
  layer ``l`` follows the locality profile (``locality_first``, ``locality_peak`` at ``locality_peak_at`` of the
  depth, ``locality_last``), so consecutive tokens route alike in the middle layers and near chance at layer 0;
- the router of layer ``l`` is a fixed random projection ``G[l]`` (experts x latent_dim) scaled by
  ``router_gain``, plus a per-domain bias calibrated so that each domain's share of top-k assignments per
  expert equals its popularity (real counts for ``olmoe-data`` and ``mixtral-data``, a random profile with the
  busiest expert at ``skew_first`` .. ``skew_last`` times the uniform share for ``synthetic``, with a
  domain-specific part of the log-popularity that grows from ``specialisation_first`` to
  ``specialisation_last`` over depth);
- the top-k experts are drawn without replacement from the softmax of the logits (Gumbel top-k), in rank order;
  with ``secondary_gain`` below 1, the choices after the first are ranked on the same noisy logits with the
  hidden state's part scaled down, so the first choice carries most of what a token's experts say about its
  hidden state (as in Mixtral, where the first choice predicts the next layer's much as the whole set does).

The router weights and calibrated biases (the "model") come from the preset's knobs, ``model_seed`` among them,
never from the ``rng`` of :func:`generate`, so traces drawn with different ``rng`` seeds are different prompts
to the same model: a predictor fitted on one transfers to another.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from moe_cache_env.traces.format import PHASES, Trace, make_meta

DATA_FILE = Path(__file__).resolve().parent / "data" / "routing_popularity.json"
GENERATOR_ID = "moe_cache_env.traces.synth/1"
#: the domains of the OLMoE routing data; the synthetic presets reuse the names as labels
DEFAULT_DOMAINS = ("arxiv", "book", "c4", "github", "wikipedia")
POPULARITY_SOURCES = ("synthetic", "olmoe-data", "mixtral-data")

# Calibration of the per-domain router bias: samples per (layer, domain), iterations, and the adaptive step
# (per expert: grows while the error keeps its sign, shrinks when it flips). Measured on the olmoe and
# qwen1.5-moe presets: 12 iterations bring the busiest expert's share within 3% of its target even where it is
# near saturation (OLMoE arxiv, layer 0: in 98% of the tokens' top-8), and the shares of the experts above a
# third of the uniform share within 4-6% (mean |log ratio|, the sampling noise of 4096 samples); a fixed step
# left the saturated experts 15-25% short.
_CALIBRATION_SAMPLES = 4096
_CALIBRATION_ITERATIONS = 12
_CALIBRATION_FIRST_STEP = 1.8
_CALIBRATION_STEP_GROWTH = 1.5
_CALIBRATION_STEP_SHRINK = 0.5
_CALIBRATION_STEP_RANGE = (0.1, 64.0)
_TINY = np.finfo(np.float32).tiny


@lru_cache(maxsize=1)
def _load_data() -> dict[str, Any]:
    if not DATA_FILE.exists():
        raise FileNotFoundError(
            f"{DATA_FILE} is missing; regenerate it with traces/tools/derive_routing_popularity.py"
        )
    return json.loads(DATA_FILE.read_text())


def _data_model(source: str) -> dict[str, Any]:
    return _load_data()["models"][source.removesuffix("-data")]


def _data_domains(source: str) -> tuple[str, ...]:
    return tuple(_data_model(source)["domains"])


@dataclass(frozen=True)
class SynthPreset:
    """A model geometry plus the knobs of the synthetic router.

    Geometry (not knobs): ``name``, ``model`` (recorded in the trace meta), ``num_layers``, ``num_experts``,
    ``top_k``, ``expert_bytes``. Every other field is a knob, overridable in :func:`generate` and on the
    command line (``--knob key=value``); ranges are checked at construction.

    Knobs:
        popularity: where each domain's per-expert popularity comes from: ``synthetic`` (random, shaped by the
            skew and specialisation knobs), ``olmoe-data`` or ``mixtral-data`` (real per-domain shares measured
            at layers 0, 7 and 15; other layers reuse the nearest measured layer's profile with experts
            permuted and its spread interpolated over depth).
        skew_first, skew_last: ``synthetic`` only. Per-domain popularity skew (busiest expert's share of the
            top-k assignments over the uniform share) at the first and last layer, linear in between;
            1.0 is uniform, at most ``num_experts / top_k``.
        specialisation_first, specialisation_last: ``synthetic`` only. Share (0..1) of the variance of the
            log-popularity that is specific to a domain, at the first and last layer, linear in between.
        locality_first, locality_peak, locality_last: share (0..1) of the hidden state taken by the
            sequence's context at the first layer, at the peak layer and at the last layer (linear in
            between): it sets how alike consecutive tokens route at each layer.
        locality_peak_at: where the peak is, as a fraction (0..1) of the depth.
        context_memory: AR(1) coefficient (0..1) of the context from one token to the next.
        depth_memory: AR(1) coefficient (0..1) of the token part of the hidden state from one layer to the
            next; higher makes a layer's choice more predictable from the previous layers'.
        router_gain: scale (> 0) of the router's projection of the hidden state; higher routes more
            deterministically given the hidden state (more predictable), lower adds routing noise.
        secondary_gain: share (0..1) of the hidden state's part of the router logits that the choices after
            the first see: 1 draws all k choices by one Gumbel top-k (every choice as informed by the hidden
            state as the first), 0 draws the first choice from the full logits and the others from popularity
            (the bias) and noise alone. Lower makes the first choice carry most of what a token's experts say
            about its hidden state (Mixtral: the first choice predicts the next layer's first choice about as
            well as the top-2 set predicts the next top-2 set).
        latent_dim: dimension of the hidden state (1..256); lower makes a top-k set reveal more of it.
        sequence_tokens_median, sequence_tokens_sigma: sequence lengths are log-normal with this median
            (tokens, >= 2) and log-space standard deviation (0..3), clipped to [2, 32 x median].
        domain_persistence: probability (0..1) that a sequence has the domain of the previous one.
        domains: the domains drawn from (uniformly), comma-separated on the command line.
        model_seed: seed of the router weights and biases (the "model"); the token stream comes from the
            ``rng`` given to :func:`generate`.
    """

    name: str
    model: str
    num_layers: int
    num_experts: int
    top_k: int
    expert_bytes: int
    popularity: str = "synthetic"
    skew_first: float = 2.0
    skew_last: float = 2.0
    specialisation_first: float = 0.02
    specialisation_last: float = 0.35
    locality_first: float = 0.0
    locality_peak: float = 0.8
    locality_last: float = 0.5
    locality_peak_at: float = 0.35
    context_memory: float = 0.95
    depth_memory: float = 0.97
    router_gain: float = 9.0
    secondary_gain: float = 1.0
    latent_dim: int = 8
    sequence_tokens_median: int = 256
    sequence_tokens_sigma: float = 0.8
    domain_persistence: float = 0.7
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    model_seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_layers", "num_experts", "top_k", "expert_bytes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preset {self.name!r}: {key} must be a positive integer, got {value!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"preset {self.name!r}: top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.num_experts > 32767:
            raise ValueError(f"preset {self.name!r}: num_experts={self.num_experts} exceeds int16 ids (32767)")
        if self.popularity not in POPULARITY_SOURCES:
            raise ValueError(f"knob popularity={self.popularity!r}: must be one of {POPULARITY_SOURCES}")
        # With top_k == num_experts every expert is always chosen: popularity cannot be skewed, so the skew
        # knobs are moot (and only their lower bound is checked).
        max_skew = self.num_experts / self.top_k if self.top_k < self.num_experts else math.inf
        for key in ("skew_first", "skew_last"):
            _check_range(key, getattr(self, key), 1.0, max_skew, "(1 = uniform; at most num_experts / top_k)")
        for key in (
            "specialisation_first",
            "specialisation_last",
            "locality_peak_at",
            "domain_persistence",
            "secondary_gain",
        ):
            _check_range(key, getattr(self, key), 0.0, 1.0)
        for key in ("locality_first", "locality_peak", "locality_last", "context_memory", "depth_memory"):
            # 1.0 would make the hidden state deterministic (a zero-variance innovation): keep it below.
            _check_range(key, getattr(self, key), 0.0, 0.999)
        _check_range("router_gain", self.router_gain, 1e-3, 100.0)
        _check_range("latent_dim", self.latent_dim, 1, 256, integer=True)
        _check_range("sequence_tokens_median", self.sequence_tokens_median, 2, 10_000_000, integer=True)
        _check_range("sequence_tokens_sigma", self.sequence_tokens_sigma, 0.0, 3.0)
        _check_range("model_seed", self.model_seed, 0, 2**63 - 1, integer=True)
        if not isinstance(self.domains, tuple) or not self.domains:
            raise ValueError(f"knob domains={self.domains!r}: must be a non-empty tuple of names")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"knob domains={self.domains!r}: names must be distinct")
        if self.popularity != "synthetic":
            known = _data_domains(self.popularity)
            unknown = [d for d in self.domains if d not in known]
            if unknown:
                raise ValueError(
                    f"knob domains: {unknown} not in the measured data of popularity={self.popularity!r}; "
                    f"choose among {list(known)}"
                )
            source_model = _data_model(self.popularity)
            if source_model["num_experts"] != self.num_experts:
                raise ValueError(
                    f"knob popularity={self.popularity!r} describes {source_model['num_experts']} experts per "
                    f"layer but the preset has num_experts={self.num_experts}; use popularity=synthetic"
                )

    def knobs(self) -> dict[str, Any]:
        """The knob values, JSON-able (tuples as lists)."""
        out = {}
        for f in fields(self):
            if f.name in GEOMETRY_FIELDS:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


GEOMETRY_FIELDS = ("name", "model", "num_layers", "num_experts", "top_k", "expert_bytes")
KNOB_NAMES = tuple(f.name for f in fields(SynthPreset) if f.name not in GEOMETRY_FIELDS)
#: knobs that shape synthetic popularity only; they conflict with measured popularity
_SYNTHETIC_POPULARITY_KNOBS = ("skew_first", "skew_last", "specialisation_first", "specialisation_last")


def _check_range(key: str, value: Any, low: float, high: float, note: str = "", *, integer: bool = False) -> None:
    kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not kind_ok or not (low <= value <= high) or (
        not integer and not math.isfinite(value)
    ):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"knob {key}={value!r}: must be {kind} in [{low}, {high}] {note}".rstrip())


# Presets. Geometry from the models' published configurations; knob values chosen so that trace-stats of a
# generated trace lands on the statistics of real routing (sources and comparison: docs/trace-format.md, 4).
PRESETS: dict[str, SynthPreset] = {
    # Qwen1.5-MoE-A2.7B as the seed system describes it: 24 MoE layers, 60 routed experts, top-4, and the
    # seed's 28 MB expert.
    "qwen1.5-moe": SynthPreset(
        name="qwen1.5-moe",
        model="Qwen1.5-MoE-A2.7B (synthetic)",
        num_layers=24,
        num_experts=60,
        top_k=4,
        expert_bytes=28 * 2**20,
        skew_first=1.8,
        skew_last=2.4,
    ),
    # OLMoE-1B-7B-0924: 16 layers, 64 experts, top-8, expert = 3 matrices of 2048 x 1024 in bf16; popularity per
    # domain measured (allenai/OLMoE routing analysis).
    "olmoe": SynthPreset(
        name="olmoe",
        model="OLMoE-1B-7B-0924 (synthetic)",
        num_layers=16,
        num_experts=64,
        top_k=8,
        expert_bytes=3 * 2048 * 1024 * 2,
        popularity="olmoe-data",
        # No published temporal locality for OLMoE: a Mixtral-like peak (same first choice ~25% mid-depth),
        # lower than the default because its strong per-domain skew already makes consecutive tokens alike.
        locality_peak=0.5,
        locality_last=0.3,
    ),
    # Mixtral-8x7B: 32 layers, 8 experts, top-2, expert = 3 matrices of 4096 x 14336 in bf16; popularity per
    # domain measured (allenai/OLMoE routing analysis of Mixtral-8x7B-v0.1).
    "mixtral": SynthPreset(
        name="mixtral",
        model="Mixtral-8x7B (synthetic)",
        num_layers=32,
        num_experts=8,
        top_k=2,
        expert_bytes=3 * 4096 * 14336 * 2,
        popularity="mixtral-data",
        # Mixtral paper, Table 5: same first choice 13.6-14.9% at layer 0, 23.6-28.4% at layer 15, 19.7-26.3%
        # at layer 31; an expert shared with the previous token 44.9-49.9% / 61.6-67.0% / 44.5-53.6%: a lower
        # peak than the fine-grained models'. Real decode routing: the first choice at one layer predicts the
        # next layer's first choice with 0.34-0.38, but a co-occurrence table predicts the next top-2 set with
        # only 0.30-0.42 precision: the second choice says little about the next layer. One Gumbel top-k draw
        # (secondary_gain 1) gave 0.55 at the same first-choice accuracy; a weak pull of the hidden state on
        # the second choice (0.25) gives both, and a slower context (0.97) keeps the shared-expert rates.
        # allenai/OLMoE's Mixtral counts: the first choice at layer 0 predicts layer 7's with 0.19-0.24 per
        # domain, layer 7 layer 15's with 0.21-0.30: a faster drift over depth (0.9) than the default's.
        locality_peak=0.5,
        locality_last=0.25,
        locality_peak_at=0.33,
        context_memory=0.97,
        depth_memory=0.9,
        router_gain=5.5,
        secondary_gain=0.25,
        latent_dim=6,
    ),
    # DeepSeek-V2-Lite: 26 MoE layers (the first of 27 is dense), 64 routed experts, top-6, expert = 3 matrices
    # of 2048 x 1408 in bf16. Public per-token prefill traces: skew 1.37-2.63 per layer, median 1.82, about 2.2
    # at the first MoE layer; a per-domain 2.08 falling to 1.75 gives 2.2 there (the busiest of 64 noisy shares
    # reads a little above its target) and a median of 1.84 over the mixed domains.
    "deepseek-v2-lite": SynthPreset(
        name="deepseek-v2-lite",
        model="DeepSeek-V2-Lite (synthetic)",
        num_layers=26,
        num_experts=64,
        top_k=6,
        expert_bytes=3 * 2048 * 1408 * 2,
        skew_first=2.08,
        skew_last=1.75,
        # Same traces: top-6 overlap 0.14 at the first MoE layer, 0.34 at the eighth, 0.20 at the last;
        # co-occurrence precision 0.46 on held-out prompts, 0.45 two layers ahead.
        locality_first=0.15,
        locality_peak=0.67,
        locality_last=0.35,
        locality_peak_at=0.28,
        router_gain=5.5,
    ),
}


def get_preset(preset: SynthPreset | str, **knob_overrides: Any) -> SynthPreset:
    """Look a preset up by name (or take one as given) and apply knob overrides, validated."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
        preset = PRESETS[preset]
    unknown = [k for k in knob_overrides if k not in KNOB_NAMES]
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; knobs are: {', '.join(KNOB_NAMES)}")
    popularity = knob_overrides.get("popularity", preset.popularity)
    if popularity != "synthetic":
        conflicting = [k for k in _SYNTHETIC_POPULARITY_KNOBS if k in knob_overrides]
        if conflicting:
            raise ValueError(
                f"knob(s) {conflicting} shape synthetic popularity only, but popularity={popularity!r}; "
                "add popularity=synthetic to use them"
            )
    if "domains" in knob_overrides and not isinstance(knob_overrides["domains"], tuple):
        knob_overrides["domains"] = tuple(knob_overrides["domains"])
    return dataclasses.replace(preset, **knob_overrides)


def parse_knobs(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (command line) into typed knob overrides."""
    types = {f.name: f.type for f in fields(SynthPreset)}
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--knob {item!r}: expected key=value, e.g. --knob router_gain=3.0")
        if key not in KNOB_NAMES:
            raise ValueError(f"--knob {item!r}: unknown knob {key!r}; knobs are: {', '.join(KNOB_NAMES)}")
        kind = str(types[key])
        try:
            if kind == "int":
                value: Any = int(raw)
            elif kind == "float":
                value = float(raw)
            elif kind.startswith("tuple"):
                value = tuple(part.strip() for part in raw.split(",") if part.strip())
            else:
                value = raw.strip()
        except ValueError:
            raise ValueError(f"--knob {item!r}: {key} needs a value of type {kind}, got {raw!r}") from None
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------- popularity


def _linear_profile(first: float, last: float, num_layers: int) -> np.ndarray:
    return np.linspace(first, last, num_layers) if num_layers > 1 else np.array([first], dtype=float)


def locality_profile(preset: SynthPreset) -> np.ndarray:
    """Context share of the hidden state per layer: first -> peak (at ``locality_peak_at``) -> last."""
    L = preset.num_layers
    if L == 1:
        return np.array([preset.locality_first])
    peak = int(round(preset.locality_peak_at * (L - 1)))
    if peak == 0:  # the peak is the first layer
        xs, ys = [0, L - 1], [preset.locality_peak, preset.locality_last]
    elif peak == L - 1:  # the peak is the last layer
        xs, ys = [0, L - 1], [preset.locality_first, preset.locality_peak]
    else:
        xs, ys = [0, peak, L - 1], [preset.locality_first, preset.locality_peak, preset.locality_last]
    return np.interp(np.arange(L), xs, ys)


def _skew_of(log_pop: np.ndarray, scale: float, top_k: int) -> float:
    """Busiest share over uniform share of softmax(scale * log_pop), capped as top-k routing caps it."""
    shares = np.exp(scale * (log_pop - log_pop.max()))
    shares /= shares.sum()
    return float(min(shares.max(), 1.0 / top_k) * len(log_pop))


def _scale_for_skew(direction: np.ndarray, target: float, top_k: int) -> float:
    """The scale at which softmax(scale * direction) has the target skew (bisection: skew grows with scale)."""
    if target <= 1.0 + 1e-9 or top_k >= len(direction):
        return 0.0
    low, high = 0.0, 1.0
    while _skew_of(direction, high, top_k) < target and high < 1e4:
        high *= 2.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        if _skew_of(direction, mid, top_k) < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _synthetic_popularity(preset: SynthPreset, rng: np.random.Generator) -> np.ndarray:
    """(L, D, E) target shares: a shared and a domain-specific Gaussian log-profile, scaled to the skew."""
    L, E, D = preset.num_layers, preset.num_experts, len(preset.domains)
    skews = _linear_profile(preset.skew_first, preset.skew_last, L)
    specialisation = _linear_profile(preset.specialisation_first, preset.specialisation_last, L)
    shares = np.empty((L, D, E))
    for l in range(L):
        shared = rng.standard_normal(E)
        own = rng.standard_normal((D, E))
        for d in range(D):
            direction = math.sqrt(1.0 - specialisation[l]) * shared + math.sqrt(specialisation[l]) * own[d]
            scale = _scale_for_skew(direction, skews[l], preset.top_k)
            logits = scale * (direction - direction.max())
            shares[l, d] = np.exp(logits) / np.exp(logits).sum()
    return shares


def _measured_popularity(preset: SynthPreset, rng: np.random.Generator) -> np.ndarray:
    """(L, D, E) target shares from the measured layers; other layers interpolate the spread over depth.

    Measured layers keep the real expert ids. Another layer takes the log-shares of the nearest measured
    layer, permuted by one random permutation shared by all domains (expert ids are not aligned across
    layers, but the domains' agreement is kept), with the spread around the mean rescaled to the linear
    interpolation of the two neighbouring measured layers' spreads.
    """
    data = _data_model(preset.popularity)
    measured_layers = np.array(data["layers"], dtype=float)
    L, E = preset.num_layers, preset.num_experts
    # Floor at a tenth of the smallest measured share so the log stays finite for never-chosen experts.
    log_shares = {}
    for d in preset.domains:
        arr = np.asarray(data["domains"][d], dtype=float)
        positive = arr[arr > 0]
        arr = np.maximum(arr, 0.1 * positive.min())
        log_shares[d] = np.log(arr / arr.sum(axis=1, keepdims=True))
    # Map the model's depth onto the measured layers' index range (the data's models have 16 and 32 layers).
    data_depth = {"olmoe": 16, "mixtral": 32}[preset.popularity.removesuffix("-data")]
    position = np.arange(L) * (data_depth - 1) / max(L - 1, 1)
    shares = np.empty((L, len(preset.domains), E))
    for l in range(L):
        nearest = int(np.argmin(np.abs(measured_layers - position[l])))
        exact = abs(measured_layers[nearest] - position[l]) < 1e-9
        permutation = np.arange(E) if exact else rng.permutation(E)
        for d_index, d in enumerate(preset.domains):
            spreads = log_shares[d].std(axis=1)
            target_spread = float(np.interp(position[l], measured_layers, spreads))
            base = log_shares[d][nearest][permutation]
            centred = base - base.mean()
            profile = centred * (target_spread / spreads[nearest])
            shares[l, d_index] = np.exp(profile) / np.exp(profile).sum()
    return shares


# ------------------------------------------------------------------------------------------------ sampling


def sample_top_k(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` distinct columns per row from softmax(logits) without replacement, in draw order.

    Gumbel top-k: the ``k`` largest of ``logits + Gumbel`` noise are a sample without replacement
    (Plackett-Luce), and their order is the draw order. ``logits`` is left unchanged.
    """
    return _noisy_top_k(logits, k, rng)[0]


def _project(hidden: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``hidden @ projection.T`` (float32), summed over the latent dimension in index order.

    Not a BLAS product: multi-threaded BLAS splits the sum differently with the thread count, and the last-bit
    differences flip near-ties of the top-k, so a trace would depend on the machine's thread setting.
    """
    out = np.multiply(hidden[:, :1], projection[:, 0])
    for j in range(1, hidden.shape[1]):
        out += hidden[:, j : j + 1] * projection[:, j]
    return out


def _noisy_top_k(
    logits: np.ndarray,
    k: int,
    rng: np.random.Generator,
    hidden_part: np.ndarray | None = None,
    secondary_gain: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Chosen columns (rank order) and the noisy logits ``logits + Gumbel`` they were ranked by.

    The noisy logits are the router's realised logits: the Gumbel noise stands for the part of the router
    input that the latent state does not capture. ``-log(Exp(1))`` is a Gumbel draw.

    With ``secondary_gain < 1`` (and ``hidden_part``, the hidden state's share of ``logits``), the first choice
    is the largest noisy logit and the others are the largest of the same noisy logits less
    ``(1 - secondary_gain) * hidden_part``: the same noise, a weaker pull of the hidden state.
    """
    noise = rng.standard_exponential(size=logits.shape, dtype=np.float32)
    # The float32 draw can be exactly 0: floor it so the log stays finite (the odds change by < 1e-37).
    np.maximum(noise, _TINY, out=noise)
    noisy = np.log(noise)
    np.subtract(logits, noisy, out=noisy)
    if k >= logits.shape[1]:
        chosen = np.broadcast_to(np.arange(k), noisy.shape).copy()
    elif secondary_gain < 1.0 and hidden_part is not None and k > 1:
        first = noisy.argmax(axis=1)
        secondary = noisy - np.float32(1.0 - secondary_gain) * hidden_part
        np.put_along_axis(secondary, first[:, None], -np.inf, axis=1)
        rest = np.argpartition(-secondary, k - 2, axis=1)[:, : k - 1]
        order = (-np.take_along_axis(secondary, rest, axis=1)).argsort(axis=1, kind="stable")
        return np.concatenate([first[:, None], np.take_along_axis(rest, order, axis=1)], axis=1), noisy
    else:
        chosen = np.argpartition(-noisy, k - 1, axis=1)[:, :k]
    order = (-np.take_along_axis(noisy, chosen, axis=1)).argsort(axis=1, kind="stable")
    return np.take_along_axis(chosen, order, axis=1), noisy


@dataclass(frozen=True)
class RouterModel:
    """The fixed part of the synthetic model: router projections and calibrated per-domain biases."""

    projection: np.ndarray  # (L, E, latent_dim) float32, rows of unit expected norm, times router_gain
    bias: np.ndarray  # (L, D, E) float32
    target_shares: np.ndarray  # (L, D, E) float64, the popularity each domain's bias was calibrated to
    context_share: np.ndarray  # (L,) locality profile


def _calibrate_bias(
    projection: np.ndarray,
    target: np.ndarray,
    top_k: int,
    rng: np.random.Generator,
    secondary_gain: float = 1.0,
) -> np.ndarray:
    """Per-domain bias so that top-k routing over hidden states ~ N(0, I) hits the target shares.

    Iterates ``bias += step * (log(target) - log(measured))`` on common random numbers (the same hidden
    states and noise every iteration, so the measured shares move smoothly with the bias), with a per-expert
    step that grows while the error keeps its sign (a nearly saturated expert needs a large bias) and shrinks
    when it flips. The routing is :func:`_noisy_top_k`'s, ``secondary_gain`` included.
    """
    D, E = target.shape
    if top_k >= E:
        return np.zeros((D, E), dtype=np.float32)  # every expert is always chosen: the bias cannot matter
    latent_dim = projection.shape[1]
    hidden = rng.standard_normal((_CALIBRATION_SAMPLES, latent_dim)).astype(np.float32)
    router = _project(hidden, projection)  # (N, E)
    noise = np.log(np.maximum(rng.standard_exponential((D, _CALIBRATION_SAMPLES, E), dtype=np.float32), _TINY))
    log_target = np.log(target).astype(np.float32)
    bias = log_target - log_target.mean(axis=1, keepdims=True)
    rows = np.arange(D)[:, None] * E
    step = np.full((D, E), _CALIBRATION_FIRST_STEP, dtype=np.float32)
    previous_error = np.zeros((D, E), dtype=np.float32)
    low, high = _CALIBRATION_STEP_RANGE
    for _ in range(_CALIBRATION_ITERATIONS):
        key = noise - (router[None, :, :] + bias[:, None, :])
        if secondary_gain < 1.0 and top_k > 1:
            first = key.argmin(axis=2)
            key += (1.0 - secondary_gain) * router[None, :, :]
            np.put_along_axis(key, first[:, :, None], -np.inf, axis=2)  # counted once, among the k
        chosen = np.argpartition(key, top_k - 1, axis=2)[:, :, :top_k]
        counts = np.bincount((chosen.reshape(D, -1) + rows).ravel(), minlength=D * E).reshape(D, E)
        measured = (counts + 0.5) / (counts.sum(axis=1, keepdims=True) + 0.5 * E)
        error = log_target - np.log(measured).astype(np.float32)
        same_sign = np.sign(error) == np.sign(previous_error)
        step = np.where(
            same_sign,
            np.minimum(step * _CALIBRATION_STEP_GROWTH, high),
            np.maximum(step * _CALIBRATION_STEP_SHRINK, low),
        ).astype(np.float32)
        bias += step * error
        bias -= bias.mean(axis=1, keepdims=True)
        previous_error = error
    return bias


def build_model(preset: SynthPreset) -> RouterModel:
    """The router model of ``preset`` (deterministic in the preset's knobs, including ``model_seed``)."""
    return _build_model_cached(preset)


@lru_cache(maxsize=16)
def _build_model_cached(preset: SynthPreset) -> RouterModel:
    # The model's randomness comes from model_seed and the preset name only: never from the trace's rng.
    rng = np.random.default_rng([preset.model_seed, zlib.crc32(preset.name.encode())])
    L, E = preset.num_layers, preset.num_experts
    projection = rng.standard_normal((L, E, preset.latent_dim)) / math.sqrt(preset.latent_dim)
    projection = (projection * preset.router_gain).astype(np.float32)
    if preset.popularity == "synthetic":
        target = _synthetic_popularity(preset, rng)
    else:
        target = _measured_popularity(preset, rng)
    bias = np.stack(
        [_calibrate_bias(projection[l], target[l], preset.top_k, rng, preset.secondary_gain) for l in range(L)]
    )
    projection.setflags(write=False)
    bias.setflags(write=False)
    target.setflags(write=False)
    return RouterModel(projection, bias, target, locality_profile(preset))


# ---------------------------------------------------------------------------------------------- sequences


def _draw_sequences(
    preset: SynthPreset, num_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sequence lengths (summing to ``num_tokens``) and the domain index of each sequence."""
    lengths: list[int] = []
    total = 0
    median = preset.sequence_tokens_median
    while total < num_tokens:
        batch = rng.lognormal(math.log(median), preset.sequence_tokens_sigma, size=64)
        for value in np.clip(np.rint(batch), 2, 32 * median).astype(np.int64):
            lengths.append(int(min(value, num_tokens - total)))
            total += lengths[-1]
            if total >= num_tokens:
                break
    num_sequences = len(lengths)
    keep = rng.random(num_sequences) < preset.domain_persistence
    fresh = rng.integers(0, len(preset.domains), size=num_sequences)
    domain = np.empty(num_sequences, dtype=np.int64)
    domain[0] = fresh[0]
    for s in range(1, num_sequences):
        domain[s] = domain[s - 1] if keep[s] else fresh[s]
    return np.asarray(lengths, dtype=np.int64), domain


def _context_states(
    lengths: np.ndarray, latent_dim: int, memory: float, rng: np.random.Generator
) -> np.ndarray:
    """(T, latent_dim) AR(1) context per sequence: stationary N(0, I), restarted at each sequence start.

    Loops over the position within a sequence, vectorised over the sequences still running, so the Python
    loop runs max(length) times rather than once per token.
    """
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    states = rng.standard_normal((int(lengths.sum()), latent_dim)).astype(np.float32)
    innovation = math.sqrt(1.0 - memory * memory)
    order = np.argsort(-lengths, kind="stable")  # longest first: the running ones are a prefix
    sorted_lengths = lengths[order]
    sorted_starts = starts[order]
    for position in range(1, int(sorted_lengths[0]) if len(lengths) else 0):
        running = int(np.searchsorted(-sorted_lengths, -position, side="left"))
        rows = sorted_starts[:running] + position
        states[rows] = memory * states[rows - 1] + innovation * states[rows]
    return states


# ---------------------------------------------------------------------------------------------- generate


def generate(
    preset: SynthPreset | str,
    num_tokens: int,
    rng: np.random.Generator,
    *,
    phase: str = "decode",
    with_weights: bool = False,
    seed: int | None = None,
    name: str | None = None,
    **knob_overrides: Any,
) -> Trace:
    """Generate a validated v1 trace of ``num_tokens`` tokens from a preset.

    Args:
        preset: a :data:`PRESETS` name or a :class:`SynthPreset`.
        num_tokens: number of tokens (rows), at least 1.
        rng: the source of the token stream (sequences, domains, hidden states, routing noise).
        phase: ``decode`` or ``prefill``, recorded in the meta (the routing model is the same).
        with_weights: also store gate weights: the softmax over all experts of the realised (noisy) router
            logits, at the chosen experts; they decrease with rank.
        seed: the seed ``rng`` was made from, recorded in the meta for provenance (read from ``rng`` when
            omitted and it was made by ``np.random.default_rng(int)``).
        name: the trace's name, recorded in the meta (``Trace.name``); without it, a loaded trace is named
            after its file.
        **knob_overrides: knob values replacing the preset's (see :class:`SynthPreset`).
    """
    spec = get_preset(preset, **knob_overrides)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    num_tokens = int(num_tokens)
    model = build_model(spec)
    L, E, K = spec.num_layers, spec.num_experts, spec.top_k

    lengths, seq_domain = _draw_sequences(spec, num_tokens, rng)
    token_domain = np.repeat(seq_domain, lengths)
    latent_dim = spec.latent_dim
    hidden = np.empty((num_tokens, latent_dim), dtype=np.float32)
    context = _context_states(lengths, spec.latent_dim, spec.context_memory, rng)
    token_part = rng.standard_normal((num_tokens, spec.latent_dim)).astype(np.float32)
    depth_innovation = math.sqrt(1.0 - spec.depth_memory**2)
    two_stage = spec.secondary_gain < 1.0 and 1 < K < E

    experts = np.empty((num_tokens, L, K), dtype=np.int16)
    weights = np.empty((num_tokens, L, K), dtype=np.float32) if with_weights else None
    for l in range(L):
        if l > 0:  # the residual stream drifts a little from one layer to the next
            token_part *= spec.depth_memory
            token_part += depth_innovation * rng.standard_normal(token_part.shape, dtype=np.float32)
        share = float(model.context_share[l])
        # The router's logits: the hidden state's projection plus the domain's calibrated bias.
        np.multiply(math.sqrt(1.0 - share), token_part, out=hidden)
        hidden += math.sqrt(share) * context
        hidden_part = _project(hidden, model.projection[l])
        logits = hidden_part + model.bias[l][token_domain]
        chosen, noisy = _noisy_top_k(logits, K, rng, hidden_part if two_stage else None, spec.secondary_gain)
        experts[:, l, :] = chosen
        if weights is not None:  # softmax of the realised logits, at the chosen experts (descending)
            noisy -= noisy.max(axis=1, keepdims=True)
            np.exp(noisy, out=noisy)
            noisy /= noisy.sum(axis=1, keepdims=True)
            picked = np.take_along_axis(noisy, chosen, axis=1)
            if two_stage:  # the later choices were ranked on weaker logits: give the weights in rank order
                picked = -np.sort(-picked, axis=1)
            weights[:, l, :] = picked

    if seed is None:
        seed_seq = getattr(rng.bit_generator, "seed_seq", None)
        entropy = getattr(seed_seq, "entropy", None)
        if isinstance(entropy, int) and not getattr(seed_seq, "spawn_key", ()):
            seed = entropy
    knobs = spec.knobs()
    source = (
        f"{GENERATOR_ID} preset={spec.name} seed={seed if seed is not None else 'unrecorded'} "
        f"knobs={json.dumps(knobs, sort_keys=True, separators=(',', ':'))}"
    )
    meta = make_meta(
        model=spec.model,
        num_experts=E,
        top_k=K,
        num_layers=L,
        expert_bytes=spec.expert_bytes,
        phase=phase,
        source=source,
        domains=[spec.domains[d] for d in seq_domain],
        generator={"id": GENERATOR_ID, "preset": spec.name, "seed": seed, "knobs": knobs},
        **({"name": name} if name else {}),
    )
    sequence = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    return Trace(experts=experts, sequence=sequence, meta=meta, weights=weights)
