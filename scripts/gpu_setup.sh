# Sourced by the GPU scripts (gpu_checks.sh, gpu_bench.sh, gpu_experiment.sh) on a machine with PyTorch and
# no network: imports this checkout's src/ (PYTHONPATH), installs it without dependencies where no async-nmt
# is installed (for its metadata: `nmt --version`; an install elsewhere, as a venv's, is left alone: it was
# re-pointed at this checkout), puts nmt-train and nmt first on PATH where python3's folder lacks them (the
# tests run them; the folder itself is left alone), writes
# the card and the versions to $OUT/gpu.txt, and defines `step` and `steps_end` (steps.sh: run with a time
# limit, log to $OUT/NAME.log, say how it went; Ctrl-C stops the script). Needs OUT set to an existing folder.
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src
if ! python3 -c "import importlib.metadata as m; m.version('async-nmt')" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || echo "pip install -e . failed (see install.log)"
fi
# The tests run nmt and nmt-train beside the Python that runs them (a venv's), else from PATH: where that
# folder lacks them, this checkout's go into a folder of their own, first on PATH (the Python's folder, perhaps
# /usr/bin or a pyenv's shims, is not written to).
python=$(python3 -c "import sys; print(sys.executable)")
if [ ! -x "$(dirname "$python")/nmt-train" ] || [ ! -x "$(dirname "$python")/nmt" ]; then
  NMT_COMMANDS=$(mktemp -d -t nmt-commands.XXXXXX)  # (in $TMPDIR, else /tmp)
  printf '#!/bin/sh\nexec "%s" -c "from async_nmt.cli import train_main; train_main()" "$@"\n' "$python" \
    >"$NMT_COMMANDS/nmt-train"
  printf '#!/bin/sh\nexec "%s" -m async_nmt.cli "$@"\n' "$python" >"$NMT_COMMANDS/nmt"
  chmod +x "$NMT_COMMANDS/nmt-train" "$NMT_COMMANDS/nmt"
  export PATH=$NMT_COMMANDS:$PATH
  trap 'rm -rf "$NMT_COMMANDS"' EXIT
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
