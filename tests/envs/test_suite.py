"""The environments' trace suite: names go through the catalog, folders expand, one split is built alone."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from moe_cache_env.envs.config import make_config
from moe_cache_env.envs.suite import load_split, load_suite_trace, parse_synth_name, split_part
from moe_cache_env.sim.config import ConfigError
from moe_cache_env.traces.catalog import bundled_root
from moe_cache_env.traces.format import load_trace, save_trace
from moe_cache_env.traces.splits import SPLITS, split_trace


@pytest.mark.parametrize("fractions, seed", [((0.7, 0.15, 0.15), 0), ((0.5, 0.25, 0.25), 7)])
def test_one_split_equals_that_part_of_split_trace(fractions, seed):
    trace = load_trace(bundled_root() / "synthetic" / "mixtral.npz")
    reference = split_trace(trace, fractions, seed)
    for split in SPLITS:
        part = split_part(trace, split, fractions, seed)
        np.testing.assert_array_equal(part.experts, reference[split].experts)
        np.testing.assert_array_equal(part.sequence, reference[split].sequence)
        assert dict(part.meta) == dict(reference[split].meta)
        assert part.name == reference[split].name == f"{trace.name}#{split}"


def test_suite_traces_are_read_only_and_shared():
    trace = load_suite_trace("bundled://synthetic/mixtral")
    assert load_suite_trace("bundled://synthetic/mixtral") is trace
    with pytest.raises(ValueError):
        trace.experts[0, 0, 0] = 1
    whole = load_split("bundled://synthetic/mixtral", "all", (0.7, 0.15, 0.15), 0)
    assert whole is trace


def test_both_synthetic_forms_parse_alike():
    assert parse_synth_name("synth:olmoe:4096:2") == ("olmoe", 4096, 2)
    assert parse_synth_name("synth://olmoe?tokens=4096&seed=2") == ("olmoe", 4096, 2)


def test_a_folder_in_the_config_stands_for_its_traces(tmp_path):
    trace = load_trace(bundled_root() / "synthetic" / "mixtral.npz")
    save_trace(trace, tmp_path / "suite" / "one.npz")
    save_trace(trace, tmp_path / "suite" / "two.npz")
    config = make_config({"traces": [str(tmp_path / "suite"), "bundled://learned"]})
    assert config["traces"] == [
        str(tmp_path / "suite" / "one.npz"),
        str(tmp_path / "suite" / "two.npz"),
        "bundled://learned/tiny-olmoe-12L-64E-decode",
        "bundled://learned/tiny-olmoe-12L-64E-prefill",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .npz trace file"):
        make_config({"traces": [str(tmp_path / "empty")]})


def test_an_environment_replays_a_bundled_folder(make_small_env):
    env = make_small_env("MoECache-Learned-v0", traces=["bundled://learned"])
    seen = set()
    for index in range(2):
        _, info = env.reset(seed=0, options={"trace": index})
        seen.add(info["trace"])
    assert seen == {"bundled://learned/tiny-olmoe-12L-64E-decode", "bundled://learned/tiny-olmoe-12L-64E-prefill"}


def test_resolving_a_suite_trace_loads_no_cli_module():
    code = (
        "import sys\nfrom moe_cache_env.envs.suite import load_suite_trace\n"
        "load_suite_trace('synthetic/mixtral')\nprint('\\n'.join(sorted(sys.modules)))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert not [m for m in out.stdout.split() if m.startswith("moe_cache_env.cli")]
