"""Damaged, huge-declared and odd trace files end in one line and exit status 2: no traceback, hang or allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from moe_cache_env.traces import Trace, TraceFormatError, load_trace, make_meta, save_trace
from tests.helpers import one_line_error

REPO = Path(__file__).resolve().parents[2]


def small_trace(num_experts: int = 6) -> Trace:
    experts = np.array([[[0, 1], [2, 3]], [[1, 2], [3, 4]], [[2, 5], [4, 0]], [[5, 3], [1, 2]]], dtype=np.int16)
    meta = make_meta(model="tiny", num_experts=num_experts, top_k=2, num_layers=2, expert_bytes=64,
                     phase="decode", source="test")
    return Trace(experts=experts, sequence=np.array([0, 0, 1, 1], dtype=np.int32), meta=meta)


def test_zip_member_with_a_bad_crc(tmp_path, capsys):
    path = tmp_path / "t.npz"
    save_trace(small_trace(), path, compress=False)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("experts.npy")
    # flip one byte of the stored (uncompressed) array data: the CRC no longer matches
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128 + 3
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TraceFormatError, match=r"t.npz: array 'experts': damaged data \(Bad CRC-32"):
        load_trace(path)
    assert "Bad CRC-32" in one_line_error(["trace-stats", str(path)], capsys)


def _write_huge_header_trace(path: Path, tokens: int) -> None:
    """A zip whose experts.npy declares (tokens, 2, 2) int16 but stores 8 bytes."""
    meta = json.dumps(dict(small_trace().meta))
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in (("meta", np.array(meta)), ("sequence", np.zeros(4, dtype=np.int32))):
            with archive.open(f"{name}.npy", "w") as handle:
                np.lib.format.write_array(handle, array)
        with archive.open("experts.npy", "w") as handle:
            np.lib.format.write_array_header_1_0(
                handle, {"descr": "<i2", "fortran_order": False, "shape": (tokens, 2, 2)})
            handle.write(b"\0" * 8)


def test_header_declaring_a_trillion_tokens_is_refused_before_allocating(tmp_path, capsys):
    path = tmp_path / "huge.npz"
    _write_huge_header_trace(path, 10**12)
    with pytest.raises(TraceFormatError, match=r"huge.npz: array 'experts': the header declares shape "
                                               r"\(1000000000000, 2, 2\) of int16 \(8,000,000,000,000 bytes\)"):
        load_trace(path)
    assert "declares shape (1000000000000, 2, 2)" in one_line_error(["evaluate", "--trace", str(path)], capsys)


def test_a_trace_past_the_cell_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    save_trace(small_trace(), path)
    monkeypatch.setenv("MOE_CACHE_ENV_MAX_TRACE_CELLS", "15")  # the trace holds 4 x 2 x 2 = 16
    with pytest.raises(TraceFormatError, match=r"4 tokens x 2 layers x top-2 = 16 cells, past the limit of 15"):
        load_trace(path)


def test_a_directory_is_refused(tmp_path, capsys):
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    with pytest.raises(TraceFormatError, match="dir.npz: is a directory"):
        load_trace(folder)
    # the command line resolves names through the trace catalog, which says what to do with a folder
    assert "is a folder" in one_line_error(["predictors", "--trace", str(folder)], capsys)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for argv in (["evaluate", "--trace", str(fifo)], ["import", str(fifo), "--format", "vllm", "-o",
                 str(tmp_path / "o.npz"), "--num-experts", "4", "--expert-bytes", "1"]):
        # opening a FIFO for reading blocks until a writer comes: the timeout turns a hang into a failure
        done = subprocess.run([sys.executable, "-m", "moe_cache_env", *argv], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "pipe.npz: is a FIFO" in lines[0]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused(tmp_path, capsys):
    path = tmp_path / "t.npz"
    save_trace(small_trace(), path)
    path.chmod(0)
    try:
        assert "cannot read it (Permission denied)" in one_line_error(["trace-stats", str(path)], capsys)
    finally:
        path.chmod(0o644)


def test_an_unreadable_file_is_refused_even_for_root(tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    save_trace(small_trace(), path)
    real_open = open

    def denied(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(TraceFormatError, match=r"t.npz: cannot read it \(Permission denied\)"):
        load_trace(path)


def test_a_valid_trace_of_a_billion_experts_is_refused_by_stats_and_predictors(tmp_path, capsys):
    path = tmp_path / "wide.npz"
    save_trace(small_trace(num_experts=10**9), path)
    assert load_trace(path).num_experts == 10**9  # valid as a trace
    for argv in (["trace-stats", str(path)], ["predictors", "--trace", str(path)]):
        line = one_line_error(argv, capsys)
        assert "1,000,000,000 experts per layer would need" in line and "at most 4,096 experts" in line


def test_output_onto_the_input_trace_is_refused(tmp_path, capsys):
    path = tmp_path / "t.npz"
    save_trace(small_trace(), path)
    before = path.read_bytes()
    for argv in (["trace-stats", str(path), "--json", str(path)],
                 ["predictors", "--trace", str(path), "--json", str(path)],
                 ["evaluate", "--trace", str(path), "--json", str(path)],
                 ["evaluate", "--trace", "qwen1.5-moe", "--fit-trace", str(path), "--json", str(path)]):
        assert "is the input" in one_line_error(argv, capsys)
        assert path.read_bytes() == before
    link = tmp_path / "link.npz"
    os.link(path, link)  # another name of the same file
    assert "is the input" in one_line_error(["trace-stats", str(path), "--json", str(link)], capsys)
    assert path.read_bytes() == before
