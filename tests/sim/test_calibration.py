"""Online confidence calibration makes a learned predictor's confidence mean what it says."""

import dataclasses

import numpy as np

from moe_cache_env.sim import Controls, SimConfig, Simulator
from moe_cache_env.traces import load_trace
from moe_cache_env.traces.suite import resolve_trace


def run(trace, calibrate):
    config = SimConfig(predictor="cross-layer", calibrate_confidence=calibrate)
    sim = Simulator(trace, config, rng=np.random.default_rng(0))
    return sim.run(None, Controls(l2_threshold=1.01, l3_threshold=1.01)).metrics


def test_calibrated_top_confidence_tracks_top1_accuracy():
    trace = load_trace(resolve_trace("qwen1.5-moe"))
    trace = trace.select_sequences(np.unique(trace.sequence)[:40])
    raw = run(trace, calibrate=False)
    cal = run(trace, calibrate=True)
    # the most confident expert is needed with probability top1_accuracy; a calibrated predictor says so
    raw_gap = abs(raw["predictor_mean_max_confidence"] - raw["predictor_top1_accuracy"])
    cal_gap = abs(cal["predictor_mean_max_confidence"] - cal["predictor_top1_accuracy"])
    assert cal_gap < raw_gap / 2
    assert dataclasses.asdict(SimConfig())["calibrate_confidence"] is True
