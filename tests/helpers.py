"""Helpers shared by the command-line tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

from moe_cache_env import cli


def one_line_error(argv: list[str], capsys) -> str:
    """Run the command line on ``argv``; it must exit 2 with exactly one line on stderr, which is returned."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def cli_runner(monkeypatch, capsys, commands: tuple[str, ...]) -> Callable[..., tuple[int, str, str]]:
    """``run(*argv) -> (exit code, stdout, stderr)`` of ``main()`` with only ``commands`` registered (the others
    import other subsystems)."""
    monkeypatch.setattr(cli, "COMMANDS", {k: v for k, v in cli.COMMANDS.items() if k in commands})

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def load_script(path: Path, name: str) -> ModuleType:
    """An experiment script (not a package module) loaded as module ``name``, fresh on each call, so that a test can
    call its functions and patch its globals."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
