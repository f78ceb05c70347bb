"""experiments/gpu/kernel_logs.py: the kernel's decision logs for the sim-to-real table, cut small, under a chosen
profile and hand-off rule, for a chosen trace and batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "gpu" / "kernel_logs.py"


@pytest.fixture()
def kl(monkeypatch):
    module = load_script(SCRIPT, "kernel_logs_script")
    monkeypatch.setattr(module, "CUTS", {1: (None, 6), 8: (2, 4)})
    monkeypatch.setattr(module, "TRACES", {"qwen": ("synthetic/qwen1.5-moe", (12,), []),
                                           "other": ("synthetic/qwen1.5-moe", (12,), [])})
    monkeypatch.setattr(module, "POLICIES", "lru,perfect")
    return module


def test_the_filters_profile_and_rule_reach_every_log(kl, tmp_path):
    from moe_cache_env.gpu.decision_log import load_log
    from moe_cache_env.profiles.profile import DATA_DIR

    data = json.loads((DATA_DIR / "h200.json").read_text())
    data["copy_issue_ms"] = 0.5  # large, so that the logs' estimates show it
    profile = tmp_path / "slow-issue.json"
    profile.write_text(json.dumps(data))
    kl.make_logs(tmp_path / "a", "host-poll", profile=str(profile), names=("qwen",), batches=(1,))
    kl.make_logs(tmp_path / "b", "link", names=("qwen",), batches=(1,))
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    # one trace, one batch, both orders, one cache size: an evaluate JSON and a log per policy each
    assert written == sorted(f"qwen-b1-{order}-12{suffix}" for order in ("fused", "per-expert")
                             for suffix in (".json", "-lru.npz", "-perfect.npz"))
    slow, plain = (load_log(tmp_path / d / "qwen-b1-fused-12-lru.npz") for d in ("a", "b"))
    assert slow.meta["prefetch_handoff"] == "host-poll" and plain.meta["prefetch_handoff"] == "link"
    assert slow.counts() == plain.counts()  # the decisions do not depend on the timing
    assert sum(slow.meta["kernel_step_latency_ms"]) > sum(plain.meta["kernel_step_latency_ms"])
