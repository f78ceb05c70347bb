"""experiments/gpu/host_check.py: the same-call host costs and the comparison, on hand-made replay results."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "gpu" / "host_check.py"


@pytest.fixture()
def hc():
    module = load_script(SCRIPT, "host_check_script")
    return module


def run(base: float, per_copy: float | None, launch: float, policy: str = "lru", err: float = 0.2) -> dict:
    fit = None if per_copy is None else {"base_ms": base, "per_copy_ms": per_copy}
    return {"policy": policy, "slots_per_layer": 12, "order": "fused", "kernel_error": {"mean_ms": err, "p95_ms": 0.1},
            "measured": {"mean_ms": 20.0, "p95_ms": 30.0,
                         "host": {"decision_fit": fit, "launch_ms_per_expert": launch}}}


def test_the_host_costs_are_medians_over_the_runs(hc):
    runs = [run(0.03, 0.02, 0.08), run(0.05, 0.01, 0.10), run(0.04, 0.03, 0.12), run(0.9, None, 0.09)]
    costs = hc.host_costs(runs)
    # the run without a fit (no copies) counts for the launches only
    assert costs == {"decision_ms": pytest.approx(0.04), "copy_issue_ms": pytest.approx(0.02),
                     "expert_launch_ms": pytest.approx(0.095), "runs": 4}
    with pytest.raises(SystemExit, match="decision_fit"):
        hc.host_costs([run(0.9, None, 0.09)])


def test_the_profile_takes_the_costs_and_keeps_the_rest(hc):
    profile = {"name": "h200", "h2d_gbps": 55.0, "host": {"layer_launch_ms": 0.007, "decision_ms": 0.135},
               "host_decision_ms": 0.135, "expert_launch_ms": 0.095}
    out = hc.profile_with_host(profile, {"decision_ms": 0.03, "copy_issue_ms": 0.02, "expert_launch_ms": 0.08},
                               "h200-x")
    assert (out["host_decision_ms"], out["copy_issue_ms"], out["expert_launch_ms"]) == (0.03, 0.02, 0.08)
    assert out["host"] == {"layer_launch_ms": 0.007, "decision_ms": 0.03, "expert_launch_ms": 0.08}
    assert out["h2d_gbps"] == 55.0 and out["name"] == "h200-x" and profile["host_decision_ms"] == 0.135


def test_the_comparison_puts_both_errors_side_by_side(hc):
    rows = hc.compare([run(0.03, 0.02, 0.08, err=0.15)], lambda r: f"q-b1-{r['order']}-{r['policy']}",
                      lambda stem: {"mean_ms": 21.0, "p95_ms": 27.0})
    assert rows == [{"stem": "q-b1-fused-lru", "gpu_mean_ms": 20.0, "gpu_p95_ms": 30.0, "shipped_err_mean": 0.15,
                     "shipped_err_p95": 0.1, "same_call_mean_ms": 21.0,
                     "same_call_err_mean": pytest.approx(0.05), "same_call_err_p95": pytest.approx(-0.1)}]
