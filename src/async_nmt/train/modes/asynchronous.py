"""async and async-accum with worker processes: each loops pull, gradient, push, and nobody waits for anyone.

The workers push to a `ParamServer` built with `shared=True` (CPU shared memory, CUDA IPC). The trainer's
process is the coordinator: it starts the workers, watches the server's counters, and writes the events.
A gate counts the pushes it lets in. Between validations and checkpoints the gate is open up to the next
one, so the server stops at exactly that update: the workers that get there wait (their next gradient in
hand), the coordinator validates and saves a quiet server, then opens the gate further. Nothing else ever
makes a worker wait.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from async_nmt.config import ModelConfig, TrainConfig
from async_nmt.errors import stop_hint
from async_nmt.train import processes
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import (
    Counted,
    ModeContext,
    WorkerCompute,
    Workers,
    histogram,
    merge_histograms,
)
from async_nmt.train.step import StepStats

STARTING_HELD = "interrupted: saving once the worker processes have started"

# shared counters of the gate
LIMIT, ADMITTED, COMPLETED, STOP, READY = range(5)
# per-worker statistics
TOKENS, LOSS, NLL, SENTENCES = range(4)
HIST_BINS = 1024  # staleness histogram bins of each worker; a larger staleness goes to its overflow ring
# the staleness of each worker's last pushes past the bins, kept exactly until the coordinator collects them (one
# such push spans over 1000 updates, and the coordinator collects at about every update; more than this many
# between two collections count the older ones at HIST_BINS, a lower bound)
OVERFLOW_SLOTS = 64
LOCK_WAIT_S = 0.05  # how long the coordinator waits for the gate's lock before it looks at the workers
WAKE_S = 0.1  # how often a drain continues a worker that SIGSTOP holds


class Gate:
    """Admission of pushes, and the workers' statistics, in shared memory."""

    def __init__(self, workers: int):
        self.lock = processes.context().Lock()
        self.counts = torch.zeros(5, dtype=torch.int64).share_memory_()
        self.stats = torch.zeros(workers, 4, dtype=torch.float64).share_memory_()
        self.hist = torch.zeros(workers, HIST_BINS, dtype=torch.int64).share_memory_()
        # per worker: how many pushes had a staleness of HIST_BINS or more, then a ring of their staleness (it
        # was counted in the last bin: 1023 stood for any staleness above, the events' max and mean with it,
        # where --worker-speeds down to 0.001 makes a slow worker's push span thousands of updates)
        self.overflow = torch.zeros(workers, 1 + OVERFLOW_SLOTS, dtype=torch.int64).share_memory_()
        self.positions = torch.zeros(workers, 2, dtype=torch.int64).share_memory_()  # data (epoch, index)

    def wait_open(self, parent: int) -> bool:
        """Wait until a push may start (True) or the run stops (False)."""
        return self._enter(parent)

    def admit(self, parent: int) -> bool:
        """Let a computed push in (True), waiting while the gate is closed; False when the run stops."""
        return self._enter(parent, admitting=True)

    def _enter(self, parent: int, admitting: bool = False) -> bool:
        while processes.parent_alive(parent):
            with self.lock:
                if self.counts[STOP]:
                    return False
                if self.counts[ADMITTED] < self.counts[LIMIT]:
                    if admitting:
                        self.counts[ADMITTED] += 1
                    return True
            time.sleep(processes.POLL_S)
        return False

    @contextmanager
    def held(self, waiting: Callable[[], None]) -> Iterator[None]:
        """The lock, for the coordinator: `waiting` is called while another process holds it (it raises for
        a dead worker: one killed while it held the lock never lets it go, and the coordinator hung)."""
        while not self.lock.acquire(timeout=LOCK_WAIT_S):
            waiting()
        try:
            yield
        finally:
            self.lock.release()

    def record(self, worker: int, position: dict[str, int], stats: StepStats, staleness: int) -> None:
        """A push's statistics, and the worker's data position after its batches, recorded as the server counts
        it (`ParamServer.push`'s `record`): the trainer reads them with the server's counts, so that an event of
        update U holds the pushes up to U and the epochs of their batches (recorded at admission, the position
        ran ahead of the pushes in flight: an event's epoch counted one that its pushes and tokens did not),
        and a checkpoint, saved once every admitted push is counted, exactly the batches trained on."""
        with self.lock:
            self.stats[worker] += torch.tensor([stats.tokens, float(stats.loss), float(stats.nll), stats.sentences])
            if staleness < HIST_BINS:
                self.hist[worker, staleness] += 1
            else:
                count = int(self.overflow[worker, 0])
                self.overflow[worker, 1 + count % OVERFLOW_SLOTS] = staleness
                self.overflow[worker, 0] = count + 1
            self.positions[worker] = torch.tensor([position["epoch"], position["index"]])

    def complete(self) -> None:
        """A push is done on every shard."""
        with self.lock:
            self.counts[COMPLETED] += 1


@dataclass
class WorkerSetup:
    """What a worker process needs (sent to it once, at spawn)."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    device: str
    server: ParamServer
    gate: Gate
    errors: Any
    position: dict[str, int]
    speed: float
    threads: int


def worker_main(worker: int, setup: WorkerSetup) -> None:
    """A worker process: pull the latest parameters, compute a gradient, push it; until told to stop."""
    try:
        with processes.worker_process(worker, setup.device, setup.errors):
            _work(worker, setup)
    finally:
        # the Process object keeps its arguments until the process ends: let the shared CUDA memory go now,
        # or the coordinator, which owns it, warns that it was never released
        setup.server = setup.gate = None  # type: ignore[assignment]


def _work(worker: int, setup: WorkerSetup) -> None:
    cfg, server, gate = setup.cfg, setup.server, setup.gate
    parent = os.getppid()
    torch.set_num_threads(setup.threads)
    device = torch.device(setup.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # (the trainer checked this BIN's arrays)
    compute = WorkerCompute(cfg, setup.model_cfg, worker, device, setup.position, setup.speed, checked=False)
    first_shard = worker % len(server.shards)
    with gate.lock:
        gate.counts[READY] += 1
    pushes = 0
    while gate.wait_open(parent):
        pulled = server.pull_each(compute.flat.data)  # (each shard's count: see `staleness_lr`)
        stats = compute.push()
        pushes += 1
        processes.maybe_fail(worker, pushes, gate.lock)
        if not gate.admit(parent):
            break
        server.push(compute.flat.grad, stats.tokens, pulled, first_shard=first_shard,
                    record=functools.partial(gate.record, worker, compute.stream.state_dict(), stats))  # fmt: skip
        gate.complete()


class ProcessWorkers(Workers):
    """The coordinator's side: start the worker processes, open the gate, gather their statistics."""

    def __init__(self, ctx: ModeContext, server: ParamServer):
        self.ctx, self.server = ctx, server
        self.devices = ctx.devices  # of each worker
        self.gate = Gate(len(self.devices))
        self.errors = processes.context().SimpleQueue()
        self.procs: list[Any] = []  # the worker processes
        self.seen_stats = torch.zeros_like(self.gate.stats)
        self.seen_hist = torch.zeros_like(self.gate.hist)
        self.seen_overflow = torch.zeros_like(self.gate.overflow)
        self.pushes_before = [0] * len(self.devices)  # each worker's pushes before a resume
        self.base_updates = self.base_pending = 0
        self.uncounted: tuple[StepStats, list[int]] | None = None  # statistics collected, not yet counted
        self.fence = 0  # the update count the gate is open up to
        self.woken_at: float | None = None  # when a drain last continued the workers (None: not draining)

    def start(self) -> None:
        ctx, server = self.ctx, self.server
        self.base_updates, self.base_pending = server.updates, server.pending_pushes
        self.collected_at = server.updates  # the server's updates when the trainer last collected statistics
        self.counted = None  # (no statistics collected yet: the events count as the server does)
        self.fence = server.updates
        speeds = ctx.cfg.worker_speeds or [1.0] * len(self.devices)
        setups = [
            WorkerSetup(ctx.cfg, ctx.model_cfg, device, server, self.gate, self.errors, ctx.streams[w].state_dict(),
                        speeds[w], processes.cpu_threads(device, self.devices))
            for w, device in enumerate(self.devices)
        ]  # fmt: skip
        # a Ctrl-C while the workers start is held until they are ready (the trainer then saves and stops them
        # as elsewhere): they unpickle the shared state as they start, and a parent that tore it down then got
        # a traceback from each; a second Ctrl-C stops at once. It is said at once (it was said once they were
        # ready: 5 s of silence with 16 workers on 2 cores)
        with processes.uninterrupted(second_stops=True, notice=stop_hint(STARTING_HELD)):
            self.procs = processes.spawn(worker_main, [(w, setup) for w, setup in enumerate(setups)])
            while int(self.gate.counts[READY]) < len(self.procs):  # startup is not training time
                self._check()
                time.sleep(0.01)

    def _pushes_until(self, updates: int) -> int:
        """Admitted pushes after which the server has taken `updates` updates (every shard)."""
        return (updates - self.base_updates) * self.server.accum - self.base_pending

    def allow(self, updates: int) -> None:
        if updates > self.fence:
            with self.gate.held(self._check):
                self.gate.counts[LIMIT] = self._pushes_until(updates)
            self.fence = updates

    def advance(self) -> tuple[StepStats, list[int]]:
        # (counted from the last collection, not from now: a worker that held a computed push may have taken
        # the update that `allow` just let in before this call, and none more is let in until it returns)
        start = self.collected_at
        while True:
            self._check()
            updates = self.server.updates
            if updates > start and (updates < self.fence or self._quiet()):
                # kept, as they are collected, until the trainer has counted them (`taken`): a Ctrl-C before
                # that leaves them to the stop's drain, which returns them with its own (a second Ctrl-C stops
                # at once, as the collection waits for the shards' locks)
                with processes.uninterrupted(second_stops=True):
                    self.uncounted = self._collect()
                # (the fence reached since the look above: the trainer validates and saves there, so the pushes
                # that made it must be done on every shard first; their statistics are in already)
                while self.collected_at >= self.fence and not self._quiet():
                    self._check()
                    time.sleep(processes.POLL_S)
                return self.uncounted
            time.sleep(processes.POLL_S)

    def taken(self) -> None:
        self.uncounted = None

    def _quiet(self) -> bool:
        """All admitted pushes are complete on every shard."""
        with self.gate.held(self._check):
            return bool(self.gate.counts[COMPLETED] == self.gate.counts[ADMITTED])

    def drain(self) -> tuple[StepStats, list[int]]:
        self.woken_at = 0.0  # (the run stops: `_check` continues a worker that SIGSTOP holds with its push)
        accum = self.server.accum
        with self.gate.held(self._check):
            admitted = int(self.gate.counts[ADMITTED])
            whole = -(-(admitted + self.base_pending) // accum)  # updates the admitted pushes will complete
            self.gate.counts[LIMIT] = whole * accum - self.base_pending
        self.fence = self.base_updates + whole
        while not (self.server.updates >= self.fence and self._quiet()):
            self._check()
            time.sleep(processes.POLL_S)
        with processes.uninterrupted(second_stops=True):  # kept until `taken`, as `advance` keeps its own
            collected = self._collect()
            if self.uncounted is not None:  # collected before, and Ctrl-C came before the trainer counted them
                held, held_staleness = self.uncounted
                held.add(collected[0])
                collected = held, merge_histograms(held_staleness, collected[1])
            self.uncounted = collected
        return collected

    def _collect(self) -> tuple[StepStats, list[int]]:
        """The statistics of the pushes completed since the last call; the trainer's streams learn the
        workers' data positions."""

        def read() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
            with self.gate.held(self._check):
                gate = self.gate
                return gate.stats.clone(), gate.hist.clone(), gate.overflow.clone(), gate.positions.tolist()

        # the statistics of exactly the pushes the server has counted (a push is counted on shard 0 before the
        # others, and before it completes: read apart, an event of update U held the pushes up to U - 1)
        updates, pushes, lr, grad_norm, (stats, hist, overflow, positions) = self.server.counted(
            read, waiting=self._check
        )
        self.collected_at, self.counted = updates, Counted(updates, pushes, lr, grad_norm)
        delta = (stats - self.seen_stats).sum(0).tolist()
        hist_delta = (hist - self.seen_hist).sum(0)
        past = _overflowed(overflow, self.seen_overflow)
        self.seen_stats, self.seen_hist, self.seen_overflow = stats, hist, overflow
        for stream, (epoch, index) in zip(self.ctx.streams, positions, strict=True):
            if epoch:  # 0: the worker has not pushed yet
                stream.load_state_dict({"epoch": epoch, "index": index})
        used = int(hist_delta.nonzero().max()) + 1 if hist_delta.any() else 0
        step = StepStats(delta[LOSS], delta[NLL], int(delta[TOKENS]), int(delta[SENTENCES]))
        return step, merge_histograms(hist_delta[:used].tolist(), histogram(past))

    @property
    def worker_pushes(self) -> list[int]:  # type: ignore[override]
        """Pushes of each worker so far (as last collected), those before a resume included."""
        now = (self.seen_hist.sum(1) + self.seen_overflow[:, 0]).tolist()
        return [before + pushes for before, pushes in zip(self.pushes_before, now, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {"worker_pushes": self.worker_pushes}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:  # (None: saved before 2026-12-05, when the counts started again at a resume)
            self.pushes_before = list(state["worker_pushes"])

    def _check(self) -> None:
        processes.check_workers(self.procs, self.errors, self.devices, self.ctx.run_dir)
        # a drain waits for the pushes admitted (and the locks they hold): one of a worker that SIGSTOP holds, it
        # waited for without end, the run unsaved; continued at once, and every WAKE_S while it lasts
        if self.woken_at is not None and time.monotonic() - self.woken_at >= WAKE_S:
            processes.wake(self.procs)
            self.woken_at = time.monotonic()

    def close(self) -> None:
        # (a dead worker may hold the lock for good: the flag is set without it then, and the workers that wait
        # for the lock, which will never see it, are killed at once)
        locked = self.gate.lock.acquire(timeout=1.0)
        self.gate.counts[STOP] = 1
        if locked:
            self.gate.lock.release()
        processes.stop(self.procs, grace_s=processes.STOP_GRACE_S if locked else 0.0)


def _overflowed(overflow: torch.Tensor, seen: torch.Tensor) -> list[int]:
    """The staleness of the pushes past the histogram's bins that `overflow` holds and `seen` did not (any
    beyond the ring's slots counted at HIST_BINS)."""
    values = []
    for worker in (overflow[:, 0] != seen[:, 0]).nonzero().flatten().tolist():  # (the workers that have any)
        now, before = overflow[worker].tolist(), int(seen[worker, 0])
        kept = range(max(before, now[0] - OVERFLOW_SLOTS), now[0])
        values += [HIST_BINS] * (now[0] - before - len(kept)) + [now[1 + i % OVERFLOW_SLOTS] for i in kept]
    return values
