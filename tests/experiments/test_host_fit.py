"""experiments/gpu/host_fit.py: the fitted pair and the leave-one-trace-out check, on hand-made grid points, and
the profile it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "gpu" / "host_fit.py"


@pytest.fixture()
def hf():
    return load_script(SCRIPT, "host_fit_script")


def point(decision: float, per_copy: float, errs_a: list[float], errs_b: list[float]) -> dict:
    """A grid point whose rows on trace A and trace B have these errors of the mean."""
    rows = [{"name": f"A{i}", "trace": "A", "err_mean": e, "err_p95": 0.0} for i, e in enumerate(errs_a)]
    rows += [{"name": f"B{i}", "trace": "B", "err_mean": e, "err_p95": 0.0} for i, e in enumerate(errs_b)]
    within = sum(abs(e) <= 0.10 for e in errs_a + errs_b)
    return {"decision_ms": decision, "copy_issue_ms": per_copy, "rows": rows,
            "summary": {"rows": len(rows), "mean_within_vs_mean_of_runs": within, "p95_within_vs_mean_of_runs": 4}}


def test_the_fit_minimises_the_mean_absolute_error_and_checks_each_trace_held_out(hf):
    points = [
        point(0.02, 0.0, [-0.02, 0.02], [0.20, 0.10]),  # A's best (mean |err| 0.02), B poor
        point(0.06, 0.02, [0.04, -0.06], [0.04, 0.02]),  # best over all: (0.10 + 0.06) / 4 = 0.04
        point(0.10, 0.04, [0.30, 0.10], [0.00, 0.02]),  # B's best (0.01)
    ]
    fit = hf.fit(points)
    assert (fit["decision_ms"], fit["copy_issue_ms"]) == (0.06, 0.02)
    assert fit["mean_abs_err"] == pytest.approx(0.04)
    assert fit["worst"] == {"row": "A1", "err_mean": -0.06}
    held = fit["leave_one_trace_out"]
    on_a = held["fit on A, scored on B"]  # A's best point scored on B
    assert (on_a["decision_ms"], on_a["mean_abs_err"], on_a["mean_within_10pct"]) == (0.02, pytest.approx(0.15), 1)
    assert on_a["worst"] == {"row": "B0", "err_mean": 0.20}
    on_b = held["fit on B, scored on A"]
    assert (on_b["decision_ms"], on_b["mean_abs_err"], on_b["rows"]) == (0.10, pytest.approx(0.20), 2)


def test_apply_writes_the_fit_and_keeps_the_measurements(hf, tmp_path, monkeypatch):
    profile = {"name": "h200", "host_decision_ms": 0.135, "host": {"decision_ms": 0.135}, "h2d_gbps": 55.0}
    path = tmp_path / "h200.json"
    path.write_text(json.dumps(profile))
    monkeypatch.setattr(hf, "PROFILE", path)
    hf.apply({"fit": {"decision_ms": 0.07, "copy_issue_ms": 0.04, "mean_abs_err": 0.02}}, "cmd")
    out = json.loads(path.read_text())
    assert (out["host_decision_ms"], out["copy_issue_ms"]) == (0.07, 0.04)
    assert out["host"] == {"decision_ms": 0.135} and out["h2d_gbps"] == 55.0  # the calibration's own, unchanged
    assert out["host_fit"]["fit"]["mean_abs_err"] == 0.02 and out["host_fit"]["command"] == "cmd"
    assert out["host_fit"]["handoff"] == "host-poll"
