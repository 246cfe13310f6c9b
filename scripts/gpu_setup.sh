# Sourced by the GPU scripts (gpu_checks.sh, gpu_bench.sh, gpu_experiment.sh) on a machine with PyTorch and
# no network: imports this checkout's src/ (PYTHONPATH), installs it without dependencies where no async-nmt
# is installed (for its metadata: `nmt --version`; an install elsewhere, as a venv's, is left alone: it was
# re-pointed at this checkout), puts nmt-train and nmt beside python3 (the tests run them), writes
# the card and the versions to $OUT/gpu.txt, and defines `step` and `steps_end` (steps.sh: run with a time
# limit, log to $OUT/NAME.log, say how it went; Ctrl-C stops the script). Needs OUT set to an existing folder.
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src
if ! python3 -c "import importlib.metadata as m; m.version('async-nmt')" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || echo "pip install -e . failed (see install.log)"
fi
bin=$(dirname "$(command -v python3)")
if [ ! -x "$bin/nmt-train" ]; then
  printf '#!/bin/sh\nexec python3 -c "from async_nmt.cli import train_main; train_main()" "$@"\n' >"$bin/nmt-train"
  chmod +x "$bin/nmt-train"
fi
if [ ! -x "$bin/nmt" ]; then
  printf '#!/bin/sh\nexec python3 -m async_nmt.cli "$@"\n' >"$bin/nmt"
  chmod +x "$bin/nmt"
fi
if command -v nvidia-smi >/dev/null; then  # (|| true: under set -e, as gpu_experiment.sh runs, no reason to stop)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
fi
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

# issue 8's goal 5: the parameter server's update and the modes' throughput, WORKERS workers on DEVICE [cuda:0]
mode_benches() {
  step bench_paramserver 90 python3 scripts/bench_paramserver.py --device "${DEVICE:-cuda:0}" --transport both
  step bench_modes 150 python3 scripts/bench_modes.py --devices "${DEVICE:-cuda:0}" --workers "${WORKERS:-4}" \
    --seconds 8 --max-tokens 4096
}
