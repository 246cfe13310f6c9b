#!/usr/bin/env bash
# The experiment of docs/results.md: sync, async and async-accum on bible-de-en (make demo writes demo/bin),
# 4 emulated workers (--simulate) at two learning rates, the batch-size/staleness pair, a straggler, and
# 2 real worker processes per mode; MAX_TIME seconds of training clock each, then `nmt report` tables.
# Knobs (environment): BIN [demo/bin], OUT [runs/experiment]: the run folders, their logs and the reports,
#   MAX_TIME [240]: seconds above 0, NMT_TRAIN [nmt-train] and NMT [nmt]: the commands.
set -euo pipefail
source "$(dirname "$0")/arguments.sh"
no_arguments "$@"
BIN=${BIN:-demo/bin}
OUT=${OUT:-runs/experiment}
MAX_TIME=${MAX_TIME:-240}
NMT_TRAIN=${NMT_TRAIN:-nmt-train}
NMT=${NMT:-nmt}
# (0 is nmt train's "no limit": the first run trained until Ctrl-C, and the others never started)
[[ $MAX_TIME =~ ^[0-9]+([.][0-9]*)?$ ]] && [[ ! $MAX_TIME =~ ^0*([.]0*)?$ ]] ||
    refuse "MAX_TIME=$MAX_TIME: give seconds above 0"
mkdir -p "$OUT"
common=(--preset tiny --devices cpu --max-tokens 1024 --warmup 250 --max-time "$MAX_TIME" --valid-max-sentences 400
        --quiet)
# validation about every 256k target tokens: sync/accum 4 updates cover 4 pushes of 1k tokens
train() {  # train NAME VALID_EVERY OPTION...
    local name=$1 every=$2
    shift 2
    # done before: the last event is an end by the run's own rule (Ctrl-C and SIGTERM write interrupted: true)
    [[ -f $OUT/$name/events.jsonl ]] && tail -n 1 "$OUT/$name/events.jsonl" |
        grep -q '"kind": "end".*"interrupted": false' && return 0
    local start=--force  # a run cut short goes on from its checkpoint
    [[ -f $OUT/$name/checkpoints/last.pt ]] && start=--resume
    echo "== $name: $*"
    local code=0
    "$NMT_TRAIN" "$BIN" "$OUT/$name" "${common[@]}" --valid-every "$every" "$@" "$start" >"$OUT/$name.log" 2>&1 ||
        code=$?
    # (its words are in its log: a run that failed ended the script without one)
    if ((code == 130)); then echo "interrupted" >&2; exit 130; fi
    if ((code)); then
        echo "error: $name failed, exit code $code: $(tail -n 1 "$OUT/$name.log") ($OUT/$name.log)" >&2
        exit 1
    fi
}
for lr in 1e-3 5e-4; do
    train "sim-sync-$lr" 64 --mode sync --workers 4 --simulate --lr "$lr"
    train "sim-async-$lr" 256 --mode async --workers 4 --simulate --lr "$lr"
    train "sim-accum4-$lr" 64 --mode async-accum --accum 4 --workers 4 --simulate --lr "$lr"
done
train sim-async-local4-1e-3 64 --mode async --local-accum 4 --workers 4 --simulate --lr 1e-3
train sim-sync-slow-1e-3 64 --mode sync --workers 4 --simulate --worker-speeds 1,1,1,0.25 --lr 1e-3
train sim-accum4-slow-1e-3 64 --mode async-accum --accum 4 --workers 4 --simulate --worker-speeds 1,1,1,0.25 --lr 1e-3
train real2-sync-1e-3 128 --mode sync --workers 2 --lr 1e-3
train real2-async-1e-3 256 --mode async --workers 2 --lr 1e-3
train real2-accum2-1e-3 128 --mode async-accum --accum 2 --workers 2 --lr 1e-3

report() {  # report NAME OPTION... RUN...
    local name=$1
    shift
    COLUMNS=220 "$NMT" report "$@" --out "$OUT/report-$name" >"$OUT/report-$name.txt"
}
for lr in 1e-3 5e-4; do
    report "lr$lr" --x predicted "$OUT"/sim-{sync,async,accum4}-$lr
done
report batch-vs-staleness --x tokens "$OUT"/sim-{sync,async,async-local4,accum4}-1e-3
report straggler --x predicted "$OUT"/sim-{sync,accum4}-slow-1e-3
report real2 --x time "$OUT"/real2-{sync,async,accum2}-1e-3
