"""Deterministic one-device emulation of W workers (`--simulate`), for async, async-accum and sync.

Each emulated worker keeps the parameters it last pulled and its own data stream. Pushes are ordered by
simulated finish time: a worker's batches cost their target tokens divided by its speed factor
(`--worker-speeds`), so the order, the staleness and every update are the same for the same seed on any
machine. The pushes go to the same `ParamServer` as a real run's.

The predicted wall clock of W real devices (`predicted_s` in the events) charges each push the compute time
it took on this device (or its tokens at a fixed `--simulate-token-us`, which makes the clock the same on
any machine and load), scaled by the worker's speed, plus the cost of moving the parameters over a link of
`--link-gbps`: a push and a pull (async modes), or a ring all-reduce after the slowest worker of each
step (sync).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from async_nmt.config import TrainConfig
from async_nmt.data.batches import Batch
from async_nmt.train.links import PUSH_LINKS, all_reduce_links, link_seconds
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import ModeContext, Workers, histogram
from async_nmt.train.step import StepStats, push_gradient


class PredictedClock:
    """The predicted wall clock of W emulated devices: each worker's compute, and the parameters' transfers.
    Its state (`seconds`, `predicted_s`) is saved with the emulation's."""

    def start_clock(self, cfg: TrainConfig, workers: int, numel: int) -> None:
        self.speeds = cfg.worker_speeds or [1.0] * workers
        self.token_s = cfg.simulate_token_us * 1e-6  # a fixed price per token; 0 = measured
        self.link_s = link_seconds(numel, cfg.link_gbps)
        self.seconds = [0.0] * workers  # predicted wall clock of each worker
        self.predicted_s = 0.0

    @property
    def predicted_worker_s(self) -> list[float]:
        return list(self.seconds)

    def charge(self, worker: int, tokens: int, seconds: float) -> None:
        """`worker` computed on `tokens` target tokens, which took `seconds` here: the push costs those seconds
        (or its tokens at the fixed price) over the worker's speed. (Until 2026-12-05 a push cost its tokens
        at the mean price measured so far: the slow first pushes, the device warming up, were charged again
        in every later one, and a 300-update run's clock held 57% more compute than it measured.)"""
        cost = tokens * self.token_s if self.token_s else seconds
        self.seconds[worker] += cost / self.speeds[worker]

    def all_reduce(self) -> None:
        """Every worker waits for the slowest, then a ring all-reduce of the parameters."""
        done = max(self.seconds) + all_reduce_links(len(self.seconds)) * self.link_s
        self.seconds = [done] * len(self.seconds)
        self.predicted_s = done


class SimulatedWorkers(PredictedClock, Workers):
    steps_here = True

    # the simulation state saved in checkpoints besides the workers' parameters and next batches
    _SCALARS = ("pulled", "finish", "seconds", "predicted_s", "worker_pushes")

    def __init__(self, ctx: ModeContext, server: ParamServer):
        """`server` holds the master parameters apart from the model's (`ctx.flat`), which compute pushes."""
        cfg = ctx.cfg
        self.model, self.flat, self.server, self.streams = ctx.model, ctx.flat, server, ctx.streams
        workers = len(self.streams)
        self.start_clock(cfg, workers, server.numel)
        self.sync = cfg.mode == "sync"
        self.local_accum, self.label_smoothing, self.amp_dtype = cfg.local_accum, cfg.label_smoothing, ctx.amp_dtype
        self.device = ctx.flat.device
        flat = ctx.flat
        # what each async worker last pulled; sync workers all compute on the server's current parameters
        self.params = [server.params if self.sync else torch.empty_like(flat.data) for _ in range(workers)]
        self.pulled = [server.pull(p) for p in self.params]
        self.batches = [self._next_batches(w) for w in range(workers)]
        self.finish = [self._cost(w) for w in range(workers)]  # simulated finish time (token units)
        self.worker_pushes = [0] * workers

    def _next_batches(self, worker: int) -> list[Batch]:
        return [self.streams[worker].next() for _ in range(self.local_accum)]

    @property
    def untrained_batches(self) -> int:  # type: ignore[override]
        """Each worker's next batches, taken ahead: not trained on (nor counted as epochs) yet."""
        return sum(len(batches) for batches in self.batches)

    def _cost(self, worker: int) -> float:
        return sum(b.tokens for b in self.batches[worker]) / self.speeds[worker]

    def advance(self) -> tuple[StepStats, list[int]]:
        stats, staleness = StepStats(), []
        target = self.server.updates + 1
        while self.server.updates < target:
            push_stats, push_staleness = self.push()
            stats.add(push_stats)
            staleness.append(push_staleness)
        return stats, histogram(staleness)

    def push(self) -> tuple[StepStats, int]:
        """Run the next push in simulated time order; returns its statistics and staleness."""
        workers = len(self.streams)
        if self.sync:  # every worker once per step, all from the same parameters
            worker = self.server.pushes % workers
        else:
            worker = min(range(workers), key=lambda w: (self.finish[w], w))
        self.flat.data.copy_(self.params[worker])
        start = time.perf_counter()
        stats = push_gradient(self.model, self.flat, self.batches[worker], self.device, self.label_smoothing,
                              self.amp_dtype)  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        took = time.perf_counter() - start
        self.worker_pushes[worker] += 1
        updates_before = self.server.updates
        staleness = self.server.push(self.flat.grad, stats.tokens, self.pulled[worker])
        step_done = self.server.updates > updates_before
        self._advance_clock(worker, stats.tokens, took, step_done)
        if self.sync:
            if step_done:  # after the all-reduce every worker has the new parameters
                self.pulled = [self.server.updates] * workers
        else:
            self.pulled[worker] = self.server.pull(self.params[worker])
        self.batches[worker] = self._next_batches(worker)
        self.finish[worker] += self._cost(worker)
        return stats, staleness

    def _advance_clock(self, worker: int, tokens: int, took: float, step_done: bool) -> None:
        self.charge(worker, tokens, took)
        if not self.sync:
            self.seconds[worker] += PUSH_LINKS * self.link_s
            self.predicted_s = max(self.predicted_s, self.seconds[worker])
        elif step_done:
            self.all_reduce()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same simulation (the streams are saved apart)."""
        return {
            "params": None if self.sync else [p.cpu() for p in self.params],
            "batches": self.batches,
            **{name: getattr(self, name) for name in self._SCALARS},
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        assert state is not None
        if not self.sync:
            for mine, saved in zip(self.params, state["params"], strict=True):
                mine.copy_(saved)
        self.batches = state["batches"]
        for name in self._SCALARS:
            setattr(self, name, state[name])
