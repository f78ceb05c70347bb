"""The environment's own metrics in TensorBoard during training, beside SB3's generic scalars.

Every window the training environments play ends with ``info["metrics"]`` (the simulator's metrics of the
window) and ``info["reward_terms"]`` (the reward and its terms). :class:`EnvMetricsCallback` reads them from
the infos of each training step and records their mean over the windows since the last log dump, under
``env/``:

============================  =====================================================================
tag                           what (a mean over the windows played since the previous dump)
============================  =====================================================================
``env/perfect_coverage``      share of routing events whose every expert was resident in time
``env/latency_ratio``         window latency over the demand-all reference latency (the reward's term)
``env/hit_rate``              share of expert requests served from the GPU cache
``env/ms_per_token``          mean latency per token (ms)
``env/wasted_bytes_share``    share of the bytes copied to the GPU that were prefetches never used
``env/link_utilization``      busy share of the host-to-GPU link
``env/reward``                the reward of a window (``coverage_term + latency_term``)
``env/coverage_term``,
``env/latency_term``          the reward's two terms
============================  =====================================================================

Windows are weighted equally (not by their tokens): it is the mean of what the agent was rewarded on. An
environment whose infos lack these keys (another action set's) logs nothing here.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from stable_baselines3.common.callbacks import BaseCallback

#: tag under ``env/`` -> how to read it from one window's info (None: not available in this info)
ENV_TAGS: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "perfect_coverage": lambda i: i["reward_terms"]["perfect_coverage"],
    "latency_ratio": lambda i: i["reward_terms"]["latency_ratio"],
    "hit_rate": lambda i: i["metrics"]["hit_rate"],
    "ms_per_token": lambda i: i["metrics"]["mean_latency_ms"],
    # no bytes copied in the window: nothing was wasted either
    "wasted_bytes_share": lambda i: (i["metrics"]["wasted_prefetch_bytes"] / i["metrics"]["bytes_transferred"]
                                     if i["metrics"]["bytes_transferred"] > 0 else 0.0),
    "link_utilization": lambda i: i["metrics"]["link_utilization"],
    "reward": lambda i: i["reward_terms"]["reward"],
    "coverage_term": lambda i: i["reward_terms"]["coverage_term"],
    "latency_term": lambda i: i["reward_terms"]["latency_term"],
}


def window_values(info: Mapping[str, Any]) -> dict[str, float]:
    """The ``env/`` values of one step's info: empty when the info holds no window metrics."""
    out: dict[str, float] = {}
    for tag, read in ENV_TAGS.items():
        try:
            value = read(info)
        except (KeyError, TypeError):
            continue
        if value is not None and math.isfinite(float(value)):
            out[tag] = float(value)
    return out


class EnvMetricsCallback(BaseCallback):
    """Record the training environments' window metrics (:data:`ENV_TAGS`) as ``env/...`` means.

    ``logger.record_mean`` keeps a running mean until SB3 dumps its logs (every rollout of PPO and A2C,
    every ``log_interval`` episodes of SAC and DQN), so each point of a curve is the mean over the windows
    played since the previous point. Holds no state of its own: a resumed run needs nothing restored.
    """

    def _on_step(self) -> bool:
        for info in self.locals.get("infos") or ():
            for tag, value in window_values(info).items():
                self.logger.record_mean(f"env/{tag}", value)
        return True
