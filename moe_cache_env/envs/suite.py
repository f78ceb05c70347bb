"""The trace suite an environment draws its episodes from.

A suite is a list of trace *names*, resolved when an environment resets (and kept per process), so that the
registered kwargs stay JSON-able and swapping the traces an environment trains on is a one-line change of
:data:`DEFAULT_SUITE`. A name is any form of the trace catalog (:mod:`moe_cache_env.traces.catalog`):

- a path to a ``.npz`` trace file (or ``file://PATH``), or a bundled trace (``learned/tiny-olmoe-12L-64E-decode``,
  ``bundled://learned/tiny-olmoe-12L-64E-decode``);
- ``synth://PRESET?tokens=N&seed=S`` or ``synth:PRESET:TOKENS:SEED``, a synthetic trace generated on first use
  with ``moe_cache_env.traces.synth.generate(PRESET, TOKENS, numpy.random.default_rng(SEED))`` and then read from
  the on-disk cache, in this and every later process;
- a folder (a path, or ``bundled://learned``): every ``.npz`` under it joins the suite (:func:`expand_suite`).

Every trace is split by sequence into train / validation / test parts (``moe_cache_env.traces.splits``); an
environment replays one part, chosen by its ``split`` argument.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from moe_cache_env.traces.catalog import expand_suite, parse_synth, resolve
from moe_cache_env.traces.format import Trace
from moe_cache_env.traces.splits import SPLITS, split_sequence_ids

#: the default suite: a synthetic Qwen1.5-MoE-A2.7B trace of five domains (~270 sequences).
DEFAULT_SUITE: tuple[str, ...] = ("synth:qwen1.5-moe:65536:0",)


def parse_synth_name(name: str) -> tuple[str, int, int]:
    """``synth:PRESET:TOKENS:SEED`` (or ``synth://PRESET?tokens=N&seed=S``) -> (preset, tokens, seed).

    Raises:
        ValueError: naming the problem (form, integers, token range, unknown preset).
    """
    spec = parse_synth(name)
    return spec.preset, spec.num_tokens, spec.seed


@lru_cache(maxsize=16)
def load_suite_trace(name: str) -> Trace:
    """Resolve one suite name to a trace through the catalog (kept per process: suite traces are read-only)."""
    trace = resolve(name)
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
    return split_part(load_suite_trace(name), split, fractions, split_seed)


def split_part(trace: Trace, split: str, fractions: tuple[float, float, float], split_seed: int) -> Trace:
    """``splits.split_trace(trace, fractions, split_seed)[split]``, built alone and validated once.

    ``split_trace`` builds all three parts and validates each twice; on the default suite trace that was half
    the time of an environment's first reset, for one part it keeps.
    """
    ids = split_sequence_ids(trace, fractions, split_seed)[split]
    bounds = trace.sequence_bounds()
    row_of = {int(value): i for i, value in enumerate(trace.sequence[bounds[:, 0]])}
    chosen = [row_of[int(sid)] for sid in ids]
    rows = np.concatenate([np.arange(bounds[i, 0], bounds[i, 1]) for i in chosen])
    meta = dict(trace.meta)
    domains = trace.domains()
    if domains is not None:
        meta["domains"] = [domains[i] for i in chosen]
    meta["name"] = f"{trace.name}#{split}"
    return trace.take_rows(rows, meta)


def check_suite(names: Sequence[str]) -> None:
    """Reject an empty suite, a malformed name or an empty folder early (files are only opened at reset)."""
    expand_suite(names)


__all__ = [
    "DEFAULT_SUITE",
    "EPISODE_SPLITS",
    "check_suite",
    "expand_suite",
    "load_split",
    "load_suite_trace",
    "parse_synth_name",
    "split_part",
]
