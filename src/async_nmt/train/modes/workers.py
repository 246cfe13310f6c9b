"""The `Workers` interface the trainer drives every mode through, what a mode is built from, and what an async
worker process computes its pushes with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from async_nmt.config import ModelConfig, TrainConfig
from async_nmt.data.batches import BatchStream
from async_nmt.data.binarize import load_split
from async_nmt.devices import amp_dtype_for
from async_nmt.train import processes
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.step import StepStats, build_model, push_gradient


@dataclass
class ModeContext:
    """What a mode is built from: this process's model and its flat parameters, the data streams of every
    worker, and where and how to compute. Modes never see the trainer."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    model: nn.Module
    flat: nn.Parameter  # the model's parameters and gradients as one flat buffer each
    streams: list[BatchStream]  # one per worker; the trainer checkpoints their positions
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype (None: fp32)
    devices: list[str]  # every worker's device
    run_dir: Path  # where worker failures are logged
    rank: int = 0  # this process's rank in a sync group of `world`
    world: int = 1
    interrupt: Any = None  # a sync group's Ctrl-C event, set by the launcher


def worker_seed(seed: int, worker: int) -> int:
    """The torch seed of an async worker's process: its own, so that workers draw different dropout masks
    (sync ranks keep the run's one seed, as fairseq's do)."""
    return seed * 1000 + worker


class WorkerCompute:
    """What an async worker process computes its pushes with, however it sends them (`asynchronous.py`: to
    a server in shared memory; `remote.py`: to rank 0 over torch.distributed): its own model, seeded as
    its own (`worker_seed`), its share of the batches from `position`, and its emulated `speed`."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, worker: int, device: torch.device,
                 position: dict[str, int], speed: float, checked: bool = True):  # fmt: skip
        self.cfg, self.device = cfg, device
        torch.manual_seed(worker_seed(cfg.seed, worker))
        self.model, self.flat = build_model(model_cfg, device, compiled=cfg.compile)  # here, where the compute is
        self.amp_dtype = amp_dtype_for(cfg.precision, device)
        split = load_split(Path(cfg.bin_dir), "train", checked=checked)  # (checked: unless the trainer did)
        self.stream = BatchStream(split, cfg.max_tokens, model_cfg.max_positions, cfg.seed, worker, cfg.workers,
                                  cfg.batch_sort)  # fmt: skip
        self.stream.load_state_dict(position)
        self.stream.pin = device.type == "cuda"
        self.speed = processes.EmulatedSpeed(speed, device)

    def push(self) -> StepStats:
        """The next push's gradient, into `flat.grad` (`--local-accum` batches), at the emulated speed."""
        cfg = self.cfg
        self.speed.begin()
        batches = (self.stream.next() for _ in range(cfg.local_accum))
        stats = push_gradient(self.model, self.flat, batches, self.device, cfg.label_smoothing, self.amp_dtype)
        self.speed.end()
        return stats


class Counted(NamedTuple):
    """The server's counts, and the learning rate and gradient norm of its last update, as the trainer last
    collected the pushes' statistics."""

    updates: int
    pushes: int
    lr: float
    grad_norm: float


class Workers:
    """Where pushes come from, and the server that turns them into updates. The trainer drives every mode
    through these calls alone."""

    server: ParamServer
    interrupted = False  # a sync group agreed to stop on Ctrl-C
    steps_here = False  # the pushes are computed in this process, inside `advance` (Ctrl-C waits for it)
    predicted_s: float | None = None  # the predicted wall clock of emulated devices (--simulate)
    predicted_worker_s: list[float] | None = None  # each emulated device's own predicted clock
    worker_pushes: list[int] | None = None  # pushes of each worker so far, where the mode counts them
    untrained_batches = 0  # batches taken from the streams ahead of their push (not yet trained on)
    # where pushes go on meanwhile (worker processes), the server's counts that the statistics last returned
    # reach: the trainer counts, logs and validates by those; None: by the server's, which the statistics reach
    counted: Counted | None = None

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

    def taken(self) -> None:
        """The trainer has counted what `advance` or `drain` returned last. Where the pushes are computed
        elsewhere, their statistics are kept until then, and a stop's `drain` returns them too: a Ctrl-C as
        `advance` (or a limit's `drain`) returned left them out of the counts that the checkpoint saves."""

    def drain(self) -> tuple[StepStats, list[int]]:
        """Finish the pushes in flight so that the server is between updates (before validation at a
        time or epoch limit, or a checkpoint on Ctrl-C); returns their statistics as `advance` does."""
        return StepStats(), []

    def agree_stop(self, wish: bool) -> bool:
        """Whether to stop, given this process's wish (several ranks must agree on it)."""
        return wish

    def all_agree(self, flag: bool) -> bool:
        """Whether every rank's `flag` is true (a collective: every rank of a group calls it)."""
        return flag

    def stop_asked(self) -> bool:
        """Whether Ctrl-C (or SIGTERM) asked the run to stop, as the closing validation ends (a collective for
        ranks, which see it only at their steps; in this process it is a KeyboardInterrupt)."""
        return self.interrupted

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
