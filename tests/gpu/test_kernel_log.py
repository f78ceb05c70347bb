"""The simulator kernel's decision log: it matches the kernel's counters, changes no metric, and replays."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.gpu.decision_log import load_log, save_log
from moe_cache_env.gpu.kernel_log import simulator_decision_log
import dataclasses

from moe_cache_env.gpu.reference_policies import ReferenceTiming, estimate_latency
from moe_cache_env.gpu.replay import FakeReplayDevice, replay
from moe_cache_env.profiles import load_profile
from moe_cache_env.sim import kernel as K
from moe_cache_env.sim.config import Controls, SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate, policy_setup
from moe_cache_env.sim.simulator import Simulator
from tests.helpers import cli_runner

from moe_cache_env.traces.suite import resolve_trace
from moe_cache_env.traces.format import load_trace

POLICIES = ("no-prefetch", "static", "perfect", "lru")


def logged_run(trace, policy: str, batch: int, capacity: int, scope: str = "per-layer", order: str = "fused",
               fit_trace=None, handoff: str = "link"):
    config = SimConfig(cache=split_capacity(capacity, trace.top_k, scope), profile="h200", execution_order=order,
                       workload=WorkloadConfig(batch_min=batch, batch_max=batch), prefetch_handoff=handoff)
    config, controls = policy_setup(trace, policy, config, Controls())
    sim = Simulator(trace, config, rng=np.random.default_rng(0), fit_trace=fit_trace)
    sim.record_decisions()
    while not sim.done:
        sim.run(37, controls)  # windows: the log continues across calls
    return sim, simulator_decision_log(sim, policy=policy, batch=batch)


@pytest.fixture(scope="module")
def trace():
    return load_trace(resolve_trace("synthetic/qwen1.5-moe")).head(160)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("batch", [1, 4])
def test_log_counts_equal_the_kernel_counters(trace, policy, batch):
    sim, log = logged_run(trace, policy, batch, capacity=14)
    c, counts = sim.counters, log.counts()
    assert counts["expert_requests"] == c[K.C_REQUESTS]
    assert counts["demand_loads"] == c[K.C_MISS]
    assert counts["prefetch_hits"] == c[K.C_PREFETCH_USED]
    assert counts["prefetches_issued"] == c[K.C_PREFETCH_ISSUED]
    assert log.num_steps == sim.num_steps and log.step_ntokens.sum() == trace.num_tokens
    assert log.meta["kernel_step_latency_ms"] == pytest.approx(sim.step_latency_ms.tolist(), abs=1e-5)
    if policy in ("no-prefetch", "lru"):
        assert counts["prefetches_issued"] == 0
    if policy == "perfect":
        assert counts["prefetches_issued"] > 0 and counts["prefetch_hits"] > 0
    assert not (log.initial_slots >= 0).any()  # nothing is preloaded: every key was loaded in the log
    # the slot pool stays near the cache's size: a layer may pin its experts beyond it, never more
    assert log.num_slots <= trace.num_layers * (14 + batch * trace.top_k)


@pytest.mark.parametrize("policy", POLICIES)
def test_logging_changes_no_number(trace, policy):
    config = SimConfig(cache=split_capacity(14, trace.top_k), profile="h200",
                       workload=WorkloadConfig(batch_min=2, batch_max=2))
    plain = evaluate(trace, EvaluationRequest(policy=policy, config=config))
    logged = evaluate(trace, EvaluationRequest(policy=policy, config=config, decision_log=True))
    assert plain["metrics"] == logged["metrics"]
    assert logged["decision_log"].meta["policy"] == policy and "decision_log" not in plain


def test_a_global_pool_and_a_preloaded_hot_set_are_logged_consistently(trace):
    sim, log = logged_run(trace, "hot-set", 1, capacity=14 * trace.num_layers, scope="global",
                          fit_trace=trace)
    assert log.meta["pool"] == "global"
    assert (log.initial_slots >= 0).any()  # the preloaded keys are resident from the start
    assert log.counts()["demand_loads"] == sim.counters[K.C_MISS]


@pytest.mark.parametrize("order", ["fused", "per-expert"])
def test_the_fake_device_replays_the_kernel_log(trace, order, tmp_path):
    _, log = logged_run(trace, "perfect", 1, capacity=14, order=order)
    path = save_log(log, tmp_path / "perfect.npz")
    again = load_log(path)
    assert again == log
    timing = ReferenceTiming.from_profile(load_profile("h200"), log.expert_bytes, batch=1, context=512)
    measured = replay(FakeReplayDevice(timing), again, order=order, warmup_steps=0)
    assert len(measured["latency_ms"]) == log.num_steps and (measured["latency_ms"] > 0).all()


@pytest.mark.parametrize("order", ["fused", "per-expert"])
@pytest.mark.parametrize("handoff", ["link", "host-poll"])
@pytest.mark.parametrize("copy_issue_ms", [0.0, 0.02])
def test_the_kernel_times_its_own_log_as_the_reference_estimate_does(trace, order, handoff, copy_issue_ms):
    # the kernel and the plain-Python estimate implement the same timing rules independently; the kernel leaves
    # out the host's launch of the non-expert work (0.007 ms in h200), so the estimate is run without it
    profile = dataclasses.replace(load_profile("h200"), copy_issue_ms=copy_issue_ms)
    config = SimConfig(cache=split_capacity(14, trace.top_k), profile="h200", execution_order=order,
                       workload=WorkloadConfig(batch_min=1, batch_max=1), prefetch_handoff=handoff)
    config, controls = policy_setup(trace, "perfect", config, Controls())
    sim = Simulator(trace, config, rng=np.random.default_rng(0), profile=profile)
    sim.record_decisions()
    while not sim.done:
        sim.run(37, controls)
    log = simulator_decision_log(sim, policy="perfect", batch=1)
    assert log.meta["prefetch_handoff"] == handoff
    timing = ReferenceTiming.from_profile(profile, log.expert_bytes, batch=1, context=512)
    assert timing.copy_issue_ms == copy_issue_ms
    est = estimate_latency(log, dataclasses.replace(timing, layer_launch_ms=0.0), order, handoff)
    np.testing.assert_allclose(sim.step_latency_ms, est["latency_ms"], rtol=1e-9)
    # a queued prefetch its layer needs before it started is loaded on demand: the kernel cancels the prefetch
    assert sim.counters[K.C_PREFETCH_CANCELLED] == est["copies"]["promoted"] > 0


def test_host_poll_delays_prefetches_that_the_link_rule_starts_at_once(trace):
    link, _ = logged_run(trace, "perfect", 1, capacity=14)
    poll, _ = logged_run(trace, "perfect", 1, capacity=14, handoff="host-poll")
    assert poll.counters[K.C_PREFETCH_CANCELLED] > link.counters[K.C_PREFETCH_CANCELLED]
    assert poll.step_latency_ms.sum() > link.step_latency_ms.sum()
    # without host costs (h100) there is no busy span: the two rules time every step alike
    runs = []
    for handoff in ("link", "host-poll"):
        config = SimConfig(cache=split_capacity(14, trace.top_k), profile="h100", prefetch_handoff=handoff)
        config, controls = policy_setup(trace, "perfect", config, Controls())
        sim = Simulator(trace, config, rng=np.random.default_rng(0))
        sim.run(sim.num_steps, controls)
        runs.append(sim)
    assert runs[0].step_latency_ms.tolist() == runs[1].step_latency_ms.tolist()
    assert runs[0].counters.tolist() == runs[1].counters.tolist()


def test_evaluate_writes_logs_that_replay_gpu_runs(monkeypatch, capsys, tmp_path):
    run_eval = run_replay = cli_runner(monkeypatch, capsys, ("evaluate", "replay-gpu"))
    code, out, err = run_eval("evaluate", "--trace", "synthetic/qwen1.5-moe", "--tokens", "120", "--policy",
                              "lru,perfect", "--profile", "h200", "--capacity", "14", "--quiet",
                              "--decision-log", str(tmp_path / "k.npz"))
    assert code == 0, err
    assert (tmp_path / "k-lru.npz").exists() and (tmp_path / "k-perfect.npz").exists()
    log = load_log(tmp_path / "k-perfect.npz")
    assert log.step_ntokens.sum() == 120
    code, out, err = run_replay("replay-gpu", "--device", "fake", "--profile", "h200", "--log",
                                str(tmp_path / "k-perfect.npz"), "--order", "fused", "--warmup-steps", "0")
    assert code == 0, err
    assert "sim err mean" in out and "perfect" in out
    code, _, err = run_eval("evaluate", "--policy", "balanced", "--tokens", "50", "--decision-log",
                            str(tmp_path / "a.npz"), "--quiet")
    assert code == 2 and "cannot be logged" in err
