"""Training modes: how worker gradients (pushes) become optimizer updates.

- sync:        every worker pushes one gradient per step; they are all-reduced; one update per step.
- async:       every push is applied as one update as soon as it arrives, no barrier.
- async-accum: the server sums `accum` pushes, from any workers, then takes one update.

The update rule lives in `paramserver.py`. Who computes the pushes is a `Workers` object:
- `local.py`        one worker in the trainer's process (any mode with --workers 1);
- `sync.py`         this process is one rank of an all-reduce group (torch.distributed);
- `asynchronous.py` worker processes pushing to a shared parameter server (async, async-accum);
- `simulated.py`    W workers emulated in one process, deterministically (--simulate, every mode).
"""

from __future__ import annotations

from typing import Any

from async_nmt.config import TrainConfig
from async_nmt.devices import default_device, resolve_device
from async_nmt.errors import UserError
from async_nmt.train.step import StepStats

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
    if cfg.worker_speeds and cfg.workers == 1:
        raise UserError("--worker-speeds needs several workers")
    if cfg.worker_speeds and len(cfg.worker_speeds) != cfg.workers:
        raise UserError(f"--worker-speeds: {len(cfg.worker_speeds)} speeds for {cfg.workers} workers")
    if cfg.shards < 0:
        raise UserError("--shards must not be negative")


def pushes_per_update(cfg: TrainConfig) -> int:
    """Pushes the server sums into one optimizer update."""
    return cfg.accum if cfg.mode == "async-accum" else cfg.workers if cfg.mode == "sync" else 1


class Workers:
    """Where pushes come from. The trainer drives every mode through these calls."""

    def start(self) -> None:
        """Begin (worker processes start here, after a resumed state is loaded)."""

    def close(self) -> None:
        """Stop whatever runs; called once, also after an error."""

    def allow(self, updates: int) -> None:
        """Pushes may go on until the server reaches `updates` (the next validation, checkpoint or end)."""

    def advance(self) -> tuple[StepStats, list[int]]:
        """Run until the server has taken at least one more update; returns the statistics of the pushes
        since the last call and a histogram of their staleness (counts of 0, 1, ...)."""
        raise NotImplementedError

    def drain(self) -> tuple[StepStats, list[int]]:
        """Finish the pushes in flight so that the server is between updates (before validation at a
        time or epoch limit, or a checkpoint on Ctrl-C); returns their statistics as `advance` does."""
        return StepStats(), []

    def agree_stop(self, wish: bool) -> bool:
        """Whether to stop, given this process's wish (several ranks must agree on it)."""
        return wish

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass


def histogram(values: list[int]) -> list[int]:
    """Counts of 0, 1, ..., max(values)."""
    hist = [0] * (max(values) + 1 if values else 0)
    for value in values:
        hist[value] += 1
    return hist


def merge_histograms(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a + [0] * (len(b) - len(a)), b + [0] * (len(a) - len(b)), strict=True)]


def worker_devices(cfg: TrainConfig) -> list[str]:
    """The device of each worker: round-robin over --devices (default: the first GPU, else the CPU)."""
    devices = cfg.devices or [default_device()]
    return [str(resolve_device(devices[w % len(devices)])) for w in range(cfg.workers)]


def uses_processes(cfg: TrainConfig) -> bool:
    return cfg.workers > 1 and not cfg.simulate
