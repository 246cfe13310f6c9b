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

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from async_nmt.config import torchrun_rank
from async_nmt.errors import UserError, WorkerFailed, reason
from async_nmt.train import checkpoint as ckpt
from async_nmt.train import processes
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import ModeContext, Workers
from async_nmt.train.step import StepStats, push_gradient

FLAGS = 2  # the small all-reduce of each step: the two losses, then from here the flags (stop wish, Ctrl-C)


class DistributedSync(Workers):
    def __init__(self, ctx: ModeContext, server: ParamServer):
        self.ctx, self.server = ctx, server
        self.rank, self.world, self.interrupt = ctx.rank, ctx.world, ctx.interrupt
        self.meta_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
        on_gpu = self.meta_device.type == "cuda"
        # the last step's agreement (stop wishes, Ctrl-C), copied to the host behind the step's work
        self.flags = torch.zeros(2, dtype=torch.float64, pin_memory=on_gpu)
        self.wishes = torch.zeros(2, dtype=torch.float64, pin_memory=on_gpu)  # sent from here each step
        self.flags_copied = torch.cuda.Event() if on_gpu else None
        self.flags_pending = False
        self.wish = self.agreed = False
        self.local = StepStats()  # this rank's share of the last step
        self.steps = 0
        self.parent = os.getppid()
        # an emulated slower device (--worker-speeds): every rank waits for it
        self.speed = processes.EmulatedSpeed(ctx.cfg.worker_speeds[ctx.rank] if ctx.cfg.worker_speeds else 1.0,
                                             ctx.device)  # fmt: skip
        self.gathered: list[Any] | None = None  # every rank's own state (`_own_state`), at rank 0 for a save
        self.gathered_at = -1  # the update after which it was gathered
        self.fence = 0  # the next update at which the trainer validates or saves

    @contextlib.contextmanager
    def collective(self) -> Iterator[None]:
        """Under torchrun, a collective that fails because another rank is gone (it failed, or was killed or
        stopped: gloo's "Connection closed by peer") is one line naming this rank, where it was a traceback;
        spawned ranks report to their supervisor, which names the root cause."""
        try:
            yield
        except RuntimeError as err:
            if torchrun_rank() is None:
                raise
            raise WorkerFailed(f"rank {self.rank} on {socket.gethostname()}: the group lost a rank ({reason(err)}); "
                               "the other nodes' output says which") from None  # fmt: skip

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

    def allow(self, updates: int) -> None:
        self.fence = updates  # the trainer validates or saves there (every rank's trainer says the same)

    def _gather_before_save(self) -> None:
        """After the step before a save (at the fence, or the ranks agreed to stop), rank 0 gathers every
        rank's own state, so that a run resumes as if never stopped; the others do not save."""
        if (self.agreed or self.server.updates >= self.fence) and self.gathered_at != self.server.updates:
            self.gathered_at = self.server.updates
            self.gathered = [None] * self.world if self.rank == 0 else None
            with self.collective():
                dist.gather_object(self._own_state(), self.gathered, dst=0)

    def _own_state(self) -> dict[str, Any]:
        """What differs between the ranks: their random state (dropout; it was rank 0's for all on resume)."""
        return {"rng": ckpt.rng_state()}

    def _load_own(self, own: dict[str, Any]) -> None:
        # (rank 0's is the checkpoint's own, taken at the save; diloco's saves before 2026-12-05 lack it)
        if self.rank > 0 and "rng" in own:
            ckpt.set_rng_state(own["rng"])

    def state_dict(self) -> dict[str, Any]:
        # Before this process's first step nothing was gathered: the ranks still stand where they were
        # loaded (a resume that saves before it steps, as its closing validation), or, in a fresh run, at
        # the same start as this rank
        return {"ranks": self.gathered if self.gathered is not None else [self._own_state()] * self.world}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:  # a sync save from before 2026-12-05: every rank takes rank 0's random state
            return
        if state["ranks"] is None:  # a diloco group's save before its first step, until 2026-12-05
            raise UserError(
                "the checkpoint holds no diloco worker states (saved by a resumed group before it "
                "stepped, before 2026-12-05): resume from an earlier save (update-U.pt, as last.pt)"
            )
        self.gathered = state["ranks"] if self.rank == 0 else None  # (rank 0 saves)
        self._load_own(state["ranks"][self.rank])

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
        self.local = local
        return StepStats(meta[0], meta[1], tokens, sentences)

    def _compute(self) -> tuple[StepStats, int, int]:
        """This rank's K batches into the flat gradient; their statistics, and the target tokens and
        sentences of every rank's batches (each rank follows the others' streams)."""
        ctx = self.ctx
        self.speed.begin()
        batches = (ctx.streams[self.rank].next() for _ in range(ctx.cfg.local_accum))
        local = push_gradient(ctx.model, ctx.flat, batches, ctx.device, ctx.cfg.label_smoothing, ctx.amp_dtype)
        self.speed.end()
        self.steps += 1
        processes.maybe_fail(self.rank, self.steps)
        if not processes.parent_alive(self.parent):  # the supervisor (or torchrun's agent) was killed
            raise SystemExit(1)
        tokens, sentences = local.tokens, local.sentences
        for w, other in enumerate(ctx.streams):  # the other ranks took the next K batches of their streams
            for _ in range(ctx.cfg.local_accum if w != self.rank else 0):
                other_tokens, other_sentences = other.skip()
                tokens, sentences = tokens + other_tokens, sentences + other_sentences
        return local, tokens, sentences

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
