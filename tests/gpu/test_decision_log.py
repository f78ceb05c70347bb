"""Decision logs: building, validating the slot bookkeeping, saving and loading."""

from __future__ import annotations

import numpy as np
import pytest

from moe_cache_env.gpu.decision_log import (
    FORMAT_ID,
    SOURCE_DEMAND,
    SOURCE_PREFETCHED,
    SOURCE_RESIDENT,
    DecisionLogError,
    LogBuilder,
    load_log,
    save_log,
)
from moe_cache_env.gpu.reference_policies import reference_log

META = {"policy": "test", "num_layers": 2, "num_experts": 4, "top_k": 1, "expert_bytes": 64, "num_slots": 4,
        "batch": 1}


def _two_steps(second_source=SOURCE_RESIDENT, prefetch_slot=None):
    b = LogBuilder(META)
    b.begin_step(1)
    b.need(1, 0, 1, SOURCE_DEMAND)
    if prefetch_slot is not None:
        b.prefetch(1, 2, prefetch_slot)
    b.end_layer()
    b.need(3, 2, 1, SOURCE_DEMAND)
    b.end_layer()
    b.begin_step(1)
    b.need(1, 0, 1, second_source)
    b.end_layer()
    b.need(3, 2, 1, SOURCE_RESIDENT)
    b.end_layer()
    return b.build()


def test_a_consistent_log_builds_and_counts():
    log = _two_steps()
    assert log.meta["format"] == FORMAT_ID
    assert log.num_steps == 2 and log.num_layers == 2
    counts = log.counts()
    assert counts["demand_loads"] == 2 and counts["resident"] == 2 and counts["hit_rate"] == 0.5
    d = log.layer_decisions(1, 0)
    assert d.need == [(1, 0, 1, SOURCE_RESIDENT)] and d.prefetch == []


def test_a_hit_on_a_slot_that_holds_something_else_is_rejected():
    b = LogBuilder(META)
    b.begin_step(1)
    b.need(1, 0, 1, SOURCE_RESIDENT)  # slot 0 is empty
    b.end_layer()
    b.need(0, 2, 1, SOURCE_DEMAND)
    b.end_layer()
    with pytest.raises(DecisionLogError, match="step 0, layer 0: expert 1 is resident in slot 0, but the slot holds nothing"):
        b.build()


def test_a_prefetch_may_not_overwrite_a_slot_its_layer_reads():
    with pytest.raises(DecisionLogError, match="overwrites slot 0"):
        _two_steps(prefetch_slot=0)


def test_a_prefetch_overwrites_and_the_next_read_must_follow_it():
    # step 0 layer 0 prefetches layer 1 expert 2 into slot 2, where layer 1 then expects expert 3
    with pytest.raises(DecisionLogError, match="expert 3 is demand|holds layer 1 expert 2"):
        b = LogBuilder(META)
        b.begin_step(1)
        b.need(1, 0, 1, SOURCE_DEMAND)
        b.prefetch(1, 2, 2)
        b.end_layer()
        b.need(3, 2, 1, SOURCE_PREFETCHED)
        b.end_layer()
        b.build()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="moe-decision-log/9"), "format"),
    (lambda m: m.update(num_slots=0), "num_slots"),
    (lambda m: m.pop("batch"), "lacks"),
])
def test_bad_meta_is_rejected(edit, message):
    meta = dict(META)
    edit(meta)
    b = LogBuilder(meta)
    b.begin_step(1)
    b.need(0, 0, 1, SOURCE_DEMAND)
    b.end_layer()
    b.need(0, 2, 1, SOURCE_DEMAND)
    b.end_layer()
    with pytest.raises(DecisionLogError, match=message):
        b.build()


def test_ranges_and_duplicates_are_checked():
    b = LogBuilder(META)
    b.begin_step(1)
    b.need(1, 0, 1, SOURCE_DEMAND)
    b.need(1, 1, 1, SOURCE_DEMAND)
    b.end_layer()
    b.need(0, 2, 1, SOURCE_DEMAND)
    b.end_layer()
    with pytest.raises(DecisionLogError, match="listed twice"):
        b.build()
    b = LogBuilder(META)
    b.begin_step(1)
    b.need(9, 0, 1, SOURCE_DEMAND)
    b.end_layer()
    b.need(0, 2, 1, SOURCE_DEMAND)
    b.end_layer()
    with pytest.raises(DecisionLogError, match="need_expert out of range"):
        b.build()


def test_save_load_round_trip_and_head(tmp_path):
    rng = np.random.default_rng(0)
    experts = np.stack([rng.permutation(8)[:2] for _ in range(30 * 3)]).reshape(30, 3, 2)
    log = reference_log(experts, num_experts=8, expert_bytes=1024, slots_per_layer=4, policy="lru-prefetch")
    path = save_log(log, tmp_path / "log.npz")
    back = load_log(path)
    assert back == log
    head = log.head(5)
    assert head.num_steps == 5 and head.counts()["expert_requests"] == int(log.need_offsets[5 * 3])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DecisionLogError, match="cannot read"):
        load_log(tmp_path / "bad.npz")
    np.savez(tmp_path / "trace.npz", experts=experts)
    with pytest.raises(DecisionLogError, match="not a decision log"):
        load_log(tmp_path / "trace.npz")
