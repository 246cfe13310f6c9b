#!/usr/bin/env bash
# The CUDA checks of the training modes, for a machine with one GPU and PyTorch installed (no network):
# the worker-process tests on cuda:0 (2 workers sharing the GPU: CUDA IPC for the async server, gloo for
# sync), the unit tests under that machine's torch, and the two benchmarks (bench_paramserver.py on DEVICE
# [cuda:0], bench_modes.py with WORKERS [4] workers on it). Needs demo/bin (make demo).
# Writes logs and JSON lines under OUT (default: gpu-out).
set -uo pipefail
source "$(dirname "$0")/arguments.sh"
no_arguments "$@"
from_the_root
OUT=${OUT:-gpu-out}
WORKERS=${WORKERS:-4}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_setup.sh"

step unit 60 python3 -m pytest -q -x tests/unit
ASYNC_NMT_TEST_DEVICE=cuda:0 step modes_cuda 150 python3 -m pytest -q tests/integration/test_modes.py --durations=0
mode_benches
grep -h '^{' "$OUT"/bench_*.log >"$OUT/bench.jsonl"
cat "$OUT/bench.jsonl"
steps_end
