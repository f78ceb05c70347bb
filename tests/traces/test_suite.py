"""The bundled trace suite: names resolve to files, paths pass through, errors list what exists."""

from __future__ import annotations

import pytest

from moe_cache_env.traces import load_trace
from moe_cache_env.traces.suite import DEFAULT_TRACE, TRACES_ENV, bundled_root, list_bundled_traces, resolve_trace


def test_bundled_synthetic_traces_are_listed_and_load():
    names = list_bundled_traces()
    for preset in ("qwen1.5-moe", "olmoe", "mixtral", "deepseek-v2-lite"):
        assert f"synthetic/{preset}" in names
    assert DEFAULT_TRACE in names
    assert load_trace(resolve_trace(DEFAULT_TRACE)).num_layers == 24


def test_short_name_full_name_and_path_agree():
    full = resolve_trace("synthetic/qwen1.5-moe")
    assert resolve_trace("qwen1.5-moe") == full
    assert resolve_trace("synthetic/qwen1.5-moe.npz") == full
    assert resolve_trace(str(full)) == full
    assert full.parent.parent == bundled_root()


def test_env_var_adds_a_folder(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.npz").write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.npz").write_bytes(b"")
    monkeypatch.setenv(TRACES_ENV, str(tmp_path))
    names = list(list_bundled_traces())
    assert "mine/a" in names and "other/a" in names and "synthetic/qwen1.5-moe" in names
    assert resolve_trace("mine/a") == tmp_path / "mine" / "a.npz"
    with pytest.raises(ValueError, match=r"'a' is ambiguous: it matches \['mine/a', 'other/a'\]"):
        resolve_trace("a")
    assert resolve_trace("qwen1.5-moe") == bundled_root() / "synthetic" / "qwen1.5-moe.npz"
    with pytest.raises(FileNotFoundError, match=r"bundled traces: .*mine/a"):
        resolve_trace("absent-trace")


def test_missing_user_folder_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv(TRACES_ENV, str(tmp_path / "absent"))
    assert "synthetic/qwen1.5-moe" in list_bundled_traces()
    with pytest.raises(FileNotFoundError, match="no trace file or bundled trace named 'anything'"):
        resolve_trace("anything")


def test_the_old_names_are_the_catalogs(tmp_path, monkeypatch):
    from moe_cache_env.cli._common import load_named_trace
    from moe_cache_env.traces import catalog

    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    full = bundled_root() / "synthetic" / "qwen1.5-moe.npz"
    assert resolve_trace("bundled://synthetic/qwen1.5-moe") == full
    assert load_named_trace("bundled://qwen1.5-moe").num_layers == 24
    path = resolve_trace("synth://mixtral?tokens=128&seed=0")
    assert path.is_relative_to(tmp_path) and load_trace(path).num_tokens == 128
