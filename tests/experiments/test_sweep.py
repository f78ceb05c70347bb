"""The sweep command: grid validation, one row per cell, resumption, and the same rows on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_cache_env.cli import main
from moe_cache_env.experiments import sweep as sw
from tests.helpers import one_line_error

#: a 128-token capture of a real model's routing: each cell replays in milliseconds
FAST_TRACE = "engines/qwen3-30b-a3b-decode"
SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "sweeps" / "smoke.yml"


def write_grid(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows_by_key(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_key = {r["key"]: r for r in rows}
    assert len(by_key) == len(rows), "a cell was written twice"
    return by_key


SMALL = f"""
name: small
grid:
  trace: {FAST_TRACE}
  profile: [h100, rtx3090-seed]
  batch: [1, 2]
  policy: [static, lru, belady]
"""


# ------------------------------------------------------------------------------------------ the grid file


def test_cells_are_the_product_of_the_lists_in_file_order(tmp_path):
    grid = sw.load_grid(write_grid(tmp_path / "g.yml", SMALL))
    assert len(grid.cells) == 2 * 2 * 3
    assert [(c["profile"], c["batch"], c["policy"]) for c in grid.cells[:4]] == [
        ("h100", 1, "static"), ("h100", 1, "lru"), ("h100", 1, "belady"), ("h100", 2, "static")]
    cells = sw.expand_grid(grid)
    assert len({c.key for c in cells}) == 12


def test_a_list_of_blocks_is_the_union_and_a_repeated_cell_runs_once(tmp_path):
    text = f"""
defaults: {{trace: {FAST_TRACE}}}
grid:
  - {{policy: [lru, belady]}}
  - {{policy: lru, kv: 0}}          # the same cell as above (kv 0 is the default 0.0)
  - {{policy: static, predictor: noisy-oracle, oracle_accuracy: [0.5, 0.9]}}
"""
    cells = sw.expand_grid(sw.load_grid(write_grid(tmp_path / "g.yml", text)))
    assert [(c.config["policy"], c.config["oracle_accuracy"]) for c in cells] == [
        ("lru", 0.4755), ("belady", 0.4755), ("static", 0.5), ("static", 0.9)]


def test_the_key_changes_with_every_setting_and_not_with_the_spelling_of_a_number(tmp_path):
    base = {"trace": FAST_TRACE, "policy": "static"}
    cells = {}
    for name, extra in {"base": {}, "float_kv": {"kv": 0.0}, "int_kv": {"kv": 0}, "batch": {"batch": 2},
                        "seed": {"seed": 1}, "profile": {"profile": "h200"}, "capacity": {"capacity": 20}}.items():
        grid = sw.parse_grid({"grid": {**base, **extra}})
        cells[name] = sw.expand_grid(grid)[0].key
    assert cells["base"] == cells["float_kv"] == cells["int_kv"]
    others = [cells[k] for k in ("base", "batch", "seed", "profile", "capacity")]
    assert len(set(others)) == len(others)


def test_capacity_share_is_a_share_of_a_layers_experts(tmp_path):
    # qwen3-30b-a3b: 128 experts per layer, top-6: 25% is 32 slots, split 6 / 8 / 18 by split_capacity
    cell = sw.expand_grid(sw.parse_grid({"grid": {"trace": FAST_TRACE, "capacity_share": 0.25}}))[0]
    assert cell.config["capacity"] == 32
    assert cell.config["tiers"] == [6, 8, 18]


@pytest.mark.parametrize("text, expected", [
    ("grid: {trace: T, colour: red}", "unknown key(s) ['colour']"),
    ("grid: {trace: T}\nextra: 1", "unknown top-level key(s) ['extra']"),
    ("defaults: {trace: T}", "no 'grid' key"),
    ("grid: {policy: lru}", "no trace"),
    ("grid: {trace: T, batch: two}", "grid.batch: expected an integer, got 'two'"),
    ("grid: {trace: T, batch: 1.5}", "grid.batch: expected an integer, got 1.5"),
    ("grid: {trace: T, kv: .nan}", "grid.kv: expected a finite number"),
    ("grid: {trace: T, capacity: true}", "grid.capacity: expected an integer, got True"),
    ("grid: {trace: T, seed: []}", "grid.seed: an empty list gives no cells"),
    ("defaults: {seed: [1, 2]}\ngrid: {trace: T}", "defaults.seed: one value expected here"),
    ("grid: [trace: T", "not valid YAML (line"),
    ("- 1\n- 2", "expected a mapping"),
])
def test_bad_grid_files_are_one_line_errors(tmp_path, capsys, text, expected):
    grid = write_grid(tmp_path / "g.yml", text.replace(" T", " " + FAST_TRACE))
    line = one_line_error(["sweep", str(grid), "--out", str(tmp_path / "r.jsonl")], capsys)
    assert expected in line
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("cell, expected", [
    ("trace: no-such-trace", "no trace file or bundled trace named 'no-such-trace'"),
    (f"trace: {FAST_TRACE}, policy: lfu2", "unknown policy 'lfu2'"),
    (f"trace: {FAST_TRACE}, kv: 0.99", "workload.kv_min=0.99 is out of range"),
    (f"trace: {FAST_TRACE}, profile: no-such-gpu", "no-such-gpu"),
    (f"trace: {FAST_TRACE}, predictor: psychic", "sim.predictor='psychic'"),
    (f"trace: {FAST_TRACE}, capacity: 2", "capacity=2 is below top_k=6"),
    (f"trace: {FAST_TRACE}, capacity: 8, capacity_share: 0.1", "not both"),
    (f"trace: {FAST_TRACE}, policy: 'ppo:/no/such/model.zip'", "no model file"),
])
def test_bad_cells_are_one_line_errors_before_anything_runs(tmp_path, capsys, cell, expected):
    grid = write_grid(tmp_path / "g.yml", f"grid: {{policy: [lru, static]}}\ndefaults: {{{cell}}}"
                      if "policy" not in cell else f"grid: {{{cell}}}")
    line = one_line_error(["sweep", str(grid), "--out", str(tmp_path / "r.jsonl")], capsys)
    assert expected in line
    assert not (tmp_path / "r.jsonl").exists()


def test_the_output_may_not_be_the_grid_file(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    line = one_line_error(["sweep", str(grid), "--out", str(grid)], capsys)
    assert "would destroy the input" in line
    assert grid.read_text() == SMALL


def test_address_without_ray_backend_is_refused(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    assert "--address is for --backend ray" in one_line_error(
        ["sweep", str(grid), "--out", str(tmp_path / "r.jsonl"), "--address", "auto"], capsys)


# ------------------------------------------------------------------------------------------ rows


def test_a_row_holds_what_the_evaluate_command_reports_for_the_same_settings(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yml", f"""
grid: {{trace: {FAST_TRACE}, policy: [static, belady], profile: rtx3090-seed, batch: 2, kv: 0.25,
        capacity: 40, predictor: noisy-oracle, oracle_accuracy: 0.8, seed: 3}}
""")
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(grid), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    rows = {r["config"]["policy"]: r for r in rows_by_key(out).values()}
    for policy in ("static", "belady"):
        json_path = tmp_path / f"{policy}.json"
        assert main(["evaluate", "--trace", FAST_TRACE, "--policy", policy, "--profile", "rtx3090-seed", "--batch",
                     "2", "--kv", "0.25", "--capacity", "40", "--predictor", "noisy-oracle", "--oracle-accuracy",
                     "0.8", "--seed", "3", "--quiet", "--json", str(json_path)]) == 0
        reference = json.loads(json_path.read_text())
        row = rows[policy]
        for metric in ("hit_rate", "perfect_coverage", "mean_latency_ms", "p95_latency_ms", "bytes_transferred",
                       "wasted_prefetch_bytes"):
            assert row["metrics"][metric] == reference[metric], (policy, metric)
        assert row["config"]["tiers"] == [6, 11, 23]  # 40 slots: L1 = top_k 6, the other 34 split 1 : 2
        assert row["config"]["used"]["tiers"] == reference["config"]["tiers"]
        assert row["config"]["used"]["eviction"] == reference["config"]["eviction"]
        assert row["key"] == sw.cell_key(row["config"])
        assert set(row["timing"]) >= {"wall_s", "backend", "host"}
    capsys.readouterr()


def test_an_agent_cell_runs_through_the_environment(tmp_path):
    grid = write_grid(tmp_path / "g.yml", f"grid: {{trace: {FAST_TRACE}, policy: [dynamic, conservative]}}")
    out = tmp_path / "r.jsonl"
    summary = sw.run_sweep(grid, out)
    assert summary.ran == 2
    rows = list(rows_by_key(out).values())
    assert {r["config"]["env"] for r in rows} == {"MoECache-v0"}
    assert all(r["metrics"]["kind"] == "agent" and r["metrics"]["tokens"] == 128 for r in rows)


def test_a_rerun_skips_every_cell_and_leaves_the_table_byte_identical(tmp_path):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    out = tmp_path / "r.jsonl"
    assert sw.run_sweep(grid, out).ran == 12
    before = out.read_bytes()
    summary = sw.run_sweep(grid, out)
    assert (summary.cells, summary.already, summary.ran) == (12, 12, 0)
    assert out.read_bytes() == before


def test_processes_give_the_rows_one_process_gives(tmp_path):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    sw.run_sweep(grid, tmp_path / "one.jsonl", workers=1)
    sw.run_sweep(grid, tmp_path / "two.jsonl", workers=2)
    one, two = rows_by_key(tmp_path / "one.jsonl"), rows_by_key(tmp_path / "two.jsonl")
    assert {k: sw.comparable(r) for k, r in one.items()} == {k: sw.comparable(r) for k, r in two.items()}
    assert {r["timing"]["backend"] for r in two.values()} == {"local"}


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    full = tmp_path / "full.jsonl"
    sw.run_sweep(grid, full)
    out = tmp_path / "r.jsonl"
    seen = []

    def interrupt_after_five(label: str) -> None:
        seen.append(label)
        if len(seen) == 5:
            raise KeyboardInterrupt  # as Ctrl-C would, between two cells

    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(grid, out, progress=interrupt_after_five)
    assert len(rows_by_key(out)) == 5
    summary = sw.run_sweep(grid, out)
    assert (summary.already, summary.ran) == (5, 7)
    assert {k: sw.comparable(r) for k, r in rows_by_key(out).items()} == \
        {k: sw.comparable(r) for k, r in rows_by_key(full).items()}


def test_a_row_cut_short_by_a_crash_is_dropped_and_its_cell_run_again(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    out = tmp_path / "r.jsonl"
    sw.run_sweep(grid, out)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])  # a crash in the middle of a write
    summary = sw.run_sweep(grid, out)
    assert (summary.already, summary.ran) == (10, 2)
    assert len(rows_by_key(out)) == 12  # every line parses: the torn half-row is gone


def test_a_table_with_a_foreign_line_is_refused_with_its_line_number(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    out = tmp_path / "r.jsonl"
    out.write_text('{"key": "a", "config": {}}\nnot json\n{"key": "b", "config": {}}\n')
    before = out.read_bytes()
    line = one_line_error(["sweep", str(grid), "--out", str(out)], capsys)
    assert "line 2 is not a sweep row" in line
    assert out.read_bytes() == before


def test_list_prints_every_cell_and_whether_it_is_done(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yml", SMALL)
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(grid), "--out", str(out), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and all(" todo " in line for line in lines)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ both backends


@pytest.mark.slow
def test_local_and_ray_backends_write_the_same_rows_for_the_smoke_grid(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    local, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["sweep", str(SMOKE), "--out", str(local), "--workers", "2", "--quiet"]) == 0
    assert main(["sweep", str(SMOKE), "--backend", "ray", "--out", str(ray_out), "--workers", "2", "--quiet"]) == 0
    a, b = rows_by_key(local), rows_by_key(ray_out)
    assert len(a) == len(sw.expand_grid(sw.load_grid(SMOKE))) == 40
    assert {k: sw.comparable(r) for k, r in a.items()} == {k: sw.comparable(r) for k, r in b.items()}
    assert {r["timing"]["backend"] for r in b.values()} == {"ray"}
    capsys.readouterr()


def test_cells_carry_the_launch_cost_and_the_prefetch_hand_off(tmp_path, capsys):
    # the defaults are the simulator's; a row records the rules it replayed under and matches evaluate's numbers
    from moe_cache_env.sim.config import SimConfig

    defaults = SimConfig()
    assert sw.CELL_KEYS["launch_cost"][1] is defaults.launch_cost
    assert sw.CELL_KEYS["prefetch_handoff"][1] == defaults.prefetch_handoff
    grid = write_grid(tmp_path / "g.yml", f"""
grid: {{trace: {FAST_TRACE}, policy: static, profile: h200, launch_cost: [true, false],
        prefetch_handoff: [link, host-poll]}}
""")
    cells = sw.expand_grid(sw.load_grid(grid))
    assert len({c.key for c in cells}) == 4
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(grid), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    rows = {(r["config"]["launch_cost"], r["config"]["prefetch_handoff"]): r for r in rows_by_key(out).values()}
    assert set(rows) == {(True, "link"), (True, "host-poll"), (False, "link"), (False, "host-poll")}
    latencies = {k: r["metrics"]["mean_latency_ms"] for k, r in rows.items()}
    assert latencies[(True, "host-poll")] > latencies[(False, "host-poll")]  # h200 charges each launch
    json_path = tmp_path / "e.json"
    assert main(["evaluate", "--trace", FAST_TRACE, "--policy", "static", "--profile", "h200", "--no-launch-cost",
                 "--prefetch-handoff", "link", "--quiet", "--json", str(json_path)]) == 0
    reference = json.loads(json_path.read_text())
    for metric in ("mean_latency_ms", "late_prefetch_rate", "bytes_transferred"):
        assert rows[(False, "link")]["metrics"][metric] == reference[metric], metric
    capsys.readouterr()


@pytest.mark.parametrize("extra, expected", [
    ("launch_cost: 1", "launch_cost: expected true or false"),
    ("prefetch_handoff: engine", "prefetch_handoff"),
    ("policy: dynamic, decision_ms: 0.1", "drop execution_order and decision_ms from agent cells"),
])
def test_bad_launch_cost_hand_off_or_agent_timing_are_one_line_errors(tmp_path, capsys, extra, expected):
    grid = write_grid(tmp_path / "g.yml", f"grid: {{trace: {FAST_TRACE}, {extra}}}\n")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "r.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
