"""The distribution installs one import package, keeps its layers apart, and names the extra a command lacks."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from moe_cache_env.cli import main, missing_extra_message

REPO = Path(__file__).resolve().parents[2]


def _fresh_modules(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return set(out.split())


def test_only_one_top_level_package_is_declared():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["moe_cache_env*"]
    assert not (REPO / "agents").exists(), "a top-level agents/ package would be installed beside moe_cache_env"
    assert config["project"]["license"] == "Apache-2.0"
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_core_dependencies_are_the_simulator_only():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in config["project"]["dependencies"]}
    assert names == {"numpy", "numba", "gymnasium"}
    assert {"rl", "plot", "record", "dev"} <= set(config["project"]["optional-dependencies"])


def test_simulator_imports_no_gym_torch_or_sb3():
    loaded = _fresh_modules("import moe_cache_env.sim")
    for heavy in ("gymnasium", "torch", "stable_baselines3"):
        assert heavy not in loaded, f"import moe_cache_env.sim loaded {heavy}"


def test_envs_do_not_import_the_cli():
    loaded = _fresh_modules("import moe_cache_env.envs")
    assert not [m for m in loaded if m.startswith("moe_cache_env.cli")]


def test_missing_extra_is_named_in_one_line(monkeypatch, capsys):
    exc = ModuleNotFoundError("No module named 'stable_baselines3'", name="stable_baselines3")
    assert "moe-cache-env[rl]" in missing_extra_message(exc)
    assert missing_extra_message(ModuleNotFoundError("x", name="not_an_extra")) is None

    import moe_cache_env.cli.train as train_cli

    def fail(args):
        raise ModuleNotFoundError("No module named 'stable_baselines3'", name="stable_baselines3")

    monkeypatch.setattr(train_cli, "run", fail)
    code = main(["train", "--timesteps", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "pip install 'moe-cache-env[rl]'" in err[0]


@pytest.mark.parametrize("name", ["synthetic/qwen1.5-moe", "learned/tiny-olmoe-12L-64E-decode"])
def test_bundled_traces_are_package_data(name):
    from moe_cache_env.traces.suite import bundled_root, resolve_trace

    path = resolve_trace(name)
    assert path.is_relative_to(bundled_root())
    assert bundled_root().is_relative_to(REPO / "moe_cache_env")
