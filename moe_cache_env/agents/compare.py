"""Compare agents on the same held-out episodes: a table, CSV, JSON and a figure.

Every agent plays episodes ``reset(seed=seed + i)``, i < episodes, of the environment on the chosen split
(``test`` by default), so all see the same traces, start points and workload schedules. Beside the agents, the
simulator's reference policies are evaluated on the same episode traces under the same workload schedule:
``lru`` (the demand-only cache of engines, a reference, not a bound), ``belady`` (the hit-rate bound of
demand-only caches of the same slots), ``clairvoyant`` (the latency bound) and ``perfect`` (the cache fed by
the perfect predictor at the seed's 0.7 / 0.3 thresholds: an oracle predictor, not a bound; its prefetches
can land late). ``docs/simulator.md`` says what each bounds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from moe_cache_env.agents.evaluation import OracleChooser, make_agent, make_env, run_episode, tune_static
from moe_cache_env._io import atomic_write, atomic_write_json, atomic_write_text

#: the simulator's reference policies replayed beside the agents (``REFERENCE_KINDS`` says what each is)
BOUNDS = ("lru", "belady", "clairvoyant", "perfect")
REFERENCE_KINDS = {"lru": "reference", "belady": "hit-rate bound", "clairvoyant": "latency bound",
                   "perfect": "oracle predictor"}
SUMMARY_KEYS = ("reward", "perfect_coverage", "mean_latency_ms", "p95_latency_ms", "wasted_prefetch_bytes")


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std())}


def bounds_for_episode(env, seed: int, policies: Sequence[str] = BOUNDS) -> dict[str, dict[str, Any]]:
    """Reference metrics of ``policies`` (default: the bounds) on the episode ``env.reset(seed=seed)`` plays: the
    same trace, the same workload schedule (the simulator's seed), through the environment's public
    ``info["episode_spec"]`` record."""
    from moe_cache_env.envs.moe_cache import episode_trace
    from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate

    _, info = env.reset(seed=seed)
    episode = info["episode_spec"]
    config = env.unwrapped.config
    trace = episode_trace(config, episode)
    out = {}
    for policy in policies:
        request = EvaluationRequest(policy=policy, config=config.sim, seed=int(episode["sim_seed"]))
        out[policy] = evaluate(trace, request)["metrics"]
    return out


def compare(
    env_id: str,
    agent_specs: Sequence[str],
    episodes: int,
    seed: int,
    out_dir: str | Path | None = None,
    *,
    split: str = "test",
    overrides: dict[str, Any] | None = None,
    tune_episodes: int = 3,
    with_bounds: bool = True,
    oracle: bool = False,
    progress: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Run every agent; return (and write under ``out_dir``) the per-agent summary and per-episode rows.

    ``progress(n, what)``, when given, is called after each unit of work (an episode, a grid point of the
    static-tuned search, one episode's bounds); :func:`work_units` gives their total.
    """
    from moe_cache_env.envs import resolve_env_id

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not agent_specs:
        raise ValueError("no agents given")
    from moe_cache_env.agents.sb3 import is_evict_env

    if is_evict_env(env_id):
        result = compare_evict(env_id, agent_specs, episodes, seed, split=split, overrides=overrides,
                               progress=progress)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(out_dir) / "compare.json", result)
        return result
    env_id = resolve_env_id(env_id)
    tick = progress or (lambda n, what: None)
    env = make_env(env_id, split, overrides)
    tuned = None
    tuning_rows: list[dict[str, Any]] = []
    if "static-tuned" in agent_specs:
        tuned, tuning_rows = tune_static(env_id, tune_episodes, seed + 10_000, overrides=overrides,
                                         progress=lambda l2, l3: tick(1, f"static-tuned grid {l2:.2f}/{l3:.2f}"))
    agents = [make_agent(spec, tuned) for spec in agent_specs]
    rows: list[dict[str, Any]] = []
    replays: list[dict[str, Any]] = []  # every episode as a replayable record (episodes.jsonl)
    summary: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for agent in agents:
        start = time.time()
        records = []
        for i in range(episodes):
            records.append(run_episode(env, agent, seed + i, i))
            tick(1, f"{agent.name} episode {i + 1}/{episodes}")
        timing[agent.name] = round(time.time() - start, 2)
        episode_rows = [r.summary() for r in records]
        rows.extend(episode_rows)
        replays.extend(r.replay_record() for r in records)
        summary[agent.name] = {key: _mean_std([r[key] for r in episode_rows]) for key in SUMMARY_KEYS}
    if oracle:
        chooser = OracleChooser()
        start = time.time()
        records = []
        for i in range(episodes):
            record = run_episode(env, _Named(chooser.name), seed + i, i, choose=chooser)
            records.append(record)
            tick(1, f"{chooser.name} episode {i + 1}/{episodes}")
        timing[chooser.name] = round(time.time() - start, 2)
        episode_rows = [r.summary() for r in records]
        rows.extend(episode_rows)
        replays.extend(r.replay_record() for r in records)
        summary[chooser.name] = {key: _mean_std([r[key] for r in episode_rows]) for key in SUMMARY_KEYS}
    # episodes differ far more from each other than agents do on one episode: the paired difference to a
    # reference agent on the same episode is the sharper comparison
    reference = "static" if "static" in summary else next(iter(summary))
    reference_reward = {r["episode"]: r["reward"] for r in rows if r["agent"] == reference}
    for name in summary:
        deltas = [r["reward"] - reference_reward[r["episode"]] for r in rows if r["agent"] == name]
        summary[name]["reward_minus_" + reference] = _mean_std(deltas)
    bounds: dict[str, Any] = {}
    if with_bounds:
        per_episode = []
        for i in range(episodes):
            per_episode.append(bounds_for_episode(env, seed + i))
            tick(1, f"bounds episode {i + 1}/{episodes}")
        for policy in BOUNDS:
            bounds[policy] = {
                key: _mean_std([b[policy][key] for b in per_episode])
                for key in SUMMARY_KEYS if key != "reward" and key in per_episode[0][policy]
            }
    env.close()
    result = {
        "env": env_id,
        "split": split,
        "episodes": episodes,
        "seed": seed,
        "env_overrides": overrides or {},
        "reference_agent": reference,
        "agent_order": list(summary),
        "agents": summary,
        "bounds": bounds,
        "bound_kinds": {name: REFERENCE_KINDS[name] for name in bounds},
        "static_tuned": {"thresholds": list(tuned), "grid": tuning_rows, "tune_episodes": tune_episodes,
                         "tune_seed": seed + 10_000, "split": "train"} if tuned else None,
        "wall_s": timing,
        "episodes_detail": rows,
        "episode_records": replays,
    }
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


#: the eviction environment's built-in rules (``info["lru_action"]``, ``info["belady_action"]``)
EVICT_RULES = {"lru": "reference", "belady": "hit-rate bound (clairvoyant)"}


def evict_episode(env, seed: int, agent: Any = None, rule: str | None = None) -> dict[str, Any]:
    """One episode of the eviction environment on ``env.reset(seed=seed)``, played by ``agent`` (``reset``/``act``)
    or by a built-in ``rule`` (``"lru"``, ``"belady"``); its summed reward and the episode's metrics."""
    obs, info = env.reset(seed=seed)
    if agent is not None:
        agent.reset(env, seed)
    total = 0.0
    decisions = invalid = 0
    while True:
        action = info[f"{rule}_action"] if rule is not None else agent.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        decisions += 1
        invalid += int(info["invalid_action"])
        if terminated or truncated:
            break
    metrics = info.get("episode_metrics", {})
    return {"reward": total, "decisions": decisions, "invalid_actions": invalid,
            "mean_latency_ms": float(metrics.get("mean_latency_ms", float("nan"))),
            "hit_rate": float(metrics.get("hit_rate", float("nan")))}


def compare_evict(env_id: str, agent_specs: Sequence[str], episodes: int, seed: int, *, split: str = "test",
                  overrides: dict[str, Any] | None = None,
                  progress: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    """:func:`compare` on ``MoECache-Evict-v0``: agents are the built-in rules ``lru`` and ``belady``, ``random``
    (a uniformly drawn valid slot) or ``ALGO:PATH`` (a saved SB3 model; MaskablePPO is given the action masks).
    Every agent plays episodes ``reset(seed=seed + i)``; the paired reference is ``lru`` when it is played
    (fixed thresholds have no meaning for eviction)."""
    from moe_cache_env.agents.sb3 import SB3Agent

    tick = progress or (lambda n, what: None)
    for spec in agent_specs:  # every name checked before any episode runs
        if spec not in EVICT_RULES and spec != "random" and ":" not in spec:
            raise ValueError(f"unknown agent {spec!r} for {env_id}; use lru, belady, random or ALGO:PATH")
    env = make_env(env_id, split, overrides)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for spec in agent_specs:
        start = time.time()
        agent: Any = None
        rule = spec if spec in EVICT_RULES else None
        if spec == "random":
            agent = _RandomValid(seed)
        elif rule is None:
            if ":" not in spec:
                raise ValueError(f"unknown agent {spec!r} for {env_id}; use lru, belady, random or ALGO:PATH")
            algo, path = spec.split(":", 1)
            agent = SB3Agent(algo, path)
        name = rule or agent.name
        for i in range(episodes):
            row = evict_episode(env, seed + i, agent=agent, rule=rule)
            rows.append({"agent": name, "episode": i, "seed": seed + i, **row})
            tick(1, f"{name} episode {i + 1}/{episodes}")
        timing[name] = round(time.time() - start, 2)
        mine = [r for r in rows if r["agent"] == name]
        summary[name] = {key: _mean_std([r[key] for r in mine]) for key in ("reward", "mean_latency_ms", "hit_rate")}
    env.close()
    reference = "lru" if "lru" in summary else next(iter(summary))
    reference_reward = {r["episode"]: r["reward"] for r in rows if r["agent"] == reference}
    for name in summary:
        deltas = [r["reward"] - reference_reward[r["episode"]] for r in rows if r["agent"] == name]
        summary[name]["reward_minus_" + reference] = _mean_std(deltas)
    return {"env": env_id, "split": split, "episodes": episodes, "seed": seed, "env_overrides": overrides or {},
            "reference_agent": reference, "agent_order": list(summary), "agents": summary, "bounds": {},
            "bound_kinds": {}, "static_tuned": None, "wall_s": timing, "episodes_detail": rows}


class _RandomValid:
    """A uniformly drawn valid slot of the eviction environment, from its own generator (seeded per episode)."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.env = env.unwrapped
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> int:
        return int(self.rng.choice(np.flatnonzero(self.env.action_masks())))


def work_units(agent_specs: Sequence[str], episodes: int, *, with_bounds: bool = True, oracle: bool = False,
               grid_points: int | None = None) -> int:
    """How many ``progress`` calls :func:`compare` makes with these arguments."""
    from moe_cache_env.agents.evaluation import threshold_grid

    units = len(agent_specs) * episodes + (episodes if oracle else 0) + (episodes if with_bounds else 0)
    if "static-tuned" in agent_specs:
        units += grid_points if grid_points is not None else len(threshold_grid())
    return units


class _Named:
    """A stand-in agent that only carries a name (for choosers driven by ``run_episode(choose=...)``)."""

    def __init__(self, name: str) -> None:
        self.name = name


def format_table(result: dict[str, Any]) -> str:
    """Mean ± std per agent, then the bounds."""
    delta_key = "reward_minus_" + result["reference_agent"]
    delta_title = f"vs {result['reference_agent']} (paired)"
    header = (f"{'agent':<16} {'episode reward':>18} {delta_title:>22} {'perfect cov':>15} {'mean ms/tok':>16} "
              f"{'p95 ms/tok':>16} {'GB wasted':>14}")
    lines = [header, "-" * len(header)]

    def cell(stats: dict[str, float] | None, fmt: str, scale: float = 1.0) -> str:
        if stats is None:
            return "-"
        return f"{fmt.format(stats['mean'] / scale)} ± {fmt.replace('+', '').format(stats['std'] / scale)}"

    for name in result.get("agent_order") or list(result["agents"]):
        s = result["agents"][name]
        lines.append(
            f"{name:<16} {cell(s['reward'], '{:.2f}'):>18} {cell(s[delta_key], '{:+.3f}'):>22} "
            f"{cell(s['perfect_coverage'], '{:.3f}'):>15} "
            f"{cell(s['mean_latency_ms'], '{:.2f}'):>16} {cell(s['p95_latency_ms'], '{:.2f}'):>16} "
            f"{cell(s['wasted_prefetch_bytes'], '{:.2f}', 1e9):>14}"
        )
    for name, s in result["bounds"].items():
        lines.append(
            f"{'(' + name + ')':<16} {'-':>18} {'-':>22} {cell(s.get('perfect_coverage'), '{:.3f}'):>15} "
            f"{cell(s.get('mean_latency_ms'), '{:.2f}'):>16} {cell(s.get('p95_latency_ms'), '{:.2f}'):>16} "
            f"{cell(s.get('wasted_prefetch_bytes'), '{:.2f}', 1e9):>14}"
        )
    return "\n".join(lines)


def format_evict_table(result: dict[str, Any]) -> str:
    """:func:`compare_evict`'s result: mean ± std per agent of episode reward, the paired difference to the
    reference, latency and hit rate."""
    reference = result["reference_agent"]
    delta_key = "reward_minus_" + reference
    delta_title = f"vs {reference} (paired)"
    header = f"{'agent':<24} {'episode reward':>18} {delta_title:>22} {'mean ms/tok':>16} {'hit rate':>16}"
    lines = [header, "-" * len(header)]
    for name in result["agent_order"]:
        s = result["agents"][name]
        cells = [f"{s[key]['mean']:{fmt}} ± {s[key]['std']:{fmt.lstrip('+')}}" for key, fmt in
                 (("reward", ".2f"), (delta_key, "+.3f"), ("mean_latency_ms", ".2f"), ("hit_rate", ".4f"))]
        label = f"{name} (bound)" if name == "belady" else name
        lines.append(f"{label:<24} {cells[0]:>18} {cells[1]:>22} {cells[2]:>16} {cells[3]:>16}")
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """compare.json, compare.csv (one row per agent and episode), summary.csv, episodes.jsonl (each episode
    as a record that ``replay_episode`` plays again bit-identically) and compare.png."""
    out.mkdir(parents=True, exist_ok=True)
    records = result.pop("episode_records", [])
    atomic_write_json(out / "compare.json", result)
    atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    rows = result["episodes_detail"]
    if rows:
        columns = list(rows[0])
        lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
        atomic_write_text(out / "compare.csv", "\n".join(lines) + "\n")
    keys = list(SUMMARY_KEYS) + ["reward_minus_" + result["reference_agent"]]
    summary_lines = ["agent," + ",".join(f"{k}_mean,{k}_std" for k in keys)]
    ordered = [(n, result["agents"][n]) for n in result.get("agent_order") or list(result["agents"])]
    for name, s in ordered + [(f"({k})", v) for k, v in result["bounds"].items()]:
        cells = []
        for key in keys:
            cells += [str(s[key]["mean"]), str(s[key]["std"])] if key in s else ["", ""]
        summary_lines.append(name + "," + ",".join(cells))
    atomic_write_text(out / "summary.csv", "\n".join(summary_lines) + "\n")
    plot(result, out / "compare.png")


def plot(result: dict[str, Any], path: Path) -> None:
    """Bars of mean ± std episode reward, perfect coverage and mean latency per agent (bounds hatched)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result.get("agent_order") or list(result["agents"])
    bound_names = list(result["bounds"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    delta_key = "reward_minus_" + result["reference_agent"]
    panels = ((delta_key, f"episode reward minus {result['reference_agent']}'s, same episode"),
              ("perfect_coverage", "perfect coverage"), ("mean_latency_ms", "mean latency per token (ms)"))
    for ax, (key, title) in zip(axes, panels):
        labels, means, stds, hatches = [], [], [], []
        for n in names:
            labels.append(n)
            means.append(result["agents"][n][key]["mean"])
            stds.append(result["agents"][n][key]["std"])
            hatches.append("")
        if key != delta_key:
            for n in bound_names:
                if key in result["bounds"][n]:
                    labels.append(f"({n})")
                    means.append(result["bounds"][n][key]["mean"])
                    stds.append(result["bounds"][n][key]["std"])
                    hatches.append("//")
        bars = ax.bar(range(len(labels)), means, yerr=stds, capsize=3, color="#4C72B0")
        for bar, hatch in zip(bars, hatches):
            if hatch:
                bar.set_hatch(hatch)
                bar.set_color("#BBBBBB")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if key == delta_key:
            ax.axhline(0.0, color="black", linewidth=0.8)
    fig.suptitle(f"{result['env']} on the {result['split']} split, {result['episodes']} episodes, seed {result['seed']}",
                 fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
