"""Profile files that are folders, FIFOs, not UTF-8, or carry malformed compute-scaling rows: one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_cache_env.profiles.profile import DATA_DIR, ProfileError, load_profile
from tests.helpers import one_line_error

REPO = Path(__file__).resolve().parents[2]


def h100_with(tmp_path: Path, rows) -> Path:
    data = json.loads((DATA_DIR / "h100.json").read_text())
    data["checks"]["compute_scaling"]["rows"] = rows
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "rows, message",
    [
        ([1, 2], r"compute_scaling.rows\[0\]: must be an object with tokens, expert_bytes and measured_ms, got 1"),
        ("many", r"'checks.compute_scaling.rows' must be a list of objects"),
        ([{"tokens": 1, "expert_bytes": 10, "measured_ms": -1}], r"rows\[0\]: field 'measured_ms' = -1 is out of range"),
        ([{"tokens": 1, "expert_bytes": 10}], r"rows\[0\]: missing field 'measured_ms'"),
        ([{"tokens": "1", "expert_bytes": 10, "measured_ms": 1}], r"rows\[0\]: field 'tokens' must be a finite number"),
    ],
)
def test_malformed_compute_scaling_rows(tmp_path, capsys, rows, message):
    path = h100_with(tmp_path, rows)
    with pytest.raises(ProfileError, match=message):
        load_profile(path)
    assert "edited.json" in one_line_error(["profiles", "show", str(path)], capsys)
    assert "edited.json" in one_line_error(["evaluate", "--profile", str(path)], capsys)


def test_a_directory_as_profile(tmp_path, capsys):
    folder = tmp_path / "prof.json"
    folder.mkdir()
    for argv in (["profiles", "show", str(folder)], ["evaluate", "--profile", str(folder)],
                 ["profiles", "show", str(tmp_path)]):
        assert "is a directory; give a profile's .json file or a profile name" in one_line_error(argv, capsys)


def test_non_utf8_profile_names_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"format": "moe-profile/1", "name": "caf\u00e9"}'.encode("latin-1"))
    line = one_line_error(["profiles", "show", str(path)], capsys)
    assert f"profile file {path}: not UTF-8 text (byte b'\\xe9' at offset 40)" in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_profile_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "moe_cache_env", "profiles", "show", str(fifo)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not a regular file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
