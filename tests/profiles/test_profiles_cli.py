"""The calibrate and profiles commands through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

import moe_cache_env.cli as cli
from tests.helpers import cli_runner
from moe_cache_env.profiles import list_profiles


@pytest.fixture
def run_cli(monkeypatch, capsys):
    return cli_runner(monkeypatch, capsys, ('calibrate', 'profiles'))


def test_both_commands_are_registered():
    assert cli.COMMANDS["calibrate"][0] == "calibrate"
    assert cli.COMMANDS["profiles"][0] == "profiles"


def test_calibrate_without_cuda_exits_2_with_a_clear_message(run_cli, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, out, err = run_cli("calibrate", "--model", "olmoe", "-o", str(tmp_path / "p.json"))
    assert code == 2
    assert "moe-cache-env calibrate: error: no CUDA device" in err
    assert "torch.cuda.is_available() is False" in err
    assert not (tmp_path / "p.json").exists()


def test_calibrate_rejects_a_bad_shape_before_touching_the_gpu(run_cli, tmp_path):
    code, _, err = run_cli("calibrate", "--expert-shape", "2048", "-o", str(tmp_path / "p.json"))
    assert code == 2 and "HIDDEN,INTERMEDIATE" in err
    code, _, err = run_cli("calibrate", "-o", str(tmp_path / "p.txt"))
    assert code == 2 and ".json" in err


def test_calibrate_model_and_shape_are_exclusive(run_cli, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_cli("calibrate", "--model", "olmoe", "--expert-shape", "1,2", "-o", str(tmp_path / "p.json"))
    assert exc.value.code == 2


def test_profiles_lists_every_shipped_profile(run_cli):
    code, out, _ = run_cli("profiles")
    assert code == 0
    for name in list_profiles():
        assert f"| {name} " in out
    assert "NVIDIA GeForce RTX 3090" in out
    code, out, _ = run_cli("profiles", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list_profiles()
    seed = next(r for r in rows if r["name"] == "rtx3090-seed")
    assert seed["compute_1_token_ms"] == pytest.approx(0.106)


def test_profiles_show(run_cli):
    code, out, _ = run_cli("profiles", "show", "rtx3090-seed")
    assert code == 0
    assert "profile rtx3090-seed: NVIDIA GeForce RTX 3090" in out
    # The seed's fit predicts 4.854 ms for a 28 MiB expert: 29360128 B / 6.04867 GB/s.
    assert "28 MiB expert by the profile's line: 4.854 ms" in out
    assert "| h2d  | 0           | 6.049 |" in out
    code, out, _ = run_cli("profiles", "show", "rtx3090-seed", "--json")
    assert json.loads(out)["seed_table"]["h2d_1_expert_ms"] == 4.35


def test_profiles_compare(run_cli):
    code, out, _ = run_cli("profiles", "--compare")
    assert code == 0
    for label in ("qwen1.5-moe (2048x1408)", "olmoe (2048x1024)", "mixtral (4096x14336)", "seed expert (28 MiB)"):
        assert label in out
    rows = json.loads(run_cli("profiles", "--compare", "--json")[1])
    seed_row = next(r for r in rows if r["profile"] == "rtx3090-seed" and r["expert"] == "seed expert (28 MiB)")
    assert seed_row["compute_1_token_ms"] == pytest.approx(0.106)
    assert seed_row["transfer_ms"] == pytest.approx(28 * 2**20 / 6.04867e6)


def test_profiles_errors(run_cli):
    code, _, err = run_cli("profiles", "show")
    assert code == 2 and "show needs a profile name" in err
    code, _, err = run_cli("profiles", "show", "nope")
    assert code == 2 and "unknown profile 'nope'" in err
    with pytest.raises(SystemExit) as exc:  # argparse: 'rtx3090-seed' is not an action
        run_cli("profiles", "rtx3090-seed")
    assert exc.value.code == 2
    code, _, err = run_cli("profiles", "list", "rtx3090-seed")
    assert code == 2 and "profiles show rtx3090-seed" in err


def test_profiles_show_a_measured_profile(run_cli):
    code, out, _ = run_cli("profiles", "show", "h100")
    assert code == 0
    assert "profile h100: NVIDIA H100" in out
    fits_table = out.split("transfer fits")[1].split("copy sweep")[0]
    # Canonical order, whatever the key order on disk.
    assert [line.split("|")[1].strip() for line in fits_table.splitlines() if line.startswith("| ") and "_" in line] == [
        "h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"]
    assert "check expert_copy_28mib:" in out
    assert "fixed + bytes / bandwidth" in out


def test_a_host_fit_clamped_at_zero_decision_time_is_flagged(run_cli):
    # on the H100 replays the per-expert launch slope times a resident layer above what the engine measured,
    # so host_decision_ms is clamped to 0: the report says so instead of showing a silent 0
    code, out, _ = run_cli("profiles", "show", "h100-full")
    assert code == 0
    assert "host_decision_ms = 0 ms" in out and "warning: the launch model alone already exceeds" in out
    code, out, _ = run_cli("profiles", "show", "h200")
    assert code == 0 and "host cost per layer" in out and "warning: the launch model" not in out


def test_the_host_warning_names_the_excess_by_hand():
    from moe_cache_env.profiles.report import format_calibration
    from moe_cache_env.profiles import load_profile

    data = load_profile("h200").to_dict()
    data["host"] = {**data["host"], "synced_ms": 0.5, "model_without_decision_ms": 0.6, "decision_ms": 0.0}
    lines = [line for line in format_calibration(data).splitlines() if line.startswith("warning: the launch")]
    assert len(lines) == 1 and "by 0.1 ms (+20%)" in lines[0]
    data["host"] = {**data["host"], "synced_ms": 0.6, "model_without_decision_ms": 0.5, "decision_ms": 0.1}
    assert "warning: the launch" not in format_calibration(data)
