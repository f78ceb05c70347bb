"""Run agents through episodes, tune the static baseline, and play the per-window hindsight oracle.

Fairness: every agent is run on the same episodes: episode ``i`` is ``env.reset(seed=seed + i)``, which fixes
the trace, the starting sequence and the workload schedule (the agents never touch ``env.np_random``).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import gymnasium as gym
import numpy as np

import moe_cache_env.envs  # noqa: F401  (registers the environments)
from moe_cache_env.agents.baselines import BASELINES, Agent, StaticAgent
from moe_cache_env.envs import resolve_env_id, variant_config

#: the grid of fixed thresholds searched by ``static-tuned`` and tried per window by the oracle
L2_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)
L3_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclass
class EpisodeRecord:
    """What one episode of one agent produced."""

    agent: str
    episode: int
    seed: int
    trace: str
    start_sequence: int
    reward: float
    windows: int
    metrics: dict[str, Any]
    coverage_term: float
    latency_term: float
    thresholds: list[tuple[float, float]] = field(default_factory=list)
    #: ``info["episode_spec"]`` at reset: with ``actions``, everything needed to replay the episode exactly
    episode_spec: dict[str, Any] = field(default_factory=dict)
    actions: list[Any] = field(default_factory=list)

    def replay_record(self) -> dict[str, Any]:
        """A JSON-able record of the episode: ``replay_episode(env, record)`` plays it again bit-identically."""
        return {"agent": self.agent, "episode": self.episode, "seed": self.seed, **self.episode_spec,
                "actions": self.actions, "reward": self.reward}

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "agent": self.agent,
            "episode": self.episode,
            "seed": self.seed,
            "trace": self.trace,
            "start_sequence": self.start_sequence,
            "windows": self.windows,
            "reward": self.reward,
            "coverage_term": self.coverage_term,
            "latency_term": self.latency_term,
            "perfect_coverage": m["perfect_coverage"],
            "mean_latency_ms": m["mean_latency_ms"],
            "p95_latency_ms": m["p95_latency_ms"],
            "wasted_prefetch_bytes": m["wasted_prefetch_bytes"],
            "bytes_transferred": m["bytes_transferred"],
            "mean_l2_threshold": float(np.mean([t[0] for t in self.thresholds])) if self.thresholds else float("nan"),
            "mean_l3_threshold": float(np.mean([t[1] for t in self.thresholds])) if self.thresholds else float("nan"),
        }


def make_env(env_id: str, split: str = "test", overrides: dict[str, Any] | None = None, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id)`` with the registered config, replaying ``split`` (train/validation/test).

    ``env_id`` may be in any form ``gymnasium.make`` accepts (``moe_cache_env.envs.resolve_env_id``);
    ``overrides`` replace the variant's keys. The ``TimeLimit`` that ``gymnasium.make`` adds is set to the
    config's ``max_episode_steps``, so the environment's own truncation and the wrapper's agree.
    """
    from moe_cache_env.envs import EVICT_ID

    if env_id.split(":")[-1] == EVICT_ID:
        # the eviction environment: its own config keys (envs/evict.py); episodes end with their replay. (Not cut
        # after a number of decisions: a policy that misses less decides less often, so the same number of
        # decisions would cover more of the trace and cost it more milliseconds.)
        return gym.make(EVICT_ID, config={**(overrides or {}), "split": split}, **kwargs)
    canonical = resolve_env_id(env_id)
    config = variant_config(canonical)
    config["split"] = split
    for key, value in (overrides or {}).items():
        config[key] = value
    steps = config.get("max_episode_steps")
    kwargs.setdefault("max_episode_steps", int(steps) if isinstance(steps, int) and steps > 0 else None)
    from moe_cache_env.envs import kept_versions_quiet

    with kept_versions_quiet():
        return gym.make(canonical, config=config, **kwargs)


def run_episode(env: gym.Env, agent: Agent, seed: int, episode: int = 0,
                choose: Callable[[gym.Env, np.ndarray], Any] | None = None) -> EpisodeRecord:
    """One episode of ``agent`` (or of ``choose(env, obs)`` when given) on ``env.reset(seed=seed)``."""
    obs, info = env.reset(seed=seed)
    spec = dict(info["episode_spec"])
    if choose is None:
        agent.reset(env, seed)
    total = cov = lat = 0.0
    windows = 0
    thresholds = []
    actions: list[Any] = []
    while True:
        action = choose(env, obs) if choose is not None else agent.act(obs)
        actions.append(np.asarray(action).tolist())
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        cov += info["reward_terms"]["coverage_term"]
        lat += info["reward_terms"]["latency_term"]
        thresholds.append((info["controls"]["l2_threshold"], info["controls"]["l3_threshold"]))
        windows += 1
        if terminated or truncated:
            break
    return EpisodeRecord(
        agent=agent.name,
        episode=episode,
        seed=seed,
        trace=spec["trace"],
        start_sequence=int(spec["start_sequence"]),
        reward=total,
        windows=windows,
        metrics=info.get("episode_metrics") or env.unwrapped.episode_metrics(),
        coverage_term=cov,
        latency_term=lat,
        thresholds=thresholds,
        episode_spec=spec,
        actions=actions,
    )


def replay_episode(env: gym.Env, record: dict[str, Any]) -> list[float]:
    """Play a recorded episode again (``EpisodeRecord.replay_record``): the same trace, start, simulator seed
    and actions; returns the rewards, which equal the recorded episode's bit for bit."""
    options = {key: record[key] for key in ("trace", "start_sequence", "sim_seed")}
    if record.get("split") is not None and record["split"] != env.unwrapped.config["split"]:
        raise ValueError(f"the record was played on split {record['split']!r}; this environment replays "
                         f"{env.unwrapped.config['split']!r}")
    env.reset(options=options)
    rewards = []
    for action in record["actions"]:
        _, reward, terminated, truncated, _ = env.step(np.asarray(action, dtype=env.action_space.dtype)
                                                       if env.action_space.shape else int(action))
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return rewards


def check_agent_config(config: Any, remedy: str = "evaluate those settings with simulator policies") -> None:
    """Refuse a simulator ``config`` with settings an environment does not have (its execution order, a decision
    time): an agent replaying through the environment would run under others than the caller records.
    Raises ``ConfigError`` (one line, ending with ``remedy``)."""
    from moe_cache_env.sim.config import ConfigError, SimConfig

    defaults = SimConfig()
    if config.execution_order != defaults.execution_order or config.decision_ms != defaults.decision_ms:
        raise ConfigError(f"an agent acts through an environment, which replays {defaults.execution_order} layers "
                          f"with no extra decision time; got execution_order={config.execution_order!r}, "
                          f"decision_ms={config.decision_ms}: {remedy}")


def evaluate_agent_on_trace(spec: str, trace_name: str, num_tokens: int, config: Any, env_id: str,
                            seed: int) -> dict[str, Any]:
    """Replay a whole trace once with an agent acting through ``env_id`` under a simulator ``config``.

    The environment replays the trace in file order (split ``all``, from its first sequence) with the config's
    cache, workload, profile, timing, launch cost, prefetch hand-off and predictor (learned online, as for the
    simulator's policies); the agent sets the controls once per window. Returns the simulator's metrics of the
    replay.
    """
    from dataclasses import asdict

    check_agent_config(config)
    agent = make_agent(spec)
    overrides = {
        "traces": [trace_name],
        "episode_tokens": num_tokens,
        "max_episode_steps": 10**9,
        "predictor_fit_tokens": 0,
        "cache": asdict(config.cache),
        "workload": asdict(config.workload),
        "profile": config.profile,
        "timing": config.timing,
        "predictor": config.predictor,
        "oracle_accuracy": config.oracle_accuracy,
        "expert_bytes": config.expert_bytes,
        "launch_cost": config.launch_cost,
        "prefetch_handoff": config.prefetch_handoff,
    }
    env = make_env(env_id, split="all", overrides=overrides)
    obs, _ = env.reset(seed=seed, options={"trace": 0, "start_sequence": 0})
    agent.reset(env, seed)
    while True:
        obs, _, terminated, truncated, info = env.step(agent.act(obs))
        if terminated or truncated:
            break
    metrics = info.get("episode_metrics") or env.unwrapped.episode_metrics()
    env.close()
    return metrics


def run_agent(env: gym.Env, agent: Agent, episodes: int, seed: int) -> list[EpisodeRecord]:
    """``episodes`` episodes, episode i on ``reset(seed=seed + i)``."""
    return [run_episode(env, agent, seed + i, i) for i in range(episodes)]


def threshold_grid(l2_grid: Sequence[float] = L2_GRID, l3_grid: Sequence[float] = L3_GRID) -> list[tuple[float, float]]:
    """Every (l2, l3) of the grids with l3 <= l2 (the cache's admission order)."""
    return [(a, b) for a, b in itertools.product(l2_grid, l3_grid) if b <= a]


def tune_static(env_id: str, episodes: int, seed: int, grid: Iterable[tuple[float, float]] | None = None,
                overrides: dict[str, Any] | None = None,
                progress: Callable[[float, float], None] | None = None) -> tuple[tuple[float, float], list[dict[str, Any]]]:
    """Grid search of fixed thresholds on the *train* split: the pair with the best mean episode reward.

    Returns ``((l2, l3), rows)`` with one row per grid point (mean and std of the reward);
    ``progress(l2, l3)`` is called after each grid point.
    """
    env = make_env(env_id, "train", overrides)
    rows = []
    for l2, l3 in grid or threshold_grid():
        records = run_agent(env, StaticAgent(l2, l3, name=f"static-{l2:.2f}-{l3:.2f}"), episodes, seed)
        rewards = [r.reward for r in records]
        rows.append({"l2": l2, "l3": l3, "mean_reward": float(np.mean(rewards)), "std_reward": float(np.std(rewards))})
        if progress is not None:
            progress(l2, l3)
    env.close()
    best = max(rows, key=lambda r: r["mean_reward"])
    return (best["l2"], best["l3"]), rows


class OracleChooser:
    """Per-window hindsight oracle: before each window, try every grid point on a copy of the environment and
    keep the thresholds that give this window the highest reward (greedy: it does not look past the window).
    """

    name = "oracle-window"

    def __init__(self, grid: Iterable[tuple[float, float]] | None = None) -> None:
        self.grid = list(grid or threshold_grid())

    def __call__(self, env: gym.Env, obs: np.ndarray) -> Any:
        base = env.unwrapped
        # the traces are read-only: share them between the copies instead of copying megabytes per try
        memo = {id(base.episode_trace): base.episode_trace, id(base.sim.trace): base.sim.trace}
        best_action, best_reward = None, -np.inf
        for l2, l3 in self.grid:
            trial = copy.deepcopy(base, memo=dict(memo))
            action = trial.threshold_action(l2, l3)
            _, reward, *_ = trial.step(action)
            if reward > best_reward:
                best_action, best_reward = action, reward
        return best_action


def make_agent(spec: str, tuned: tuple[float, float] | None = None) -> Agent:
    """An agent from a spec: a baseline name, ``static-tuned`` (needs ``tuned``), or ``ALGO:PATH`` (SB3 model)."""
    if spec in BASELINES:
        return BASELINES[spec]()
    if spec == "static-tuned":
        if tuned is None:
            raise ValueError("static-tuned needs the tuned thresholds (run tune_static first)")
        return StaticAgent(*tuned, name="static-tuned")
    if ":" in spec:
        from moe_cache_env.agents.sb3 import SB3Agent

        algo, path = spec.split(":", 1)
        return SB3Agent(algo, path)
    raise ValueError(
        f"unknown agent {spec!r}; use one of {sorted(BASELINES) + ['static-tuned']} or ALGO:PATH (e.g. ppo:model.zip)"
    )
