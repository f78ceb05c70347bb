"""MaskablePPO on MoECache-Evict-v0, briefly: trained on the train part of the learned model's decode routing,
evaluated on its held-out test part against lru and belady (issue 11, item 4).

Run:  python experiments/eviction/ppo.py SEED [TIMESTEPS]     (writes runs/ppo_tTIMESTEPS_seedSEED.json)

Seed N trains with ``MaskablePPO(seed=N)`` on episodes of 8 train sequences (schedules drawn by the environment)
at 20% of a layer's experts per layer, then replays the whole test part once with the deterministic policy under
evaluate's schedule of seed N (the protocol of run.py). The policy's CPU time per decision (``predict`` on one
observation, CPU time, median of 200) is added to every layer (``decision_ms``) in that replay; the same replay without
it is reported too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import moe_cache_env  # noqa: F401 - registers the environments
from moe_cache_env._io import atomic_write_json
from moe_cache_env.envs.suite import load_split
from moe_cache_env.sim.evaluate import EvaluationRequest, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import FRACTIONS, WORKLOAD, capacity, config_for  # noqa: E402

HERE = Path(__file__).resolve().parent
TRACE = "learned/tiny-olmoe-12L-64E-decode"
SHARE = 0.2
WORKLOAD_KEYS = {"batch_min": WORKLOAD.batch_min, "batch_max": WORKLOAD.batch_max, "kv_min": WORKLOAD.kv_min,
                 "kv_max": WORKLOAD.kv_max, "segment_steps": WORKLOAD.segment_steps}


def env_config(split: str, **extra) -> dict:
    test = load_split(TRACE, "test", FRACTIONS, 0)
    return {"traces": [TRACE], "split": split, "capacity": capacity(test, SHARE), "workload": WORKLOAD_KEYS,
            **extra}


def episode(model, config: dict, seed: int) -> dict:
    env = gym.make("moe_cache_env:MoECache-Evict-v0", config=config)
    obs, info = env.reset(seed=seed, options={"trace": 0, "start_sequence": 0, "schedule_seed": seed})
    done = False
    while not done:
        action, _ = model.predict(obs, action_masks=info["action_mask"], deterministic=True)
        obs, _, done, _, info = env.step(int(action))
    return info["episode_metrics"]


def main(seed: int, timesteps: int) -> None:
    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.logger import Logger

    torch.set_num_threads(1)  # a small MLP: more threads only contend on a shared machine
    t0 = time.time()
    env = gym.make("moe_cache_env:MoECache-Evict-v0", config=env_config("train"))
    model = MaskablePPO("MlpPolicy", env, seed=seed, n_steps=1024, batch_size=256, learning_rate=3e-4,
                        gamma=0.99, device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty temp folder per run
    model.learn(total_timesteps=timesteps)
    train_s = time.time() - t0
    # decision time: the policy's forward pass on one observation
    probe = gym.make("moe_cache_env:MoECache-Evict-v0", config=env_config("test", episode_sequences=0))
    obs, info = probe.reset(seed=seed, options={"trace": 0, "start_sequence": 0, "schedule_seed": seed})
    times = []
    for _ in range(200):
        t = time.process_time()  # CPU time: waiting for a core on a shared machine is not the policy's cost
        model.predict(obs, action_masks=info["action_mask"], deterministic=True)
        times.append((time.process_time() - t) * 1000.0)
    decision_ms = float(np.median(times))
    free = episode(model, env_config("test", episode_sequences=0), seed)
    charged = episode(model, env_config("test", episode_sequences=0, decision_ms=decision_ms), seed)
    test = load_split(TRACE, "test", FRACTIONS, 0)
    cfg = config_for(test, SHARE)
    ref = {p: evaluate(test, EvaluationRequest(policy=p, config=cfg, seed=seed))["metrics"] for p in ("lru", "belady")}
    misses = {k: v["miss_rate"] * v["expert_requests"] for k, v in ref.items()}
    ppo_misses = free["miss_rate"] * free["expert_requests"]
    out = {"seed": seed, "timesteps": timesteps, "train_s": train_s, "decision_ms": decision_ms,
           "trace": TRACE, "capacity_share": SHARE, "slots": cfg.cache.total_slots,
           "gap_closed": (misses["lru"] - ppo_misses) / (misses["lru"] - misses["belady"]),
           "ms_per_token": charged["mean_latency_ms"], "ms_per_token_without_decision": free["mean_latency_ms"],
           "miss_rate": free["miss_rate"], "lru": {"miss_rate": ref["lru"]["miss_rate"],
                                                   "ms_per_token": ref["lru"]["mean_latency_ms"]},
           "belady": {"miss_rate": ref["belady"]["miss_rate"], "ms_per_token": ref["belady"]["mean_latency_ms"]}}
    print(out)
    atomic_write_json(HERE / "runs" / f"ppo_t{timesteps}_seed{seed}.json", out)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 20_000)
