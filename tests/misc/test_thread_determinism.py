"""Results do not depend on how many threads BLAS / OpenMP may use: the same evaluation gives the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _evaluate_json(tmp_path: Path, threads: str) -> bytes:
    out = tmp_path / f"eval-{threads}.json"
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = threads
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # The simulator's policies report a token-weighted mean latency over ~20,000 steps: a sum long enough
    # for a threaded BLAS dot product to split it differently with 1 and with 4 threads.
    subprocess.run(
        [sys.executable, "-m", "moe_cache_env", "evaluate", "--trace", "qwen1.5-moe",
         "--policy", "static,no-prefetch,perfect", "--json", str(out)],
        env=env, cwd=tmp_path, check=True, capture_output=True,
    )
    return out.read_bytes()


@pytest.mark.slow
def test_evaluate_json_is_identical_under_one_and_four_threads(tmp_path):
    assert _evaluate_json(tmp_path, "1") == _evaluate_json(tmp_path, "4")
