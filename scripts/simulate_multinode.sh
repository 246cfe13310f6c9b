#!/usr/bin/env bash
# Issue 11's table: the predicted throughput of 2 nodes x 4 GPUs (8 workers, emulated with --simulate)
# training transformer-base in each mode, at two link speeds: 25 Gb/s Ethernet and 200 Gb/s InfiniBand.
#
# The clock prices a target token at TOKEN_US microseconds on one GPU [3.4: bench_step.py's base on one
# H200, issue 8] and each transfer of the fp32 parameters at the link's speed, so its figures do not
# depend on this machine. The runs are trained at 25 Gb/s; `nmt report --link-gbps 200` re-prices the same
# runs (their updates do not depend on the link). Each run is short: the throughput of the predicted
# clock is steady from the first update (no warm-up, no caches), and the runs only need enough pushes for
# every worker to push several times.
#
# It took 18 min 26 s on one core of the 2-core CPU machine (`taskset -c 0`, the other core busy; 2026-12-06),
# and its two tables' tok/s equalled the README's to the token: the predicted clock does not depend on the
# machine.
#
# Knobs (environment): BIN [demo/bin, from `make demo`], OUT [runs/multinode], DOCS [docs/results/multinode],
#   TOKEN_US [3.4], MAX_TOKENS [4096]: each worker's batch, NMT [nmt]: the command, OMP_NUM_THREADS [1]: the
#   threads of each run.
set -euo pipefail
source "$(dirname "$0")/arguments.sh"
no_arguments "$@"
BIN=${BIN:-demo/bin}
OUT=${OUT:-runs/multinode}
DOCS=${DOCS:-docs/results/multinode}
TOKEN_US=${TOKEN_US:-3.4}
MAX_TOKENS=${MAX_TOKENS:-4096}
NMT=${NMT:-nmt}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

common=(--preset base --devices cpu --workers 8 --simulate --simulate-token-us "$TOKEN_US" --link-gbps 25
        --max-tokens "$MAX_TOKENS" --valid-max-sentences 8 --quiet --force)
run() {  # run NAME UPDATES OPTIONS...: train, validate once at the end, copy the events
    local name=$1 updates=$2
    shift 2
    "$NMT" train "$BIN" "$OUT/$name" "${common[@]}" --max-updates "$updates" --valid-every "$updates" "$@"
    mkdir -p "$DOCS/$name"
    cp "$OUT/$name/events.jsonl" "$OUT/$name/config.json" "$DOCS/$name/"
}
run sync 2 --mode sync                                   # 16 pushes
run async 16 --mode async                                # 16 pushes, 2 a worker
run accum8 2 --mode async-accum --accum 8                # 16 pushes
run diloco-h10 10 --mode diloco --sync-every 10          # 80 pushes, one round
for gbps in 25 200; do
    "$NMT" report "$DOCS"/{sync,async,accum8,diloco-h10} --x predicted --link-gbps "$gbps"
done
