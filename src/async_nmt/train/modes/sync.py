"""sync: all-reduce data parallelism over torch.distributed (NCCL when every rank has a GPU of its own, else
gloo: on the CPU, and for ranks sharing a GPU).

Each process is one rank and keeps a full replica. A step: K local batches into the flat gradient, one
all-reduce of that buffer (and one of a few numbers: tokens, losses, data positions, stop wishes), then
the same token-normalized Adam update on every replica, so the replicas stay equal. Rank 0 writes the run
folder (events, validation, checkpoints); the others wait in their next all-reduce meanwhile. Whether to
stop is agreed in that small all-reduce, so every rank takes the same number of steps.

The launcher (`train/launch.py`) starts the ranks, or joins torchrun's group, and gives each a trainer.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from async_nmt.train import processes
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import ModeContext, Workers
from async_nmt.train.step import StepStats, push_gradient

STOP, INTERRUPT, FIXED = 4, 5, 6  # slots of the small all-reduce after tokens, loss, nll, sentences


class DistributedSync(Workers):
    def __init__(self, ctx: ModeContext, server: ParamServer):
        self.ctx, self.server = ctx, server
        self.rank, self.world, self.interrupt = ctx.rank, ctx.world, ctx.interrupt
        self.meta_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.wish = self.agreed = False
        self.local = StepStats()  # this rank's share of the last step
        self.steps = 0
        self.parent = os.getppid()
        # an emulated slower device (--worker-speeds): every rank waits for it
        self.speed = processes.EmulatedSpeed(ctx.cfg.worker_speeds[ctx.rank] if ctx.cfg.worker_speeds else 1.0,
                                             ctx.device)  # fmt: skip

    def agree_stop(self, wish: bool) -> bool:
        self.wish = wish
        return self.agreed

    def advance(self) -> tuple[StepStats, list[int]]:
        stats = self.step()
        dist.all_reduce(self.ctx.flat.grad)
        self.server.push(self.ctx.flat.grad, stats.tokens, self.server.updates, count=self.world)  # every rank
        return stats, [self.world]  # W pushes of staleness 0

    def step(self) -> StepStats:
        """This rank's K batches into the flat gradient, and one small all-reduce of every rank's statistics,
        data position and stop wish; returns the statistics of all ranks together."""
        ctx = self.ctx
        stream = ctx.streams[self.rank]
        self.speed.begin()
        batches = (stream.next() for _ in range(ctx.cfg.local_accum))
        local = push_gradient(ctx.model, ctx.flat, batches, ctx.device, ctx.cfg.label_smoothing, ctx.amp_dtype)
        self.speed.end()
        self.steps += 1
        processes.maybe_fail(self.rank, self.steps)
        if not processes.parent_alive(self.parent):  # the supervisor (or torchrun's agent) was killed
            raise SystemExit(1)
        meta = torch.zeros(FIXED + 2 * self.world, dtype=torch.float64)
        meta[:FIXED] = torch.tensor([local.tokens, float(local.loss), float(local.nll), local.sentences, self.wish,
                                     bool(self.interrupt is not None and self.interrupt.is_set())])  # fmt: skip
        meta[FIXED + 2 * self.rank : FIXED + 2 * self.rank + 2] = torch.tensor([stream.epoch, stream.index])
        meta = meta.to(self.meta_device)
        dist.all_reduce(meta)
        meta = meta.tolist()
        positions = meta[FIXED:]
        for w, other in enumerate(ctx.streams):
            other.load_state_dict({"epoch": int(positions[2 * w]), "index": int(positions[2 * w + 1])})
        self.agreed = meta[STOP] > 0 or meta[INTERRUPT] > 0
        self.interrupted = self.interrupted or meta[INTERRUPT] > 0
        self.local = local
        return StepStats(meta[1], meta[2], int(meta[0]), int(meta[3]))
