"""The bundled learned traces (traces/learned/) load, validate, match their provenance cards, and show what
real MoE routing shows (docs/traces.md, ../shared/design/routing-statistics.md):

* popularity skew (busiest expert's share over the uniform share) above 1.3 in most layers, measured per
  domain as the reference numbers are (OLMoE on c4, on arxiv, on github...), and above what sampling noise of
  perfectly uniform routing gives for the same number of tokens;
* temporal locality (top-k overlap of consecutive tokens) above chance in the middle layers, and above what
  the layer's expert popularity alone gives (the same tokens paired at random);
* cross-layer predictability: a co-occurrence table from layer l's experts to layer l+1's, fitted on half of
  the sequences, predicts the other half's next-layer experts well above popularity alone.

The statistics are computed here with plain numpy, independently of moe_cache_env.traces.stats.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from moe_cache_env.traces.format import Trace, load_trace

REPO = Path(__file__).resolve().parents[2]
#: the scripts that made the learned traces
LEARNED_DIR = REPO / "traces" / "learned"
#: the bundled traces and their provenance cards (package data)
BUNDLED_DIR = REPO / "moe_cache_env" / "traces" / "bundled" / "learned"
STEM = "tiny-olmoe-12L-64E"
PHASES = ("prefill", "decode")
DOMAINS = {"code", "prose", "structured"}

# Bars (issue 5). "Most layers" = more than half; "well above" popularity = at least 1.5 times its precision.
SKEW_BAR = 1.3
COOCCURRENCE_OVER_POPULARITY = 1.5


@pytest.fixture(scope="module", params=PHASES)
def trace(request: pytest.FixtureRequest) -> Trace:
    path = BUNDLED_DIR / f"{STEM}-{request.param}.npz"
    assert path.exists(), f"bundled trace {path} is missing; see docs/traces.md for how it is made"
    return load_trace(path)


def _card(trace: Trace) -> dict:
    return json.loads((BUNDLED_DIR / f"{STEM}-{trace.meta['phase']}.card.json").read_text())


def test_geometry_and_meta(trace: Trace) -> None:
    assert (trace.num_layers, trace.num_experts, trace.top_k) == (12, 64, 8)
    assert trace.meta["model"] == f"moe-cache-env/{STEM}"
    assert set(trace.domains()) == DOMAINS
    # Every domain has the same number of sequences (the recorder interleaves them).
    counts = {d: trace.domains().count(d) for d in DOMAINS}
    assert len(set(counts.values())) == 1, counts
    assert trace.weights is not None
    # Gate weights are softmax probabilities of the chosen experts (OLMoE does not renormalise the top-k).
    assert np.all(trace.weights.sum(axis=2) <= 1.0 + 1e-3)
    assert np.all(np.diff(trace.weights, axis=2) <= 1e-6), "experts must be in descending gate-weight order"


def test_card_matches_trace(trace: Trace) -> None:
    card = _card(trace)
    path = Path(trace.path)
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["tokens"] == trace.num_tokens
    assert card["sequences"] == len(trace.sequence_bounds())
    assert card["geometry"]["expert_bytes"] == trace.expert_bytes
    # bf16 gate+up+down projections of one expert: 3 * hidden * expert_hidden * 2 bytes.
    config = card["training"]["model_config"]
    assert trace.expert_bytes == 3 * config["hidden_size"] * config["intermediate_size"] * 2
    for key in ("seed", "steps", "final_train_loss_nats_per_byte", "final_heldout_loss_nats_per_byte"):
        assert key in card["training"], key
    assert card["hardware"]["device"].startswith("cuda")
    assert card["training"]["stopped_early_by_time_limit"] is False


def test_bundle_size_under_30_mb() -> None:
    total = sum(p.stat().st_size for p in BUNDLED_DIR.glob("*.npz"))
    assert 0 < total < 30e6, f"bundled learned traces take {total / 1e6:.1f} MB; the budget is 30 MB"


def _membership(ids: np.ndarray, num_experts: int) -> np.ndarray:
    member = np.zeros((ids.shape[0], num_experts), dtype=bool)
    np.put_along_axis(member, ids.astype(np.int64), True, axis=1)
    return member


def layer_skews(trace: Trace, tokens: np.ndarray | None = None) -> np.ndarray:
    """Per layer: busiest expert's share of the top-k assignments over the uniform share 1/E (of the given
    tokens, by default all)."""
    E = trace.num_experts
    experts = trace.experts if tokens is None else trace.experts[tokens]
    counts = np.stack([np.bincount(experts[:, l].ravel(), minlength=E) for l in range(trace.num_layers)])
    return counts.max(axis=1) / (counts.sum(axis=1) / E)


def uniform_noise_skew(num_tokens: int, top_k: int, num_experts: int, rng: np.random.Generator) -> float:
    """95th percentile of the skew that perfectly uniform routing shows by chance on ``num_tokens`` tokens
    (each token picks k distinct experts uniformly)."""
    draws = []
    for _ in range(100):
        picks = np.argpartition(rng.random((num_tokens, num_experts)), top_k, axis=1)[:, :top_k]
        counts = np.bincount(picks.ravel(), minlength=num_experts)
        draws.append(counts.max() / (counts.sum() / num_experts))
    return float(np.quantile(draws, 0.95))


def domain_token_masks(trace: Trace) -> dict[str, np.ndarray]:
    bounds = trace.sequence_bounds()
    per_token = np.repeat(np.array(trace.domains()), bounds[:, 1] - bounds[:, 0])
    return {d: per_token == d for d in sorted(set(trace.domains()))}


def consecutive_overlap(trace: Trace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: mean fraction of a token's top-k shared with the previous token of its sequence, and the
    same for random pairs of tokens of the trace (what popularity alone gives)."""
    same = trace.sequence[1:] == trace.sequence[:-1]
    partner = rng.permutation(trace.num_tokens)
    observed, shuffled = [], []
    for l in range(trace.num_layers):
        ids = trace.experts[:, l].astype(np.int64)
        member = _membership(ids, trace.num_experts)
        observed.append(np.take_along_axis(member[:-1][same], ids[1:][same], axis=1).mean())
        shuffled.append(np.take_along_axis(member[partner], ids, axis=1).mean())
    return np.array(observed), np.array(shuffled)


def cooccurrence_precisions(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per layer pair (l, l+1): precision of the co-occurrence predictor and of popularity alone, fitted on the
    first half of the sequences and scored on the second half."""
    E, K = trace.num_experts, trace.top_k
    bounds = trace.sequence_bounds()
    split = int(bounds[len(bounds) // 2, 0])
    table_p, popular_p = [], []
    for l in range(trace.num_layers - 1):
        src = trace.experts[:, l].astype(np.int64)
        dst = trace.experts[:, l + 1].astype(np.int64)
        pairs = src[:split, :, None] * E + dst[:split, None, :]
        table = np.bincount(pairs.ravel(), minlength=E * E).reshape(E, E).astype(np.float64)
        popularity = np.bincount(dst[:split].ravel(), minlength=E).astype(np.float64)
        scores = table[src[split:]].sum(axis=1) + 1e-6 * popularity
        predicted = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        member = _membership(dst[split:], E)
        table_p.append(np.take_along_axis(member, predicted, axis=1).mean())
        popular_p.append(member[:, np.argsort(-popularity, kind="stable")[:K]].mean())
    return np.array(table_p), np.array(popular_p)


def test_popularity_skew_above_bar_in_most_layers(trace: Trace) -> None:
    rng = np.random.default_rng(0)
    for domain, mask in domain_token_masks(trace).items():
        skews = layer_skews(trace, mask)
        noise = uniform_noise_skew(int(mask.sum()), trace.top_k, trace.num_experts, rng)
        above = (skews > SKEW_BAR) & (skews > noise)
        assert above.sum() > trace.num_layers / 2, (domain, np.round(skews, 2), round(noise, 3))


def test_temporal_locality_above_chance_in_middle_layers(trace: Trace) -> None:
    observed, shuffled = consecutive_overlap(trace, np.random.default_rng(0))
    chance = trace.top_k / trace.num_experts
    L = trace.num_layers
    middle = slice(L // 4, L - L // 4)
    assert np.all(observed[middle] > chance), (np.round(observed, 3), chance)
    assert np.all(observed[middle] > shuffled[middle]), (np.round(observed, 3), np.round(shuffled, 3))


def test_cross_layer_cooccurrence_well_above_popularity(trace: Trace) -> None:
    table_p, popular_p = cooccurrence_precisions(trace)
    assert table_p.mean() >= COOCCURRENCE_OVER_POPULARITY * popular_p.mean(), (
        np.round(table_p, 3),
        np.round(popular_p, 3),
    )
    assert np.all(table_p > popular_p)


def test_statistics_functions_on_a_hand_made_trace() -> None:
    """The helpers above on a 2-layer, 4-expert, top-1 trace whose numbers are known by hand."""
    from moe_cache_env.traces.format import make_meta

    experts = np.array([[[0], [1]], [[0], [1]], [[2], [3]], [[0], [1]]], dtype=np.int16)
    meta = make_meta(model="hand", num_experts=4, top_k=1, num_layers=2, expert_bytes=1, phase="prefill", source="t")
    t = Trace(experts=experts, sequence=np.array([0, 0, 1, 1], dtype=np.int32), meta=meta)
    # Layer 0 counts (3, 0, 1, 0): skew 3 / (4 / 4) = 3; sequence 1 alone: counts (1, 0, 1, 0), skew 2.
    assert layer_skews(t).tolist() == [3.0, 3.0]
    assert layer_skews(t, np.array([False, False, True, True])).tolist() == [2.0, 2.0]
    # Consecutive pairs within sequences: (0,0) same, (2,0) different -> 0.5 at both layers.
    observed, _ = consecutive_overlap(t, np.random.default_rng(0))
    assert observed.tolist() == [0.5, 0.5]
    # Fitted on sequence 0 (0 -> 1 twice); test tokens use 2 -> 3 and 0 -> 1: the table predicts expert 1
    # for both (expert 2 has no row, popularity breaks the tie), so precision 0.5, equal to popularity's.
    table_p, popular_p = cooccurrence_precisions(t)
    assert table_p.tolist() == [0.5] and popular_p.tolist() == [0.5]


def _load_script(name: str):
    import importlib.util
    import sys

    sys.path.insert(0, str(LEARNED_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"learned_{name}", LEARNED_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(LEARNED_DIR))
    return module


def test_corpus_split_depends_on_names_only() -> None:
    corpus = _load_script("prepare_corpus")
    docs = [corpus.Document("prose", f"doc{i}.txt", bytes([97 + i % 26]) * (600 + i)) for i in range(300)]
    settings = dict(budget_bytes=10**7, heldout_fraction=0.1, max_doc_bytes=10**6, min_doc_bytes=512)
    streams, manifest = corpus.build_domain(iter(docs), **settings)
    streams_reversed, manifest_reversed = corpus.build_domain(iter(docs[::-1]), **settings)
    assert manifest == manifest_reversed
    assert all(np.array_equal(streams[s], streams_reversed[s]) for s in streams)
    train_names = {d["name"] for d in manifest["train"]}
    heldout_names = {d["name"] for d in manifest["heldout"]}
    assert not train_names & heldout_names
    assert len(train_names) + len(heldout_names) == 300
    assert 10 <= len(heldout_names) <= 60  # about 10% of 300
    # Documents are separated by EOS and hold only bytes otherwise.
    assert (streams["train"] == corpus.EOS_ID).sum() == len(train_names)
    assert streams["train"][streams["train"] != corpus.EOS_ID].max() < 256


@pytest.mark.slow
def test_train_and_record_scripts_run_end_to_end(tmp_path: Path) -> None:
    """The real scripts, tiny preset, a few steps on CPU: training writes its record, recording writes two
    valid traces and cards that agree with them."""
    pytest.importorskip("transformers")
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    arrays = {}
    for domain, alphabet in (("code", b"def x():\n    return 1\n"), ("prose", b"the cat sat. "), ("structured", b'{"a": 1},\n')):
        for split, size in (("train", 4000), ("heldout", 2000)):
            arrays[f"{domain}/{split}"] = np.frombuffer(alphabet, dtype=np.uint8)[
                rng.integers(0, len(alphabet), size)
            ].astype(np.uint16)
    arrays["manifest"] = np.array(json.dumps({"settings": {}, "domains": {d: {"train": {}, "heldout": {}} for d in DOMAINS}}))
    corpus_path = tmp_path / "corpus.npz"
    np.savez_compressed(corpus_path, **arrays)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run_dir, out_dir = tmp_path / "run", tmp_path / "traces"
    common = [sys.executable]
    subprocess.run(
        common + [str(LEARNED_DIR / "train_moe.py"), "--corpus", str(corpus_path), "--out-dir", str(run_dir),
                  "--preset", "tiny", "--steps", "3", "--batch-size", "3", "--seq-len", "32", "--log-every", "1",
                  "--eval-every", "3", "--eval-windows", "1", "--device", "cpu"],
        check=True, env=env, capture_output=True,
    )
    record = json.loads((run_dir / "train_run.json").read_text())
    assert record["steps_done"] == 3 and record["model_shape"]["num_experts"] == 8
    subprocess.run(
        common + [str(LEARNED_DIR / "record_traces.py"), "--run-dir", str(run_dir), "--corpus", str(corpus_path),
                  "--out-dir", str(out_dir), "--prefill-per-domain", "2", "--decode-per-domain", "1",
                  "--prompt-len", "16", "--max-new-tokens", "4", "--device", "cpu"],
        check=True, env=env, capture_output=True,
    )
    prefill = load_trace(out_dir / "tiny-olmoe-2L-8E-prefill.npz")
    decode = load_trace(out_dir / "tiny-olmoe-2L-8E-decode.npz")
    assert prefill.experts.shape == (6 * 16, 2, 2)
    assert prefill.domains() == ["code", "prose", "structured"] * 2
    assert decode.num_tokens <= 3 * 4
    card = json.loads((out_dir / "tiny-olmoe-2L-8E-prefill.card.json").read_text())
    assert card["sha256"] == hashlib.sha256((out_dir / "tiny-olmoe-2L-8E-prefill.npz").read_bytes()).hexdigest()
    assert card["training"]["steps"] == 3
