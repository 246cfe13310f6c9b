"""The ranks of a torch.distributed group, one worker a process: what sync and diloco share.

Every rank keeps a full replica and follows every rank's batch stream (`_compute`), so that it counts
the target tokens of all (what an update is normalized by) without asking the others. A collective that
fails because a rank is gone is one line (`collective`). Before a save, rank 0 gathers what differs
between the ranks (their random states; diloco's inner parameters and Adam states), so that a run resumes
as if never stopped. How the ranks meet, and what they all-reduce, is the mode's: `sync.py` all-reduces the
gradient every step, `diloco.py` the parameters at a round's end.
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
from async_nmt.train.modes.workers import ModeContext, Workers
from async_nmt.train.step import StepStats, push_gradient


class RankGroup(Workers):
    """This process as one rank of a group the launcher started (or torchrun did)."""

    def __init__(self, ctx: ModeContext, server: Any):
        self.ctx, self.server = ctx, server
        self.rank, self.world, self.interrupt = ctx.rank, ctx.world, ctx.interrupt
        # where the small all-reduces (losses, flags) run: NCCL's on the GPU, gloo's on the host
        self.meta_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.agreed = False  # the ranks agreed to stop (a limit, or Ctrl-C)
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

    def all_agree(self, flag: bool) -> bool:
        agreed = torch.tensor([int(flag)], device=self.meta_device)
        with self.collective():
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        return bool(agreed.item())  # (once, as the run opens; once as it closes, `stop_asked`)

    def stop_asked(self) -> bool:
        # (the ranks read the supervisor's Ctrl-C at their steps only: one during the closing validation ended
        # the run as finished, exit 0, after "interrupted: stopping at the next step")
        asked = self.interrupt is not None and self.interrupt.is_set()
        self.interrupted = self.interrupted or not self.all_agree(not asked)
        return self.interrupted

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
        return {"rng": ckpt.rng_state(self.ctx.device)}

    def _load_own(self, own: dict[str, Any]) -> None:
        # (rank 0's is the checkpoint's own, taken at the save; diloco's saves before 2026-12-05 lack it)
        if self.rank > 0 and "rng" in own:
            ckpt.set_rng_state(own["rng"], self.ctx.device)

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
