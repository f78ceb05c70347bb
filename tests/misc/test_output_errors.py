"""Outputs that cannot be written end in one line and exit status 2; nothing half-written or replaced survives."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from moe_cache_env import _io
from moe_cache_env._io import OutputError, atomic_write, atomic_write_json, check_output_not_input
from tests.helpers import one_line_error

REPO = Path(__file__).resolve().parents[2]


def stats_to(path: Path) -> list[str]:
    return ["trace-stats", "synthetic/mixtral", "--json", str(path)]


def test_destination_that_is_a_directory(tmp_path, capsys):
    line = one_line_error(stats_to(tmp_path), capsys)
    assert line.endswith(f"cannot write {tmp_path}: it is a directory; give a file name")


def test_destination_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    line = one_line_error(stats_to(tmp_path / "file.txt" / "deeper" / "out.json"), capsys)
    assert "file.txt is a regular file, not a directory" in line
    assert (tmp_path / "file.txt").read_text() == "x"


def test_read_only_destination_is_not_replaced(tmp_path, capsys):
    target = tmp_path / "keep.json"
    target.write_text("precious\n")
    target.chmod(0o444)
    try:
        line = one_line_error(stats_to(target), capsys)
        assert "the existing file is read-only" in line
        assert target.read_text() == "precious\n"
    finally:
        target.chmod(0o644)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert "permission denied" in one_line_error(stats_to(folder / "out.json"), capsys)
    finally:
        folder.chmod(0o755)


def test_read_only_folder_as_any_user(tmp_path, monkeypatch):
    """What the kernel answers in a read-only folder, for a user who cannot write there (tests may run as root)."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write .*out.json: permission denied; write to a folder"):
        atomic_write_json(tmp_path / "out.json", {"a": 1})


def test_full_disk_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch, capsys):
    target = tmp_path / "stats.json"
    target.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    line = one_line_error(stats_to(target), capsys)
    assert f"cannot write {target}: no space left on the device" in line
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_error_of_the_writer_itself_propagates_unchanged(tmp_path):
    def broken(handle):
        raise OSError("the writer's own problem")  # no errno: not an output error

    with pytest.raises(OSError, match="the writer's own problem") as caught:
        atomic_write(tmp_path / "x.bin", broken)
    assert not isinstance(caught.value, OutputError)
    assert list(tmp_path.iterdir()) == []


_SIGTERM_CHILD = """
import sys, time
from moe_cache_env._io import atomic_write
def slow(handle):
    handle.write(b"partial data")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write(sys.argv[1], slow)
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD, str(target)], stdout=subprocess.PIPE,
                             env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temporary file exists
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM  # still ended by the signal
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_handler_is_restored_after_a_write(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    atomic_write_json(tmp_path / "a.json", [1])
    assert signal.getsignal(signal.SIGTERM) is before and not _io._PENDING


def test_output_equal_to_an_input_in_every_spelling(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("x")
    (tmp_path / "sub").mkdir()
    os.symlink(source, tmp_path / "alias.csv")
    os.link(source, tmp_path / "hard.csv")
    for output in (source, tmp_path / "sub" / ".." / "in.csv", tmp_path / "alias.csv", tmp_path / "hard.csv"):
        with pytest.raises(OutputError, match="is the input"):
            check_output_not_input(output, None, tmp_path / "other.csv", source)
    check_output_not_input(tmp_path / "out.npz", source, "qwen1.5-moe", None)  # another file; a name: fine
    check_output_not_input(None, source)


def test_synth_refuses_a_quadrillion_tokens_before_allocating(tmp_path, capsys):
    line = one_line_error(["synth", "--preset", "olmoe", "--tokens", str(10**15), "--seed", "0",
                           "-o", str(tmp_path / "s.npz")], capsys)
    assert "past the limit of 4,000,000 tokens per run" in line
    assert list(tmp_path.iterdir()) == []


def test_calibrate_checks_its_destination_before_measuring(tmp_path, capsys):
    folder = tmp_path / "gpu.json"
    folder.mkdir()
    assert "it is a directory" in one_line_error(["calibrate", "-o", str(folder)], capsys)
