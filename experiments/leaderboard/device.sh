#!/usr/bin/env bash
# The leaderboard on a many-core Linux x86 machine with Python 3.12, torch, numpy, numba, pyyaml, matplotlib and
# pandas but without gymnasium, stable-baselines3 and sb3-contrib: their wheels are expected in .whl/ at the
# repository root (gymnasium, farama-notifications, stable-baselines3, sb3-contrib, cloudpickle; the versions of
# the development environment). Run from anywhere; writes ONE file, $OUT/leaderboard-cells.tgz: the finished
# cells (results and learning curves) and each run's run.json, plus the log.
#
# One call runs for at most WALL_S seconds (default 530, under 9 minutes) and keeps every cell it finished; the
# cells are resumable, so a second call, given the first call's cells unpacked into experiments/leaderboard/,
# continues where the first stopped. Afterwards, on any machine with the cells unpacked:
#   python experiments/leaderboard/leaderboard.py --report-only
# writes the README table, leaderboard.json and the plots.
#
# Settings (environment variables): JOBS (default: the number of cores), WALL_S (default 530), and
# LEADERBOARD_ARGS (extra arguments for leaderboard.py, e.g. "--tiny").
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder the tar file goes to}"
CORES=$(nproc)  # before OMP_NUM_THREADS is set: nproc honours it
JOBS=${JOBS:-$CORES}
WALL_S=${WALL_S:-530}
START=$(date +%s)
LOG=experiments/leaderboard/device-log.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
{
  echo "device.sh: $(date -u +%FT%TZ) $CORES cores, JOBS=$JOBS WALL_S=$WALL_S"
  python3 -c 'import platform, torch, numba, gymnasium, stable_baselines3, sb3_contrib; print("python", platform.python_version(), "torch", torch.__version__, "numba", numba.__version__, "gymnasium", gymnasium.__version__, "sb3", stable_baselines3.__version__, "sb3-contrib", sb3_contrib.__version__)'
} | tee -a "$LOG"
# the pool's own budget: what is left of WALL_S, less a margin for stopping the workers and packing
LEFT=$(( WALL_S - ($(date +%s) - START) - 25 ))  # the script compiles the kernels within it
echo "device.sh: pool budget ${LEFT} s" | tee -a "$LOG"
rc=0
timeout -k 10 $(( LEFT + 15 )) python3 experiments/leaderboard/leaderboard.py --jobs "$JOBS" --budget-s "$LEFT" \
  --no-report ${LEADERBOARD_ARGS:-} 2>&1 | tee -a "$LOG" || rc=$?
echo "device.sh: leaderboard exit $rc after $(( $(date +%s) - START )) s" | tee -a "$LOG"
cd experiments/leaderboard
DIRS=()
for d in cells tiny/cells; do [ -d "$d" ] && DIRS+=("$d"); done
find runs tiny/runs -name run.json 2>/dev/null > /tmp/runjson.txt || true
tar czf "$OUT/leaderboard-cells.tgz" "${DIRS[@]}" device-log.txt -T /tmp/runjson.txt
echo "device.sh: packed $(tar tzf "$OUT/leaderboard-cells.tgz" | wc -l) files into \$OUT/leaderboard-cells.tgz"
