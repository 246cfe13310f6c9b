#!/usr/bin/env bash
# The CUDA checks of the training modes, for a machine with one GPU and PyTorch installed (no network):
# the worker-process tests on cuda:0 (2 workers sharing the GPU: CUDA IPC for the async server, gloo for
# sync), the unit tests under that machine's torch, and the two benchmarks. Needs demo/bin (make demo).
# Writes logs and JSON lines under OUT (default: gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
WORKERS=${WORKERS:-4}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || echo "pip install -e . failed (see install.log)"
bin=$(dirname "$(command -v python3)")
if [ ! -x "$bin/nmt-train" ]; then  # the tests run nmt-train beside python3
  printf '#!/bin/sh\nexec python3 -c "from async_nmt.cli import train_main; train_main()" "$@"\n' >"$bin/nmt-train"
  chmod +x "$bin/nmt-train"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, say how it went
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - start)) s"
  tail -n 3 "$OUT/$name.log"
}

step unit 60 python3 -m pytest -q -x tests/unit
ASYNC_NMT_TEST_DEVICE=cuda:0 step modes_cuda 150 python3 -m pytest -q tests/integration/test_modes.py --durations=0
step bench_paramserver 60 python3 scripts/bench_paramserver.py --device cuda:0
step bench_modes 150 python3 scripts/bench_modes.py --devices cuda:0 --workers "$WORKERS" --seconds 8 \
  --max-tokens 4096
grep -h '^{' "$OUT"/bench_*.log >"$OUT/bench.jsonl"
cat "$OUT/bench.jsonl"
