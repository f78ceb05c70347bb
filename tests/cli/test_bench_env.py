"""``bench --env`` and ``bench --train``: real runs with tiny budgets; the figures are checked for consistency,
never against wall-time thresholds."""

from __future__ import annotations

import json

import pytest

from moe_cache_env.cli import main


def _json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, "only the JSON line on stdout"
    return json.loads(out[0])


@pytest.mark.slow
def test_bench_env_reports_windows_events_and_references(capsys):
    assert main(["bench", "--env", "MoECache-v0", "--num-envs", "1", "3", "--windows", "6", "--repeats", "2",
                 "--json"]) == 0
    result = _json(capsys)
    assert result["benchmark"] == "env-throughput" and result["env"] == "MoECache-v0"
    assert result["cpu_count"] >= 1
    rows = {row["num_envs"]: row for row in result["results"]}
    assert set(rows) == {1, 3}
    assert rows[1]["windows_per_run"] == 6 and rows[3]["windows_per_run"] == 6 and rows[3]["steps_per_run"] == 2
    for row in rows.values():
        assert len(row["cpu_seconds"]) == 2 and len(row["wall_seconds"]) == 2
        assert row["windows_per_s"] >= row["windows_per_s_median"] > 0
        # a window of MoECache-v0 is 8 steps of 1-8 tokens through 24 layers
        assert 8 * 24 <= row["routing_events_per_window"] <= 8 * 8 * 24
        assert row["events_per_s"] == pytest.approx(row["windows_per_s"] * row["routing_events_per_window"], rel=1e-3)
        assert 0 < row["kernel_cpu_share"] <= 1
    assert [c["num_envs"] for c in result["cartpole"]] == [1, 3]
    lru = result["python_lru_reference"]
    assert lru["events_per_s"] > 0 and 0 < lru["hit_rate"] < 1


@pytest.mark.parametrize("args,needle", [
    (["--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--env", "MoECache-v0", "--num-envs", "0"], "--num-envs"),
    (["--train", "--num-envs", "2", "4"], "one --num-envs"),
    (["--train", "--train-steps", "0"], "--train-steps"),
    (["--num-envs", "4"], "--num-envs goes with"),
    (["--threads", "2"], "--threads goes with"),
    (["--env", "MoECache-v0", "--threads", "0"], "--threads must be in 1.."),
])
def test_bench_env_bad_input_is_one_line(args, needle, capsys):
    assert main(["bench", *args, "--repeats", "1", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


@pytest.mark.slow
def test_bench_train_reports_ppo_steps_per_second(capsys, tmp_path, monkeypatch):
    pytest.importorskip("stable_baselines3")
    import tempfile

    # SB3's default logger makes an SB3-<time> folder in the temp dir for every learn(); the bench must not
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["bench", "--train", "--num-envs", "4", "--train-steps", "64", "--repeats", "1", "--json"]) == 0
    result = _json(capsys)
    assert result["benchmark"] == "ppo-train-throughput" and result["vec_backend"] == "native"
    # one rollout of the YAML's size (512 x 2) spread over 4 environments: learn() runs whole rollouts
    assert result["ppo_kwargs"]["n_steps"] == 256
    assert result["results"]["steps_per_run"] == 1024 and result["cartpole"]["steps_per_run"] == 1024
    assert result["results"]["steps_per_s"] > 0 and result["cartpole"]["steps_per_s"] > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("SB3-")] == []
    # the MoE run's CPU per step, split into the replay, the rest of the environment and the learner: parts of the
    # run's CPU time (which also counts building the model), so together no more than it and most of it
    split = result["results"]["cpu_ms_per_step"]
    assert sorted(split) == ["env_python", "kernel", "learner"] and all(len(v) == 1 for v in split.values())
    assert all(v[0] > 0 for v in split.values())
    run_ms_per_step = 1e3 * result["results"]["cpu_seconds"][0] / 1024
    assert 0.5 * run_ms_per_step < sum(v[0] for v in split.values()) <= run_ms_per_step * 1.001
    assert "cpu_ms_per_step" not in result["cartpole"]
