"""sync: all-reduce data parallelism over torch.distributed (gloo on CPU, NCCL on CUDA).

Each process is one rank and keeps a full replica. A step: K local batches into the flat gradient, one
all-reduce of that buffer (and one of a few numbers: tokens, losses, data positions, stop wishes), then
the same token-normalized Adam update on every replica, so the replicas stay equal. Rank 0 writes the run
folder (events, validation, checkpoints); the others wait in their next all-reduce meanwhile. Whether to
stop is agreed in that small all-reduce, so every rank takes the same number of steps.

`nmt-train` spawns the ranks itself, or, when RANK and WORLD_SIZE are set (torchrun, several nodes), runs
as the rank they name.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from async_nmt.config import TrainConfig
from async_nmt.errors import UserError
from async_nmt.train import launch
from async_nmt.train.modes import Workers
from async_nmt.train.step import StepStats, train_step

if TYPE_CHECKING:
    from async_nmt.train.trainer import Trainer

TIMEOUT = datetime.timedelta(hours=2)  # rank 0 may validate a long while; the others wait in an all-reduce
STOP, INTERRUPT, FIXED = 4, 5, 6  # slots of the small all-reduce after tokens, loss, nll, sentences


class DistributedSync(Workers):
    def __init__(self, trainer: Trainer, rank: int, world: int, interrupt: Any = None):
        self.trainer, self.rank, self.world, self.interrupt = trainer, rank, world, interrupt
        self.meta_device = trainer.device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.wish = self.agreed = False
        self.steps = 0
        self.parent = os.getppid()
        self.speed = trainer.cfg.worker_speeds[rank] if trainer.cfg.worker_speeds else 1.0

    def agree_stop(self, wish: bool) -> bool:
        self.wish = wish
        return self.agreed

    def advance(self) -> tuple[StepStats, list[int]]:
        t = self.trainer
        t.flat.grad.zero_()
        local = StepStats()
        stream = t.streams[self.rank]
        start = time.perf_counter()
        for _ in range(t.cfg.local_accum):
            local.add(train_step(t.model, stream.next().to(t.device), t.cfg.label_smoothing, t.amp_dtype))
        if self.speed < 1:  # an emulated slower device (--worker-speeds): every rank waits for it
            time.sleep((time.perf_counter() - start) * (1 / self.speed - 1))
        self.steps += 1
        launch.maybe_fail(self.rank, self.steps)
        if not launch.parent_alive(self.parent):  # the supervisor (or torchrun's agent) was killed
            raise SystemExit(1)
        meta = torch.zeros(FIXED + 2 * self.world, dtype=torch.float64)
        meta[:FIXED] = torch.tensor([local.tokens, local.loss, local.nll, local.sentences, self.wish,
                                     bool(self.interrupt is not None and self.interrupt.is_set())])  # fmt: skip
        meta[FIXED + 2 * self.rank : FIXED + 2 * self.rank + 2] = torch.tensor([stream.epoch, stream.index])
        meta = meta.to(self.meta_device)
        dist.all_reduce(t.flat.grad)
        dist.all_reduce(meta)
        meta = meta.tolist()
        positions = meta[FIXED:]
        for w, other in enumerate(t.streams):
            other.load_state_dict({"epoch": int(positions[2 * w]), "index": int(positions[2 * w + 1])})
        self.agreed = meta[STOP] > 0 or meta[INTERRUPT] > 0
        t.interrupted = t.interrupted or meta[INTERRUPT] > 0
        tokens = int(meta[0])
        t.server.push(t.flat.grad, tokens, t.server.updates, count=self.world)  # one update, on every rank
        return StepStats(meta[1], meta[2], tokens, int(meta[3])), [self.world]  # W pushes of staleness 0


@dataclass
class RankSetup:
    cfg: TrainConfig
    run_dir: Path
    resume: bool
    progress: bool
    log_every: int
    port: int
    devices: list[str]
    errors: Any
    interrupt: Any


def backend(devices: list[str]) -> str:
    """NCCL when every rank has a GPU of its own; else gloo (NCCL refuses two ranks on one GPU)."""
    on_gpus = all(d.startswith("cuda") for d in devices) and len(set(devices)) == len(devices)
    return "nccl" if on_gpus else "gloo"


def rank_main(rank: int, setup: RankSetup) -> None:
    """A spawned rank: join the group on localhost, train, leave."""
    with launch.worker_process(rank, setup.devices[rank], setup.errors):
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(setup.port)
        world = len(setup.devices)
        torch.set_num_threads(launch.cpu_threads(sum(d == "cpu" for d in setup.devices)))
        if setup.devices[rank].startswith("cuda"):
            torch.cuda.set_device(torch.device(setup.devices[rank]))
        dist.init_process_group(backend(setup.devices), rank=rank, world_size=world, timeout=TIMEOUT)
        # on an error the group is left as it is: the error is reported first, so the other ranks' failed
        # all-reduce is not taken for the cause
        run_rank(setup.cfg, setup.run_dir, setup.resume, setup.progress, setup.log_every, rank, world, setup.interrupt)
        dist.destroy_process_group()


def run_rank(
    cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, log_every: int, rank: int, world: int,
    interrupt: Any = None,
) -> dict[str, Any]:  # fmt: skip
    from async_nmt.train.summary import print_summary
    from async_nmt.train.trainer import Trainer

    trainer = Trainer(cfg, run_dir, log_every=log_every, rank=rank, world=world, interrupt=interrupt)
    trainer.open_run(resume)
    summary = trainer.run(progress=progress and rank == 0)
    if progress and rank == 0:
        print_summary(summary, trainer)
    return summary


def launch_ranks(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, log_every: int,
                 devices: list[str]) -> None:  # fmt: skip
    """Spawn one rank per worker and supervise them; rank 0 writes the run folder."""
    errors, interrupt = launch.context().SimpleQueue(), launch.context().Event()
    setup = RankSetup(cfg, run_dir, resume, progress, log_every, launch.free_port(), devices, errors, interrupt)
    processes = launch.spawn(rank_main, [(rank, setup) for rank in range(len(devices))])
    code = launch.supervise(processes, errors, devices, run_dir, interrupt)
    if code:
        raise SystemExit(code)


def join_torchrun(cfg: TrainConfig, run_dir: Path, resume: bool, force: bool, progress: bool,
                  log_every: int) -> dict[str, Any]:  # fmt: skip
    """Run as the rank that RANK / WORLD_SIZE / LOCAL_RANK name, in the group torchrun set up."""
    from async_nmt.train.checkpoint import check_run_dir

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cfg.mode != "sync" or cfg.simulate:
        raise UserError("RANK/WORLD_SIZE are set (torchrun): only --mode sync runs across processes started so")
    if cfg.workers not in (1, world):
        raise UserError(f"--workers {cfg.workers} differs from WORLD_SIZE={world}")
    cfg.workers = world
    local = int(os.environ.get("LOCAL_RANK", rank))
    if cfg.devices:
        device = cfg.devices[local % len(cfg.devices)]
    else:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    cfg.devices = [device]  # this rank's
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if rank == 0:
        check_run_dir(run_dir, resume, force)
    dist.init_process_group(backend([device]), timeout=TIMEOUT)
    try:
        return run_rank(cfg, run_dir, resume, progress, log_every, rank, world)
    finally:
        dist.destroy_process_group()
