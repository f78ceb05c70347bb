"""Importers of what engines emit (route_trace v1, vLLM captures, transformers dumps, per-token JSONL) and the
limits every importer enforces before allocating. Expected arrays are read off the example files by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_cache_env.cli import main
from moe_cache_env.traces import load_trace
from moe_cache_env.traces.importers import MAX_LINE_CHARS, TraceImportError, import_trace

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the example files --------------------------------------------------------------------------------------------


def test_route_trace_example_decode_rows():
    trace = import_trace(EXAMPLES / "route_trace.csv", phase="decode")
    # steps 2, 3, 4 of turn 0; MoE layers 1 and 2 (layer 0 is dense: expert_bytes=0, no rows)
    assert trace.experts.tolist() == [[[3, 6], [7, 1]], [[6, 3], [2, 4]], [[0, 5], [7, 2]]]
    np.testing.assert_allclose(trace.weights[:, 1, 0], [0.55, 0.8, 0.6], rtol=1e-6)
    assert trace.meta["moe_layer_indices"] == [1, 2] and trace.meta["phase"] == "decode"
    assert trace.num_experts == 8 and trace.expert_bytes == 1048576
    assert trace.meta["expert_bytes_per_layer"] == [1048576, 1048576]
    assert trace.meta["model"] == "tiny-moe-Q4_K_M.gguf"
    provenance = trace.meta["provenance"]
    assert provenance["engine_residency_counts"] == {"0": 3, "1": 9} and provenance["engine_dropped_rows"] == 0
    assert provenance["phases_in_file"] == ["prefill", "decode"]


def test_route_trace_needs_a_phase_when_it_holds_both_and_explains_incomplete_prefill():
    with pytest.raises(TraceImportError, match=r"route_trace.csv:13: the file holds prefill and decode rows"):
        import_trace(EXAMPLES / "route_trace.csv")
    with pytest.raises(TraceImportError, match=r"token 0 has no row for layer\(s\) \[2\].*import --phase decode"):
        import_trace(EXAMPLES / "route_trace.csv", phase="prefill")


ROUTE_HEAD = (
    "# route_trace v1\n# model=m.gguf arch=x n_layer=1 n_expert=4 n_expert_used=2\n"
    "# layer=0 expert_bytes=100 dense_bytes=0\nturn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n"
)


@pytest.mark.parametrize(
    "body, message",
    [
        ("0,1,0,0,0,1,0.5,0,0\n0,1,0,0,0,2,0.5,0,0\n", r"r.csv:6: slot 0 of turn 0, step 0, layer 0 appears twice"),
        ("0,1,0,0,0,4,0.5,0,0\n", r"r.csv:5: expert id 4 is outside \[0, 4\) \(n_expert\)"),
        ("0,1,0,0,2,1,0.5,0,0\n", r"r.csv:5: slot 2 is outside \[0, 2\)"),
        ("0,2,0,0,0,1,0.5,0,0\n", r"r.csv:5: phase must be 0 \(prefill\) or 1 \(decode\)"),
        ("0,1,0,0,0,1,0.5,0\n", r"r.csv:5: 8 fields, but the header has 9"),
        ("0,1,0,0,0,1,0.5,0,0\n", r"r.csv:5: turn 0, step 0, layer 0 has slots \[0\]; expected 0..1"),
        ("0,1,0,0,0,1,0.5,0,0\n0,1,0,0,1,1,0.5,0,0\n", r"r.csv:5: expert ids repeat"),
        ("0,1,3000000000,0,0,1,0.5,0,0\n", r"r.csv:5: step 3000000000 is past the int32 range"),
    ],
)
def test_route_trace_errors_name_the_line(tmp_path, body, message):
    path = write(tmp_path / "r.csv", ROUTE_HEAD + body)
    with pytest.raises(TraceImportError, match=message):
        import_trace(path, fmt="route-trace")


def test_route_trace_without_its_magic_line_is_refused(tmp_path):
    path = write(tmp_path / "r.csv", ROUTE_HEAD.replace("v1", "v9"))
    with pytest.raises(TraceImportError, match=r"r.csv:1: not a route_trace v1 file"):
        import_trace(path, fmt="route-trace")


def test_route_trace_nan_weights_give_a_trace_without_weights(tmp_path):
    path = write(tmp_path / "r.csv", ROUTE_HEAD + "0,1,5,0,0,1,nan,0,0\n0,1,5,0,1,3,nan,1,0\n")
    trace = import_trace(path)  # .csv starting with the magic line: route-trace; one phase: no --phase needed
    assert trace.weights is None and trace.experts.tolist() == [[[1, 3]]] and trace.expert_bytes == 100


def test_per_token_jsonl_without_sequence_is_one_sequence():
    trace = import_trace(EXAMPLES / "per_token.jsonl", num_experts=8, expert_bytes=64)
    assert trace.experts.tolist() == [[[4, 1], [2, 6]], [[4, 0], [6, 3]], [[1, 7], [5, 2]]]
    assert trace.sequence.tolist() == [0, 0, 0]
    np.testing.assert_allclose(trace.weights[2], [[0.65, 0.35], [0.8, 0.2]], rtol=1e-6)


def test_per_token_csv_example():
    trace = import_trace(EXAMPLES / "per_token.csv", num_experts=8, expert_bytes=64)
    assert trace.experts.tolist() == [[[4, 1], [2, 6]], [[4, 0], [6, 3]], [[5, 2], [1, 7]]]
    assert trace.domains() == ["chat", "code"] and trace.meta["sequence_labels"] == ["chat-1", "code-7"]


def test_vllm_one_array_per_request_and_one_array_with_lengths_agree():
    per_request = import_trace(EXAMPLES / "vllm_routed_experts.npz", num_experts=8, expert_bytes=64)
    concat = import_trace(EXAMPLES / "vllm_routed_experts_concat.npz", num_experts=8, expert_bytes=64)
    assert per_request.experts.tolist() == concat.experts.tolist() == [
        [[3, 1], [0, 6]], [[3, 5], [6, 2]], [[1, 3], [6, 0]], [[7, 2], [4, 5]], [[2, 7], [4, 1]]]
    assert per_request.sequence.tolist() == concat.sequence.tolist() == [0, 0, 0, 1, 1]
    assert per_request.meta["sequence_labels"] == ["req0", "req1"]
    assert per_request.weights is None and per_request.meta["provenance"]["format"] == "vllm"


def test_vllm_npy_with_sequence_lengths(tmp_path):
    ids = np.array([[[0, 1]], [[1, 2]], [[2, 3]]], dtype=np.int16)
    np.save(tmp_path / "cap.npy", ids)
    trace = import_trace(tmp_path / "cap.npy", num_experts=4, expert_bytes=8, sequence_lengths=[1, 2])
    assert trace.sequence.tolist() == [0, 1, 1] and trace.experts.tolist() == ids.tolist()
    with pytest.raises(TraceImportError, match="sequence lengths sum to 4 but the capture holds 3 tokens"):
        import_trace(tmp_path / "cap.npy", num_experts=4, expert_bytes=8, sequence_lengths=[2, 2])


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([[[0, 1]], [[1, 9]]], dtype=np.int16), r"cap.npy\[token 1, layer 0, rank 1\]: expert id 9"),
        (np.array([[[0, -1]]], dtype=np.int16), r"cap.npy\[token 0, layer 0, rank 1\]: expert id -1"),
        (np.array([[[2, 2]]], dtype=np.int16), r"cap.npy\[token 0, layer 0\]: expert ids repeat"),
        (np.zeros((3, 2), dtype=np.int16), r"the array has shape \(3, 2\); a vLLM capture is"),
        (np.zeros((1, 1, 2), dtype=np.float32), r"integer dtype"),
    ],
)
def test_vllm_errors_name_the_index(tmp_path, array, message):
    np.save(tmp_path / "cap.npy", array)
    with pytest.raises(TraceImportError, match=message):
        import_trace(tmp_path / "cap.npy", num_experts=4, expert_bytes=8)


def test_hf_router_logits_top_k_with_padding_and_ties():
    trace = import_trace(EXAMPLES / "hf_router_logits.npz", top_k=2, expert_bytes=64)
    assert trace.meta["provenance"]["format"] == "hf" and trace.num_experts == 4
    # sequence 0 is left-padded: its positions 1 and 2; then sequence 1's three positions
    assert trace.experts.tolist() == [
        [[0, 2], [2, 3]],
        [[1, 3], [0, 1]],  # layer 1: logits 1, 1, 0, 0 -> the tie goes to the lower ids
        [[2, 0], [3, 2]],
        [[3, 1], [0, 2]],
        [[0, 1], [1, 3]],
    ]
    assert trace.sequence.tolist() == [0, 0, 1, 1, 1]
    # softmax over all four logits (1, 1, 0, 0): e / (2e + 2) for each of the two chosen
    tie = math.e / (2 * math.e + 2)
    np.testing.assert_allclose(trace.weights[1, 1], [tie, tie], rtol=1e-6)


def test_hf_selected_experts_with_weights():
    trace = import_trace(EXAMPLES / "hf_selected_experts.npz", num_experts=4, expert_bytes=64)
    assert trace.experts.tolist() == [[[1, 0], [2, 3]], [[3, 1], [2, 0]], [[0, 2], [3, 1]]]
    np.testing.assert_allclose(trace.weights[:, 1, 0], [0.9, 0.55, 0.8], rtol=1e-6)


def test_hf_errors(tmp_path):
    with pytest.raises(TraceImportError, match="give --top-k"):
        import_trace(EXAMPLES / "hf_router_logits.npz", expert_bytes=64)
    with pytest.raises(TraceImportError, match="give --num-experts"):
        import_trace(EXAMPLES / "hf_selected_experts.npz", expert_bytes=64)
    np.savez(tmp_path / "x.npz", router_logits=np.full((1, 2, 3), np.nan, dtype=np.float32))
    with pytest.raises(TraceImportError, match=r"x.npz: array 'router_logits'\[0, 0, 0, 0\] is not finite"):
        import_trace(tmp_path / "x.npz", top_k=1, expert_bytes=1)


def test_import_command_examples(tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert main(["import", str(EXAMPLES / "route_trace.csv"), "--phase", "decode", "-o", str(out)]) == 0
    assert load_trace(out).num_tokens == 3
    assert main(["import", str(EXAMPLES / "hf_router_logits.npz"), "--top-k", "2", "--expert-bytes", "64",
                 "-o", str(out)]) == 0
    assert main(["import", str(EXAMPLES / "vllm_routed_experts_concat.npz"), "--num-experts", "8",
                 "--expert-bytes", "64", "-o", str(out)]) == 0
    assert "5 tokens in 2 sequences" in capsys.readouterr().out


# --- limits, checked before allocating ----------------------------------------------------------------------------


def _one_line_error(argv: list[str], capsys: Any) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_field_over_128_kib_is_refused_naming_the_line(tmp_path, capsys):
    big = "1 " * (MAX_LINE_CHARS // 2 + 10)
    path = write(tmp_path / "d.csv", f"sequence,token,layer,experts\na,0,0,1 2\na,1,0,{big}\n")
    line = _one_line_error(["import", str(path), "-o", str(tmp_path / "o.npz"), "--num-experts", "8",
                            "--expert-bytes", "1"], capsys)
    assert "d.csv:3: line longer than 131,072 characters (a field over 128 KiB)" in line
    jsonl = write(tmp_path / "d.jsonl", '{"token": 0, "layer": 0, "experts": [1], "pad": "' + "x" * MAX_LINE_CHARS + '"}\n')
    with pytest.raises(TraceImportError, match=r"d.jsonl:1: line longer than"):
        import_trace(jsonl, num_experts=8, expert_bytes=1)


def test_deeply_nested_json_is_refused(tmp_path):
    deep = "[" * 30_000 + "]" * 30_000
    path = write(tmp_path / "d.jsonl", '{"token": 0, "layer": 0, "experts": [1]}\n{"token": 1, "layer": 0, '
                                       f'"experts": {deep}}}\n')
    with pytest.raises(TraceImportError, match=r"d.jsonl:2: JSON nested deeper than 16 levels"):
        import_trace(path, num_experts=8, expert_bytes=1)
    within = write(tmp_path / "e.jsonl", '{"token": 0, "layer": 0, "experts": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}\n')
    with pytest.raises(TraceImportError, match=r"e.jsonl:1: JSON nested deeper"):
        import_trace(within, num_experts=8, expert_bytes=1)


@pytest.mark.parametrize(
    "row, what",
    [
        ('{"token": 3000000000, "layer": 0, "experts": [1]}', "token 3000000000"),
        ('{"token": 0, "layer": 2147483648, "experts": [1]}', "layer 2147483648"),
        ('{"token": 0, "layer": 0, "experts": [1, 4294967297]}', "expert id 4294967297"),
        ('{"token": "3000000000", "layer": 0, "experts": [1]}', "token 3000000000"),
    ],
)
def test_ids_past_int32_are_refused(tmp_path, row, what):
    path = write(tmp_path / "d.jsonl", row + "\n")
    with pytest.raises(TraceImportError, match=rf"d.jsonl:1: {what} is past the int32 range"):
        import_trace(path, num_experts=8, expert_bytes=1)


def test_far_apart_positions_are_reported_without_building_the_range(tmp_path):
    path = write(tmp_path / "d.csv", "sequence,token,layer,experts\na,0,0,1\na,2147483646,0,2\n")
    with pytest.raises(TraceImportError, match=r"tokens 0..2147483646 but none for token\(s\) \[1, 2, .*, 10\] \.\.\."):
        import_trace(path, num_experts=8, expert_bytes=1)


def test_import_past_the_cell_limit_is_refused_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_ENV_MAX_TRACE_CELLS", "4")
    path = write(tmp_path / "d.csv", "sequence,token,layer,experts\n" + "".join(f"a,{t},0,1 2\n" for t in range(3)))
    with pytest.raises(TraceImportError, match=r"d.csv:4: the dump holds more than 4 cells"):
        import_trace(path, num_experts=8, expert_bytes=1)


def test_vllm_header_declaring_a_huge_array_is_refused(tmp_path):
    path = tmp_path / "cap.npy"
    with open(path, "wb") as handle:  # a header declaring 10**12 tokens, then 4 bytes of data
        np.lib.format.write_array_header_1_0(handle, {"descr": "<i2", "fortran_order": False, "shape": (10**12, 1, 1)})
        handle.write(b"\0" * 4)
    with pytest.raises(TraceImportError, match=r"cap.npy: the header declares shape \(1000000000000, 1, 1\)"):
        import_trace(path, num_experts=4, expert_bytes=1)


def test_non_utf8_dump_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"sequence,token,layer,experts\na,0,0,1\n\xff\xfe,1,0,2\n")
    with pytest.raises(TraceImportError, match=r"d.csv:3: not UTF-8 text"):
        import_trace(path, num_experts=8, expert_bytes=1)


def test_import_refuses_to_overwrite_its_input(tmp_path, capsys):
    path = write(tmp_path / "f.csv", "sequence,token,layer,experts\na,0,0,1\n")
    before = path.read_bytes()
    line = _one_line_error(["import", str(path), "-o", str(path), "--num-experts", "8", "--expert-bytes", "1"], capsys)
    assert "is the input" in line and path.read_bytes() == before
    alias = tmp_path / "sub" / ".." / "f.csv"
    (tmp_path / "sub").mkdir()
    assert main(["import", str(path), "-o", str(alias), "--num-experts", "8", "--expert-bytes", "1"]) == 2
    assert path.read_bytes() == before
