#!/usr/bin/env bash
# Issue 8's GPU session in one script, for a machine with one GPU, PyTorch and no network. It needs BIN
# [demo/bin] (make demo; carry it to the GPU machine). It keeps within BUDGET seconds [480]: each step's time
# limit is cut to what is left, and a step with under 15 s left is skipped, so that the script always ends, and its
# files can be packed, inside the device call. The steps come in the order of what they are worth. Under
# OUT [gpu-out] it writes one log per step, steps.txt (each step's exit code and seconds) and bench.jsonl
# (every JSON line the benchmarks printed); with PACK=FILE.tgz it packs OUT into FILE.tgz at the end (a
# device call brings back 8 files at most; PACK first, so that its $OUT is the call's, as OUT= applies after
# it; a PACK inside OUT is refused). On a lent machine, with the call's timeout_s at least BUDGET + 60, and
# HASH this checkout's `git rev-parse HEAD`, with `+dirty` after it where the tree has changes not committed
# (a copy of the tree without its .git cannot name its commit, which the JSON lines record):
#   PACK=$OUT/gb.tgz ASYNC_NMT_COMMIT=HASH OUT=/tmp/gb bash scripts/gpu_bench.sh; cp /tmp/gb/*.txt /tmp/gb/bench.jsonl $OUT/
# and, in a second call if device time is left, issue 8's goal 5 alone (about 4 minutes):
#   PACK=$OUT/modes.tgz ASYNC_NMT_COMMIT=HASH OUT=/tmp/gm ONLY_MODES=1 bash scripts/gpu_bench.sh; cp /tmp/gm/*.txt /tmp/gm/bench.jsonl $OUT/
#   1. the search and model unit tests and the host-read tests on DEVICE (ASYNC_NMT_TEST_DEVICE); the
#      worker-process mode tests (TESTS_MODES=1, about 150 s) come last;
#   2. with STEP=1 bench_step.py (synthetic batches), bench_train.py (the whole nmt-train loop against a bare
#      nn.Transformer loop on demo/bin) for base and big, ab_step.py's A/Bs of the packed source and target
#      for base (the step with the encoder, or the decoder, on real tokens only, and on the padding too), with COMPILE=1
#      bench_train.py --compile for base, with AB=1 bench_train.py --plain-autocast for base, and
#      bench_translate.py (a random model);
#   3. a RUN_TIME-second bible-de-en run of base (TRAIN_OPTS: learning rate, warmup, dropout), bench_translate
#      of that model on the test set's first SENTENCES lines (at --max-tokens 16000 and 64000), then `nmt
#      translate` of the test set's first SENTENCES lines, greedy, beam 5, greedy with --cuda-graphs, and greedy and beam 5 in
#      64000-token batches, each timed from start-up to the last line, and its BLEU;
#      bench_startup.py then times the greedy command's stages (imports, CUDA context, model, first batch);
#      these steps of the trained model run only where the train step left a model of this run's in RUN
#      [/tmp/gpu-bench-run] (one that failed at once left an earlier run's, whose figures passed for this one's);
#   4. with MODE_BENCHES=1 (about 4 minutes more, past BUDGET after the rest), bench_paramserver.py and
#      bench_modes.py (WORKERS [4] workers on DEVICE); with ONLY_MODES=1 these alone.
# It exits 1 where a step failed or ran out of time (steps.txt says which; the others still run), and 130 on
# Ctrl-C, which stops the step under way and skips the rest (what is there is still packed).
# An OUT used again holds this run's results alone: the earlier ones' logs and outputs are removed first. A dry
# run on the CPU (about 5 minutes on 2 cores) checks the script itself:
#   DEVICE=cpu PRESETS=micro SECONDS_EACH=5 RUN_TIME=10 TESTS=0 TOKENS=2048 SENTENCES=20 scripts/gpu_bench.sh
# (the shell function `nmt` below serves plain calls; `step` runs commands through `timeout`, which
# needs a program, so it is given "${NMT[@]}")
set -uo pipefail
source "$(dirname "$0")/arguments.sh"
no_arguments "$@"
from_the_root
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda:0}
PRESETS=${PRESETS:-base big}
SECONDS_EACH=${SECONDS_EACH:-15}
RUN_TIME=${RUN_TIME:-120}
TESTS=${TESTS:-1}
TESTS_MODES=${TESTS_MODES:-0}
export BUDGET=${BUDGET:-480}
TOKENS=${TOKENS:-25000}  # a training batch (bench_step: 16384 tokens of 64-token rows)
SENTENCES=${SENTENCES:-1007}  # bench_translate of the trained model: the whole test set
BIN=${BIN:-demo/bin}
RUN=${RUN:-/tmp/gpu-bench-run}
TRAIN_OPTS=${TRAIN_OPTS:---lr 1e-3 --warmup 500 --dropout 0.3}  # the README's time-to-quality run (42.34 BLEU)
# knobs checked before any work: one device call is all a session may get (BUDGET=8m was bash's arithmetic
# error at the first step, and a switch other than 1 was taken as off without a word)
for name in BUDGET SECONDS_EACH RUN_TIME TOKENS SENTENCES WORKERS; do
  value=${!name:-4}  # (WORKERS: gpu_setup.sh's default)
  [[ $value =~ ^[0-9]+$ ]] && ((10#$value >= 1)) || refuse "$name=$value: give a whole number of at least 1"
  printf -v "$name" %d "$((10#$value))"  # (08 is 8: bash's arithmetic reads it as octal)
done
export BUDGET
for name in TESTS TESTS_MODES STEP AB COMPILE MODE_BENCHES ONLY_MODES; do
  [[ ${!name:-0} == 0 || ${!name:-0} == 1 ]] || refuse "$name=${!name}: give 0 or 1"
done
[[ $DEVICE =~ ^(cpu|cuda:[0-9]+)$ ]] || refuse "DEVICE=$DEVICE: give cpu or cuda:N"
for preset in $PRESETS; do
  case $preset in micro | tiny | small | base | big) ;; *) refuse "PRESETS=$PRESETS: give some of micro, tiny, small, base, big" ;; esac
done
[ -n "${PRESETS// /}" ] || refuse "PRESETS=$PRESETS: give some of micro, tiny, small, base, big"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd -P)
if [ -n "${PACK:-}" ]; then  # (a PACK inside OUT: tar read its own growing file, failed, and packed nothing)
  mkdir -p "$(dirname "$PACK")"
  PACK="$(cd "$(dirname "$PACK")" && pwd -P)/$(basename "$PACK")"
  case "$PACK" in "$OUT"/*) refuse "PACK=$PACK is inside OUT=$OUT; put PACK= before OUT= (see the header)" ;; esac
fi
# (from a wrong BIN most steps failed, one by one, until the budget was spent)
[ -f "$BIN/manifest.json" ] || refuse "BIN=$BIN: no preprocessed corpus (make demo writes demo/bin)"
# an OUT used before: its results go, so that none of them passes for this run's (a skipped step's)
# (its own names only: an OUT of `.` keeps other logs)
rm -f "$OUT"/{bench_,tests_,translate_}*.log "$OUT"/{train,install}.log "$OUT"/test-*.en "$OUT"/score-*.json \
  "$OUT"/graphs-check.txt "$OUT"/bench.jsonl "$OUT"/train-events.jsonl
: >"$OUT/steps.txt"
: >"$OUT/translate.jsonl"
source "$(dirname "$0")/gpu_setup.sh"
NMT=(python3 -m async_nmt.cli)
nmt() { "${NMT[@]}" "$@"; }
pack() {
  grep -h '^{' "$OUT"/bench_*.log "$OUT"/translate.jsonl >"$OUT/bench.jsonl" 2>/dev/null
  cat "$OUT/bench.jsonl"
  if [ -n "${PACK:-}" ]; then
    if tar czf "$PACK" -C "$(dirname "$OUT")" "$(basename "$OUT")"; then
      echo "packed $OUT into $PACK"
    else
      echo "PACK FAILED: tar could not pack $OUT into $PACK"
    fi
  fi
}
if [ "${ONLY_MODES:-0}" = 1 ]; then
  mode_benches
  pack
  steps_end
fi
# the test set's first SENTENCES lines, which `nmt translate` translates (all of them by default)
head -n "$SENTENCES" "$BIN/test.de" >"$OUT/source.de"
head -n "$SENTENCES" "$BIN/test.en" >"$OUT/reference.en"

if [ "$TESTS" = 1 ]; then
  ASYNC_NMT_TEST_DEVICE=$DEVICE step tests_search 90 python3 -m pytest -q -p no:cacheprovider -rf \
    tests/unit/test_search.py tests/unit/test_model.py tests/integration/test_host_reads.py
fi
for preset in $PRESETS; do
  [ "${STEP:-0}" = 1 ] && step "bench_step_$preset" 60 python3 scripts/bench_step.py --preset "$preset" --device "$DEVICE" \
    --max-tokens $((TOKENS < 16384 ? TOKENS : 16384)) --length 64
  step "bench_train_$preset" $((2 * SECONDS_EACH + 60)) python3 scripts/bench_train.py "$BIN" --preset "$preset" \
    --device "$DEVICE" --seconds "$SECONDS_EACH" --max-tokens "$TOKENS"
done
# the packed source (the encoder on real tokens only) against the padded encoder, batch by batch (seconds)
# and the packed target (the decoder on real tokens only) against the padded decoder
for packed in source target; do
  step "ab_step_packed_${packed}_${PRESETS%% *}" 90 python3 scripts/ab_step.py "$BIN" --switch "packed-$packed" \
    --preset "${PRESETS%% *}" --device "$DEVICE" --max-tokens "$TOKENS" --batches 16
done
if [ "${AB:-0}" = 1 ]; then  # the same loop with plain autocast: what the bf16 weight copies bring
  step "bench_train_${PRESETS%% *}_autocast" $((2 * SECONDS_EACH + 60)) python3 scripts/bench_train.py "$BIN" \
    --preset "${PRESETS%% *}" --device "$DEVICE" --seconds "$SECONDS_EACH" --max-tokens "$TOKENS" --plain-autocast
fi
if [ "${COMPILE:-0}" = 1 ]; then  # the product loop with --compile (fewer operators for the host to issue)
  step "bench_train_${PRESETS%% *}_compile" $((4 * SECONDS_EACH + 150)) python3 scripts/bench_train.py "$BIN" \
    --preset "${PRESETS%% *}" --device "$DEVICE" --seconds $((2 * SECONDS_EACH)) --max-tokens "$TOKENS" --compile
fi
step bench_translate 90 python3 scripts/bench_translate.py --preset "${PRESETS%% *}" --sentences "$SENTENCES" \
  --device "$DEVICE" --max-tokens 16000 --fixed-shapes

# the time-to-quality run (issue 8's settings), then the test set translated as a user would
trained_from=$(date +%s)
step train $((120 + RUN_TIME)) "${NMT[@]}" train "$BIN" "$RUN" --force --quiet --preset "${PRESETS%% *}" --devices "$DEVICE" \
  --max-tokens "$TOKENS" $TRAIN_OPTS --max-time "$RUN_TIME" --valid-every 0 \
  --valid-max-sentences 200
# the steps of the trained model: this run's alone (a train step that failed at once, or was skipped, left
# an earlier run's model in RUN, whose figures and events then passed for this run's)
if [ -f "$RUN/checkpoints/last.pt" ] && [ "$(stat -c %Y "$RUN/checkpoints/last.pt")" -ge "$trained_from" ]; then
  cp "$RUN/events.jsonl" "$OUT/train-events.jsonl" 2>/dev/null
  for tokens in 16000 64000; do  # the GPU default, and larger batches that take fewer steps (below)
    step "bench_translate_real_$tokens" 90 python3 scripts/bench_translate.py --run "$RUN" --input "$BIN/test.de" \
      --sentences "$SENTENCES" --device "$DEVICE" --max-tokens "$tokens" --fixed-shapes
  done
  # beam1-graphs: greedy with --cuda-graphs; -64k: batches of 64000 source tokens, not the default 16000. A
  # decoding step costs a GPU's host about the same whatever its rows, and the test set then takes fewer
  # steps: with demo/run, 156 instead of 220 greedy and 112 instead of 192 with beam 5 (116 and 80 in one
  # batch), counted by bench_translate.py --device cpu --check-every 8 (README, scripts).
  for search in beam1 beam5 beam1-graphs beam1-64k beam5-64k; do
    beam=${search:4:1}
    graphs=$([ "$search" = beam1-graphs ] && echo --cuda-graphs)
    tokens=$([ "${search#*-}" = 64k ] && echo 64000 || echo 16000)
    start=$(date +%s.%N)
    step "translate_$search" 90 "${NMT[@]}" translate "$RUN" --beam "$beam" $graphs --device "$DEVICE" --max-tokens "$tokens" \
      -i "$OUT/source.de" -o "$OUT/test-$search.en"
    seconds=$(python3 -c "import time; print(round(time.time() - $start, 2))")
    [ "$(wc -l 2>/dev/null <"$OUT/test-$search.en")" = "$(wc -l <"$OUT/source.de")" ] || continue
    nmt score "$OUT/test-$search.en" "$OUT/reference.en" --json >"$OUT/score-$search.json" 2>/dev/null
    python3 - "$OUT/score-$search.json" "$beam" "$seconds" "$OUT/source.de" "$tokens" "$graphs" "$DEVICE" <<'EOF' | tee -a "$OUT/translate.jsonl"
import json, sys
from async_nmt.provenance import timed_on, versions  # (after the timing: it imports torch)
score, beam, seconds, source = json.load(open(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lines = sum(1 for _ in open(source, encoding="utf-8"))
print(json.dumps({"bench": "nmt translate", "beam": beam, "max_tokens": int(sys.argv[5]),
                  "cuda_graphs": bool(sys.argv[6]), "sentences": lines, "wall_s": seconds,
                  "bleu": score["bleu"], "chrf": score["chrf"], "device": sys.argv[7],
                  **timed_on(sys.argv[7]), **versions()}))
EOF
  done
  # (in bf16 the two may differ on a few near ties: their kernels differ, e.g. attention over a padded cache)
  python3 - "$OUT/test-beam1.en" "$OUT/test-beam1-graphs.en" <<'EOF' 2>&1 | tee "$OUT/graphs-check.txt"
import sys
try:
    a, b = (open(path, encoding="utf-8").read().splitlines() for path in sys.argv[1:])
except OSError as err:
    sys.exit(f"greedy outputs with --cuda-graphs: not compared ({err})")
print(f"greedy outputs with --cuda-graphs: {sum(x != y for x, y in zip(a, b))} of {len(a)} lines differ"
      + ("" if len(a) == len(b) else f" (and {len(b)} lines against {len(a)})"))
EOF
  # where the greedy command's wall time goes: start-up stages, first batch, the rest
  step bench_startup 60 python3 scripts/bench_startup.py "$RUN" --input "$OUT/source.de" --device "$DEVICE" --beam 1
else
  echo "== the trained model's steps: skipped, train left no model of this run's in $RUN" | tee -a "$OUT/steps.txt"
fi
[ "${MODE_BENCHES:-0}" = 1 ] && mode_benches
if [ "$TESTS_MODES" = 1 ]; then  # 16 tests: 11 had run after 100 s on an H200 (3 failing, since fixed), 5 more in 50 s
  ASYNC_NMT_TEST_DEVICE=$DEVICE step tests_modes 160 python3 -m pytest -q -p no:cacheprovider -rf \
    tests/integration/test_modes.py
fi
pack
steps_end
