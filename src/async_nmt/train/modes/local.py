"""One worker in the trainer's own process: it trains the server's parameters in place (nothing to pull)."""

from __future__ import annotations

from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import ModeContext, Workers, histogram
from async_nmt.train.step import StepStats, push_gradient


class LocalWorker(Workers):
    steps_here = True

    def __init__(self, ctx: ModeContext, server: ParamServer):
        self.ctx, self.server = ctx, server

    def advance(self) -> tuple[StepStats, list[int]]:
        """Push until the server has taken one more update (async-accum's N pushes; else one)."""
        ctx, stream = self.ctx, self.ctx.streams[0]
        stats, staleness = StepStats(), []
        target = self.server.updates + 1
        while self.server.updates < target:
            batches = (stream.next() for _ in range(ctx.cfg.local_accum))
            pushed = push_gradient(ctx.model, ctx.flat, batches, ctx.device, ctx.cfg.label_smoothing, ctx.amp_dtype)
            stats.add(pushed)
            staleness.append(self.server.push(ctx.flat.grad, pushed.tokens, self.server.updates))
        return stats, histogram(staleness)
