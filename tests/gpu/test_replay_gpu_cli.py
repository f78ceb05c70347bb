"""``moe-cache-env replay-gpu`` through the real CLI entry point, on the fake device (no GPU needed)."""

from __future__ import annotations

import json

import pytest

import moe_cache_env.cli as cli
from tests.helpers import cli_runner


@pytest.fixture
def run_cli(monkeypatch, capsys):
    return cli_runner(monkeypatch, capsys, ('replay-gpu',))


def test_registered():
    assert cli.COMMANDS["replay-gpu"][0] == "replay_gpu"


def test_fake_replay_prints_estimate_beside_measured_and_writes_json(run_cli, tmp_path):
    out_json = tmp_path / "r.json"
    code, out, err = run_cli("replay-gpu", "--device", "fake", "--profile", "h200", "--tokens", "40", "--slots", "8",
                             "--json", str(out_json), "--save-logs", str(tmp_path / "logs"))
    assert code == 0, err
    assert "est mean ms" in out and "GPU mean ms" in out and "sim err mean" in out
    data = json.loads(out_json.read_text())
    assert data["model"] == "qwen1.5-moe" and data["expert"]["intermediate"] == 2368
    assert len(data["runs"]) == 4  # two policies x two orders
    for run in data["runs"]:
        # the fake device follows the estimate's rules; demand-only runs agree exactly
        if run["policy"] == "lru":
            assert run["error"]["mean_ms"] == pytest.approx(0.0, abs=1e-9)
        assert run["timing"]["host_ms"] > 0 and run["timing"]["launch_ms"] > 0
        # the engine's own host time per layer, split by whether the layer issued copies
        host = run["measured"]["host"]
        split = host["decision_ms_no_copy"]["layers"] + host["decision_ms_with_copy"]["layers"]
        assert split == host["layers"] == 40 * 24
        assert host["decision_ms_with_copy"]["median"] > 0 and host["launch_ms_per_expert"] > 0
    assert "host decision ms, no copy" in out
    assert (tmp_path / "logs" / "lru-8.npz").exists()
    # and a saved log replays on its own
    code, out, err = run_cli("replay-gpu", "--device", "fake", "--profile", "h200", "--log",
                             str(tmp_path / "logs" / "lru-prefetch-8.npz"), "--order", "per-expert")
    assert code == 0, err
    assert "lru-prefetch" in out


def test_bad_arguments_exit_2(run_cli):
    code, _, err = run_cli("replay-gpu", "--device", "fake", "--policy", "belady", "--tokens", "5")
    assert code == 2 and "unknown --policy 'belady'" in err
    code, _, err = run_cli("replay-gpu", "--device", "fake", "--order", "sideways", "--tokens", "5")
    assert code == 2 and "unknown --order" in err
    code, _, err = run_cli("replay-gpu", "--device", "fake", "--slots", "2", "--tokens", "5")
    assert code == 2 and "slots_per_layer" in err


def test_cuda_device_without_cuda_exits_2(run_cli):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, _, err = run_cli("replay-gpu", "--tokens", "5", "--slots", "8")
    assert code == 2 and "no CUDA device" in err and "--device fake" in err
