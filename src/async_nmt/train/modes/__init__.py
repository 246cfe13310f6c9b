"""Training modes: how worker gradients (pushes) become optimizer updates.

- sync:        every worker pushes one gradient per step; they are all-reduced; one update per step.
- async:       every push is applied as one update as soon as it arrives, no barrier.
- async-accum: the server sums `accum` pushes, from any workers, then takes one update.

The update rule lives in `paramserver.py`. One worker runs in-process (`train.trainer.LocalWorker`);
`simulated.py` emulates W workers on one device, deterministically. Worker processes (all-reduce, the
sharded shared-memory server) are the next step on this seam.
"""

from __future__ import annotations

from async_nmt.config import TrainConfig
from async_nmt.errors import UserError

MODES = ("sync", "async", "async-accum")


def check_mode_options(cfg: TrainConfig) -> None:
    """Refuse contradictory mode options with one line naming the option."""
    if cfg.mode not in MODES:
        raise UserError(f"--mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.accum < 1 or cfg.local_accum < 1 or cfg.workers < 1:
        raise UserError("--accum, --local-accum and --workers must be at least 1")
    if cfg.accum > 1 and cfg.mode != "async-accum":
        raise UserError(
            f"--accum sums pushes on the parameter server and only applies to --mode async-accum; "
            f"to sum batches on each worker in --mode {cfg.mode}, use --local-accum {cfg.accum}"
        )
    if cfg.workers > 1 and not cfg.simulate:
        raise UserError(
            f"--workers {cfg.workers}: worker processes are not available yet; add --simulate to emulate them"
        )
    if cfg.worker_speeds and not cfg.simulate:
        raise UserError("--worker-speeds only applies with --simulate")
    if cfg.worker_speeds and len(cfg.worker_speeds) != cfg.workers:
        raise UserError(f"--worker-speeds: {len(cfg.worker_speeds)} speeds for {cfg.workers} workers")


def pushes_per_update(cfg: TrainConfig) -> int:
    """Pushes the server sums into one optimizer update."""
    return cfg.accum if cfg.mode == "async-accum" else cfg.workers if cfg.mode == "sync" else 1
