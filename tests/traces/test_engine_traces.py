"""The bundled engine traces load, match their provenance cards, and reproduce the numbers their source published.

The expected routing figures are not computed by this package: they are the ones the upstream repository
printed beside the route traces (Helldez/BigMoeOnEdge, docs/bench-data/2026-07-15-route-trace/findings.md),
computed there from the raw CSVs by its own script. Recomputing them here with plain Python from the imported
traces checks that the import kept every expert id in its place.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from moe_cache_env.traces import load_trace
from moe_cache_env.traces.suite import bundled_root, list_bundled_traces, resolve_trace

ENGINES = bundled_root() / "engines"
CARDS = sorted(ENGINES.glob("*.card.json"))

#: findings.md, "Temporal prefetch has no signal beyond popularity" (previous token's k; the run's k hottest)
#: and "Mean distinct experts touched per layer (of 128)": mean, min, max.
PUBLISHED = {
    "qwen3-30b-a3b-decode": {"temporal": 0.380, "static": 0.376, "distinct": (64, 33, 107)},
    "gemma-4-26b-a4b-it-decode": {"temporal": 0.357, "static": 0.396, "distinct": (67, 52, 97)},
    "gpt-oss-120b-decode": {"temporal": 0.179, "static": 0.267, "distinct": (36, 19, 64)},
}


def test_three_engine_traces_are_bundled_with_their_licence():
    assert {c.name.removesuffix(".card.json") for c in CARDS} == set(PUBLISHED)
    licence = (ENGINES / "LICENSE-BigMoeOnEdge").read_text()
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence
    names = list_bundled_traces()
    assert {f"engines/{n}" for n in PUBLISHED} <= set(names)


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name.removesuffix(".card.json"))
def test_trace_matches_its_card(card_path):
    card = json.loads(card_path.read_text())
    path = ENGINES / card["trace"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    trace = load_trace(resolve_trace(card["name"]))
    geometry = card["geometry"]
    assert trace.num_tokens == geometry["tokens"]
    assert len(trace.sequence_bounds()) == geometry["sequences"] == 1
    assert (trace.num_layers, trace.num_experts, trace.top_k) == (
        geometry["num_layers"], geometry["num_experts"], geometry["top_k"])
    assert trace.expert_bytes == geometry["expert_bytes"]
    per_layer = trace.meta["expert_bytes_per_layer"]
    assert len(per_layer) == trace.num_layers and trace.expert_bytes == round(sum(per_layer) / len(per_layer))
    assert (trace.weights is not None) == geometry["weights"]
    assert trace.meta["model"] == card["model"] and trace.meta["phase"] == card["phase"] == "decode"
    assert trace.meta["name"] == card["name"]
    # provenance: the snapshot read, the licence, and the top-k lowered from the native value when recorded
    source = card["source"]
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]) and source["license"] == "Apache-2.0"
    assert source["commit"] in trace.meta["source"] and source["path"].endswith(".route.csv")
    assert card["top_k"]["recorded"] == trace.top_k < card["top_k"]["native"]
    assert trace.meta["provenance"]["format"] == "route-trace"
    assert trace.meta["provenance"]["route_trace"]["n_expert_used"] == str(trace.top_k)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_routing_reproduces_the_published_figures(name):
    trace = load_trace(resolve_trace(f"engines/{name}"))
    rows = trace.experts.tolist()  # plain Python from here on
    tokens, layers, k = len(rows), len(rows[0]), len(rows[0][0])
    temporal = [
        len(set(rows[t][l]) & set(rows[t - 1][l])) / k for t in range(1, tokens) for l in range(layers)
    ]
    static, distinct = [], []
    for l in range(layers):
        counts: dict[int, int] = {}
        for t in range(tokens):
            for e in rows[t][l]:
                counts[e] = counts.get(e, 0) + 1
        hot = set(sorted(counts, key=lambda e: (-counts[e], e))[:k])
        static += [len(set(rows[t][l]) & hot) / k for t in range(tokens)]
        distinct.append(len(counts))
    expected = PUBLISHED[name]
    assert sum(temporal) / len(temporal) == pytest.approx(expected["temporal"], abs=0.0006)
    # the hot list's ties (equally used experts) may be broken otherwise upstream: a little more room here
    assert sum(static) / len(static) == pytest.approx(expected["static"], abs=0.002)
    mean, low, high = expected["distinct"]
    assert round(sum(distinct) / len(distinct)) == mean and (min(distinct), max(distinct)) == (low, high)


def test_weights_are_the_recorded_router_weights():
    """The first decode row of the Qwen3 file (step 28, layer 0), as printed in the CSV."""
    trace = load_trace(resolve_trace("engines/qwen3-30b-a3b-decode"))
    assert trace.weights is not None and trace.weights.dtype == np.float32
    # rows "0,1,28,0,<slot>,<expert>,<weight>,..." of qwen.route.csv
    assert trace.experts[0, 0].tolist() == [60, 49, 78, 50, 106, 32]
    np.testing.assert_allclose(trace.weights[0, 0], [0.215444, 0.185333, 0.173804, 0.172589, 0.162377, 0.0904526],
                               rtol=1e-6)
    # every slot row of a token sorts by descending weight (the engine's rank order)
    assert (np.diff(trace.weights, axis=2) <= 0).all()
