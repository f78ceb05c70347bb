"""Routing statistics of a trace, to check any trace against the properties of real MoE routing.

:func:`trace_statistics` measures, per layer and in summary:

- popularity: skew (busiest expert's share of the layer's top-k assignments over the uniform share ``1/E``),
  normalised entropy of the shares, share taken by the top 10% of experts; the same skew within each domain
  (``domain_skews``) and its mean over domains (``domain_skew``);
- temporal locality (consecutive tokens of one sequence, same layer): the fraction of the top-k set shared
  with the previous token (``overlap``; chance ``k/E``), the rate of an identical first choice
  (``same_top1``; chance ``1/E``) and of at least one shared expert (``any_shared``);
- cross-layer predictability: a co-occurrence table from layer ``l``'s experts to layer ``l + 1``'s (and
  ``l + 2``'s) is counted on the first half of the sequences (of the tokens, for a trace of one sequence of at
  least ``MIN_SPLIT_TOKENS`` tokens); on the second half, each token's next-layer
  prediction is the ``k`` experts with the largest summed counts over its ``k`` experts at layer ``l``, and the
  precision is the fraction of the predicted ``k`` that the token really uses. Beside it, popularity alone (the
  ``k`` most used experts of the first half) and chance (``k/E``). Also the accuracy of predicting the next
  layer's first choice from this layer's first choice (``xlayer_top1``) and from popularity alone
  (``popularity_top1``);
- domain mix and specialisation: mean pairwise Jaccard similarity of the domains' top-``n`` sets per layer
  (``n = max(k, E // 4)``; 1 = no specialisation).

Everything is vectorised numpy over tokens, with a loop over layers.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from moe_cache_env.traces.format import Trace, check_table_experts

#: domains with fewer tokens than this are left out of per-domain statistics (too noisy to compare)
MIN_DOMAIN_TOKENS = 200
#: a trace of one sequence is split at half its tokens for the cross-layer tables when it has at least this many
MIN_SPLIT_TOKENS = 64
#: tokens per block of the (tokens, E) score matrices
_TOKEN_BLOCK = 16384


def _shares(experts_at_layer: np.ndarray, num_experts: int) -> np.ndarray:
    counts = np.bincount(experts_at_layer.ravel(), minlength=num_experts).astype(np.float64)
    return counts / counts.sum()


def popularity_skew(shares: np.ndarray) -> float:
    """Busiest expert's share over the uniform share (1 = uniform)."""
    return float(shares.max() * len(shares))


def normalised_entropy(shares: np.ndarray) -> float:
    """Entropy of the shares over log(E) (1 = uniform)."""
    positive = shares[shares > 0]
    return float(-(positive * np.log(positive)).sum() / math.log(len(shares))) if len(shares) > 1 else 1.0


def top_decile_share(shares: np.ndarray) -> float:
    """Share of assignments taken by the busiest ceil(E / 10) experts."""
    n = max(1, math.ceil(len(shares) / 10))
    return float(np.sort(shares)[::-1][:n].sum())


def chance_any_shared(num_experts: int, top_k: int) -> float:
    """Probability that two independent uniform k-of-E sets share at least one expert."""
    if 2 * top_k > num_experts:
        return 1.0
    return 1.0 - math.comb(num_experts - top_k, top_k) / math.comb(num_experts, top_k)


def _membership(experts_at_layer: np.ndarray, num_experts: int) -> np.ndarray:
    """(T, E) boolean: whether each token uses each expert at this layer."""
    member = np.zeros((experts_at_layer.shape[0], num_experts), dtype=bool)
    np.put_along_axis(member, experts_at_layer.astype(np.int64), True, axis=1)
    return member


def _cooccurrence(source: np.ndarray, target: np.ndarray, num_experts: int) -> np.ndarray:
    """(E, E) counts: row = expert at the source layer, column = expert at the target layer (all k x k pairs)."""
    pairs = source[:, :, None].astype(np.int64) * num_experts + target[:, None, :]
    counts = np.bincount(pairs.ravel(), minlength=num_experts * num_experts)
    return counts.reshape(num_experts, num_experts).astype(np.float64)


def _predict_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, in no particular order (a partition, not a sort)."""
    if k >= scores.shape[1]:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _precision(predicted: np.ndarray, actual_member: np.ndarray) -> float:
    """Mean fraction of the predicted experts that the token really uses."""
    return float(np.take_along_axis(actual_member, predicted, axis=1).mean())


def cooccurrence_precision(
    train_source: np.ndarray,
    train_target: np.ndarray,
    test_source: np.ndarray,
    test_target: np.ndarray,
    num_experts: int,
) -> tuple[float, float]:
    """Precision of the co-occurrence predictor and of popularity alone, fitted on train, scored on test.

    Arrays are (tokens, k) expert ids of the same tokens at a source layer and a later target layer.
    """
    k = test_target.shape[1]
    table = _cooccurrence(train_source, train_target, num_experts).astype(np.float32)
    popularity = np.bincount(train_target.ravel(), minlength=num_experts).astype(np.float64)
    tie_break = (popularity / (popularity.sum() + 1.0)).astype(np.float32)
    popular = _predict_top_k(popularity[None, :], k)[0]
    # Summed rows of the table over the token's k source experts (a membership matrix times the table);
    # popularity, with a weight below one count, breaks ties. The sums are of integer counts below 2**24, so
    # exact in float32 whatever order a threaded BLAS adds them in. Blocks of tokens keep the (tokens, E)
    # matrices small.
    hits = popular_hits = 0
    for start in range(0, len(test_source), _TOKEN_BLOCK):
        block = slice(start, start + _TOKEN_BLOCK)
        source_member = _membership(test_source[block], num_experts).astype(np.float32)
        scores = source_member @ table
        scores += tie_break
        member = _membership(test_target[block], num_experts)
        hits += int(np.take_along_axis(member, _predict_top_k(scores, k), axis=1).sum())
        popular_hits += int(member[:, popular].sum())
    total = len(test_source) * k
    return hits / total, popular_hits / total


def top1_transition_accuracy(
    train_source: np.ndarray,
    train_target: np.ndarray,
    test_source: np.ndarray,
    test_target: np.ndarray,
    num_experts: int,
) -> tuple[float, float]:
    """Accuracy of predicting the next layer's first choice from this layer's first choice, and of popularity.

    Arrays are (tokens,) first-choice ids. The table counts (first choice at l, first choice at l') pairs on
    train; the prediction is the row's most frequent successor (ties and unseen rows: the most frequent first
    choice at l'), which is also the popularity prediction.
    """
    table = np.bincount(
        train_source.astype(np.int64) * num_experts + train_target, minlength=num_experts * num_experts
    ).reshape(num_experts, num_experts).astype(np.float64)
    popularity = np.bincount(train_target, minlength=num_experts).astype(np.float64)
    table += popularity / (popularity.sum() + 1.0)  # below one count: breaks ties only
    predicted = table.argmax(axis=1)[test_source.astype(np.int64)]
    return float((predicted == test_target).mean()), float((test_target == popularity.argmax()).mean())


def token_domains(trace: Trace) -> tuple[np.ndarray, list[str]] | None:
    """Domain index of each token and the domain names, when the trace records per-sequence domains."""
    domains = trace.domains()
    if domains is None:
        return None
    names = sorted(set(domains))
    index = {name: i for i, name in enumerate(names)}
    bounds = trace.sequence_bounds()
    per_sequence = np.array([index[d] for d in domains], dtype=np.int64)
    return np.repeat(per_sequence, bounds[:, 1] - bounds[:, 0]), names


def trace_statistics(trace: Trace) -> dict[str, Any]:
    """Measure a trace's routing statistics; returns a JSON-able dict (see the module docstring).

    Keys: ``trace`` (geometry), ``chance`` (random baselines), ``domains`` (mix), ``layers`` (one dict per
    layer) and ``summary`` (means over layers, and first / middle / last layer values).
    """
    experts = trace.experts
    T, L, K = experts.shape
    E = trace.num_experts
    check_table_experts(E, trace.name)
    bounds = trace.sequence_bounds()
    num_sequences = len(bounds)

    # Consecutive pairs of the same sequence (the previous token is the same request's).
    same_sequence = trace.sequence[1:] == trace.sequence[:-1]
    num_pairs = int(same_sequence.sum())

    # Train / test split by sequence: the first half of the sequences fits the co-occurrence tables. A trace of
    # one long sequence (an engine's single prompt) is split at half its tokens instead.
    split: str | None
    if num_sequences >= 2:
        split_token, split = int(bounds[num_sequences // 2, 0]), "sequences"
    elif T >= MIN_SPLIT_TOKENS:
        split_token, split = T // 2, "tokens"
    else:
        split_token, split = None, None

    domain_info = token_domains(trace)
    domain_rows: list[dict[str, Any]] = []
    domain_masks: list[tuple[str, np.ndarray]] = []
    if domain_info is not None:
        token_domain, names = domain_info
        sequence_domain = np.array([names.index(d) for d in trace.domains()], dtype=np.int64)
        for i, name in enumerate(names):
            mask = token_domain == i
            tokens = int(mask.sum())
            domain_rows.append(
                {
                    "domain": name,
                    "sequences": int((sequence_domain == i).sum()),
                    "tokens": tokens,
                    "token_share": tokens / T,
                }
            )
            if tokens >= MIN_DOMAIN_TOKENS:
                domain_masks.append((name, mask))
        # Workload shifts: how often the next sequence has another domain.
        switches = int((sequence_domain[1:] != sequence_domain[:-1]).sum())
    else:
        switches = None
    top_n = max(K, E // 4)

    layers: list[dict[str, Any]] = []
    for l in range(L):
        at_layer = experts[:, l, :]
        shares = _shares(at_layer, E)
        row: dict[str, Any] = {
            "layer": l,
            "skew": popularity_skew(shares),
            "entropy": normalised_entropy(shares),
            "top10pct_share": top_decile_share(shares),
        }
        # Per-domain popularity and specialisation.
        if domain_masks:
            domain_shares = [_shares(at_layer[mask], E) for _, mask in domain_masks]
            row["domain_skews"] = {
                name: popularity_skew(s) for (name, _), s in zip(domain_masks, domain_shares)
            }
            row["domain_skew"] = float(np.mean(list(row["domain_skews"].values())))
            if len(domain_shares) >= 2:
                top_sets = [set(np.argsort(-s, kind="stable")[:top_n].tolist()) for s in domain_shares]
                jaccards = [len(a & b) / len(a | b) for a, b in itertools.combinations(top_sets, 2)]
                row["domain_jaccard"] = float(np.mean(jaccards))
            else:
                row["domain_jaccard"] = None
        # Temporal locality with the previous token of the same sequence.
        if num_pairs:
            current = at_layer[1:][same_sequence]
            previous = at_layer[:-1][same_sequence]
            shared = (current[:, :, None] == previous[:, None, :]).any(axis=2).sum(axis=1)
            row["overlap"] = float(shared.mean() / K)
            row["same_top1"] = float((current[:, 0] == previous[:, 0]).mean())
            row["any_shared"] = float((shared > 0).mean())
        else:
            row["overlap"] = row["same_top1"] = row["any_shared"] = None
        # Cross-layer predictability, one and two layers ahead.
        for ahead, key in ((1, "next"), (2, "next2")):
            if split_token is None or l + ahead >= L:
                row[f"xlayer_{key}"] = None
                if ahead == 1:
                    row["popularity_next"] = row["xlayer_top1"] = row["popularity_top1"] = None
                continue
            table_p, popular_p = cooccurrence_precision(
                experts[:split_token, l, :],
                experts[:split_token, l + ahead, :],
                experts[split_token:, l, :],
                experts[split_token:, l + ahead, :],
                E,
            )
            row[f"xlayer_{key}"] = table_p
            if ahead == 1:
                row["popularity_next"] = popular_p
                row["xlayer_top1"], row["popularity_top1"] = top1_transition_accuracy(
                    experts[:split_token, l, 0],
                    experts[:split_token, l + 1, 0],
                    experts[split_token:, l, 0],
                    experts[split_token:, l + 1, 0],
                    E,
                )
        layers.append(row)

    def mean_of(key: str) -> float | None:
        values = [r[key] for r in layers if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    def at(key: str, layer: int) -> float | None:
        value = layers[layer].get(key)
        return None if value is None else float(value)

    middle = L // 2
    summary: dict[str, Any] = {}
    for key in (
        "skew",
        "entropy",
        "top10pct_share",
        "domain_skew",
        "domain_jaccard",
        "overlap",
        "same_top1",
        "any_shared",
        "xlayer_next",
        "xlayer_next2",
        "popularity_next",
        "xlayer_top1",
        "popularity_top1",
    ):
        summary[f"mean_{key}"] = mean_of(key)
    for key in ("skew", "overlap", "same_top1", "domain_jaccard"):
        summary[f"{key}_first_mid_last"] = [at(key, 0), at(key, middle), at(key, L - 1)]
    skews = [r["skew"] for r in layers]
    summary["skew_min_median_max"] = [float(np.min(skews)), float(np.median(skews)), float(np.max(skews))]
    overlaps = [r["overlap"] for r in layers if r["overlap"] is not None]
    summary["peak_overlap_layer"] = int(np.argmax(overlaps)) if overlaps else None

    return {
        "trace": {
            "name": trace.name,
            "model": str(trace.meta["model"]),
            "phase": str(trace.meta["phase"]),
            "tokens": T,
            "layers": L,
            "num_experts": E,
            "top_k": K,
            "sequences": num_sequences,
            "mean_sequence_tokens": T / num_sequences,
            "consecutive_pairs": num_pairs,
            "train_sequences": num_sequences // 2 if split == "sequences" else None,
            "split": split,
            "train_tokens": split_token,
        },
        "chance": {
            "overlap": K / E,
            "same_top1": 1.0 / E,
            "any_shared": chance_any_shared(E, K),
            "precision": K / E,
        },
        "domains": {
            "mix": domain_rows,
            "switches": switches,
            "specialisation_top_n": top_n,
        },
        "layers": layers,
        "summary": summary,
    }
