"""sync: all-reduce data parallelism over torch.distributed (NCCL when every rank has a GPU of its own, else
gloo: on the CPU, and for ranks sharing a GPU).

Each process is one rank and keeps a full replica. A step: K local batches into the flat gradient, one
all-reduce of that buffer (and one of four numbers: the two losses, the stop wishes, Ctrl-C), then the
same token-normalized Adam update on every replica, so the replicas stay equal. Rank 0 writes the run
folder (events, validation, checkpoints); the others wait in their next all-reduce meanwhile.

With NCCL a step reads nothing back from the device, so that the host queues the next step while the GPU
runs this one (ranks that share a GPU all-reduce with gloo, through host memory, and so wait for it).
Every rank holds every rank's batch stream, so each follows the others' positions and counts their
target tokens (what the update is normalized by) on the host. The summed losses stay on the device until
a log line reads them. Whether to stop is agreed in the small all-reduce and read one step later, when
it has long finished: every rank reads the same agreement after the same step and stops there.

The launcher (`train/launch.py`) starts the ranks, or joins torchrun's group, and gives each a trainer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.ranks import RankGroup
from async_nmt.train.modes.workers import ModeContext
from async_nmt.train.step import StepStats

FLAGS = 2  # the small all-reduce of each step: the two losses, then from here the flags (stop wish, Ctrl-C)


class DistributedSync(RankGroup):
    def __init__(self, ctx: ModeContext, server: ParamServer):
        super().__init__(ctx, server)
        on_gpu = self.meta_device.type == "cuda"
        # the last step's agreement (stop wishes, Ctrl-C), copied to the host behind the step's work
        self.flags = torch.zeros(2, dtype=torch.float64, pin_memory=on_gpu)
        self.wishes = torch.zeros(2, dtype=torch.float64, pin_memory=on_gpu)  # sent from here each step
        self.flags_copied = torch.cuda.Event() if on_gpu else None
        self.flags_pending = False
        self.wish = False

    def agree_stop(self, wish: bool) -> bool:
        self.wish = wish
        return self.agreed

    def advance(self) -> tuple[StepStats, list[int]]:
        stats = self.step()
        with self.collective():
            dist.all_reduce(self.ctx.flat.grad)
        self.server.push(self.ctx.flat.grad, stats.tokens, self.server.updates, count=self.world)  # every rank
        self._gather_before_save()
        return stats, [self.world]  # W pushes of staleness 0

    def step(self) -> StepStats:
        """This rank's K batches into the flat gradient, and one small all-reduce of every rank's losses and
        wishes; returns the statistics of all ranks together (the losses on the device)."""
        local, tokens, sentences = self._compute()
        self._read_agreement()  # the last step's: its all-reduce was queued before this step's work
        losses = torch.stack([torch.as_tensor(local.loss), torch.as_tensor(local.nll)]).to(self.meta_device,
                                                                                            torch.float64)  # fmt: skip
        # (the last step's copy from `wishes` is done: the agreement read above was queued after it)
        self.wishes[0], self.wishes[1] = self.wish, self.interrupt is not None and self.interrupt.is_set()
        meta = torch.cat([losses, self.wishes.to(self.meta_device, non_blocking=True)])
        with self.collective():
            dist.all_reduce(meta)
        self.flags.copy_(meta[FLAGS:], non_blocking=True)
        if self.flags_copied is not None:
            self.flags_copied.record()
        self.flags_pending = True
        return StepStats(meta[0], meta[1], tokens, sentences)

    def _read_agreement(self) -> None:
        """Whether the ranks agreed to stop in the last step's all-reduce (and on Ctrl-C): every rank reads
        it after the same step, so they all stop after the same step."""
        if not self.flags_pending:
            return
        if self.flags_copied is not None:
            self.flags_copied.synchronize()
        stop, interrupt = self.flags.tolist()
        self.agreed = stop > 0 or interrupt > 0
        self.interrupted = self.interrupted or interrupt > 0
        self.flags_pending = False
