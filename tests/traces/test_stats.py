"""Trace statistics: hand-computed answers on a tiny trace, and the targets of real routing on generated traces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moe_cache_env.cli import main
from moe_cache_env.traces import Trace, load_trace, make_meta
from moe_cache_env.traces import stats as stats_module
from moe_cache_env.traces import synth
from moe_cache_env.traces.stats import chance_any_shared, trace_statistics
from moe_cache_env.traces.suite import resolve_trace

# A tiny trace: 4 experts, top-2, 3 layers, two sequences of three tokens (domains x then y).
#                 layer 0   layer 1   layer 2
TINY_EXPERTS = [
    [[0, 1], [1, 2], [3, 0]],  # token 0, sequence 0
    [[0, 2], [1, 3], [3, 0]],  # token 1
    [[0, 1], [2, 1], [3, 1]],  # token 2
    [[3, 2], [0, 3], [2, 1]],  # token 3, sequence 1
    [[3, 2], [0, 1], [2, 0]],  # token 4
    [[0, 3], [1, 0], [2, 1]],  # token 5
]


def tiny_trace() -> Trace:
    meta = make_meta(
        model="tiny", num_experts=4, top_k=2, num_layers=3, expert_bytes=1, phase="decode", source="hand-made",
        domains=["x", "y"],
    )
    return Trace(
        experts=np.array(TINY_EXPERTS, dtype=np.int16), sequence=np.array([0, 0, 0, 1, 1, 1], dtype=np.int32),
        meta=meta,
    )


def test_tiny_trace_popularity_and_locality():
    s = trace_statistics(tiny_trace())
    layer0 = s["layers"][0]
    # Layer 0 counts: expert 0: 4, expert 1: 2, expert 2: 3, expert 3: 3 of 12 assignments.
    assert layer0["skew"] == pytest.approx(4 / 12 * 4)
    shares = np.array([4, 2, 3, 3]) / 12
    assert layer0["entropy"] == pytest.approx(-(shares * np.log(shares)).sum() / math.log(4))
    assert layer0["top10pct_share"] == pytest.approx(4 / 12)
    # Pairs (0,1), (1,2), (3,4), (4,5) share 1, 1, 2, 1 of 2 experts; same first choice 3 times of 4.
    assert layer0["overlap"] == pytest.approx((0.5 + 0.5 + 1.0 + 0.5) / 4)
    assert layer0["same_top1"] == pytest.approx(0.75)
    assert layer0["any_shared"] == pytest.approx(1.0)
    assert s["chance"] == pytest.approx(
        {"overlap": 0.5, "same_top1": 0.25, "any_shared": 1 - 1 / 6, "precision": 0.5}
    )
    assert s["trace"]["sequences"] == 2 and s["trace"]["consecutive_pairs"] == 4


def test_tiny_trace_cross_layer_precision():
    s = trace_statistics(tiny_trace())
    layer0, layer1, layer2 = s["layers"]
    # Fitted on sequence 0, scored on sequence 1. Layer 0 -> 1 table rows: 0 -> {1: 3, 2: 2, 3: 1},
    # 1 -> {1: 2, 2: 2}, 2 -> {1: 1, 3: 1}; predictions {1, 3}, {1, 3}, {1, 2} against {0, 3}, {0, 1}, {0, 1}.
    assert layer0["xlayer_next"] == pytest.approx(0.5)
    # Popularity at layer 1 on sequence 0: {1, 2}; hits 0, 1, 1 of 2.
    assert layer0["popularity_next"] == pytest.approx(1 / 3)
    # Layer 1 -> 2 predicts {0, 3} for every test token; actual {2, 1}, {2, 0}, {2, 1}.
    assert layer1["xlayer_next"] == pytest.approx(1 / 6)
    assert layer1["popularity_next"] == pytest.approx(1 / 6)
    # First choices, layer 0 -> 1: train pairs 0->1, 0->1, 0->2; test first choices 3, 3, 0 (row 3 unseen:
    # popularity, expert 1) predict 1, 1, 1 against 0, 0, 1.
    assert layer0["xlayer_top1"] == pytest.approx(1 / 3)
    assert layer0["popularity_top1"] == pytest.approx(1 / 3)
    # Layer 1 -> 2: every prediction is 3 (train successors and popularity), actual first choices 2, 2, 2.
    assert layer1["xlayer_top1"] == 0.0 and layer1["popularity_top1"] == 0.0
    # Layer 0 -> 2 (two ahead) also predicts {0, 3}.
    assert layer0["xlayer_next2"] == pytest.approx(1 / 6)
    assert layer1["xlayer_next2"] is None and layer2["xlayer_next"] is None


def test_tiny_trace_domains(monkeypatch):
    s = trace_statistics(tiny_trace())
    assert [d["domain"] for d in s["domains"]["mix"]] == ["x", "y"]
    assert s["domains"]["mix"][0] == {"domain": "x", "sequences": 1, "tokens": 3, "token_share": 0.5}
    assert s["domains"]["switches"] == 1
    assert "domain_jaccard" not in s["layers"][0]  # 3 tokens per domain: below the minimum
    monkeypatch.setattr(stats_module, "MIN_DOMAIN_TOKENS", 1)
    s = trace_statistics(tiny_trace())
    # Layer 0: domain x counts {0: 3, 1: 2, 2: 1}, domain y {3: 3, 2: 2, 0: 1}; top-2 sets {0, 1} and {3, 2}.
    assert s["layers"][0]["domain_skew"] == pytest.approx(2.0)
    assert s["layers"][0]["domain_jaccard"] == pytest.approx(0.0)


def test_one_sequence_without_domains():
    trace = tiny_trace()
    meta = dict(trace.meta)
    meta.pop("domains")
    single = Trace(experts=trace.experts, sequence=np.zeros(6, dtype=np.int32), meta=meta)
    s = trace_statistics(single)
    assert s["layers"][0]["xlayer_next"] is None and s["summary"]["mean_xlayer_next"] is None
    assert s["layers"][0]["overlap"] is not None and s["domains"]["mix"] == []
    json.dumps(s)  # JSON-able


def test_chance_any_shared_matches_enumeration():
    # Two random 2-of-8 sets (Mixtral) share an expert with probability 1 - C(6,2)/C(8,2).
    assert chance_any_shared(8, 2) == pytest.approx(1 - 15 / 28)
    assert chance_any_shared(4, 3) == 1.0


@pytest.fixture(scope="module")
def bundled_stats():
    return {name: trace_statistics(load_trace(resolve_trace(name)))
            for name in ("qwen1.5-moe", "mixtral", "deepseek-v2-lite", "olmoe")}


def test_qwen_trace_meets_the_targets(bundled_stats):
    s = bundled_stats["qwen1.5-moe"]
    summary, chance, layers = s["summary"], s["chance"], s["layers"]
    # Skew of a fine-grained model (DeepSeek-V2-Lite 1.37-2.63, OLMoE c4 2.5-3.0); entropy near 1.
    assert 1.3 <= summary["skew_min_median_max"][1] <= 3.0
    assert summary["mean_entropy"] > 0.95
    # Locality: near chance at layer 0, a peak in the middle well above chance, lower at the end.
    overlaps = [r["overlap"] for r in layers]
    peak = int(np.argmax(overlaps))
    assert overlaps[0] < 1.5 * chance["overlap"]
    assert len(layers) // 6 <= peak <= 2 * len(layers) // 3
    assert overlaps[peak] > 3 * chance["overlap"]
    assert overlaps[0] < overlaps[-1] < overlaps[peak]
    # Cross-layer: a co-occurrence table predicts the next top-k with precision ~0.45, far above popularity.
    assert summary["mean_xlayer_next"] == pytest.approx(0.45, abs=0.1)
    assert summary["mean_xlayer_next"] > summary["mean_popularity_next"] + 0.15
    assert summary["mean_xlayer_next2"] > summary["mean_xlayer_next"] - 0.06
    assert summary["mean_popularity_next"] > chance["precision"]
    # Specialisation grows with depth: the domains' top sets agree less in the deep layers.
    jaccard = [r["domain_jaccard"] for r in layers]
    assert np.mean(jaccard[:3]) > np.mean(jaccard[-3:]) + 0.1


def test_deepseek_trace_meets_the_targets(bundled_stats):
    s = bundled_stats["deepseek-v2-lite"]
    summary, layers = s["summary"], s["layers"]
    # Public DeepSeek-V2-Lite prefill traces: skew 1.37-2.63 (median 1.82); top-6 overlap 0.14 at the first
    # MoE layer, 0.34 at the eighth, 0.20 at the last (0.26 on average); co-occurrence precision 0.46,
    # two ahead 0.45, popularity 0.14.
    assert 1.4 <= summary["skew_min_median_max"][1] <= 2.6
    assert layers[0]["overlap"] == pytest.approx(0.14, abs=0.05)
    assert max(r["overlap"] for r in layers[4:12]) == pytest.approx(0.34, abs=0.07)
    assert layers[-1]["overlap"] == pytest.approx(0.20, abs=0.06)
    assert summary["mean_overlap"] == pytest.approx(0.26, abs=0.05)
    assert summary["mean_xlayer_next"] == pytest.approx(0.46, abs=0.1)
    assert summary["mean_xlayer_next2"] == pytest.approx(0.45, abs=0.1)
    assert summary["mean_popularity_next"] == pytest.approx(0.14, abs=0.05)


def test_mixtral_trace_meets_the_targets(bundled_stats):
    s = bundled_stats["mixtral"]
    layers = s["layers"]
    # Mixtral: skew 1.08-1.33; same first choice 13.6-14.9% at layer 0 (chance 12.5%), 23.6-28.4% at layer 15,
    # 19.7-26.3% at layer 31.
    assert all(r["skew"] < 1.45 for r in layers)
    assert layers[0]["same_top1"] == pytest.approx(0.14, abs=0.04)
    assert layers[15]["same_top1"] == pytest.approx(0.26, abs=0.06)
    assert layers[31]["same_top1"] == pytest.approx(0.23, abs=0.06)
    # Decode traces: the first choice at l predicts the first choice at l+1 with 0.34-0.38 (marginal 0.21).
    assert s["summary"]["mean_xlayer_top1"] == pytest.approx(0.36, abs=0.05)
    assert s["summary"]["mean_xlayer_top1"] > s["summary"]["mean_popularity_top1"] + 0.1


def test_olmoe_trace_keeps_the_measured_domain_skew(bundled_stats):
    layers = bundled_stats["olmoe"]["layers"]
    # The olmoe preset is calibrated to OLMoE's measured per-domain shares at layers 0 / 7 / 15; each
    # domain's skew comes back within 20% (800-3,500 tokens per domain in this trace).
    data = json.loads(synth.DATA_FILE.read_text())["models"]["olmoe"]["domains"]
    for index, layer in enumerate((0, 7, 15)):
        for domain, measured in layers[layer]["domain_skews"].items():
            shares = np.asarray(data[domain][index])
            assert measured == pytest.approx(shares.max() / shares.sum() * 64, rel=0.2), (layer, domain)
    # Strong specialisation at every depth (measured Jaccard of top-16 sets: 0.21 / 0.18 / 0.19).
    assert all(r["domain_jaccard"] < 0.45 for r in layers)


def test_trace_stats_command(tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert main(["trace-stats", "synthetic/mixtral", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "summary (mean over layers)" in text and "cross-layer precision" in text and "domain mix" in text
    assert len([line for line in text.splitlines() if line.strip().split(" ")[0].isdigit()]) >= 32
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(trace_statistics(load_trace(resolve_trace("mixtral")))))


def test_trace_stats_command_reports_a_missing_trace(capsys):
    assert main(["trace-stats", "no-such-trace"]) == 2
    err = capsys.readouterr().err
    assert "no trace file or bundled trace named 'no-such-trace'" in err and "synthetic/qwen1.5-moe" in err
