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
bench() {  # bench NAME SCRIPT ARGS...: its JSON lines into OUT/NAME.jsonl, replaced only when it succeeds
  local name=$1
  shift
  [[ " $NAMES " == *" $name "* ]] || { echo "error: $name: a benchmark NAMES leaves out" >&2; exit 1; }
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name: $*" >&2
  "$PYTHON" "$@" >"$OUT/$name.jsonl.tmp"
  local code=$?
  if [ $code = 0 ]; then
    mv "$OUT/$name.jsonl.tmp" "$OUT/$name.jsonl"
  else
    rm -f "$OUT/$name.jsonl.tmp"
    if [ $code = 130 ]; then exit 130; fi  # Ctrl-C stops the script, not the one benchmark (nine to stop it)
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
