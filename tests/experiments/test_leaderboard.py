"""The leaderboard script's bookkeeping: intervals, the cell plan, resumability and the board from cells
(hand-computed cases; the end-to-end tiny run is slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "leaderboard" / "leaderboard.py"


@pytest.fixture(scope="module")
def lb():
    module = load_script(SCRIPT, "leaderboard_script")
    return module


def test_mean_ci_is_the_t_interval(lb):
    ci = lb.mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3, t(2) = 4.303
    assert ci["mean"] == 2.0 and ci["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    assert lb.mean_ci([5.0])["ci95"] is None
    assert lb.t975(22) == 2.086  # between table entries: the smaller df's (wider) quantile
    assert lb.t975(40) == 1.96


def test_the_plan_has_a_cell_per_env_algo_seed_where_the_algo_fits(lb):
    args = lb.parse([])
    cells = lb.plan(args)
    keys = [c["key"] for c in cells]
    assert len(keys) == len(set(keys))
    # v3, v2 and Extended: ppo, a2c, sac, recurrentppo; Evict: ppo, a2c, dqn, recurrentppo, maskableppo; 5 seeds;
    # 4 strategy cells and 3 static-tuned ones; generalisation: static-tuned in each regime and 5 PPO seeds
    assert len(cells) == (4 + 4 + 4 + 5) * 5 + 4 + 3 + 2 + 5
    assert "MoECache-Evict-v0:sac:0" not in keys and "MoECache-v2:dqn:0" not in keys and "MoECache-v3:ppo:4" in keys
    assert "MoECache-Evict-v0:maskableppo:4" in keys and "MoECache-v2:maskableppo:0" not in keys
    v1_ppo = next(c for c in cells if c["key"] == "MoECache-v2:ppo:0")
    assert v1_ppo["config"]["timesteps"] == lb.BUDGET["MoECache-v2"]["ppo"]
    assert v1_ppo["config"]["gen_test"]["workload"]["batch_min"] == 8  # the generalisation test, on v1's models
    gen = next(c for c in cells if c["key"] == "gen:ppo:0")
    assert gen["config"]["overrides"]["workload"]["batch_max"] == 1


def test_a_cell_counts_as_done_only_under_the_same_configuration(lb, tmp_path):
    cell = {"file": "x.json", "config": {"timesteps": 100, "overrides": {"a": [1, 2]}}}
    assert lb.cell_done(tmp_path, cell) is None
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "x.json").write_text(json.dumps({"config": {"timesteps": 100, "overrides": {"a": [1, 2]}}}))
    assert lb.cell_done(tmp_path, cell) is not None
    assert lb.cell_done(tmp_path, {**cell, "config": {"timesteps": 200, "overrides": {"a": [1, 2]}}}) is None


def test_the_board_pairs_trained_seeds_against_the_reference(lb, tmp_path):
    args = lb.parse(["--envs", "MoECache-v2", "--algos", "ppo", "--seeds", "0,1", "--episodes", "3",
                     "--no-generalisation", "--out", str(tmp_path)])
    cells = lb.plan(args)
    (tmp_path / "cells").mkdir()
    rewards = {"MoECache-v2:ppo:0": [1.0, 1.0, 1.0], "MoECache-v2:ppo:1": [3.0, 4.0, 2.0]}
    for c in cells:
        if c["kind"] == "strategies":
            record = {"config": c["config"], "rewards": {"static": [1.0, 1.0, 1.0]}}
        elif c["kind"] == "static_tuned":
            record = {"config": c["config"], "rewards": {"static-tuned": [0.0, 1.0, -1.0]},
                      "static_tuned_thresholds": [0.7, 0.3]}
        else:
            record = {"config": c["config"], "rewards": rewards[c["key"]], "train_wall_s": 10.0, "steps": 100,
                      "steps_per_s": 10.0, "curve": {"timesteps": [50, 100], "mean_reward": [0.0, 1.0]}}
        (tmp_path / "cells" / c["file"]).write_text(json.dumps(record))
    board = lb.board_from_cells(tmp_path, args, cells)
    rows = board["envs"]["MoECache-v2"]["rows"]
    # static minus static-tuned per episode: 1, 0, 2 -> mean 1, sd 1
    assert rows["static"]["minus_ref"]["mean"] == pytest.approx(1.0)
    assert rows["static"]["minus_ref"]["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    # seed 0: diffs 1, 0, 2 (mean 1); seed 1: 3, 3, 3 (mean 3) -> mean 2, sd sqrt(2), t(1) = 12.706
    assert rows["ppo"]["minus_ref"]["mean"] == pytest.approx(2.0)
    assert rows["ppo"]["minus_ref"]["ci95"] == pytest.approx(12.706)
    assert rows["ppo"]["per_episode_diff"] == pytest.approx([2.0, 1.5, 2.5])
    assert board["missing_cells"] == []
    text = lb.markdown(board, lb.budget_text())
    assert "| ppo | trained | 2.00 | +2.000 ± 12.706 | no | 2 | 100 |" in text
    written = lb.plots(board, tmp_path)
    assert [p.name for p in written] == ["v2_curves.png", "v2_paired.png"] and all(p.stat().st_size > 0 for p in written)


def test_bad_arguments_are_one_line_exit_2(tmp_path):
    for bad in (["--algos", "ppo,nope"], ["--env-config", "[1]"], ["--seeds", "a"]):
        result = subprocess.run([sys.executable, str(SCRIPT), *bad, "--report-only", "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_tiny_run_then_only_reproduces_a_cell(tmp_path, lb):
    args = ["--tiny", "--envs", "MoECache-Evict-v0", "--algos", "a2c", "--out", str(tmp_path)]
    base = [sys.executable, str(SCRIPT), *args]
    first = subprocess.run(base, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "| a2c | trained |" in (tmp_path / "README.md").read_text()
    # resumable: a rerun finds every cell of its plan done under the same configuration, so recomputes none
    cells = lb.plan(lb.parse(args))
    assert len(cells) == 3 and all(lb.cell_done(tmp_path, cell) is not None for cell in cells)
    only = subprocess.run(base + ["--only", "MoECache-Evict-v0:a2c:1"], capture_output=True, text=True, timeout=900)
    assert "held-out rewards reproduced exactly" in only.stdout, only.stdout[-2000:] + only.stderr[-2000:]
