# Sourced by gpu_setup.sh (for gpu_checks.sh, gpu_bench.sh and gpu_experiment.sh), and by cpu_bench.sh for
# its traps and steps_wait. `step` needs OUT set to an existing folder.
#   step NAME SECONDS COMMAND...  runs COMMAND with a time limit (cut to what is left of BUDGET seconds from the
#       script's start, if BUDGET is set; with under 15 s left the step is skipped), logs it to $OUT/NAME.log,
#       appends its outcome to $OUT/steps.txt and shows the log's last lines. A step that fails or runs out of
#       time does not stop the script.
#   steps_end  ends the script: exit 1 where a step failed, naming it (the script exited 0), else 0.
#   steps_wait  waits for STEP_PID, a command started in the background, through the signals trapped
#       meanwhile (passed on to it); its exit code in STEP_CODE.
# Ctrl-C (or SIGTERM) stops the step under way and skips the steps after it; steps_end then exits 130 (143).
# (`timeout` runs its command in a process group of its own, which a terminal's Ctrl-C does not reach: the
# script took it only once the step had ended, and went on to the next one. The trap passes it on.)
STEPS_FAILED=()
STEPS_STOPPED=
STEPS_SIGNALS=0  # the signals trapped so far
STEP_PID=
steps_stop() {  # steps_stop SIGNAL EXIT_CODE
  STEPS_STOPPED=$2
  STEPS_SIGNALS=$((STEPS_SIGNALS + 1))
  # (timeout passes it on to its command; one that has ended is no error: under set -e it ended the script)
  if [ -n "$STEP_PID" ]; then kill -"$1" "$STEP_PID" 2>/dev/null || true; fi
}
trap 'steps_stop INT 130' INT
trap 'steps_stop TERM 143' TERM

step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "$STEPS_STOPPED" ]; then
    echo "== $name: skipped, interrupted" | tee -a "$OUT/steps.txt"
    return
  fi
  if [ -n "${BUDGET:-}" ]; then
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 15 ]; then
      echo "== $name: skipped, ${left} s of BUDGET=$BUDGET left" | tee -a "$OUT/steps.txt"
      return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
  fi
  local start=$SECONDS code
  # (-k: killed 10 s after its SIGTERM if still there; in the background, so that `wait` lets the trap in)
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1 </dev/null &
  STEP_PID=$!
  steps_wait
  code=$STEP_CODE
  [ "$code" = 0 ] || STEPS_FAILED+=("$name")
  echo "== $name: exit $code in $((SECONDS - start)) s (limit $limit s)${STEPS_STOPPED:+, interrupted}" \
    | tee -a "$OUT/steps.txt"
  tail -n 3 "$OUT/$name.log"
}

steps_wait() {
  local status signals first=1
  # A trapped signal ends `wait` early, with its own 128 + n: wait again, for the command's exit code (which
  # bash keeps where it ended meanwhile; a second wait after one that took it says 127: not the command's).
  # (`|| status`: under set -e too)
  while :; do
    signals=$STEPS_SIGNALS status=0
    wait "$STEP_PID" || status=$?
    if [ -n "$first" ] || [ "$status" != 127 ]; then STEP_CODE=$status; fi
    first=
    [ "$STEPS_SIGNALS" = "$signals" ] && break
  done
  STEP_PID=
}

steps_end() {
  if [ -n "$STEPS_STOPPED" ]; then
    echo "interrupted" >&2
    exit "$STEPS_STOPPED"
  fi
  if [ ${#STEPS_FAILED[@]} -gt 0 ]; then
    echo "error: failed: ${STEPS_FAILED[*]} (see $OUT/steps.txt and their logs)" >&2
    exit 1
  fi
  exit 0
}
