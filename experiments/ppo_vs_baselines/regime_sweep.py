"""Which fixed thresholds win in which serving regime? A sweep that checks the environment's premise.

For each constant regime (batch size x KV-cache share x background link traffic) it replays the same
test-split sequences of the default suite under every (L2, L3) pair of the grid, with ``MoECache-v0``'s
cache, profile and predictor, and scores each pair with the environment's reward per window
(perfect coverage - latency / demand-all reference latency). If one pair won everywhere, adapting the
thresholds would be worth nothing.

Usage: python experiments/ppo_vs_baselines/regime_sweep.py [--tokens 3000] [--out regime_sweep.json]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from moe_cache_env.agents.evaluation import threshold_grid
from moe_cache_env._io import atomic_write_json
from moe_cache_env.envs import variant_config
from moe_cache_env.envs.config import make_config
from moe_cache_env.envs.reward import DemandAllReference, reward_terms
from moe_cache_env.envs.suite import load_split
from moe_cache_env.sim.config import Controls, WorkloadConfig
from moe_cache_env.sim.simulator import Simulator

BATCHES = (1, 4, 8)  # the ends and middle of MoECache-v0's batch range (1-8)
KV_SHARES = (0.0, 0.5)
BACKGROUNDS = (0.0, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3000, help="test-split tokens replayed per regime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("regime_sweep.json")))
    parser.add_argument("--env-config", default=None, help="JSON object of env config keys to replace")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    args = parser.parse_args()

    config = make_config({**variant_config("MoECache-v0"), **json.loads(args.env_config or "{}")})
    batches = [int(b) for b in args.batches.split(",")]
    name = config["traces"][0]
    fractions = tuple(config["split_fractions"])
    test = load_split(name, "test", fractions, config["split_seed"])
    train = load_split(name, "train", fractions, config["split_seed"])
    bounds = test.sequence_bounds()
    keep = int(np.searchsorted(bounds[:, 1], args.tokens)) + 1
    trace = test.select_sequences(test.sequence[bounds[:keep, 0]])
    fit_bounds = train.sequence_bounds()
    fit_keep = int(np.searchsorted(fit_bounds[:, 1], config["predictor_fit_tokens"])) + 1
    fit = train.select_sequences(train.sequence[fit_bounds[:fit_keep, 0]])
    window = config["window_steps"]
    grid = threshold_grid()
    rows = []
    for batch, kv, background in itertools.product(batches, KV_SHARES, BACKGROUNDS):
        workload = WorkloadConfig(batch_min=batch, batch_max=batch, kv_min=kv, kv_max=kv,
                                  background_min=background, background_max=background)
        sim_config = replace(config.sim, workload=workload)
        base = Simulator(trace, sim_config, rng=np.random.default_rng(args.seed), fit_trace=fit)
        reference = DemandAllReference(trace, base.profile, base.expert_bytes, sim_config.timing,
                                       base.schedule.step_tokens.shape[1])
        scores = []
        for l2, l3 in grid:
            sim = copy.deepcopy(base)
            rewards = []
            while not sim.done:
                w = sim.run(window, Controls(l2_threshold=l2, l3_threshold=l3))
                s0, s1 = w.first_step, w.first_step + w.num_steps
                ref = reference.mean_latency_ms(sim.schedule.step_tokens[s0:s1], sim.schedule.step_ntokens[s0:s1],
                                                sim.schedule.link_share[s0:s1])
                rewards.append(reward_terms(w.metrics, ref, **config["reward"])["reward"])
            m = sim.metrics()
            scores.append({"l2": l2, "l3": l3, "mean_reward": float(np.mean(rewards)),
                           "perfect_coverage": m["perfect_coverage"], "mean_latency_ms": m["mean_latency_ms"]})
        scores.sort(key=lambda r: -r["mean_reward"])
        best, worst = scores[0], scores[-1]
        static = next(r for r in scores if (r["l2"], r["l3"]) == (0.7, 0.3))
        rows.append({"batch": batch, "kv_share": kv, "background": background, "best": best, "worst": worst,
                     "seed_default_0.7_0.3": static, "all": scores})
        print(f"batch {batch:2d}  kv {kv:.1f}  background {background:.1f}:  best L2 {best['l2']:.1f} L3 {best['l3']:.1f} "
              f"reward/window {best['mean_reward']:+.4f} ({best['mean_latency_ms']:.1f} ms)   0.7/0.3 {static['mean_reward']:+.4f}   "
              f"worst L2 {worst['l2']:.1f} L3 {worst['l3']:.1f} {worst['mean_reward']:+.4f}", flush=True)
    # the single pair that is best on average over the regimes, and what per-regime choice gains over it
    mean_by_pair = {}
    for r in rows:
        for s in r["all"]:
            mean_by_pair.setdefault((s["l2"], s["l3"]), []).append(s["mean_reward"])
    best_fixed = max(mean_by_pair, key=lambda k: np.mean(mean_by_pair[k]))
    per_regime_best = float(np.mean([r["best"]["mean_reward"] for r in rows]))
    summary = {
        "best_fixed_pair": list(best_fixed),
        "best_fixed_mean_reward": float(np.mean(mean_by_pair[best_fixed])),
        "per_regime_best_mean_reward": per_regime_best,
        "distinct_regime_winners": sorted({(r["best"]["l2"], r["best"]["l3"]) for r in rows}),
    }
    print(f"best single pair over all regimes: L2 {best_fixed[0]} L3 {best_fixed[1]}, mean reward/window "
          f"{summary['best_fixed_mean_reward']:+.4f}; best pair per regime: {per_regime_best:+.4f}")
    atomic_write_json(args.out, {"env_config": json.loads(args.env_config or "{}"), "trace": name, "split": "test", "tokens": trace.num_tokens, "seed": args.seed,
                                 "window_steps": window, "regimes": rows, "summary": summary})


if __name__ == "__main__":
    main()
