#!/usr/bin/env bash
# The acceptance experiment: PPO (<= 15 minutes on a 2-core CPU) against the seed's five hand-written strategies,
# random actions, static-tuned (fixed thresholds grid-searched on the train split) and the per-window hindsight
# oracle, on held-out (test split) episodes of MoECache-v0. Results land beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/ppo_vs_baselines
SEED=${SEED:-0}
TIMESTEPS=${TIMESTEPS:-200000}
EPISODES=${EPISODES:-10}

# 1. which thresholds win in which regime (the premise of an adaptive agent)
python $HERE/regime_sweep.py --tokens 2000 --out $HERE/regime_sweep.json | tee $HERE/regime_sweep.txt

# 2. train PPO on the train split, validating on the validation split (wall time is recorded in run.json)
moe-cache-env train --algo ppo --env MoECache-v0 --timesteps "$TIMESTEPS" --seed "$SEED" \
  --out $HERE/ppo_s$SEED --eval-freq 10000 --eval-episodes 5 --checkpoint-freq 50000 --no-progress-bar

# 3. compare everything on the same test-split episodes (episode i = reset(seed=1000+i))
moe-cache-env compare --env MoECache-v0 \
  --agents static,conservative,aggressive,balanced,dynamic,random,static-tuned,ppo:$HERE/ppo_s$SEED/model.zip \
  --episodes "$EPISODES" --seed 1000 --tune-episodes 3 --oracle --out $HERE/results | tee $HERE/results.txt

# 4. the same with the extended action set (thresholds, lookahead, prefetch budget, tier split, eviction weights)
moe-cache-env train --algo ppo --env MoECache-Extended-v0 --timesteps 150000 --seed "$SEED" \
  --out $HERE/ppo_extended_s$SEED --eval-freq 10000 --eval-episodes 5 --checkpoint-freq 50000 --no-progress-bar
moe-cache-env compare --env MoECache-Extended-v0 \
  --agents static,conservative,aggressive,balanced,dynamic,static-tuned,ppo:$HERE/ppo_extended_s$SEED/model.zip \
  --episodes "$EPISODES" --seed 1000 --tune-episodes 3 --out $HERE/results_extended | tee $HERE/results_extended.txt
