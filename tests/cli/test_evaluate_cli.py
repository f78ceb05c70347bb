"""The evaluate and bench commands, run for real on a small bundled trace."""

import json

import numpy as np
import pytest

from moe_cache_env.cli import main
from moe_cache_env.traces import load_trace, save_trace
from moe_cache_env.traces.suite import resolve_trace
from tests.sim.flat_reference import flat_cache_hits


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    """The first 1500 tokens' worth of sequences of the bundled default trace."""
    trace = load_trace(resolve_trace("qwen1.5-moe"))
    bounds = trace.sequence_bounds()
    keep = [int(trace.sequence[s]) for s, e in bounds if e <= 1500]
    path = tmp_path_factory.mktemp("traces") / "small.npz"
    save_trace(trace.select_sequences(keep), path)
    return path


def test_same_inputs_give_byte_identical_json(small_trace, tmp_path, capsys):
    args = ["evaluate", "--trace", str(small_trace), "--policy", "static", "--predictor", "noisy-oracle",
            "--profile", "h100", "--batch", "4", "--seed", "7"]
    assert main(args + ["--json", str(tmp_path / "a.json")]) == 0
    assert main(args + ["--json", str(tmp_path / "b.json")]) == 0
    a = (tmp_path / "a.json").read_bytes()
    assert a == (tmp_path / "b.json").read_bytes()
    data = json.loads(a)
    for key in ("hit_rate", "perfect_coverage", "avg_coverage", "mean_latency_ms", "p95_latency_ms",
                "bytes_transferred", "wasted_prefetch_bytes"):
        assert key in data
    out = capsys.readouterr().out
    assert "perfect cov" in out and "static" in out


@pytest.mark.parametrize("policy", ["lru", "belady"])
@pytest.mark.parametrize("scope", ["per-layer", "global"])
def test_reference_hit_rate_is_the_definition(small_trace, tmp_path, policy, scope):
    capacity = 12 if scope == "per-layer" else 12 * 24
    out = tmp_path / "m.json"
    assert main(["evaluate", "--trace", str(small_trace), "--policy", policy, "--capacity", str(capacity),
                 "--scope", scope, "--batch", "3", "--json", str(out)]) == 0
    trace = load_trace(small_trace)
    # the schedule the command replays: batch 3, sequences in file order (a stationary workload), no KV cache
    from moe_cache_env.sim.config import CacheConfig, WorkloadConfig
    from moe_cache_env.sim.schedule import build_schedule

    schedule = build_schedule(trace, WorkloadConfig(batch_min=3, batch_max=3), CacheConfig(capacity, 0, 0, scope),
                              np.random.default_rng(0))
    hits, requests = flat_cache_hits(trace.experts, trace.num_experts, schedule.step_tokens,
                                     np.full(schedule.num_steps, capacity), policy, scope)
    data = json.loads(out.read_text())
    assert data["expert_requests"] == requests
    assert data["hit_rate"] == hits / requests


def test_several_policies_and_windows(small_trace, tmp_path):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--trace", str(small_trace), "--policy", "static,no-prefetch,perfect,lru,belady",
                 "--window", "200", "--json", str(out)]) == 0
    data = json.loads(out.read_text())["policies"]
    assert set(data) == {"static", "no-prefetch", "perfect", "lru", "belady"}
    assert data["belady"]["kind"] == "hit-rate bound" and data["lru"]["kind"] == "policy"
    assert data["belady"]["hit_rate"] >= data["lru"]["hit_rate"]
    assert len(data["static"]["windows"]) == int(np.ceil(data["static"]["steps"] / 200))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "lifo"], "unknown policy"),
        (["--l2-threshold", "0.2", "--l3-threshold", "0.5"], "l3_threshold=0.5 is above"),
        (["--capacity", "2"], "capacity=2 is below top_k=4"),
        (["--profile", "tpu-v9"], "unknown profile 'tpu-v9'"),
        (["--trace", "no-such-trace"], "no-such-trace"),
    ],
)
def test_bad_input_is_one_clear_line(small_trace, capsys, args, message):
    base = ["evaluate", "--trace", str(small_trace)]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("moe-cache-env evaluate: error:")


def test_malformed_trace_file_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, experts=np.zeros((2, 1, 1), dtype=np.int64))
    assert main(["evaluate", "--trace", str(bad)]) == 2
    assert "missing array 'sequence'" in capsys.readouterr().err


def test_bench_prints_json(small_trace, capsys):
    assert main(["bench", "--trace", str(small_trace), "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["events_per_s"] > 0 and result["routing_events"] == load_trace(small_trace).num_tokens * 24


def test_agents_and_saved_models_are_evaluated_through_the_environment(small_trace, tmp_path):
    from pathlib import Path

    model = Path(__file__).resolve().parents[2] / "experiments/ppo_vs_baselines/ppo_s0/model.zip"
    out = tmp_path / "m.json"
    assert main(["evaluate", "--trace", str(small_trace), "--policy", f"static,dynamic,ppo:{model}",
                 "--profile", "h100", "--batch", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())["policies"]
    trace = load_trace(small_trace)
    for name, entry in data.items():
        # every policy replays the whole trace
        assert entry["tokens"] == trace.num_tokens, name
    assert data["dynamic"]["config"]["env"] == "MoECache-v0"
    # the seed's dynamic strategy moves the thresholds, so it does not reproduce static's replay
    assert data["dynamic"]["mean_latency_ms"] != data["static"]["mean_latency_ms"]


def test_missing_model_is_one_clear_line(small_trace, capsys):
    assert main(["evaluate", "--trace", str(small_trace), "--policy", "ppo:/no/such/model.zip"]) == 2
    assert "no saved ppo model" in capsys.readouterr().err


def test_no_launch_cost_drops_the_profiles_launch_time(small_trace, tmp_path):
    # h200 charges 0.095 ms per expert launch: an all-resident layer of 4 experts is launch-bound, so without the
    # launch cost every layer is at most as long, and the hits (decided before timing) are the same
    out = {}
    for flag in ([], ["--no-launch-cost"]):
        path = tmp_path / f"{len(flag)}.json"
        assert main(["evaluate", "--trace", str(small_trace), "--policy", "lru", "--profile", "h200", "--tokens",
                     "200", "--quiet", "--json", str(path), *flag]) == 0
        out[len(flag)] = json.loads(path.read_text())
    with_launch, without = out[0], out[1]
    assert with_launch["config"]["launch_cost"] is True and without["config"]["launch_cost"] is False
    assert without["hit_rate"] == with_launch["hit_rate"]
    assert without["mean_latency_ms"] < with_launch["mean_latency_ms"]


def test_an_agent_replays_under_the_commands_launch_cost_and_hand_off(small_trace, tmp_path, capsys):
    # the environment takes the command's launch cost and prefetch hand-off (which the row records) instead of
    # its own; settings an environment does not have are refused instead of silently dropped
    out = {}
    for flags in (["--prefetch-handoff", "link"], ["--prefetch-handoff", "link", "--no-launch-cost"]):
        path = tmp_path / f"{len(flags)}.json"
        assert main(["evaluate", "--trace", str(small_trace), "--policy", "dynamic", "--profile", "h200", "--tokens",
                     "200", "--quiet", "--json", str(path), *flags]) == 0
        out[len(flags)] = json.loads(path.read_text())
    with_launch, without = out[2], out[3]
    assert without["config"]["launch_cost"] is False and without["config"]["prefetch_handoff"] == "link"
    assert without["mean_latency_ms"] < with_launch["mean_latency_ms"]  # h200 charges each expert's launch
    capsys.readouterr()
    assert main(["evaluate", "--trace", str(small_trace), "--policy", "dynamic", "--decision-ms", "0.1",
                 "--tokens", "200", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--decision-ms" in err[0], err
