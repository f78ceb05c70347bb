"""Importing CSV and JSONL routing dumps: layouts, ordering, and one test per validation error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_cache_env.cli import CommandError
from moe_cache_env.cli import import_trace as import_cli
from moe_cache_env.traces import load_trace
from moe_cache_env.traces.importers import TraceImportError, import_trace

HEADER = "sequence,token,layer,experts,weights\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def small_csv(tmp_path: Path) -> Path:
    """Two sequences (b first), two MoE layers numbered 1 and 3, rows shuffled."""
    return write(
        tmp_path / "dump.csv",
        HEADER
        + "b,0,3,2 0,0.6 0.4\n"
        + "b,0,1,1|3,0.7|0.3\n"
        + "a,1,1,0 1,0.5 0.5\n"
        + "b,1,1,3 2,0.9 0.1\n"
        + "a,0,3,\"[4, 5]\",\"[0.8, 0.2]\"\n"
        + "a,0,1,5 6,0.55 0.45\n"
        + "b,1,3,7 1,0.6 0.4\n"
        + "a,1,3,3 2,0.5 0.5\n",
    )


def test_csv_rows_become_a_trace_in_first_appearance_order(tmp_path: Path) -> None:
    trace = import_trace(small_csv(tmp_path), num_experts=8, expert_bytes=1024, model="tiny")
    # b appears first, so it is sequence 0; tokens in position order; layers 1 then 3.
    expected = np.array(
        [
            [[1, 3], [2, 0]],  # b, token 0
            [[3, 2], [7, 1]],  # b, token 1
            [[5, 6], [4, 5]],  # a, token 0
            [[0, 1], [3, 2]],  # a, token 1
        ]
    )
    np.testing.assert_array_equal(trace.experts, expected)
    np.testing.assert_array_equal(trace.sequence, [0, 0, 1, 1])
    np.testing.assert_allclose(trace.weights[0], [[0.7, 0.3], [0.6, 0.4]])
    assert trace.meta["moe_layer_indices"] == [1, 3]
    assert trace.meta["sequence_labels"] == ["b", "a"]
    assert trace.meta["model"] == "tiny" and trace.meta["phase"] == "prefill" and trace.expert_bytes == 1024
    assert trace.weights.dtype == np.float32


def test_per_rank_columns_and_jsonl_give_the_same_trace(tmp_path: Path) -> None:
    reference = import_trace(small_csv(tmp_path), num_experts=8, expert_bytes=1024)
    rows = []
    for line in (tmp_path / "dump.csv").read_text().splitlines()[1:]:
        import csv

        seq, token, layer, experts, weights = next(csv.reader([line]))
        ids = [int(x) for x in experts.strip("[]").replace(",", " ").replace("|", " ").split()]
        ws = [float(x) for x in weights.strip("[]").replace(",", " ").replace("|", " ").split()]
        rows.append((seq, int(token), int(layer), ids, ws))
    ranked = tmp_path / "ranked.csv"
    ranked.write_text(
        "seq_id,position,layer_idx,expert_0,expert_1,weight_0,weight_1\n"
        + "".join(f"{s},{t},{layer},{e[0]},{e[1]},{w[0]},{w[1]}\n" for s, t, layer, e, w in rows)
    )
    jsonl = tmp_path / "dump.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"sequence": s, "token": t, "layer": layer, "experts": e, "weights": w}) + "\n"
                for s, t, layer, e, w in rows)
    )
    for other in (import_trace(ranked, num_experts=8, expert_bytes=1024),
                  import_trace(jsonl, num_experts=8, expert_bytes=1024)):
        np.testing.assert_array_equal(other.experts, reference.experts)
        np.testing.assert_array_equal(other.sequence, reference.sequence)
        np.testing.assert_allclose(other.weights, reference.weights)


def test_domains_and_no_weights(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"seq": 7, "token": 0, "layer": 0, "experts": [1], "domain": "code"}\n'
        '\n'
        '{"seq": 7, "token": 1, "layer": 0, "experts": [2], "domain": "code"}\n'
        '{"seq": 2, "token": 5, "layer": 0, "experts": [0], "domain": "prose"}\n',
    )
    trace = import_trace(path, num_experts=4, expert_bytes=10, phase="decode")
    assert trace.weights is None and trace.domains() == ["code", "prose"] and trace.meta["phase"] == "decode"
    np.testing.assert_array_equal(trace.experts[:, 0, 0], [1, 2, 0])


@pytest.mark.parametrize(
    "rows, message",
    [
        # a token missing a layer
        ("a,0,0,1 2\na,0,1,1 2\na,1,0,2 3\n",
         r"dump.csv:4: misaligned layers: sequence 'a', token 1 has no row for layer\(s\) \[1\]"),
        # a missing token (row) inside a sequence
        ("a,0,0,1 2\na,2,0,2 3\n", r"missing rows: sequence 'a' has tokens 0..2 but none for token\(s\) \[1\]"),
        ("a,0,0,1 2\na,0,0,2 3\n", r"dump.csv:3: duplicate row for sequence 'a', token 0, layer 0 \(first on line 2\)"),
        ("a,0,0,1 9\n", r"dump.csv:2: expert id 9 is outside \[0, 8\)"),
        ("a,0,0,1 -2\n", r"dump.csv:2: expert id must be non-negative"),
        ("a,0,0,1 x\n", r"dump.csv:2: expert id must be an integer, got 'x'"),
        ("a,0,0,1 2\na,1,0,1 2 3\n", r"dump.csv:3: 3 experts, but line 2 has 2; .*ragged"),
        ("a,0,0,1 1\n", r"dump.csv:2: expert ids repeat within the row"),
        ("a,zero,0,1 2\n", r"dump.csv:2: token must be an integer, got 'zero'"),
        ("a,0,0,\n", r"dump.csv:2: the row lists no expert"),
        (",0,0,1 2\n", r"dump.csv:2: the sequence is empty"),
        ("a,0,0,1,2\n", r"dump.csv:2: more fields than the header has; quote lists"),
        ("", r"no data rows"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, rows: str, message: str) -> None:
    path = write(tmp_path / "dump.csv", "sequence,token,layer,experts\n" + rows)
    with pytest.raises(TraceImportError, match=message):
        import_trace(path, num_experts=8, expert_bytes=1)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"sequence": "a", "token": 0, "layer": 0, "experts": [1], "weights": [0.5, 0.5]}'],
         r"d.jsonl:1: 2 weights for 1 experts"),
        (['{"sequence": "a", "token": 0, "layer": 0, "experts": [1], "weights": [-1]}'],
         r"d.jsonl:1: weight must be a finite, non-negative number"),
        (['{"sequence": "a", "token": 0, "layer": 0, "experts": [1], "weights": [1]}',
          '{"sequence": "a", "token": 1, "layer": 0, "experts": [2]}'],
         r"d.jsonl:2: no weights, but line 1 has some"),
        (['{"sequence": "a", "token": 0, "layer": 0, "experts": [1], "domain": "x"}',
          '{"sequence": "a", "token": 1, "layer": 0, "experts": [2], "domain": "y"}'],
         r"d.jsonl:2: sequence 'a' has domain 'y' here but 'x' on line 1"),
        (['{"sequence": "a", "token": 0, "layer": 0, "experts": [1], "domain": "x"}',
          '{"sequence": "b", "token": 0, "layer": 0, "experts": [2]}'],
         r"d.jsonl:2: this sequence has no domain but others do"),
        (['{"sequence": "a", "token": 0.5, "layer": 0, "experts": [1]}'], r"d.jsonl:1: token must be an integer"),
        (['{"sequence": "a", "token": 0, "experts": [1]}'], r"d.jsonl:1: missing column\(s\) \['layer'\]"),
        (['{"sequence": "a", "seq": "b", "token": 0, "layer": 0, "experts": [1]}'],
         r"columns \['sequence', 'seq'\] all name the 'sequence' field"),
        (['{"sequence": "a", "token": 0, "layer": 0, "expert_0": 1, "expert_2": 2}'], r"numbered 0..k-1"),
        (['not json'], r"d.jsonl:1: not a JSON object"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(TraceImportError, match=message):
        import_trace(path, num_experts=8, expert_bytes=1)


def test_argument_errors(tmp_path: Path) -> None:
    path = small_csv(tmp_path)
    with pytest.raises(TraceImportError, match="cannot tell the format"):
        import_trace(write(tmp_path / "dump.txt", "x"), num_experts=8, expert_bytes=1)
    with pytest.raises(TraceImportError, match="expert_bytes must be a positive integer"):
        import_trace(path, num_experts=8, expert_bytes=0)
    with pytest.raises(TraceImportError, match="phase must be one of"):
        import_trace(path, num_experts=8, expert_bytes=1, phase="train")
    with pytest.raises(FileNotFoundError):
        import_trace(tmp_path / "absent.csv", num_experts=8, expert_bytes=1)


def run_import(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="import")
    import_cli.add_arguments(parser)
    return import_cli.run(parser.parse_args(argv))


def test_import_command_writes_a_loadable_trace(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out" / "t.npz"
    assert run_import([str(small_csv(tmp_path)), "--format", "csv", "-o", str(out), "--num-experts", "8",
                       "--expert-bytes", "4096", "--model", "tiny", "--phase", "decode"]) == 0
    trace = load_trace(out)
    assert trace.num_tokens == 4 and trace.meta["phase"] == "decode" and trace.expert_bytes == 4096
    assert "4 tokens in 2 sequences, 2 MoE layers (indices 1..3)" in capsys.readouterr().out


def test_import_command_expert_bytes_from_a_preset_or_an_error(tmp_path: Path) -> None:
    shapes = pytest.importorskip("moe_cache_env.profiles.shapes")
    preset, shape = next(iter(shapes.MODEL_EXPERT_SHAPES.items()))
    out = tmp_path / "t.npz"
    assert run_import([str(small_csv(tmp_path)), "-o", str(out), "--num-experts", "8", "--model", preset]) == 0
    assert load_trace(out).expert_bytes == 3 * shape.hidden * shape.intermediate * 2  # bf16 SwiGLU expert
    with pytest.raises(CommandError, match="give --expert-bytes"):
        run_import([str(small_csv(tmp_path)), "-o", str(out), "--num-experts", "8"])


def test_unusual_numbers_get_precise_messages(tmp_path: Path) -> None:
    """The fast parsing path must not let through what the careful one refuses."""
    cases = [
        ('{"sequence": "a", "token": 0, "layer": 0, "experts": [1, true]}', "expert id must be an integer, got True"),
        ('{"sequence": "a", "token": 0, "layer": 0, "experts": [1], "weights": [true]}', "weight must be a finite"),
        ('{"sequence": "a", "token": 0, "layer": 0, "experts": ["\\u00b2"]}', "expert id must be an integer"),
        ('{"sequence": "a", "token": 0, "layer": 0, "experts": [1], "weights": ["nan"]}', "weight must be a finite"),
    ]
    for line, message in cases:
        path = write(tmp_path / "d.jsonl", line + "\n")
        with pytest.raises(TraceImportError, match=message):
            import_trace(path, num_experts=8, expert_bytes=1)
    ok = write(tmp_path / "ok.jsonl", '{"sequence": 1, "token": "0", "layer": 0.0, "experts": ["3", 4], '
                                      '"weights": ["0.25", 0.75]}\n')
    trace = import_trace(ok, num_experts=8, expert_bytes=1)
    assert trace.experts.tolist() == [[[3, 4]]] and trace.weights.tolist() == [[[0.25, 0.75]]]


def test_import_through_the_console_entry_point(tmp_path: Path, capsys: Any) -> None:
    from moe_cache_env.cli import main

    out = tmp_path / "t.npz"
    assert main(["import", str(small_csv(tmp_path)), "-o", str(out), "--num-experts", "8", "--expert-bytes", "64"]) == 0
    assert load_trace(out).num_tokens == 4
    bad = write(tmp_path / "bad.csv", "sequence,token,layer,experts\na,0,0,1 2\na,0,0,3 4\n")
    assert main(["import", str(bad), "-o", str(tmp_path / "u.npz"), "--num-experts", "8", "--expert-bytes", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv:3: duplicate row for sequence 'a', token 0, layer 0" in err[0]
    assert not (tmp_path / "u.npz").exists()
