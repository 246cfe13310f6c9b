# Functions the recipes share; sourced by them, not run. They read the recipe's knobs (see its header).
# (refuse and no_arguments, which the shell scripts share too, are in scripts/arguments.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/arguments.sh"

# show ARG...: the command as one would type it (quoting only what needs it)
show() {
    local arg words=()
    for arg; do
        if [[ $arg =~ ^[A-Za-z0-9_./:,=+@%-]+$ ]]; then words+=("$arg"); else words+=("$(printf %q "$arg")"); fi
    done
    echo "${words[*]}"
}

# Signals. A step that Ctrl-C or SIGTERM stops may take a while to end (a training run saves first); the recipe
# waits for it, then ends, exit code 130, running nothing more, however the signal came: Ctrl-C or `timeout`
# (to the process group, the step's too), or `kill` of the recipe alone (until 2026-12-07 the recipe ended at
# once: `timeout` returned before the run had saved, and after a `kill` the step trained on, unseen). The step
# runs in the background, so that `wait` lets the trap in, with Ctrl-C's default action restored (a shell
# starts a background job with SIGINT ignored, and `nmt` leaves an ignored Ctrl-C ignored), and the trap
# passes every signal on as SIGTERM: `nmt` takes a SIGTERM after a first notice as the same notice (a
# scheduler's, delivered twice), and a person's second Ctrl-C reaches it from the terminal as SIGINT, and
# stops it at once. Ctrl-Z, a hangup and
# `timeout -k`'s SIGKILL reach the step with the recipe, in their process group.
STEP_PID=
STEPPING=0  # a step is being started or waited for
STOPPED=0
SIGNALS=0  # the signals trapped so far
PARTIAL=  # run_to's FILE.part while its step runs
on_signal() {
    STOPPED=1
    SIGNALS=$((SIGNALS + 1))
    if [[ -n $STEP_PID ]]; then
        kill -s TERM "$STEP_PID" 2>/dev/null || true
    elif ((!STEPPING)); then  # (between steps)
        echo "interrupted" >&2
        exit 130
    fi  # (a step starting: it passes the signal on once it has a pid; one ended: step ends the recipe)
}
trap on_signal INT TERM

# step CMD...: run CMD to its end (see Signals above); its exit code
step() {
    local status code=0 signals
    STEPPING=1
    (trap - INT && exec "$@") </dev/null &  # (no step reads stdin; the recipe's may be closed: file 0 is free)
    STEP_PID=$!
    if ((STOPPED)); then kill -s TERM "$STEP_PID" 2>/dev/null || true; fi  # (a signal as it started)
    # A trapped signal ends `wait` early, with its own 128 + n: wait again, for the step's exit code (which bash
    # keeps where the step ended meanwhile; a second wait after one that took it says 127: not the step's)
    local first=1
    while :; do
        signals=$SIGNALS
        status=0
        wait "$STEP_PID" || status=$?
        if ((first || status != 127)); then code=$status; fi
        first=0
        if ((SIGNALS == signals)); then break; fi
    done
    STEP_PID=
    if ((STOPPED)); then
        if ((code != 130)); then echo "interrupted" >&2; fi  # (nmt says so itself)
        if [[ -n $PARTIAL ]]; then rm -f "$PARTIAL"; fi
        exit 130
    fi
    STEPPING=0
    return "$code"
}

# run CMD...: print CMD with DRY_RUN=1, else run it (as a step)
run() {
    if [[ $DRY_RUN == 1 ]]; then show "$@"; else step "$@"; fi
}

# run_to FILE CMD...: CMD's standard output into FILE (through FILE.part: a command that fails, e.g. offline,
# leaves no empty or partial FILE behind)
run_to() {
    local file=$1
    shift
    if [[ $DRY_RUN == 1 ]]; then
        echo "$(show "$@") > $(show "$file")"
    else
        PARTIAL=$file.part
        step "$@" >"$file.part" || { rm -f "$file.part"; PARTIAL=; return 1; }
        PARTIAL=
        mv "$file.part" "$file"
    fi
}

# say TEXT: a comment line between the commands (also in a dry run's listing)
say() {
    echo "# $*"
}

# get URL ARCHIVE FILE...: make sure $DATA holds FILE... (paths inside ARCHIVE); download and unpack only what is missing
get() {
    local url=$1 archive=$2 file missing=0 why
    shift 2
    for file; do [[ -s $DATA/$file ]] || missing=1; done
    if ((missing == 0)); then return 0; fi
    if [[ ! -s $DATA/$archive ]]; then
        if [[ $DRY_RUN == 1 ]]; then
            show curl -fsSL --retry 3 -o "$DATA/$archive.part" "$url"
        elif ! why=$(curl -fsSL --retry 3 -o "$DATA/$archive.part" "$url" 2>&1); then  # (a line a try: the last)
            rm -f "$DATA/$archive.part"
            # curl's 22: the server answered, with an HTTP error (a 404 asked whether the internet was reachable)
            if [[ $why == *"curl: (22)"*"error: 404"* || $why == *"curl: (22)"*"error: 410"* ]]; then
                why+="); the server has not got it: its address may have changed"
            elif [[ $why == *"curl: (22)"* ]]; then why+="); the server refused it or failed: try again later"
            else why+="); is the internet reachable?"; fi
            echo "error: could not download $url into $DATA (${why##*$'\n'}" >&2
            exit 1
        fi
        run mv "$DATA/$archive.part" "$DATA/$archive"
    fi
    case $archive in
        *.zip) run "$PYTHON" -m zipfile -e "$DATA/$archive" "$DATA" ;;
        *) run tar -xzf "$DATA/$archive" -C "$DATA" "$@" ;;
    esac
}

# raw_train CORPUS...: $RAW/train.{SRC,TGT} = the concatenation of $DATA/CORPUS.{SRC,TGT}
raw_train() {
    local lang corpus files
    for lang in "$SRC" "$TGT"; do
        files=()
        for corpus; do files+=("$DATA/$corpus.$lang"); done
        run_to "$RAW/train.$lang" cat "${files[@]}"
    done
}

# raw_eval SPLIT TESTSET: $RAW/SPLIT.{SRC,TGT} from sacreBLEU's copy of TESTSET (cached under $DATA/sacrebleu).
# sacreBLEU downloads a test set it lacks, and fails with a traceback offline: one line says so instead
raw_eval() {
    local side lang log
    for side in src ref; do
        lang=$SRC
        if [[ $side == ref ]]; then lang=$TGT; fi
        if [[ $DRY_RUN == 1 ]]; then
            run_to "$RAW/$1.$lang" env SACREBLEU="$DATA/sacrebleu" "$SACREBLEU_BIN" -t "$2" -l "$SRC-$TGT" --echo $side
            continue
        fi
        log=$(mktemp)
        if ! run_to "$RAW/$1.$lang" env SACREBLEU="$DATA/sacrebleu" "$SACREBLEU_BIN" -t "$2" -l "$SRC-$TGT" \
            --echo $side 2>"$log"; then
            echo "error: sacreBLEU could not give test set $2 ($SRC-$TGT, $side) for $RAW/$1.$lang:" \
                "$(grep -v '^ ' "$log" | tail -n 1) (it downloads test sets it has not cached in $DATA/sacrebleu)" >&2
            rm -f "$log"
            exit 1
        fi
        cat "$log" >&2 # (what it said it downloaded)
        rm -f "$log"
    done
}

# compare: preprocess $RAW, train one run per mode of $MODES and seed of $SEEDS (runs/MODE, or runs/MODE-sSEED for
# several seeds), translate and score the test set (each mode after the first tested against the first's
# translation of the same seed: `nmt score --baseline`), then `nmt report`.
# Run again, it keeps what is there: an existing $OUT/bin is not preprocessed again, and a run with a
# checkpoint is resumed (`--resume`: one that has ended says "nothing to do"; one cut short goes on).
compare() {
    local nmt bin=$OUT/bin mode seed name dir runs=() train accum start against seeds
    read -ra seeds <<<"$SEEDS"
    declare -A first=()  # seed -> the first mode's test translation
    read -ra nmt <<<"$NMT"
    if [[ -f $bin/manifest.json ]]; then
        say "$bin exists: its corpus is not made or preprocessed again (delete it, or choose another OUT, to redo it)"
    else
        run "${nmt[@]}" preprocess "$RAW" "$bin" --src "$SRC" --tgt "$TGT" --vocab-size "$VOCAB_SIZE" --force
    fi
    train=(--workers "$WORKERS" --devices "$DEVICES" --preset "$PRESET" --lr "$LR" --warmup "$WARMUP"
        --clip-norm "$CLIP_NORM" --label-smoothing "$LABEL_SMOOTHING" --max-tokens "$MAX_TOKENS"
        --max-time "$MAX_TIME" --max-updates "$MAX_UPDATES" --valid-every "$VALID_EVERY"
        --valid-max-sentences "$VALID_MAX_SENTENCES")
    if [[ $SIMULATE == 1 ]]; then train+=(--simulate); fi
    if [[ -n $WORKER_SPEEDS ]]; then train+=(--worker-speeds "$WORKER_SPEEDS"); fi
    run mkdir -p "$OUT/runs" "$OUT/test"
    for mode in $MODES; do
        for seed in "${seeds[@]}"; do
            name=$mode
            if ((${#seeds[@]} > 1)); then name=$mode-s$seed; fi
            dir=$OUT/runs/$name
            accum=()
            if [[ $mode == async-accum ]]; then accum=(--accum "$ACCUM"); fi
            start=--force  # a folder without a checkpoint holds nothing to keep
            if [[ -f $dir/checkpoints/last.pt ]]; then start=--resume; fi
            run "${nmt[@]}" train "$bin" "$dir" --mode "$mode" "${accum[@]}" "${train[@]}" --seed "$seed" "$start"
            run "${nmt[@]}" translate "$dir" --device "${DEVICES%%,*}" --beam "$BEAM" \
                --input "$bin/test.$SRC" --output "$OUT/test/$name.$TGT"
            against=()
            if [[ -n ${first[$seed]:-} ]]; then against=(--baseline "${first[$seed]}"); fi
            say "$name: test set, beam $BEAM${against[1]:+, tested against ${against[1]}}"
            run "${nmt[@]}" score "$OUT/test/$name.$TGT" "$bin/test.$TGT" "${against[@]}"
            first[$seed]=${first[$seed]:-$OUT/test/$name.$TGT}
            runs+=("$dir")
        done
    done
    run "${nmt[@]}" report "${runs[@]}" --x "$X" --out "$OUT/report" ${TARGET_BLEU:+--target-bleu "$TARGET_BLEU"}
}

# within NAME TEST WHAT: refuse the knob NAME unless its value passes TEST, a comparison of awk's (numbers: +0, as
# mawk compares 1e400 and 1e-400, beyond a double's range, as text)
within() {
    awk -v x="${!1}" "BEGIN { x += 0; exit !(x $2) }" || refuse "$1=${!1}: give $3"
}

# check_settings: refuse knobs that would fail only after the long steps before them (or be taken as 0)
check_settings() {
    local name mode seed what seen=" "
    for name in DRY_RUN SIMULATE; do
        [[ ${!name} == 0 || ${!name} == 1 ]] || refuse "$name=${!name}: give 0 or 1"
    done
    case $X in time | predicted | updates | tokens) ;; *) refuse "X=$X: give one of time, predicted, updates, tokens" ;; esac
    for mode in $MODES; do
        case $mode in sync | async | async-accum) ;; *)
            refuse "MODES: '$mode' is not one of sync, async, async-accum (separated by spaces; the recipes do" \
                "not run diloco)"
            ;;
        esac
        [[ $seen != *" $mode "* ]] || refuse "MODES: '$mode' is given twice (its run would be trained and reported twice)"
        seen+="$mode "
    done
    [[ -n ${MODES//[[:space:]]/} ]] || refuse "MODES is empty: give one or more of sync, async, async-accum"
    seen=" "
    for seed in $SEEDS; do  # (nmt train --seed's range: -2^32 to 2^32, exclusive)
        # (written plainly: 01 and 1 were two runs, runs/MODE-s01 and runs/MODE-s1, of one seed)
        [[ $seed =~ ^(0|-?[1-9][0-9]{0,8})$ ]] ||
            refuse "SEEDS: '$seed' is not a whole number of at most 9 digits, written plainly (01 is 1, -0 is 0)"
        [[ $seen != *" $seed "* ]] || refuse "SEEDS: '$seed' is given twice (its runs would be trained twice)"
        seen+="$seed "
    done
    [[ -n ${SEEDS//[[:space:]]/} ]] || refuse "SEEDS is empty: give one or more seeds"
    if [[ $X == predicted && $SIMULATE != 1 ]]; then
        refuse "X=predicted needs SIMULATE=1 (the predicted clock is the emulation's); give X=time"
    fi
    case $PRESET in micro | tiny | small | base | big) ;; *)  # (nmt train --preset's choices)
        refuse "PRESET=$PRESET: give one of micro, tiny, small, base, big"
        ;;
    esac
    for name in WORKERS ACCUM BEAM MAX_TOKENS VOCAB_SIZE; do
        [[ ${!name} =~ ^[0-9]+$ ]] && ((10#${!name} >= 1)) || refuse "$name=${!name}: give a whole number of at least 1"
    done
    # the largest nmt train and translate take (10^20 overflows bash's arithmetic: awk compares it)
    within WORKERS "<= 1024" "a whole number from 1 to 1024 (nmt train's most)"
    within ACCUM "<= 1048576" "a whole number from 1 to 1048576 (nmt train's most)"
    within BEAM "<= 2147483648" "a whole number from 1 to 2^31 (nmt translate's most)"
    for name in WARMUP MAX_UPDATES VALID_EVERY VALID_MAX_SENTENCES; do
        [[ ${!name} =~ ^[0-9]+$ ]] || refuse "$name=${!name}: give a whole number (0 or more)"
    done
    local number='([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?'
    for name in LR CLIP_NORM LABEL_SMOOTHING MAX_TIME ${TARGET_BLEU:+TARGET_BLEU}; do  # (no TARGET_BLEU: the report's)
        case $name in LR | TARGET_BLEU) what="a number above 0" ;; *) what="a number of 0 or more" ;; esac
        [[ ${!name} =~ ^$number$ ]] || refuse "$name=${!name}: give $what"
        within "$name" "< 1e308" "$what, a finite one"  # (1e400: infinite, which nmt train and report refuse)
    done
    # the ranges nmt train and nmt report take
    within LR "> 0" "a number above 0"
    within LABEL_SMOOTHING "< 1" "a number below 1"
    if [[ -n $TARGET_BLEU ]]; then within TARGET_BLEU "> 0" "a number above 0, or nothing (the report's default)"; fi
    # a run that no limit stops trains until Ctrl-C: the recipe would never reach its next mode or its report
    if awk -v t="$MAX_TIME" -v u="$MAX_UPDATES" 'BEGIN { exit !(t + 0 == 0 && u + 0 == 0) }'; then
        refuse "MAX_TIME=$MAX_TIME and MAX_UPDATES=$MAX_UPDATES: give one of them a limit (each run would train" \
            "until Ctrl-C)"
    fi
    local device='(cpu|cuda:[0-9]+)'  # (what nmt train --devices takes)
    [[ $DEVICES =~ ^$device(,$device)*$ ]] || refuse "DEVICES=$DEVICES: give cpu or cuda:N, comma-separated"
    within VOCAB_SIZE ">= 8" "a vocabulary of at least 8 pieces (nmt preprocess needs them)"
    if [[ -n $WORKER_SPEEDS ]]; then
        local speeds speed
        ((10#$WORKERS > 1)) || refuse "WORKER_SPEEDS=$WORKER_SPEEDS: needs WORKERS of 2 or more (WORKERS=$WORKERS)"
        [[ $WORKER_SPEEDS =~ ^$number(,$number)*$ ]] ||
            refuse "WORKER_SPEEDS=$WORKER_SPEEDS: give comma-separated numbers, one a worker, e.g. 1,1,1,0.5"
        IFS=, read -ra speeds <<<"$WORKER_SPEEDS"
        ((${#speeds[@]} == 10#$WORKERS)) ||
            refuse "WORKER_SPEEDS=$WORKER_SPEEDS: give $WORKERS speeds, one a worker (WORKERS=$WORKERS)"
        for speed in "${speeds[@]}"; do
            [[ $speed =~ ^$number$ ]] && awk -v x="$speed" 'BEGIN { exit !(x >= 0.001 && x <= 1000) }' ||
                refuse "WORKER_SPEEDS=$WORKER_SPEEDS: give speeds between 0.001 and 1000"
        done
    fi
}

# data_needed: whether the recipe must make its raw corpus: not when OUT/bin, preprocessed from it, is there
# (a run again keeps what it made; the raw corpus would be fetched and written again for nothing)
data_needed() {
    [[ ! -f $OUT/bin/manifest.json ]]
}

no_arguments "$@"  # (a sourced file sees the recipe's arguments)
check_settings
