"""Learned eviction against the policy zoo: the share of the LRU-to-Belady miss gap each policy closes on held-out
routing of every bundled trace, at two capacities, over 5 seeds (issue 11, item 5).

Run:  python experiments/eviction/run.py seed N      (train seed N's model, evaluate everything; runs/seedN.json)
      python experiments/eviction/run.py report      (aggregate runs/*.json into results.json and README's table)

Protocol (the constants below):
- traces: the six bundled traces with several sequences are split by sequence (``traces/splits.py``, fractions
  0.7 / 0.15 / 0.15, split seed 0): models train on the train parts and every policy is evaluated on the test
  parts. The three engine traces hold one request each: nothing of them is trained on, so the whole request is
  held out (the fitted zoo policies fit on its first quarter, in-sample, as ``evaluate`` does without a fit
  trace).
- capacities: 20% and 40% of a layer's experts per layer (at least top_k + 1, at most all but one), as
  ``docs/policies.md``.
- workload: batch 1-4 sequences and a KV cache taking 0-30% of the slots, in segments of ~64 steps, prefill in
  16-token chunks; timeline timing on the ``h100`` profile. Seed N draws the evaluation schedule (``evaluate``'s
  seed N) and trains model N on schedules of seed 100 + N.
- learned: listwise behaviour cloning on Belady's choices, then one DAgger round (``agents/eviction.py``), an MLP
  of 16 features -> 16 -> 8 -> 1, ``DECISIONS`` decisions recorded per (train trace, capacity) and round. Its
  decision time (CPU time of the features and scores of a pool of the evaluation's slots, measured on this
  machine) is added to every layer (``SimConfig.decision_ms``).
"""

from __future__ import annotations

import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

from moe_cache_env._io import atomic_write_json, atomic_write_text
from moe_cache_env.envs.suite import load_split, load_suite_trace
from moe_cache_env.sim.config import SimConfig, WorkloadConfig, split_capacity
from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate
from moe_cache_env.sim.evict import EvictionModel, evaluate_learned

HERE = Path(__file__).resolve().parent
SPLIT_TRACES = ("learned/tiny-olmoe-12L-64E-decode", "learned/tiny-olmoe-12L-64E-prefill", "synthetic/mixtral",
                "synthetic/olmoe", "synthetic/qwen1.5-moe", "synthetic/deepseek-v2-lite")
WHOLE_TRACES = ("engines/qwen3-30b-a3b-decode", "engines/gemma-4-26b-a4b-it-decode", "engines/gpt-oss-120b-decode")
REAL = ("learned/", "engines/")
FRACTIONS = (0.7, 0.15, 0.15)
CAPACITY_SHARES = (0.2, 0.4)
SEEDS = (0, 1, 2, 3, 4)
ZOO = ("lru", "fifo", "lfu", "lfru", "least-stale", "mrs", "hot-set", "layer-alloc", "activation-aware", "belady")
FITTED = ("hot-set", "layer-alloc", "activation-aware")
#: zoo policies whose cache is not lru's (docs/policies.md): their gap share is not bounded by 1
UNBOUNDED = ("least-stale", "layer-alloc", "hot-set")
DECISIONS = 6000
EPOCHS = 5
HIDDEN = (16, 8)
WORKLOAD = WorkloadConfig(batch_min=1, batch_max=4, kv_min=0.0, kv_max=0.3, segment_steps=64,
                          prefill_chunk_tokens=16)


def capacity(trace, share: float) -> int:
    return int(min(max(round(share * trace.num_experts), trace.top_k + 1), trace.num_experts - 1))


def config_for(trace, share: float) -> SimConfig:
    return SimConfig(cache=split_capacity(capacity(trace, share), trace.top_k), workload=WORKLOAD)


def eval_parts():
    """(name, held-out trace, fit trace or None) for every bundled trace."""
    for name in SPLIT_TRACES:
        yield name, load_split(name, "test", FRACTIONS, 0), load_split(name, "train", FRACTIONS, 0)
    for name in WHOLE_TRACES:
        yield name, load_suite_trace(name), None


def train_model(seed: int) -> EvictionModel:
    from moe_cache_env.agents.eviction import train_dagger

    train = []
    for name in SPLIT_TRACES:
        part = load_split(name, "train", FRACTIONS, 0)
        for share in CAPACITY_SHARES:
            train.append((part, config_for(part, share)))
    # training schedules differ from the evaluation's: seed N trains on schedules of seed 100 + N
    return train_dagger(train, seed=100 + seed, rounds=2, decisions_per_replay=DECISIONS, epochs=EPOCHS,
                        hidden=HIDDEN, log=lambda m: print(f"[seed {seed}] {m}", file=sys.stderr, flush=True),
                        meta={"train": list(SPLIT_TRACES), "split": "train", "fractions": list(FRACTIONS),
                              "capacity_shares": list(CAPACITY_SHARES), "workload_seed": 100 + seed})


def run_seed(seed: int) -> None:
    """Train (or load) seed N's model and evaluate every policy; a rerun keeps the zoo's rows of an earlier run
    (deterministic for the seed) and replays the learned rule again, its decision time measured again."""
    from moe_cache_env.sim.evict import measure_decision_ms

    model_path = HERE / "models" / f"seed{seed}.npz"
    out_path = HERE / "runs" / f"seed{seed}.json"
    earlier = json.loads(out_path.read_text()) if out_path.exists() else None
    t0 = time.time()
    if model_path.exists():
        model = EvictionModel.load(model_path)
    else:
        model = train_model(seed)
        model.save(model_path)
    train_s = earlier["train_s"] if earlier else time.time() - t0
    kept = {(r["trace"], r["capacity_share"], r["policy"]): r for r in (earlier or {}).get("rows", [])}
    # the decision's CPU time depends on the pool's size: measured once per slot count
    costs: dict[int, float] = {}
    rows = []
    for name, part, fit in eval_parts():
        for share in CAPACITY_SHARES:
            config = config_for(part, share)
            for policy in ZOO:
                if (name, share, policy) in kept:
                    rows.append(kept[(name, share, policy)])
                    continue
                t = time.time()
                m = evaluate(part, EvaluationRequest(policy=policy, config=config, seed=seed),
                             fit_trace=fit if policy in FITTED else None)["metrics"]
                rows.append(_row(name, share, config, seed, policy, m, time.time() - t))
            slots = config.cache.total_slots
            if slots not in costs:
                costs[slots] = measure_decision_ms(model, slots)
            t = time.time()
            m = evaluate_learned(part, config, model, seed=seed, decision_ms=costs[slots])
            rows.append(_row(name, share, config, seed, "learned-bc", m, time.time() - t))
            print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(out_path, {"seed": seed, "train_s": train_s, "model": str(model_path.relative_to(HERE)),
                                 "decision_ms": {str(k): v for k, v in sorted(costs.items())},
                                 "model_meta": model.meta, "rows": rows})


def _row(name, share, config, seed, policy, m, wall_s) -> dict:
    return {"trace": name, "capacity_share": share, "slots": config.cache.total_slots, "seed": seed,
            "policy": policy, "misses": int(round(m["miss_rate"] * m["expert_requests"])), "requests": m["expert_requests"],
            "miss_rate": m["miss_rate"], "ms_per_token": m["mean_latency_ms"],
            "decision_ms": m.get("decision_ms", 0.0), "wall_s": round(wall_s, 3)}


def report() -> None:
    runs = [json.loads(Path(p).read_text()) for p in sorted(glob.glob(str(HERE / "runs" / "seed*.json")))]
    rows = [r for run in runs for r in run["rows"]]
    base = {(r["trace"], r["capacity_share"], r["seed"], r["policy"]): r for r in rows}
    summary: dict = {}
    for r in rows:
        key = (r["trace"], r["capacity_share"], r["seed"])
        lru, bel = base[key + ("lru",)]["misses"], base[key + ("belady",)]["misses"]
        r["gap_closed"] = (lru - r["misses"]) / (lru - bel) if lru > bel else None
        cell = summary.setdefault(r["trace"], {}).setdefault(str(r["capacity_share"]), {}).setdefault(
            r["policy"], {"gap": [], "ms": [], "slots": r["slots"]})
        if r["gap_closed"] is not None:
            cell["gap"].append(r["gap_closed"])
        cell["ms"].append(r["ms_per_token"])
    for trace, caps in summary.items():
        for cap, pols in caps.items():
            for pol, c in pols.items():
                g, ms = np.array(c["gap"]), np.array(c["ms"])
                c.update(gap_mean=float(g.mean()) if len(g) else None, gap_std=float(g.std()) if len(g) else None,
                         ms_mean=float(ms.mean()), ms_std=float(ms.std()), seeds=len(ms))
                del c["gap"], c["ms"]
    targets = []
    for trace, caps in summary.items():
        if not trace.startswith(REAL):
            continue
        for cap, pols in caps.items():
            ln, lr = pols["learned-bc"], pols["lru"]
            if ln["gap_mean"] is not None and ln["gap_mean"] >= 0.2 and ln["ms_mean"] < lr["ms_mean"]:
                targets.append(f"{trace} @ {cap}")
    ppo = []
    for budget in sorted({int(Path(p).name.split("_")[1][1:]) for p in glob.glob(str(HERE / "runs" / "ppo_t*_seed*.json"))}):
        ppo_runs = [json.loads(Path(p).read_text())
                    for p in sorted(glob.glob(str(HERE / "runs" / f"ppo_t{budget}_seed*.json")))]
        g = np.array([r["gap_closed"] for r in ppo_runs])
        ms = np.array([r["ms_per_token"] for r in ppo_runs])
        free = np.array([r["ms_per_token_without_decision"] for r in ppo_runs])
        lru = np.array([r["lru"]["ms_per_token"] for r in ppo_runs])
        p = {"trace": ppo_runs[0]["trace"], "capacity_share": ppo_runs[0]["capacity_share"],
             "slots": ppo_runs[0]["slots"], "timesteps": budget, "seeds": [r["seed"] for r in ppo_runs],
             "gap_mean": float(g.mean()), "gap_std": float(g.std()), "ms_mean": float(ms.mean()),
             "ms_std": float(ms.std()), "ms_without_decision_mean": float(free.mean()),
             "ms_without_decision_std": float(free.std()), "lru_ms_mean": float(lru.mean()),
             "decision_ms_mean": float(np.mean([r["decision_ms"] for r in ppo_runs])),
             "train_s_mean": float(np.mean([r["train_s"] for r in ppo_runs])), "runs": ppo_runs}
        ppo.append(p)
        print(f"MaskablePPO ({budget} steps, {len(ppo_runs)} seeds) on {p['trace']} test @ {p['slots']} slots: "
              f"gap {100 * p['gap_mean']:+.1f}% ± {100 * p['gap_std']:.1f}, {p['ms_mean']:.3f} ms/token "
              f"({p['ms_without_decision_mean']:.3f} ± {p['ms_without_decision_std']:.3f} without its decision "
              f"time; lru {p['lru_ms_mean']:.3f}), decision {p['decision_ms_mean']:.3f} ms")
    out = {"protocol": __doc__, "seeds": [run["seed"] for run in runs], "maskable_ppo": ppo,
           "decision_ms": {run["seed"]: run["decision_ms"] for run in runs},
           "train_s": {run["seed"]: run["train_s"] for run in runs},
           "model_meta": {run["seed"]: run["model_meta"] for run in runs},
           "target_met_on": targets, "summary": summary, "rows": rows}
    atomic_write_json(HERE / "results.json", out)
    atomic_write_text(HERE / "table.md", _table(summary))
    print(_table(summary))
    print("target (>= 20% of the gap and below LRU's ms/token on a real-model trace) met on:", targets or "none")


def _table(summary: dict) -> str:
    policies = list(ZOO[:-1]) + ["learned-bc", "belady"]
    lines = []
    for cap in (str(s) for s in CAPACITY_SHARES):
        lines.append(f"\n### {int(float(cap) * 100)}% of a layer's experts per layer\n")
        lines.append("Share of the LRU-to-Belady miss gap closed, mean ± sd over seeds (ms/token mean below it).\n")
        traces = list(summary)
        lines.append("| policy | " + " | ".join(f"{t} ({summary[t][cap]['lru']['slots']} slots)" for t in traces)
                     + " |")
        lines.append("|---" * (len(traces) + 1) + "|")
        for pol in policies:
            cells = []
            for t in traces:
                c = summary[t][cap].get(pol)
                if c is None:
                    cells.append("-")
                    continue
                gap = "n/a" if c["gap_mean"] is None else f"{100 * c['gap_mean']:+.1f}% ± {100 * c['gap_std']:.1f}"
                cells.append(f"{gap}<br>{c['ms_mean']:.3f} ms")
            mark = " *" if pol in UNBOUNDED else ""
            lines.append(f"| {pol}{mark} | " + " | ".join(cells) + " |")
    lines.append("\n\\* another cache than lru's (one pool over all layers, another split of the slots across layers, "
                 "or a preloaded hot set): its share is not bounded by 100%.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "seed":
        run_seed(int(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "report":
        report()
    else:
        sys.exit(__doc__)
