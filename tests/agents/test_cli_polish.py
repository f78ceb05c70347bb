"""The command line for its users: --version, help with examples on their own lines, every env id form,
progress on stderr only where a person watches it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import moe_cache_env
from moe_cache_env.cli import build_parser, main
from moe_cache_env.cli._progress import Progress

SMALL = json.dumps({"traces": ["synth:qwen1.5-moe:2048:0"], "episode_tokens": 384, "predictor_fit_tokens": 512})


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moe_cache_env", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_version():
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"moe-cache-env {moe_cache_env.__version__}"


@pytest.mark.parametrize("command,example", [
    ("train", "  moe-cache-env train --algo ppo --env MoECache-v0 --timesteps 200000 --seed 0 --out runs/ppo"),
    ("train", "  moe-cache-env train --resume runs/ppo"),
    ("compare", "  moe-cache-env compare --agents static,conservative,aggressive,balanced,dynamic --episodes 3 --out results/"),
    ("bench", "  moe-cache-env bench --trace qwen1.5-moe --window 8 --repeats 5 --json"),
    ("evaluate", "  moe-cache-env evaluate --trace qwen1.5-moe --policy static"),
])
def test_help_keeps_examples_on_their_own_lines(command, example, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert example in lines


def test_top_level_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "  moe-cache-env compare --agents static,dynamic,ppo:runs/ppo/model.zip --episodes 10 --out results/" \
        in out.splitlines()


@pytest.mark.parametrize("command", ["train", "compare"])
def test_unknown_env_is_one_line(command):
    result = cli(command, "--env", "moe_cache_env:MoECache-v9", "--timesteps" if command == "train" else "--episodes", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown environment 'moe_cache_env:MoECache-v9'" in result.stderr
    assert "MoECache-v0" in result.stderr


def test_compare_and_evaluate_accept_the_namespaced_id(tmp_path: Path):
    out = tmp_path / "cmp"
    result = cli("compare", "--env", "moe_cache_env:MoECache-Discrete-v0", "--agents", "static,dynamic",
                 "--episodes", "1", "--no-bounds", "--out", str(out), "--env-config", SMALL)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "compare.json").read_text())
    assert data["env"] == "MoECache-Discrete-v0" and data["agent_order"] == ["static", "dynamic"]
    assert "\r" not in result.stderr, "no progress line when stderr is not a terminal"
    trace = tmp_path / "t.npz"
    assert cli("synth", "--preset", "qwen1.5-moe", "--tokens", "256", "--seed", "0", "-o", str(trace)).returncode == 0
    result = cli("evaluate", "--trace", str(trace), "--policy", "static,dynamic", "--env", "moe_cache_env:MoECache-v0")
    assert result.returncode == 0, result.stderr
    assert "dynamic" in result.stdout


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_line_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    out = _Terminal()
    with Progress(4, "compare", stream=out) as p:
        p.update(1, "static episode 1/2")
        p.update(1)
    text = out.getvalue()
    assert "\rcompare: 1/4 (25%)" in text and "static episode 1/2" in text
    assert "\rcompare: 2/4 (50%)" in text
    assert text.endswith("\r"), "the line is cleared at the end"


def test_progress_uses_tqdm_when_installed():
    pytest.importorskip("tqdm")
    out = _Terminal()
    with Progress(3, "bench", stream=out) as p:
        p.update(2)
        assert p._bar is not None
        p._bar.refresh()  # tqdm redraws at most every 0.1 s by itself
    assert "bench:" in out.getvalue() and "2/3" in out.getvalue()


@pytest.mark.parametrize("stream,quiet", [(io.StringIO(), False), (_Terminal(), True)])
def test_progress_silent_off_terminal_or_quiet(stream, quiet):
    with Progress(4, "compare", stream=stream, quiet=quiet) as p:
        p.update(4)
    assert stream.getvalue() == "" and p.done == 4


def test_compare_counts_its_work_units():
    from moe_cache_env.agents.compare import compare, work_units
    from moe_cache_env.agents.evaluation import threshold_grid

    assert work_units(["static", "dynamic"], 3) == 2 * 3 + 3
    assert work_units(["static-tuned"], 2, with_bounds=False, oracle=True) == 2 + 2 + len(threshold_grid())
    calls = []
    compare("moe_cache_env:MoECache-v0", ["static", "random"], 2, 0, overrides=json.loads(SMALL),
            progress=lambda n, what: calls.append(what))
    assert len(calls) == work_units(["static", "random"], 2)
    assert calls[0] == "static episode 1/2" and calls[-1] == "bounds episode 2/2"


def test_keyboard_interrupt_is_one_line(monkeypatch, capsys):
    import moe_cache_env.cli.profiles as profiles

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(profiles, "run", interrupted)
    assert main(["profiles"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_env_threads_out_of_range_or_on_resume_is_one_line(tmp_path: Path, capsys):
    assert main(["train", "--env-threads", "0", "--timesteps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--env-threads must be in 1.." in err[0]
    assert not (tmp_path / "run").exists()
    assert main(["train", "--resume", str(tmp_path), "--env-threads", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop --env-threads" in err[0]
