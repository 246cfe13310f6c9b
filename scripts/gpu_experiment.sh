#!/usr/bin/env bash
# The bible-de-en comparison on one GPU shared by WORKERS real worker processes: sync, async and async-accum
# (N = WORKERS), the same model, data and learning rate, MAX_TIME seconds of training clock each, then
# `nmt report`. Needs demo/bin (make demo). Validation is spaced by target tokens (about VALID_TOKENS),
# so that the curves of all modes have points at comparable amounts of data.
# Knobs (environment): OUT [gpu-out]: the report, events and log; RUNS [/tmp/gpu-runs]: the run folders
#   (checkpoints are large); BIN [demo/bin]; WORKERS [4]; PRESET [small]; LR [1e-3]; WARMUP [500];
#   MAX_TOKENS [4096]: each worker's batch; MAX_TIME [75]; VALID_TOKENS [2000000]; DEVICE [cuda:0].
set -euo pipefail
source "$(dirname "$0")/arguments.sh"
no_arguments "$@"
from_the_root
OUT=${OUT:-gpu-out}
RUNS=${RUNS:-/tmp/gpu-runs}  # run folders (checkpoints are large); OUT gets the report, events and log
BIN=${BIN:-demo/bin}
WORKERS=${WORKERS:-4}
PRESET=${PRESET:-small}
LR=${LR:-1e-3}
WARMUP=${WARMUP:-500}
MAX_TOKENS=${MAX_TOKENS:-4096}
MAX_TIME=${MAX_TIME:-75}
VALID_TOKENS=${VALID_TOKENS:-2000000}
DEVICE=${DEVICE:-cuda:0}
# knobs that would fail only after the first runs (or in bash's arithmetic, with its own message)
[ -f "$BIN/manifest.json" ] || refuse "BIN=$BIN: no preprocessed corpus (make demo writes demo/bin)"
for name in WORKERS MAX_TOKENS VALID_TOKENS WARMUP; do
    min=1 at_least=" of at least 1"
    if [ "$name" = WARMUP ]; then min=0 at_least=" (0 or more)"; fi
    [[ ${!name} =~ ^[0-9]+$ ]] && ((10#${!name} >= min)) || refuse "$name=${!name}: give a whole number$at_least"
    printf -v "$name" %d "$((10#${!name}))"  # (08 is 8: bash's arithmetic below reads it as octal)
done
[[ $MAX_TIME =~ ^[0-9]+([.][0-9]*)?$ ]] && [[ ! $MAX_TIME =~ ^0*([.]0*)?$ ]] || refuse "MAX_TIME=$MAX_TIME: give seconds above 0"
case $PRESET in micro | tiny | small | base | big) ;; *) refuse "PRESET=$PRESET: give one of micro, tiny, small, base, big" ;; esac
# (these failed each mode's run in turn, after the set-up)
[[ $LR =~ ^([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$ ]] &&
    awk -v x="$LR" 'BEGIN { exit !(x + 0 > 0 && x + 0 < 1e308) }' || refuse "LR=$LR: give a number above 0"
[[ $DEVICE =~ ^(cpu|cuda:[0-9]+)$ ]] || refuse "DEVICE=$DEVICE: give cpu or cuda:N"
mkdir -p "$OUT" "$RUNS"
source "$(dirname "$0")/gpu_setup.sh"  # (nmt and nmt-train on a bare machine: they were "command not found")
for mode in sync async async-accum; do
    if [ -n "$STEPS_STOPPED" ]; then exit "$STEPS_STOPPED"; fi  # (Ctrl-C in the set-up, or in the last run)
    case $mode in
        async) per_update=$MAX_TOKENS extra=() ;;
        async-accum) per_update=$((MAX_TOKENS * WORKERS)) extra=(--accum "$WORKERS") ;;
        sync) per_update=$((MAX_TOKENS * WORKERS)) extra=() ;;
    esac
    start=$SECONDS
    nmt-train "$BIN" "$RUNS/$mode" --force --quiet --mode "$mode" "${extra[@]}" --workers "$WORKERS" \
        --devices "$DEVICE" --preset "$PRESET" --lr "$LR" --warmup "$WARMUP" --max-tokens "$MAX_TOKENS" \
        --max-time "$MAX_TIME" --valid-every $((VALID_TOKENS / per_update)) --valid-max-sentences 400 \
        >>"$OUT/runs.log" 2>&1 || echo "$mode failed: $(tail -n 1 "$OUT/runs.log")"
    echo "== $mode: $((SECONDS - start)) s; $(grep -c '"valid"' "$RUNS/$mode/events.jsonl") validations"
done
if [ -n "$STEPS_STOPPED" ]; then exit "$STEPS_STOPPED"; fi  # Ctrl-C: the run saved and stopped; so does this
COLUMNS=200 nmt report "$RUNS"/{sync,async,async-accum} --out "$OUT/report" | tee "$OUT/report.txt"
tar -czf "$OUT/events.tar.gz" -C "$RUNS" {sync,async,async-accum}/events.jsonl {sync,async,async-accum}/config.json
