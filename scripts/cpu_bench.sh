#!/usr/bin/env bash
# The README's table of CPU benchmarks in one script: each benchmark's JSON lines go into OUT/NAME.jsonl
# [OUT: docs/results/cpu], and the README's table names that file beside its figures. It needs BIN
# [demo/bin] and RUN [demo/run], which `make demo` writes. Run it alone on the machine: the figures are
# timings. PYTHON [python] runs the benchmarks; ONLY="NAME NAME" runs those alone. A benchmark that fails
# leaves its file as it was, and the others run; the script then exits 1, naming it.
#   bash scripts/cpu_bench.sh
set -uo pipefail
source "$(dirname "$0")/arguments.sh"
no_arguments "$@"
from_the_root
OUT=${OUT:-docs/results/cpu}
BIN=${BIN:-demo/bin}
RUN=${RUN:-demo/run}
PYTHON=${PYTHON:-python}
ONLY=${ONLY:-}
NAMES="step-tiny step-tiny-fp32 step-base train-tiny train-tiny-fp32 translate startup paramserver modes"
for name in $ONLY; do  # (an unknown one ran nothing and said nothing)
  [[ " $NAMES " == *" $name "* ]] || refuse "ONLY: '$name' is not one of: $NAMES"
done
for need in "$BIN/manifest.json" "$RUN/checkpoints"; do
  [ -e "$need" ] || refuse "$need: not there (make demo writes it)"
done
mkdir -p "$OUT" || exit 1
failed=()
# Ctrl-C or SIGTERM (`kill`, `timeout`) stops the benchmark under way, which leaves its file as it was, and the
# script, exit code 130 (143): steps.sh's traps pass the signal on (SIGTERM to the script alone waited for the
# benchmark, and left its .tmp file)
source "$(dirname "$0")/steps.sh"
bench() {  # bench NAME SCRIPT ARGS...: its JSON lines into OUT/NAME.jsonl, replaced only when it succeeds
  local name=$1
  shift
  [[ " $NAMES " == *" $name "* ]] || { echo "error: $name: a benchmark NAMES leaves out" >&2; exit 1; }
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name: $*" >&2
  # (in the background, so that `wait` lets the trap in; with Ctrl-C's default action, which a background job
  # would ignore, and the benchmark then too)
  (trap - INT && exec "$PYTHON" "$@") >"$OUT/$name.jsonl.tmp" </dev/null &
  STEP_PID=$!
  steps_wait
  local code=$STEP_CODE
  if [ $code = 0 ] && [ -z "$STEPS_STOPPED" ]; then
    mv "$OUT/$name.jsonl.tmp" "$OUT/$name.jsonl"
  else
    rm -f "$OUT/$name.jsonl.tmp"
    if [ -n "$STEPS_STOPPED" ] || [ $code = 130 ]; then  # Ctrl-C stops the script, not the one benchmark
      [ "$code" = 130 ] || echo "interrupted" >&2  # (the benchmark says so itself)
      exit "${STEPS_STOPPED:-130}"
    fi
    failed+=("$name")
  fi
}
bench step-tiny scripts/bench_step.py --preset tiny --device cpu
bench step-tiny-fp32 scripts/bench_step.py --preset tiny --device cpu --precision fp32
bench step-base scripts/bench_step.py --preset base --device cpu --steps 4
bench train-tiny scripts/bench_train.py "$BIN" --preset tiny --device cpu --seconds 30 --repeats 4
bench train-tiny-fp32 scripts/bench_train.py "$BIN" --preset tiny --device cpu --seconds 30 --precision fp32 --repeats 4
bench translate scripts/bench_translate.py --run "$RUN" --input "$BIN/test.de" --device cpu
bench startup scripts/bench_startup.py "$RUN" --input "$BIN/test.de" --device cpu --beam 1
bench paramserver scripts/bench_paramserver.py --device cpu --repeat 5 --transport both
bench modes scripts/bench_modes.py --bin "$BIN" --workers 2 --devices cpu --seconds 15
if [ ${#failed[@]} -gt 0 ]; then echo "error: failed: ${failed[*]} (its output is above)" >&2; exit 1; fi
