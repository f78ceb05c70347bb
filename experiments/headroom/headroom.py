"""The headroom map: where adapting the cache's controls, and where choosing what to evict, has room.

Run:  python experiments/headroom/headroom.py [--episodes 2] [--out experiments/headroom]

For each scenario (hardware profile, batch, memory pressure, predictor quality) the script plays the same
held-out episodes of ``MoECache-v0`` (test split of the default suite, episode ``i`` = ``env.reset(seed=i)``,
under a constant workload: the scenario's batch and KV share, no background traffic, no domain blocks) and
measures, per action set:

- thresholds: every fixed (L2, L3) pair of the grid (``agents.evaluation.threshold_grid``, 27 pairs) held for
  the whole episode, the best of them in hindsight (the pair with the highest mean reward on these very
  episodes: a generous baseline), and the per-window hindsight oracle (before each window, every pair is tried
  on a snapshot of the simulator and the one with the highest window reward is played);
- extended: the same over a small grid of extended controls (thresholds x lookahead x prefetch budget x
  eviction weights, :data:`EXTENDED_GRID`);
- eviction: demand-only caches of the same slots, on the same episode trace and schedule: ``lru``, the zoo's
  deployable rules (``fifo``, ``lfu``, ``lfru``, ``mrs``: the best of them is "zoo best"), ``belady`` (the
  hit-rate bound of demand-only caches) and ``clairvoyant`` (the latency bound).

The reward is the environment's (``envs/reward.py``: perfect coverage minus the latency ratio to the
demand-all reference, per window). The windows are replayed on the environment's own simulator after its
``reset`` (same trace, schedule, predictor fit and warm-up window); a check at the start asserts that the
replay of a fixed pair gives the environment's rewards exactly. Writes ``results.json``, ``results.md`` and
one figure per action set. Small episode counts: the numbers are means over ``--episodes`` episodes.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from moe_cache_env._io import atomic_write, atomic_write_json, atomic_write_text
from moe_cache_env.agents.baselines import StaticAgent
from moe_cache_env.agents.compare import bounds_for_episode
from moe_cache_env.agents.evaluation import make_env, run_episode, threshold_grid
from moe_cache_env.envs.reward import reward_terms
from moe_cache_env.sim.config import Controls

#: the extended controls tried: thresholds x lookahead x prefetch budget x eviction weights (recency,
#: frequency, confidence); every other control at its default
EXTENDED_GRID: list[Controls] = [
    Controls(l2_threshold=l2, l3_threshold=l3, lookahead=la, prefetch_budget=budget, w_recency=wr,
             w_frequency=wf, w_confidence=wc)
    for (l2, l3), la, budget, (wr, wf, wc) in itertools.product(
        [(0.9, 0.6), (0.7, 0.3), (0.5, 0.1)], [1, 2], [4, 0], [(1.0, 0.0, 1.0), (1.0, 1.0, 0.0)])
]
ZOO = ("fifo", "lfu", "lfru", "mrs")
EVICTION_POLICIES = ("lru",) + ZOO + ("belady", "clairvoyant")


def scenarios() -> list[dict[str, Any]]:
    """One axis at a time around the base (h100, batch 1, no KV share, the env's 34 slots per layer, the
    cross-layer predictor), plus three realistic combinations."""
    base = dict(profile="h100", batch=1, kv=0.0, cache="default", predictor="cross-layer", oracle_accuracy=0.4755)
    out = []

    def add(name: str, axis: str, **changes: Any) -> None:
        out.append({"name": name, "axis": axis, **base, **changes})

    add("base: h100, batch 1", "base")
    for profile in ("h200", "rtx3090-seed", "pcie4-x16-nominal", "gh200-c2c-nominal"):
        add(f"link: {profile}", "link", profile=profile)
    for batch in (4, 8, 16, 32):
        add(f"batch {batch}", "batch", batch=batch)
    add("KV 30% of slots", "memory", kv=0.3)
    add("KV 60% of slots", "memory", kv=0.6)
    add("small cache (19 slots)", "memory", cache="small")
    for accuracy in (0.5, 0.7, 0.9):
        add(f"noisy oracle {accuracy:.0%}", "predictor", predictor="noisy-oracle", oracle_accuracy=accuracy)
    add("PCIe Gen4, batch 8", "combo", profile="pcie4-x16-nominal", batch=8)
    add("NVLink-C2C, batch 16", "combo", profile="gh200-c2c-nominal", batch=16)
    add("h100, batch 16, KV 60%", "combo", batch=16, kv=0.6)
    return out


CACHES = {"default": None, "small": {"l1_slots": 4, "l2_slots": 5, "l3_slots": 10, "scope": "per-layer"}}


def env_overrides(s: dict[str, Any]) -> dict[str, Any]:
    """The MoECache-v0 config for a scenario: a constant workload; about 32 windows of 8 steps per episode."""
    overrides: dict[str, Any] = {
        "profile": s["profile"],
        "predictor": s["predictor"],
        "oracle_accuracy": s["oracle_accuracy"],
        "episode_tokens": min(8192, 256 * s["batch"]),
        "workload": {"batch_min": s["batch"], "batch_max": s["batch"], "kv_min": s["kv"], "kv_max": s["kv"],
                     "background_min": 0.0, "background_max": 0.0, "domain_shift": False, "segment_steps": 128},
    }
    if CACHES[s["cache"]] is not None:
        overrides["cache"] = CACHES[s["cache"]]
    return overrides


class WindowReplay:
    """The environment's simulator after ``reset``, replayed window by window with snapshots."""

    def __init__(self, env, seed: int) -> None:
        env.reset(seed=seed)
        base = env.unwrapped
        self.env = base
        self.sim = base.sim
        self.window_steps = base.window_steps
        self.max_windows = base.max_episode_steps
        self.warm_end = self.sim.position
        self.reward_config = base.config["reward"]
        self.start = self.snapshot()

    def snapshot(self) -> tuple:
        return copy.deepcopy(self.sim.state), self.sim.counters.copy(), self.sim.position

    def restore(self, snap: tuple) -> None:
        state, counters, position = snap
        self.sim.state = copy.deepcopy(state)
        self.sim.counters = counters.copy()
        self.sim.position = position

    def window(self, controls: Controls) -> float:
        """Play one window; return its reward (as the environment computes it)."""
        sim = self.sim
        result = sim.run(self.window_steps, controls)
        s0, s1 = result.first_step, result.first_step + result.num_steps
        sched = sim.schedule
        ref = self.env.reference.mean_latency_ms(sched.step_tokens[s0:s1], sched.step_ntokens[s0:s1],
                                                 sched.link_share[s0:s1])
        return reward_terms(result.metrics, ref, **self.reward_config)["reward"]

    def windows_left(self, played: int) -> bool:
        return not self.sim.done and played < self.max_windows

    def summary(self, rewards: Sequence[float]) -> dict[str, float]:
        """Mean reward per window, ms/token and perfect coverage of the windows after the warm-up."""
        sim = self.sim
        lat = sim.step_latency_ms[self.warm_end:sim.position]
        ntok = sim.schedule.step_ntokens[self.warm_end:sim.position].astype(np.float64)
        return {"reward_per_window": float(np.mean(rewards)), "windows": len(rewards),
                "ms_per_token": float((lat * ntok).sum() / ntok.sum())}

    def play_fixed(self, controls: Controls) -> dict[str, float]:
        self.restore(self.start)
        rewards = []
        while self.windows_left(len(rewards)):
            rewards.append(self.window(controls))
        return self.summary(rewards)

    def play_oracle(self, grid: Sequence[Controls]) -> dict[str, Any]:
        self.restore(self.start)
        rewards, chosen = [], []
        while self.windows_left(len(rewards)):
            here = self.snapshot()
            trials = []
            for controls in grid:
                self.restore(here)
                trials.append(self.window(controls))
            best = int(np.argmax(trials))
            self.restore(here)
            rewards.append(self.window(grid[best]))
            chosen.append(best)
        out: dict[str, Any] = self.summary(rewards)
        out["distinct_choices"] = len(set(chosen))
        return out


def check_replay_matches_env(env, seed: int) -> None:
    """The window replay of a fixed pair gives the environment's own rewards (same windows, same numbers)."""
    record = run_episode(env, StaticAgent(0.8, 0.4), seed)
    replay = WindowReplay(env, seed)
    summary = replay.play_fixed(Controls(l2_threshold=0.8, l3_threshold=0.4))
    env_mean = record.reward / record.windows
    assert summary["windows"] == record.windows, (summary, record.windows)
    assert abs(summary["reward_per_window"] - env_mean) <= 1e-12 * max(1.0, abs(env_mean)), (summary, env_mean)


def eviction_row(env, seed: int) -> dict[str, float]:
    """ms/token of the demand-only caches on the episode's trace and schedule (the whole episode, warm-up
    included: these replays have no agent)."""
    metrics = bounds_for_episode(env, seed, EVICTION_POLICIES)
    return {policy: m["mean_latency_ms"] for policy, m in metrics.items()}


def run_scenario(s: dict[str, Any], episodes: int) -> dict[str, Any]:
    # the environment whose actions can set the lookahead: its simulators keep the co-occurrence of both
    # distances, which EXTENDED_GRID's lookahead-2 controls read (the episodes, schedules and every other number
    # are MoECache-v0's)
    env = make_env("MoECache-Extended-v0", "test", env_overrides(s))
    pairs = threshold_grid()
    pair_controls = [Controls(l2_threshold=a, l3_threshold=b) for a, b in pairs]
    fixed = np.zeros((episodes, len(pairs)))
    fixed_ms = np.zeros_like(fixed)
    ext = np.zeros((episodes, len(EXTENDED_GRID)))
    ext_ms = np.zeros_like(ext)
    oracle, ext_oracle, evictions = [], [], []
    for i in range(episodes):
        replay = WindowReplay(env, i)
        for j, controls in enumerate(pair_controls):
            r = replay.play_fixed(controls)
            fixed[i, j], fixed_ms[i, j] = r["reward_per_window"], r["ms_per_token"]
        oracle.append(replay.play_oracle(pair_controls))
        for j, controls in enumerate(EXTENDED_GRID):
            r = replay.play_fixed(controls)
            ext[i, j], ext_ms[i, j] = r["reward_per_window"], r["ms_per_token"]
        ext_oracle.append(replay.play_oracle(EXTENDED_GRID))
        evictions.append(eviction_row(env, i))
    env.close()
    best = int(np.argmax(fixed.mean(axis=0)))
    ext_best = int(np.argmax(ext.mean(axis=0)))
    seed_pair = pairs.index((0.7, 0.3))

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    thresholds = {
        "best_fixed": {"pair": list(pairs[best]), "reward_per_window": float(fixed[:, best].mean()),
                       "ms_per_token": float(fixed_ms[:, best].mean())},
        "seed_default": {"pair": [0.7, 0.3], "reward_per_window": float(fixed[:, seed_pair].mean()),
                         "ms_per_token": float(fixed_ms[:, seed_pair].mean())},
        "worst_fixed_reward_per_window": float(fixed.mean(axis=0).min()),
        "oracle": {"reward_per_window": mean(oracle, "reward_per_window"),
                   "ms_per_token": mean(oracle, "ms_per_token"),
                   "distinct_choices": mean(oracle, "distinct_choices")},
    }
    bc = EXTENDED_GRID[ext_best]
    extended = {
        "best_fixed": {"controls": {"l2": bc.l2_threshold, "l3": bc.l3_threshold, "lookahead": bc.lookahead,
                                    "prefetch_budget": bc.prefetch_budget,
                                    "weights": [bc.w_recency, bc.w_frequency, bc.w_confidence]},
                       "reward_per_window": float(ext[:, ext_best].mean()),
                       "ms_per_token": float(ext_ms[:, ext_best].mean())},
        "oracle": {"reward_per_window": mean(ext_oracle, "reward_per_window"),
                   "ms_per_token": mean(ext_oracle, "ms_per_token"),
                   "distinct_choices": mean(ext_oracle, "distinct_choices")},
    }
    eviction = {p: mean(evictions, p) for p in EVICTION_POLICIES}
    zoo_best = min(ZOO, key=lambda p: eviction[p])
    eviction["zoo_best"] = zoo_best
    for key, block in (("thresholds", thresholds), ("extended", extended)):
        block["room_reward_per_window"] = block["oracle"]["reward_per_window"] - block["best_fixed"]["reward_per_window"]
        block["room_latency_share"] = 1.0 - block["oracle"]["ms_per_token"] / block["best_fixed"]["ms_per_token"]
    eviction["room_lru_to_belady_share"] = 1.0 - eviction["belady"] / eviction["lru"]
    eviction["room_zoo_to_belady_share"] = 1.0 - eviction["belady"] / eviction[zoo_best]
    eviction["room_lru_to_clairvoyant_share"] = 1.0 - eviction["clairvoyant"] / eviction["lru"]
    return {"scenario": s, "episodes": episodes, "windows_per_episode": mean(oracle, "windows"),
            "thresholds": thresholds, "extended": extended, "eviction": eviction}


# ------------------------------------------------------------------------------------------ outputs


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Headroom map (generated by `experiments/headroom/headroom.py`)", "",
             f"{meta['episodes']} held-out episodes per scenario (test split of `{meta['suite']}`), about "
             f"{meta['windows']:.0f} windows of 8 steps each; {meta['wall_s']:.0f} s of scenario time on "
             f"{meta['machine']}. Reward: per window, perfect coverage minus latency ratio (MoECache-v0's).", "",
             "## Thresholds and extended controls: best fixed (hindsight, same episodes) vs per-window oracle", "",
             "| scenario | best pair | reward fixed | reward oracle | room (reward/window) | ms/tok fixed | "
             "ms/tok oracle | room (latency) | ext. reward fixed | ext. reward oracle | ext. room (reward) | "
             "ext. room (latency) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        t, e = r["thresholds"], r["extended"]
        lines.append(
            f"| {r['scenario']['name']} | {t['best_fixed']['pair'][0]:.1f}/{t['best_fixed']['pair'][1]:.1f} | "
            f"{t['best_fixed']['reward_per_window']:.4f} | {t['oracle']['reward_per_window']:.4f} | "
            f"{t['room_reward_per_window']:+.4f} | {t['best_fixed']['ms_per_token']:.2f} | "
            f"{t['oracle']['ms_per_token']:.2f} | {100 * t['room_latency_share']:+.1f}% | "
            f"{e['best_fixed']['reward_per_window']:.4f} | {e['oracle']['reward_per_window']:.4f} | "
            f"{e['room_reward_per_window']:+.4f} | {100 * e['room_latency_share']:+.1f}% |")
    lines += ["", "## Eviction: demand-only caches of the same slots (ms/token)", "",
              "| scenario | lru | zoo best | belady | clairvoyant | lru -> belady | zoo best -> belady | "
              "lru -> clairvoyant |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        v = r["eviction"]
        lines.append(
            f"| {r['scenario']['name']} | {v['lru']:.2f} | {v['zoo_best']} {v[v['zoo_best']]:.2f} | "
            f"{v['belady']:.2f} | {v['clairvoyant']:.2f} | {100 * v['room_lru_to_belady_share']:.1f}% | "
            f"{100 * v['room_zoo_to_belady_share']:.1f}% | {100 * v['room_lru_to_clairvoyant_share']:.1f}% |")
    return "\n".join(lines) + "\n"


def figures(results: list[dict[str, Any]], out: Path) -> list[str]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["scenario"]["name"] for r in results]
    y = np.arange(len(names))
    written = []

    def save(fig, name: str) -> None:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        atomic_write(out / name, lambda f: f.write(buffer.getvalue()))
        written.append(name)

    for key, title in (("thresholds", "thresholds (27 pairs)"), ("extended", "extended controls (24 settings)")):
        fig, axes = plt.subplots(1, 2, figsize=(12, 0.38 * len(names) + 1.6), sharey=True)
        reward = [r[key]["room_reward_per_window"] for r in results]
        latency = [100 * r[key]["room_latency_share"] for r in results]
        axes[0].barh(y, reward, color="#4C72B0")
        axes[0].set_xlabel("oracle minus best fixed: reward per window")
        axes[1].barh(y, latency, color="#55A868")
        axes[1].set_xlabel("oracle's latency below best fixed (% of ms/token)")
        axes[1].axvline(2.0, color="grey", linestyle=":", linewidth=1)
        for ax in axes:
            ax.axvline(0.0, color="black", linewidth=0.8)
        axes[0].set_yticks(y, names, fontsize=8)
        axes[0].invert_yaxis()
        fig.suptitle(f"Room for per-window adaptation: {title}", fontsize=10)
        save(fig, f"headroom_{key}.png")
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(names) + 1.6))
    h = 0.27
    for k, (field, label, color) in enumerate((("room_lru_to_belady_share", "LRU -> Belady", "#C44E52"),
                                               ("room_zoo_to_belady_share", "zoo best -> Belady", "#DD8452"),
                                               ("room_lru_to_clairvoyant_share", "LRU -> clairvoyant", "#8172B3"))):
        ax.barh(y + (k - 1) * h, [100 * r["eviction"][field] for r in results], height=h, color=color, label=label)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(2.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("latency room (% of ms/token of the first policy)")
    ax.legend(fontsize=8)
    ax.set_title("Room for eviction: demand-only caches of the same slots", fontsize=10)
    save(fig, "headroom_eviction.png")
    return written


def _scenario_job(s: dict[str, Any], episodes: int) -> dict[str, Any]:
    t0 = time.time()
    r = run_scenario(s, episodes)
    r["wall_s"] = round(time.time() - t0, 1)
    r["key"] = scenario_key(s, episodes)
    r["config"] = s  # the sweep table's row layout, so an interrupted run resumes per scenario
    return r


def scenario_key(s: dict[str, Any], episodes: int) -> str:
    from moe_cache_env.experiments.sweep import cell_key

    return cell_key({**s, "episodes": episodes, "extended_grid": len(EXTENDED_GRID)})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--workers", type=int, default=1, help="scenarios run at once (processes)")
    parser.add_argument("--only", default=None, help="run only scenarios whose name contains this")
    args = parser.parse_args(argv)
    from moe_cache_env.experiments.sweep import append_row, load_table

    out = Path(args.out)
    table = out / "scenarios.jsonl"  # one row per finished scenario: rerun the script to resume
    start = time.time()
    check_env = make_env("MoECache-v0", "test", env_overrides(scenarios()[0]))
    check_replay_matches_env(check_env, 0)
    check_env.close()
    print("check: the window replay reproduces the environment's rewards", flush=True)
    todo = [s for s in scenarios() if not args.only or args.only in s["name"]]
    done = load_table(table)
    pending = [s for s in todo if scenario_key(s, args.episodes) not in done]

    def report(r: dict[str, Any]) -> None:
        append_row(table, r)
        print(f"{r['scenario']['name']:<28} thresholds room {r['thresholds']['room_reward_per_window']:+.4f}/window "
              f"({100 * r['thresholds']['room_latency_share']:+.1f}% ms)  extended "
              f"{r['extended']['room_reward_per_window']:+.4f} ({100 * r['extended']['room_latency_share']:+.1f}%)  "
              f"lru->belady {100 * r['eviction']['room_lru_to_belady_share']:.1f}%  [{r['wall_s']} s]", flush=True)

    if args.workers > 1 and len(pending) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            for r in pool.imap_unordered(_star_job, [(s, args.episodes) for s in pending]):
                report(r)
    else:
        for s in pending:
            report(_scenario_job(s, args.episodes))
    rows = load_table(table)
    results = [rows[scenario_key(s, args.episodes)] for s in todo]
    import os
    import platform

    from moe_cache_env.envs.suite import DEFAULT_SUITE

    meta = {"episodes": args.episodes, "suite": ", ".join(DEFAULT_SUITE),
            "wall_s": float(sum(r["wall_s"] for r in results)),
            "windows": float(np.mean([r["windows_per_episode"] for r in results])),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs",
            "extended_grid": [c.to_dict() for c in EXTENDED_GRID], "threshold_grid": threshold_grid()}
    atomic_write_json(out / "results.json", {"meta": meta, "scenarios": results})
    atomic_write_text(out / "results.md", markdown(results, meta))
    written = figures(results, out)
    print(f"wrote {out / 'results.json'}, results.md, {', '.join(written)} ({time.time() - start:.0f} s now; "
          f"{meta['wall_s']:.0f} s of scenario time in all)")
    return 0


def _star_job(args: tuple[dict[str, Any], int]) -> dict[str, Any]:
    return _scenario_job(*args)


if __name__ == "__main__":
    sys.exit(main())
