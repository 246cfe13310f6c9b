"""One worker in the trainer's own process: it trains the server's parameters in place (nothing to pull)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from async_nmt.train.modes import Workers, histogram
from async_nmt.train.step import StepStats, train_step

if TYPE_CHECKING:
    from async_nmt.train.trainer import Trainer


class LocalWorker(Workers):
    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def advance(self) -> tuple[StepStats, list[int]]:
        t = self.trainer
        t.flat.grad.zero_()
        stats = StepStats()
        for _ in range(t.cfg.local_accum):
            stats.add(train_step(t.model, t.streams[0].next().to(t.device), t.cfg.label_smoothing, t.amp_dtype))
        return stats, histogram([t.server.push(t.flat.grad, stats.tokens, t.server.updates)])
