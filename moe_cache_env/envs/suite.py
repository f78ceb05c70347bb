"""The trace suite an environment draws its episodes from.

A suite is a list of trace *names*, resolved when an environment resets (and cached per process), so that the
registered kwargs stay JSON-able and swapping the traces an environment trains on is a one-line change of
:data:`DEFAULT_SUITE`. A name is one of:

- a path to a ``.npz`` trace file, or the name of a bundled trace (``moe_cache_env.cli._common.load_named_trace``);
- ``synth:PRESET:TOKENS:SEED``, a synthetic trace generated on first use with
  ``moe_cache_env.traces.synth.generate(PRESET, TOKENS, numpy.random.default_rng(SEED))``.

Every trace is split by sequence into train / validation / test parts (``moe_cache_env.traces.splits``); an
environment replays one part, chosen by its ``split`` argument.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from moe_cache_env.traces.format import Trace
from moe_cache_env.traces.splits import SPLITS, split_trace

#: the default suite: a synthetic Qwen1.5-MoE-A2.7B trace of five domains (~270 sequences).
DEFAULT_SUITE: tuple[str, ...] = ("synth:qwen1.5-moe:65536:0",)


def parse_synth_name(name: str) -> tuple[str, int, int]:
    """``synth:PRESET:TOKENS:SEED`` -> (preset, tokens, seed); raises ValueError naming the problem."""
    parts = name.split(":")
    if len(parts) != 4 or parts[0] != "synth":
        raise ValueError(f"synthetic trace name {name!r} must look like synth:PRESET:TOKENS:SEED")
    _, preset, tokens, seed = parts
    try:
        num_tokens, seed_value = int(tokens), int(seed)
    except ValueError:
        raise ValueError(f"synthetic trace name {name!r}: TOKENS and SEED must be integers") from None
    if num_tokens < 64:
        raise ValueError(f"synthetic trace name {name!r}: TOKENS must be at least 64")
    return preset, num_tokens, seed_value


@lru_cache(maxsize=16)
def load_suite_trace(name: str) -> Trace:
    """Resolve one suite name to a trace (cached: suite traces are read-only)."""
    if name.startswith("synth:"):
        from moe_cache_env.traces.synth import generate

        preset, num_tokens, seed = parse_synth_name(name)
        trace = generate(preset, num_tokens, np.random.default_rng(seed), seed=seed)
    else:
        from moe_cache_env.cli._common import load_named_trace

        try:
            trace = load_named_trace(name)
        except (ImportError, ModuleNotFoundError):
            raise ValueError(
                f"trace {name!r} is neither a file nor a bundled trace; use a .npz path or synth:PRESET:TOKENS:SEED"
            ) from None
    trace.experts.setflags(write=False)
    return trace


#: the parts an environment can replay: a split, or the whole trace (``all``, for evaluating on one trace)
EPISODE_SPLITS: tuple[str, ...] = SPLITS + ("all",)


@lru_cache(maxsize=64)
def load_split(name: str, split: str, fractions: tuple[float, float, float], split_seed: int) -> Trace:
    """One split of one suite trace, or the whole trace for ``split="all"`` (cached)."""
    if split not in EPISODE_SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(EPISODE_SPLITS)}")
    if split == "all":
        return load_suite_trace(name)
    return split_trace(load_suite_trace(name), fractions, split_seed)[split]


def check_suite(names: Sequence[str]) -> None:
    """Reject an empty suite or a malformed name early (files are only opened at reset)."""
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
        raise ValueError(f"traces must be a non-empty list of trace names, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"traces: every entry must be a non-empty string, got {name!r}")
        if name.startswith("synth:"):
            parse_synth_name(name)
