#!/usr/bin/env bash
# Issue 9's experiment, from scratch and resumable: sync, async, async-accum 4 and async with the
# staleness-aware learning rate, 4 emulated workers (--simulate), 3 seeds each, every run trained to its
# own convergence (--patience), then the test set translated with the best checkpoint and with the average
# of the last 5 kept ones. Events, configs and test scores are copied to docs/results/convergence/ as
# each run ends, so they can be committed as they come; an interrupted run is resumed (--resume).
#
# Knobs (environment): RAW [demo/raw, from `make demo` or `nmt corpus get bible-de-en demo/raw`],
#   OUT [runs/convergence], DOCS [docs/results/convergence], TRAIN_PAIRS [10000], SEEDS [1 2 3],
#   LANES [2]: runs trained at once, one thread each; PATIENCE [8] (below); NMT [nmt] and PYTHON [python3]:
#   the commands;
#   CONFIGS [sync async accum4 async-inverse]: they answer (a) and (c), every seed of them first;
#   EXTRA_CONFIGS [async-local4 accum4-spread accum4-straggler diloco-h10 diloco-h100 localsgd-h10],
#            then: async-local4 (4 batches summed per push: the batch of a sync update at async's
#            staleness) answers (b); the next two race (d) with worker speeds 1,1,1,0.8 (spread) and
#            1,1,1,0.5 (straggler); the last three put DiLoCo (outer lr 0.7, Nesterov 0.9) and local SGD
#            (outer lr 1, no momentum) on the same chart (issue 12). EXTRA_CONFIGS= (empty): none of them.
#   Sync at those speeds is not trained again: its updates do not depend on the speeds, so
#   scripts/replay_sync_clock.py replays each sync run's batches through the clock at those speeds
#   (sync-spread-sN, sync-straggler-sN).
#   A configuration that is not one of these, and a SEEDS, LANES, TRAIN_PAIRS or PATIENCE that is not whole
#   numbers (LANES, TRAIN_PAIRS, PATIENCE: at least 1), are refused before any work.
set -euo pipefail
source "$(dirname "$0")/arguments.sh"
no_arguments "$@"
RAW=${RAW:-demo/raw}
OUT=${OUT:-runs/convergence}
DOCS=${DOCS:-docs/results/convergence}
TRAIN_PAIRS=${TRAIN_PAIRS:-10000}
SEEDS=${SEEDS:-1 2 3}
LANES=${LANES:-2}
CONFIGS=${CONFIGS:-sync async accum4 async-inverse}
EXTRA_CONFIGS=${EXTRA_CONFIGS-async-local4 accum4-spread accum4-straggler diloco-h10 diloco-h100 localsgd-h10}
NMT=${NMT:-nmt}
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=1

# Every run: micro (d64, 2+2 layers), 4 emulated workers of 1,024-token batches, lr 2e-3 after 200 warmup
# updates, validation on the first 500 valid sentences about every 400k target tokens (100 updates of sync
# and async-accum 4, 400 of async), stopped when PATIENCE [8] validations in a row bring no better BLEU
# (at most 60 epochs). The predicted clock prices a token at 140 us (what micro measured on one core
# here), so it does not depend on the load of the machine.
# The experiment began with a patience of 3. Sync seed 3 then stopped at 15.1 BLEU after a flat stretch
# of 3 validations, where seeds 1 and 2 went on to 20.0 and 21.6: 3 is within the noise of the curves. A
# run that ended under another patience is resumed under this one, and its test scores are redone.
PATIENCE=${PATIENCE:-8}
common=(--preset micro --devices cpu --workers 4 --simulate --simulate-token-us 140 --max-tokens 1024
        --lr 2e-3 --warmup 200 --valid-max-sentences 500 --patience "$PATIENCE" --max-epochs 60 --keep-last 5
        --quiet)
options() {  # the options of a configuration
    case $1 in
        sync) echo "--mode sync --valid-every 100" ;;
        async) echo "--mode async --valid-every 400" ;;
        accum4) echo "--mode async-accum --accum 4 --valid-every 100" ;;
        async-inverse) echo "--mode async --staleness-lr inverse --valid-every 400" ;;
        async-local4) echo "--mode async --local-accum 4 --valid-every 100" ;;
        accum4-spread) echo "--mode async-accum --accum 4 --valid-every 100 --worker-speeds 1,1,1,0.8" ;;
        accum4-straggler) echo "--mode async-accum --accum 4 --valid-every 100 --worker-speeds 1,1,1,0.5" ;;
        diloco-h10) echo "--mode diloco --sync-every 10 --valid-every 100" ;;
        diloco-h100) echo "--mode diloco --sync-every 100 --valid-every 100" ;;
        localsgd-h10) echo "--mode diloco --sync-every 10 --outer-lr 1 --outer-momentum 0 --valid-every 100" ;;
        *) echo "unknown configuration $1" >&2; return 1 ;;
    esac
}

# the knobs, before any work: an unknown configuration ran as a run of nmt train's default mode, under its
# name, and LANES=0 ran every run at once (xargs -P 0)
for config in $CONFIGS $EXTRA_CONFIGS; do
    options "$config" >/dev/null 2>&1 || refuse "CONFIGS, EXTRA_CONFIGS: '$config' is not a configuration (one of" \
        "sync async accum4 async-inverse async-local4 accum4-spread accum4-straggler diloco-h10 diloco-h100" \
        "localsgd-h10)"
done
for seed in $SEEDS; do
    [[ $seed =~ ^-?[0-9]+$ ]] || refuse "SEEDS: '$seed' is not a whole number"
done
[[ -n ${SEEDS//[[:space:]]/} ]] || refuse "SEEDS is empty: give one or more seeds"
for name in TRAIN_PAIRS LANES PATIENCE; do
    [[ ${!name} =~ ^[0-9]+$ ]] && ((10#${!name} >= 1)) || refuse "$name=${!name}: give a whole number of at least 1"
done

# the data: the first TRAIN_PAIRS training verse pairs of bible-de-en, the valid and test splits whole,
# a joint unigram vocabulary of 2,000 (the micro model's output layer is then cheap enough for the CPU)
if [[ ! -f $OUT/bin/manifest.json ]]; then
    [[ -f $RAW/train.de ]] || "$NMT" corpus get bible-de-en "$RAW"
    mkdir -p "$OUT/raw"
    for side in de en; do
        head -n "$TRAIN_PAIRS" "$RAW/train.$side" >"$OUT/raw/train.$side"
        cp "$RAW/valid.$side" "$RAW/test.$side" "$OUT/raw/"
    done
    "$NMT" preprocess "$OUT/raw" "$OUT/bin" --vocab-size 2000 --force
fi

ended() {  # ended DIR: the run's last event is an end by its own rule (Ctrl-C or SIGTERM writes one with "interrupted": true)
    [[ -f $1/events.jsonl ]] && tail -n 1 "$1/events.jsonl" | grep -q '"kind": "end".*"interrupted": false'
}

run() {  # run CONFIG SEED: train (or resume), translate and score the test set, copy the results
    local config=$1 seed=$2 name="$1-s$2" dir lock
    dir=$OUT/$name
    exec {lock}>"$OUT/$name.lock"  # one process per run, also across invocations of this script
    flock -n "$lock" || { echo "== $name runs elsewhere"; return 0; }
    local patience=$PATIENCE
    if [[ -f $dir/config.json ]]; then  # an assignment, so that a failing python stops the script (set -e)
        patience=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["train"]["patience"])' \
            "$dir/config.json")
    fi
    if ended "$dir" && [[ $patience != "$PATIENCE" ]]; then
        echo "== $name ended under another --patience: resumed under $PATIENCE"
        rm -f "$DOCS/$name"/test-*.json
        sed -i '${/"kind": "end"/d}' "$dir/events.jsonl"  # the last line: the run unfinished (`ended` reads it)
    fi
    if ! ended "$dir"; then
        local resume=(--force)
        [[ -f $dir/checkpoints/last.pt ]] && resume=(--resume)
        echo "== $name $(date +%T)"
        rm -f "$DOCS/$name"/test-*.json  # those of an earlier run of this name, under another rule
        # shellcheck disable=SC2046
        "$NMT" train "$OUT/bin" "$dir" "${common[@]}" $(options "$config") --seed "$seed" "${resume[@]}" \
            >"$OUT/$name.log" 2>&1 || { echo "!! $name failed: $(tail -1 "$OUT/$name.log")"; return 0; }
    fi
    local docs=$DOCS/$name
    mkdir -p "$docs"
    cp "$dir/events.jsonl" "$dir/config.json" "$docs/"
    for which in best avg5; do
        [[ -f $docs/test-$which.json ]] && continue
        local model=(--checkpoint best)
        [[ $which == avg5 ]] && model=(--average 5)
        "$NMT" translate "$dir" "${model[@]}" --device cpu --beam 5 -i "$OUT/bin/test.de" -o "$dir/test-$which.en"
        "$NMT" score "$dir/test-$which.en" "$OUT/bin/test.en" --json >"$docs/test-$which.json"
    done
    echo "== $name done $(date +%T)"
}
export -f run options ended
export OUT DOCS NMT PATIENCE PYTHON
export COMMON="${common[*]}"

jobs=()
for configs in "$CONFIGS" "$EXTRA_CONFIGS"; do
    for seed in $SEEDS; do
        for config in $configs; do
            jobs+=("$config $seed")
        done
    done
done
# each run in a shell of its own, which does not inherit set -e: it is set there, so that a failing command
# (python missing, say) stops that run instead of letting it go on with an empty answer
printf '%s\n' "${jobs[@]}" | xargs -P "$LANES" -L 1 bash -c 'set -euo pipefail; common=($COMMON); run "$0" "$1"'

# sync at the (d) speeds: each finished sync run's batches replayed through the clock at those speeds
for seed in $SEEDS; do
    [[ -f $DOCS/sync-s$seed/test-avg5.json ]] || continue
    for race in "spread 1,1,1,0.8" "straggler 1,1,1,0.5"; do
        set -- $race
        # (--force: the replay is this script's, made again from the run; without it a second pass stopped here)
        "$PYTHON" "$(dirname "$0")/replay_sync_clock.py" "$DOCS/sync-s$seed" "$DOCS/sync-$1-s$seed" --worker-speeds "$2" \
            --force
    done
done

# the page's tables and plots, from the copied files alone
"$PYTHON" "$(dirname "$0")/results_convergence.py" "$DOCS" --plots "$DOCS" >"$DOCS/tables.md"
echo "wrote $DOCS/tables.md"
