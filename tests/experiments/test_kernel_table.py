"""The sim-to-real table over several GPU runs (experiments/gpu/kernel_table.py): the reference is the mean of the
runs, hand-computed on a two-run results folder; run order, refusals and the single-run mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "gpu" / "kernel_table.py"
COUNTS = {"lru": {"hit_rate": 0.5, "demand_loads": 7}, "perfect": {"hit_rate": 0.9, "demand_loads": 1}}
#: the kernel's estimate of each log (mean, P95), as a decision log's meta would give it
KERNEL = {"lru": (10.5, 23.1), "perfect": (9.0, 17.0)}
#: the plain-Python reference estimate of each log's decisions (kernel_table recomputes it from the log's profile)
REFERENCE = {"lru": 11.55, "perfect": 9.0}


@pytest.fixture()
def kt(monkeypatch):
    module = load_script(SCRIPT, "kernel_table_script")
    monkeypatch.setattr(module, "TRACES", {"t": "tiny trace"})
    monkeypatch.setattr(module, "BATCHES", (1,))
    return module


def run(policy: str, mean_ms: float, p95_ms: float, estimate_ms: float = 11.55) -> dict[str, Any]:
    return {"policy": policy, "slots_per_layer": 12, "order": "fused", "log_counts": COUNTS[policy],
            "measured": {"mean_ms": mean_ms, "p95_ms": p95_ms}, "estimate": {"mean_ms": estimate_ms}}


def write(path: Path, *runs: dict[str, Any]) -> None:
    path.write_text(json.dumps({"runs": list(runs)}))


def fake_stats(counts: dict[str, dict] | None = None):
    def stats(log_path: Path) -> dict[str, Any]:
        policy = log_path.stem.rsplit("-", 1)[1]
        mean, p95 = KERNEL[policy]
        return {"mean_ms": mean, "p95_ms": p95, "counts": (counts or COUNTS)[policy], "ref_mean_ms": REFERENCE[policy]}
    return stats


@pytest.fixture()
def two_runs(tmp_path):
    # run 1: lru 10 / 20 ms (mean / P95), perfect 8 / 16; run 2: lru 12 / 22, perfect 8 / 18
    write(tmp_path / "kernel-t-b1.json", run("lru", 10.0, 20.0), run("perfect", 8.0, 16.0))
    write(tmp_path / "kernel-t-b1-repeat2.json", run("lru", 12.0, 22.0), run("perfect", 8.0, 18.0))
    return tmp_path


def test_the_reference_is_the_mean_of_the_runs(kt, two_runs):
    table = kt.rows(two_runs, two_runs, kernel_stats=fake_stats())
    assert [r["policy"] for r in table] == ["perfect", "lru"]  # the table's policy order
    perfect, lru = table
    assert lru["runs"] == 2 and lru["run_labels"] == ["first", "repeat2"]
    assert lru["gpu_mean"] == pytest.approx(11.0) and lru["gpu_p95"] == pytest.approx(21.0)
    assert (lru["gpu_mean_min"], lru["gpu_mean_max"]) == (10.0, 12.0)
    assert lru["spread"] == pytest.approx(0.2)
    assert lru["err_mean"] == pytest.approx(10.5 / 11 - 1)  # -4.5%
    assert lru["err_mean_first"] == pytest.approx(0.05)
    assert lru["err_mean_runs"] == pytest.approx([0.05, -0.125])
    assert lru["err_p95"] == pytest.approx(0.10) and lru["err_p95_first"] == pytest.approx(0.155)
    assert lru["ref_err_mean"] == pytest.approx(0.05)  # 11.55 / 11 - 1
    assert perfect["gpu_mean"] == pytest.approx(8.0) and perfect["spread"] == 0.0
    assert perfect["err_mean"] == pytest.approx(0.125) and perfect["err_p95"] == pytest.approx(0.0)


def test_the_counts_against_the_targets(kt, two_runs):
    s = kt.summary(kt.rows(two_runs, two_runs, kernel_stats=fake_stats()))
    # mean: lru -4.5% vs the mean of runs (+5% / -12.5% per run), perfect +12.5% in both runs
    assert s["mean_within_vs_mean_of_runs"] == 1 and s["mean_within_vs_first_run"] == 1
    assert s["mean_within_some_run"] == 1 and s["mean_within_every_run"] == 0
    # P95: lru +10% vs the mean, +15.5% vs run 1; perfect 0% vs the mean, +6.25% vs run 1
    assert s["p95_within_vs_mean_of_runs"] == 2 and s["p95_within_vs_first_run"] == 1
    assert s["spread"]["median"] == pytest.approx(0.1) and s["spread"]["max"] == pytest.approx(0.2)
    assert "lru" in s["spread"]["max_row"]


def test_misses_list_each_runs_error_and_whether_the_sign_holds(kt, two_runs):
    lines = kt.miss_lines(kt.rows(two_runs, two_runs, kernel_stats=fake_stats()))
    assert len(lines) == 4  # header, rule, perfect (outside in both runs), lru (outside in run 2 only)
    assert "| perfect |" in lines[2] and "+12.5% / +12.5%" in lines[2] and "same in every run" in lines[2]
    assert "| lru |" in lines[3] and "+5.0% / -12.5%" in lines[3] and "mixed" in lines[3]


def test_repeats_are_ordered_by_number_after_the_first_run(kt, tmp_path):
    for suffix in ("", "-repeat10", "-repeat2", "-repeat"):
        write(tmp_path / f"kernel-t-b1{suffix}.json")
    names = [p.name for p in kt.run_files(tmp_path, "t", 1)]
    assert names == ["kernel-t-b1.json", "kernel-t-b1-repeat.json", "kernel-t-b1-repeat2.json",
                     "kernel-t-b1-repeat10.json"]


def test_first_run_only_is_the_single_run_table(kt, two_runs):
    lru = kt.rows(two_runs, two_runs, first_run_only=True, kernel_stats=fake_stats())[1]
    assert lru["runs"] == 1 and lru["gpu_mean"] == 10.0 and lru["err_mean"] == pytest.approx(0.05)


def test_refuses_a_run_of_other_decisions_and_a_missing_first_run(kt, two_runs, tmp_path):
    other = {**COUNTS, "lru": {"hit_rate": 0.5, "demand_loads": 8}}
    with pytest.raises(SystemExit, match="t-b1-fused-12-lru: the log's decisions differ .* run first"):
        kt.rows(two_runs, two_runs, kernel_stats=fake_stats(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="kernel-t-b1.json: missing"):
        kt.rows(empty, empty, kernel_stats=fake_stats())
    (two_runs / "kernel-t-b1-repeat3.json").write_text("{not json")
    with pytest.raises(SystemExit, match="repeat3.json: not a replay-gpu result"):
        kt.rows(two_runs, two_runs, kernel_stats=fake_stats())


def test_the_committed_results_make_the_table(tmp_path):
    """The real script on the committed H200 runs and decision logs: every row's reference is the plain mean of
    the measured means stored in its run files."""
    kt = load_script(SCRIPT, "kernel_table_real")
    out = tmp_path / "table.json"
    assert kt.main(["--json", str(out)]) == 0
    table = json.loads(out.read_text())["rows"]
    assert len(table) == 64
    results = SCRIPT.parent / "results"
    for r in table[:: 7]:
        name = "qwen" if r["trace"].startswith("synthetic") else "learned"
        means = []
        for path in sorted(results.glob(f"kernel-{name}-b{r['batch']}*.json")):
            for run in json.loads(path.read_text())["runs"]:
                if (run["policy"], run["slots_per_layer"], run["order"]) == (r["policy"], r["slots"], r["order"]):
                    means.append(run["measured"]["mean_ms"])
        assert r["runs"] == len(means) >= 3
        assert r["gpu_mean"] == pytest.approx(sum(means) / len(means))
        assert r["err_mean"] == pytest.approx(r["sim_mean"] / r["gpu_mean"] - 1)


def test_the_per_layer_split_recovers_hand_set_costs():
    kl = load_script(SCRIPT.parent / "kernel_layers.py", "kernel_layers_script")
    import numpy as np

    # 4 steps of 4 layers: (0 loads, 1 load, 2 loads, 3+ loads) layers each; 0.1 ms too much per quiet layer,
    # 0.05 per one-load layer, nothing on the others
    kinds = np.array([[2, 1, 1, 0], [1, 2, 0, 1], [0, 1, 2, 1], [1, 1, 1, 1]], dtype=float)
    error = kinds @ np.array([0.1, 0.05, 0.0, 0.0])
    assert kl.split_error(error, kinds, min_per_step=0.0) == pytest.approx([0.1, 0.05, 0.0, 0.0], abs=1e-12)
    # a kind under half a layer per step is left out of the fit
    rare = np.array([[3, 1, 0, 0], [3, 1, 0, 0], [2, 2, 0, 0], [4, 0, 0, 1]], dtype=float)
    assert kl.split_error(rare @ np.array([0.1, 0.05, 0, 0]), rare)[2:] == [None, None]


def test_late_prefetches_are_counted_per_run_beside_the_kernels(kt, tmp_path):
    def with_copies(r: dict[str, Any], promoted: int) -> dict[str, Any]:
        r["measured"]["copies"] = {"promoted": promoted}
        return r

    write(tmp_path / "kernel-t-b1.json", with_copies(run("lru", 10.0, 20.0), 0), with_copies(run("perfect", 8.0, 16.0), 40))
    write(tmp_path / "kernel-t-b1-repeat2.json", with_copies(run("lru", 12.0, 22.0), 0),
          with_copies(run("perfect", 8.0, 18.0), 60))

    def stats(log_path: Path) -> dict[str, Any]:
        return {**fake_stats()(log_path), "late": 55 if log_path.stem.endswith("perfect") else 0}

    table = kt.rows(tmp_path, tmp_path, kernel_stats=stats)
    perfect = next(r for r in table if r["policy"] == "perfect")
    assert perfect["gpu_late_runs"] == [40, 60] and perfect["sim_late"] == 55
    lines = kt.late_lines(table)
    assert len(lines) == 3  # header, rule, and the one row whose prefetches were late on the GPU (not lru)
    assert "| 40 / 60 | 40-60 | 55 | +10.0% |" in lines[2]  # 55 against the mean of runs, 50
