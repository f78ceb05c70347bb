#!/usr/bin/env bash
# One call on the H200 that replays the kernel's decision logs several times in a row (run from the repository
# root): h200_kernel.sh once per number in REPEATS, each writing $OUT/kernel-<trace>-b<batch>-repeat<N>.json and
# $OUT/kernel-repeat<N>.log. BATCHES and NAMES pass through (BATCHES=1 repeats only the batch-1 rows, whose
# measurement moves most between calls). A full table takes about 6.5 minutes (four replay-gpu set-ups, each
# pinning 21-39 GiB of expert weights), so one 10-minute call holds one full table or two batch-1 halves.
set -o pipefail
for n in ${REPEATS:?set REPEATS, e.g. REPEATS=\"2 3\"}; do
    SUFFIX=-repeat$n bash "$(dirname "$0")/h200_kernel.sh" || exit $?
done
