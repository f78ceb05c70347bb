"""The one-line note before the simulator's kernel is compiled (moe_cache_env/sim/compile_note.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from moe_cache_env.sim import compile_note


def _dispatcher(index: dict | Exception, signatures=()):
    def load_index():
        if isinstance(index, Exception):
            raise index
        return index

    cache_file = SimpleNamespace(_load_index=load_index, _index_path="/nonexistent/kernel.nbi")
    return SimpleNamespace(signatures=list(signatures), _cache=SimpleNamespace(_cache_file=cache_file))


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(compile_note, "_noted", False)
    monkeypatch.delenv("MOE_CACHE_ENV_QUIET", raising=False)
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)


def test_note_once_when_the_index_is_missing():
    out = io.StringIO()
    assert compile_note.note_if_compiling(_dispatcher({}), out) is True
    assert compile_note.note_if_compiling(_dispatcher({}), out) is False  # once per process
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "compiling the simulator kernel" in lines[0]


@pytest.mark.parametrize("dispatcher", [
    _dispatcher({("sig",): "entry"}),  # an index that matches the source
    _dispatcher({}, signatures=["int64()"]),  # already compiled or loaded in this process
    SimpleNamespace(signatures=[]),  # not a cached dispatcher: cannot tell, so no note
])
def test_no_note_when_cached_or_unknown(dispatcher):
    out = io.StringIO()
    assert compile_note.note_if_compiling(dispatcher, out) is False and out.getvalue() == ""


def test_unreadable_index_falls_back_to_its_existence(tmp_path):
    d = _dispatcher(OSError("corrupt"))
    assert compile_note.kernel_is_cached(d) is False
    index = tmp_path / "k.nbi"
    index.write_bytes(b"x")
    d._cache._cache_file._index_path = str(index)
    assert compile_note.kernel_is_cached(d) is True


def test_quiet_environment_variable(monkeypatch):
    monkeypatch.setenv("MOE_CACHE_ENV_QUIET", "1")
    out = io.StringIO()
    assert compile_note.note_if_compiling(_dispatcher({}), out) is False and out.getvalue() == ""


def _is_cached_in_subprocess(env: dict) -> str:
    code = ("from moe_cache_env.sim import kernel as K; from moe_cache_env.sim.compile_note import kernel_is_cached; "
            "print(kernel_is_cached(K.run_steps))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_real_kernel_index(tmp_path):
    """numba's own index decides: none in an empty cache folder, one after the kernel ran here."""
    import numpy as np

    from moe_cache_env.sim.config import Controls, SimConfig
    from moe_cache_env.sim.simulator import Simulator
    from moe_cache_env.traces.synth import generate

    empty = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "empty-cache")}
    assert _is_cached_in_subprocess(empty) == "False"
    trace = generate("qwen1.5-moe", 64, np.random.default_rng(0), seed=0)
    Simulator(trace, SimConfig(), rng=np.random.default_rng(0)).run(2, Controls())  # compiles or loads it here
    assert _is_cached_in_subprocess(dict(os.environ)) == "True"
