"""The training modes' own rules (train/modes/asynchronous.py, remote.py, sync.py, ranks.py, workers.py): what
their mutation audit of 2026-12-06 found that no test pinned; each test fails on the change named in its
docstring. The pieces alone, in process and in seconds: rank 0's server and a worker rank's loop joined by an
in-memory stand-in for torch.distributed, the async coordinator's gate without processes, a sync rank in a
stand-in group of 2, an async worker's compute on the synthetic corpus."""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
import torch

from async_nmt.config import TrainConfig, model_config
from async_nmt.train.events import staleness_stats
from async_nmt.train.modes import asynchronous, remote
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.optim import inverse_sqrt_lr
from async_nmt.train.step import StepStats

# ---------------------------------------------------------------------- remote.py


class Stream:
    """A worker's batch stream, as far as the modes use it: a position, loaded and read."""

    def __init__(self, epoch: int = 1, index: int = 0):
        self.state = {"epoch": epoch, "index": index}
        self.loads: list[dict[str, int]] = []

    def state_dict(self) -> dict[str, int]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.loads.append(dict(state))
        self.state = dict(state)


class Wires:
    """torch.distributed's point-to-point messages between rank 0 (the test's thread) and worker rank 1 (a
    thread of its own), in memory: a message is a copy of the tensor sent, queued for its receiver and tag."""

    def __init__(self, params: torch.Tensor, setup: list[Any]):
        self.params, self.setup = params, setup
        self.queues: dict[tuple[int, int], queue.Queue] = {}
        self.ranks = threading.local()

    def rank(self) -> int:
        return getattr(self.ranks, "rank", 0)

    def _queue(self, dst: int, tag: int) -> queue.Queue:
        return self.queues.setdefault((dst, tag), queue.Queue())

    def send(self, tensor: torch.Tensor, dst: int, tag: int) -> None:
        self._queue(dst, tag).put(tensor.clone())

    def recv(self, tensor: torch.Tensor, src: int, tag: int) -> None:
        tensor.copy_(self._queue(self.rank(), tag).get(timeout=10))

    def broadcast_object_list(self, objects: list[Any], src: int) -> None:
        if self.rank() == src:
            self.setup = list(objects)
        else:
            objects[:] = self.setup

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        if self.rank() == src:
            self.params = tensor.clone()
        else:
            tensor.copy_(self.params)

    def header(self) -> torch.Tensor:
        """The next push's header at rank 0."""
        return self._queue(0, remote.HEADER).get(timeout=10)


class ScriptedCompute:
    """A worker's compute (`WorkerCompute`) whose every push is a gradient of ones with these statistics; its
    stream moves one batch a push."""

    stats = StepStats(loss=3.0, nll=2.0, tokens=10, sentences=4)

    def __init__(self, cfg: Any, model_cfg: Any, worker: int, device: torch.device, position: dict[str, int],
                 speed: float):  # fmt: skip
        self.flat = torch.nn.Parameter(torch.zeros(4))
        self.position, self.stream = dict(position), Stream(**position)
        self.received: list[torch.Tensor] = []

    def push(self) -> StepStats:
        self.received.append(self.flat.data.clone())  # the parameters this push's gradient is computed on
        self.flat.grad = torch.ones(4)
        self.stream.state["index"] += 1
        return StepStats(self.stats.loss, self.stats.nll, self.stats.tokens, self.stats.sentences)


class StoreOf:
    """torchrun's store as rank 0 uses it: keys, and counters that `add` moves."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        self.values[key] = value

    def check(self, keys: list[str]) -> bool:
        return all(key in self.values for key in keys)

    def get(self, key: str) -> bytes:
        return self.values[key].encode()

    def add(self, key: str, amount: int) -> int:
        self.values[key] = str(int(self.values.get(key, "0")) + amount)
        return int(self.values[key])


def rank_0(server: ParamServer, streams: list[Stream]) -> remote.RemoteWorkers:
    """Rank 0's RemoteWorkers as `start` leaves it, on one worker rank, without a group."""
    workers = object.__new__(remote.RemoteWorkers)
    workers.ctx = SimpleNamespace(streams=streams)
    workers.server, workers.ranks, workers.told, workers.parked = server, [1], set(), []
    workers.params_cpu, workers.grad = server.params, torch.empty(server.numel)
    workers.header = torch.zeros(8, dtype=torch.float64)
    workers.stats, workers.staleness, workers.pushes = StepStats(), [], [0]
    workers.fence = server.updates
    return workers


def test_a_remote_workers_pushes_arrive_with_their_statistics_staleness_and_position(monkeypatch):
    """Worker rank 1 pushes twice; rank 0 takes an update of its own between the worker's first pull and its
    first push, then tells it to stop at its third. Rank 0 sums each push's loss and nll as the worker sent
    them (swapped in the header, or as it read them), counts the first push 1 stale and the second, computed
    on the parameters rank 0 answered with, 0 (stale by one update more or less where the worker kept the
    count it first pulled, or rank 0 answered with one too few, or measured against its own count instead of
    the worker's), counts the pushes as worker 0's, and moves its stream to where the worker's went."""
    server = ParamServer(torch.zeros(4), accum=1, peak_lr=1e-2, warmup=1)
    streams = [Stream(epoch=2, index=5)]
    micro = asdict(model_config("micro", 200))
    wires = Wires(server.params.clone(), [[s.state_dict() for s in streams], micro, server.updates])
    monkeypatch.setattr(remote, "dist", wires)
    computes: list[ScriptedCompute] = []

    def compute(*args: Any) -> ScriptedCompute:
        computes.append(ScriptedCompute(*args))
        return computes[-1]

    monkeypatch.setattr(remote, "WorkerCompute", compute)
    ended: list[BaseException | None] = []

    def worker() -> None:
        wires.ranks.rank = 1
        try:
            remote._work(SimpleNamespace(worker_speeds=None), 1, torch.device("cpu"))  # type: ignore[arg-type]
            ended.append(None)
        except BaseException as err:  # (reported by the assertion below)
            ended.append(err)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    workers = rank_0(server, streams)
    first = wires.header()
    server.push(torch.ones(4), 10, 0)  # another worker's update meanwhile
    workers._take(1, first)
    workers._take(1, wires.header())
    workers._refuse(1)
    wires.header()  # (the third push's, refused)
    thread.join(10)
    assert ended == [None]
    assert server.updates == 3 and workers.pushes == [2]
    stats, staleness = workers._collect()
    assert (stats.loss, stats.nll, stats.tokens, stats.sentences) == (6.0, 4.0, 20, 8)
    assert staleness == [1, 1]  # one push of staleness 0, one of 1
    workers.taken()  # (counted by the trainer)
    assert workers.staleness == [] and workers.worker_pushes == [2]
    assert streams[0].loads == [{"epoch": 2, "index": 6}, {"epoch": 2, "index": 7}]
    # the second push was computed on the parameters of the first's update, the third on the second's
    received = computes[0].received
    assert torch.equal(received[0], torch.zeros(4)) and not torch.equal(received[1], received[0])
    assert torch.equal(received[2], server.params)


def test_the_workers_of_a_resumed_remote_run_start_from_the_servers_parameters_and_count(monkeypatch):
    """Rank 0 resumed at update 5 sends the workers its parameters, their streams' positions and its update
    count: worker rank 2's first push is computed on those parameters from its own saved position (worker
    1's of 2; not worker 0's), and is not stale (sent as count 0, it was 5 stale, and --staleness-lr cut its
    update's learning rate by 5)."""
    server = ParamServer(torch.zeros(4), accum=1, peak_lr=1e-2, warmup=1)
    for _ in range(5):
        server.push(torch.ones(4), 10, server.updates)
    streams = [Stream(epoch=2, index=30), Stream(epoch=3, index=8)]
    wires = Wires(torch.empty(0), [])
    monkeypatch.setattr(remote, "dist", wires)
    monkeypatch.setattr(remote, "exit_at_once", lambda: None)  # (the CLI's end, not the test process's)
    computes: list[ScriptedCompute] = []

    def compute(*args: Any) -> ScriptedCompute:
        computes.append(ScriptedCompute(*args))
        return computes[-1]

    monkeypatch.setattr(remote, "WorkerCompute", compute)
    workers = rank_0(server, streams)
    workers.ctx.model_cfg = model_config("micro", 200)
    workers.ranks, workers.pushes = [1, 2], [0, 0]
    at_resume = server.params.clone()
    workers.start()

    def worker() -> None:
        wires.ranks.rank = 2
        remote._work(SimpleNamespace(worker_speeds=None), 2, torch.device("cpu"))  # type: ignore[arg-type]

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    workers._take(2, wires.header())
    workers._refuse(2)
    thread.join(10)
    assert not thread.is_alive() and workers.staleness == [0] and workers.pushes == [0, 1]
    assert computes[0].position == {"epoch": 3, "index": 8}
    assert at_resume.abs().sum() > 0 and torch.equal(computes[0].received[0], at_resume)


def test_rank_0_keeps_the_statistics_advance_returns_until_the_trainer_has_counted_them():
    """torchrun's async rank 0: what `advance` returned was gone from it at once, so a Ctrl-C before the
    trainer counted it lost it to the events and the token count. The stop's drain returns it now, until
    `taken`, and so does a drain what the drain before it returned (a limit's, and a Ctrl-C as it returned)."""
    server = ParamServer(torch.zeros(4), accum=1, peak_lr=1e-2, warmup=1)
    workers = rank_0(server, [Stream(epoch=2, index=5)])

    def serve(src: int, header: Any) -> None:  # (a push from worker rank 1, as `_take` counts it)
        server.push(torch.ones(4), 5, server.updates)
        workers.stats.add(StepStats(loss=1.0, nll=0.5, tokens=5, sentences=1))
        workers.staleness.append(0)

    workers._next_header, workers._serve = lambda: (1, None), serve  # type: ignore[method-assign]
    workers.allow(10)
    assert workers.advance()[0].tokens == 5
    assert workers.drain()[0].tokens == 5  # (not counted: a Ctrl-C came first)
    assert workers.drain()[0].tokens == 5  # (nor then: a Ctrl-C as the drain returned)
    workers.taken()
    assert workers.drain()[0].tokens == 0


def test_rank_0_completes_a_partial_sum_of_several_pushes_before_it_saves():
    """async-accum 3, one push of the sum in when the run stops: `drain` serves the next two pushes, so that
    the checkpoint holds a whole update. Served only once, the sum stayed half done."""
    server = ParamServer(torch.zeros(4), accum=3, peak_lr=1e-2, warmup=1)
    server.push(torch.ones(4), 10, 0)
    workers = rank_0(server, [Stream()])
    header = torch.zeros(8, dtype=torch.float64)
    served: list[int] = []

    def serve(src: int, got: torch.Tensor) -> None:
        served.append(src)
        server.push(torch.ones(4), 10, 0)

    workers._serve = serve  # type: ignore[method-assign]
    workers._next_header = lambda deadline=None: (1, header)  # type: ignore[method-assign]
    workers.drain()
    assert served == [1, 1]
    assert server.updates == 1 and server.pending_pushes == 0


def test_rank_0_tells_a_worker_whose_push_waits_at_the_end_to_stop_at_once(monkeypatch):
    """At the end, a worker whose push has come (its header received, its gradient waiting) is told to stop
    at once (the gradient taken, the reply "stop"): it leaves, and rank 0 does not wait out CLOSE_WAIT_S for
    it. The store says the run is done, for the workers still computing."""
    server = ParamServer(torch.zeros(4), accum=1, peak_lr=1e-2, warmup=1)
    wires = Wires(server.params.clone(), [])
    monkeypatch.setattr(remote, "dist", wires)
    monkeypatch.setattr(remote, "HEARTBEAT_S", 0.0)

    class Received:  # the posted receive of the header, complete: from worker rank 1
        done = threading.Event()
        done.set()

        def source(self) -> int:
            return 1

    workers = rank_0(server, [Stream()])
    workers.store, workers.failed, workers.pending = StoreOf(), False, Received()
    workers.checked = time.monotonic() + 60  # (no health check: the worker is alive)
    reply = torch.zeros(2, dtype=torch.int64)

    def waiting_worker() -> None:
        wires.ranks.rank = 1
        wires.send(torch.ones(4), dst=0, tag=remote.GRAD)
        wires.recv(reply, src=0, tag=remote.REPLY)

    thread = threading.Thread(target=waiting_worker, daemon=True)
    thread.start()
    started = time.monotonic()
    workers.close()
    assert time.monotonic() - started < 2  # (CLOSE_WAIT_S is 10 s)
    thread.join(5)
    assert reply.tolist() == [0, 1] and workers.told == {1} and workers.pending is None
    assert workers.store.values[remote.DONE] == "1"


def test_after_a_worker_failure_rank_0_tells_nobody_and_ends_at_once():
    """Once rank 0 has stopped the run for a worker's failure, `close` neither says the run is done (the workers
    then left quietly, exit 0, as after a run that ended well) nor waits for the workers' next pushes."""
    server = ParamServer(torch.zeros(4), accum=1, peak_lr=1e-2, warmup=1)
    workers = rank_0(server, [Stream()])
    workers.store, workers.failed = StoreOf(), True
    started = time.monotonic()
    workers.close()
    assert time.monotonic() - started < 1 and workers.store.values == {} and workers.told == set()


def test_a_worker_told_to_stop_is_not_named_for_its_silence():
    """At the end rank 0 waits for the workers still computing; one it told to stop has left, and its
    heartbeat stopped: that is no failure (named after SILENT_S, the run that ended well failed)."""
    server = ParamServer(torch.zeros(4), accum=1, peak_lr=1e-2, warmup=1)
    workers = rank_0(server, [Stream(), Stream()])
    workers.ranks, workers.store, workers.failed = [1, 2], StoreOf(), False
    silent = time.monotonic() - remote.SILENT_S - 1
    workers.heard = {1: (0, silent), 2: (0, time.monotonic())}
    workers.told = {1}
    workers._check()  # no failure
    workers.told = set()
    with pytest.raises(remote.WorkerFailed, match="worker rank 1 on [?] failed: no heartbeat"):
        workers._check()


# ---------------------------------------------------------------------- asynchronous.py


AFTER = {"epoch": 3, "index": 18}  # a worker's data position after a push (as `coordinator`'s streams stand)


def coordinator(workers: int) -> asynchronous.ProcessWorkers:
    """The coordinator of `workers` worker processes as `start` leaves it (none started), over a stand-in
    server at update 0."""
    server = SimpleNamespace(updates=0, accum=1, pending_pushes=0)
    server.counted = lambda read, waiting: (server.updates, server.updates, 1e-3, 0.5, read())
    ctx = SimpleNamespace(devices=["cpu"] * workers, streams=[Stream(epoch=3, index=17) for _ in range(workers)])
    coord = asynchronous.ProcessWorkers(ctx, server)  # type: ignore[arg-type]
    coord.collected_at = 0
    return coord


def test_the_coordinator_sums_each_workers_statistics_as_it_completed_them():
    """Two pushes of worker 1 and one of worker 0 complete: the collected statistics are their sums (the loss
    and the nll each in their place), the staleness a histogram of the three, and a staleness past the
    histogram's bins is counted at its own value (it raised an IndexError in the worker; then it was counted
    in the last bin, and 5000 read as 1023 in the events' max and mean, where the other modes said 5000)."""
    coord = coordinator(2)
    gate = coord.gate
    gate.record(1, AFTER, StepStats(loss=3.0, nll=2.0, tokens=10, sentences=4), staleness=0)
    gate.record(1, AFTER, StepStats(loss=1.5, nll=1.0, tokens=5, sentences=1), staleness=2)
    gate.record(0, AFTER, StepStats(loss=0.5, nll=0.25, tokens=7, sentences=2), staleness=2)
    stats, staleness = coord._collect()
    assert (stats.loss, stats.nll, stats.tokens, stats.sentences) == (5.0, 3.25, 22, 7)
    assert staleness == [1, 0, 2] and coord.worker_pushes == [1, 2]
    gate.record(0, AFTER, StepStats(loss=1.0, nll=1.0, tokens=1, sentences=1), staleness=5000)
    stats, staleness = coord._collect()  # only what completed since the last collection
    assert stats.tokens == 1 and len(staleness) == 5001 and staleness[-1] == 1 and sum(staleness) == 1
    assert coord.worker_pushes == [2, 2]
    assert staleness_stats(staleness)["staleness_max"] == 5000


def test_pushes_past_the_histograms_bins_keep_their_staleness_until_the_ring_is_full():
    """Worker 1 pushes at staleness 1023 (the last bin), 1024 and 3000 (past the bins), and worker 0 at 2: each
    is collected at its own staleness. More such pushes between two collections than the ring holds: the
    oldest are counted at HIST_BINS, a lower bound, and none is lost."""
    coord = coordinator(2)
    stats = StepStats(loss=1.0, nll=1.0, tokens=1, sentences=1)
    for worker, staleness in [(1, 1023), (1, 1024), (0, 2), (1, 3000)]:
        coord.gate.record(worker, AFTER, stats, staleness)
    _, staleness = coord._collect()
    assert [s for s, n in enumerate(staleness) for _ in range(n)] == [2, 1023, 1024, 3000]
    assert coord.worker_pushes == [1, 3]
    slots, bins = asynchronous.OVERFLOW_SLOTS, asynchronous.HIST_BINS
    for i in range(slots + 2):
        coord.gate.record(0, AFTER, stats, 2000 + i)
    _, staleness = coord._collect()
    pushes = [s for s, n in enumerate(staleness) for _ in range(n)]
    assert pushes == [bins, bins] + list(range(2002, 2002 + slots)) and coord.worker_pushes == [slots + 3, 3]


@pytest.mark.parametrize("shards", [1, 2])
def test_a_push_the_server_has_counted_is_in_the_statistics_collected_with_that_count(shards: int):
    """A worker's push is counted on shard 0, then ends on the other shards, then completes at the gate. The
    coordinator reads the server's counts and the statistics together: a push that shard 0 has counted is in
    them, whether or not it has completed. (They were recorded at completion and read apart from the counts:
    an event of update U held the pushes up to U - 1, and the next event one push more.)"""
    server = ParamServer(torch.zeros(8), accum=1, peak_lr=1e-3, warmup=4, shards=shards)
    coord = coordinator(2)
    coord.server = server  # type: ignore[assignment]
    stats = StepStats(loss=2.0, nll=1.5, tokens=6, sentences=2)
    for worker in (0, 1):  # each worker's push starts at its own shard: 1's at shard 1, then shard 0
        server.push(torch.ones(8), 6, server.updates, first_shard=worker % shards,
                    record=functools.partial(coord.gate.record, worker, AFTER, stats))  # fmt: skip
    collected, staleness = coord._collect()  # (neither push has completed at the gate)
    assert coord.counted[:2] == (2, 2) == (server.updates, server.pushes) and coord.collected_at == 2
    assert coord.counted.lr == pytest.approx(inverse_sqrt_lr(2, 1e-3, 4)) and coord.counted.grad_norm > 0
    assert collected.tokens == 12 and staleness == [2] and coord.worker_pushes == [1, 1]


def test_reading_the_counts_checks_the_workers_while_one_holds_the_lock():
    """The coordinator reads the counts under shard 0's lock, which a worker killed mid-push never lets go:
    while it waits it checks the workers (whose check names the dead one), where it would hang."""
    server = ParamServer(torch.zeros(8), accum=1, peak_lr=1e-3, warmup=0, shared=True)
    server.locks[0].acquire()  # (held, as by a worker killed in its push)
    checks = []

    def check() -> None:
        checks.append(1)
        if len(checks) == 3:
            raise RuntimeError("worker 1 died")

    raised: list[BaseException] = []

    def read_counts() -> None:
        try:
            server.counted(lambda: None, waiting=check)
        except RuntimeError as err:
            raised.append(err)

    reader = threading.Thread(target=read_counts, daemon=True)  # (a hang fails the join, not the suite)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and [str(err) for err in raised] == ["worker 1 died"]
    server.locks[0].release()
    assert server.counted(lambda: "read", waiting=check)[1:] == (0, 0.0, 0.0, "read") and len(checks) == 3


def test_a_quiet_pull_takes_no_lock_that_a_killed_worker_may_hold():
    """The trainer's validation copies the parameters of a server that takes no push then (a fence): a worker
    killed as it pulled holds a shard's lock for good, and the validation's copy waited for it forever."""
    server = ParamServer(torch.arange(8.0), accum=1, peak_lr=1e-3, warmup=0, shards=2, shared=True)
    server.locks[1].acquire()  # (held, as by a worker killed in its pull)
    out = torch.zeros(8)
    reader = threading.Thread(target=server.pull, args=(out,), kwargs={"quiet": True}, daemon=True)
    reader.start()
    reader.join(10)  # (a hang fails the join, not the suite)
    assert not reader.is_alive() and out.tolist() == list(range(8))
    server.locks[1].release()


def test_a_drain_returns_the_statistics_an_interrupted_advance_collected():
    """Ctrl-C while `advance` waits at the fence for the pushes to be done: the statistics it had collected
    come back with the drain that the stop makes (they were lost to the events and the token count)."""
    coord = coordinator(2)
    coord._check = lambda: None  # type: ignore[method-assign]  # (no processes to watch)
    coord.uncounted = (StepStats(loss=2.0, nll=1.0, tokens=5, sentences=1), [1])
    coord.gate.record(1, AFTER, StepStats(loss=1.0, nll=0.5, tokens=7, sentences=2), staleness=1)
    stats, staleness = coord.drain()
    assert (stats.tokens, stats.loss, stats.sentences, staleness) == (12, 3.0, 3, [1, 1])
    coord.taken()  # (counted: once)
    assert coord.uncounted is None and coord.drain()[0].tokens == 0


@pytest.mark.parametrize("when", ["as advance returns", "as the count begins", "after the count"])
def test_the_statistics_advance_collects_are_counted_once_whenever_ctrl_c_comes(monkeypatch, when: str):
    """Ctrl-C as `advance` returned, before the trainer counted what it had collected: those pushes were lost
    to the token count that the checkpoint saves and to the events. `Trainer.update` counts them under held
    signals and tells the coordinator (`taken`); until then a stop's drain returns them with its own."""
    from async_nmt.train import trainer as trainer_module

    monkeypatch.setattr(asynchronous.processes, "POLL_S", 0.001)
    coord = coordinator(2)
    coord._check = lambda: None  # type: ignore[method-assign]  # (no processes to watch)
    coord.fence = 10
    coord.gate.record(0, AFTER, StepStats(loss=1.0, nll=0.5, tokens=5, sentences=1), staleness=0)
    coord.server.updates = 1
    run = SimpleNamespace(workers=coord, interval=StepStats(), tokens=0, staleness=[])
    run._count = functools.partial(trainer_module.Trainer._count, run)
    run._count_taken = functools.partial(trainer_module.Trainer._count_taken, run)
    if when == "as advance returns":
        advance = coord.advance
        coord.advance = lambda: (advance(), signal_now())[0]  # type: ignore[method-assign]
    elif when == "as the count begins":  # (held, a signal in the count is raised after it)
        monkeypatch.setattr(trainer_module, "uninterrupted", signal_now)
    with contextlib.nullcontext() if when == "after the count" else pytest.raises(KeyboardInterrupt):
        trainer_module.Trainer.update(run)
    assert run.tokens == (5 if when == "after the count" else 0)
    coord.gate.record(1, AFTER, StepStats(loss=1.0, nll=0.5, tokens=7, sentences=1), staleness=1)  # in flight
    coord.server.updates = 2
    run.interval.add(run._count(*coord.drain()))  # the stop's drain
    assert run.tokens == run.interval.tokens == 12 and run.staleness == [1, 1]


@pytest.mark.parametrize("when", ["as the drain returns", "as the count begins", "after the count"])
def test_the_statistics_a_limits_drain_collects_are_counted_once_whenever_ctrl_c_comes(monkeypatch, when: str):
    """At --max-time (or --max-epochs) the trainer drains the pushes in flight: a Ctrl-C as the drain returned,
    before the trainer counted what it had collected, lost those pushes to the token count that the checkpoint
    saves and to the last train event (the stop's drain found none). `Trainer.drain` counts them as `update`
    counts an update's, and until then the stop's drain returns them with its own."""
    from async_nmt.train import trainer as trainer_module

    coord = coordinator(2)
    coord._check = lambda: None  # type: ignore[method-assign]  # (no processes to watch)
    coord.gate.record(0, AFTER, StepStats(loss=1.0, nll=0.5, tokens=5, sentences=1), staleness=0)
    coord.server.updates = 1
    run = SimpleNamespace(workers=coord, interval=StepStats(), tokens=0, staleness=[])
    run._count = functools.partial(trainer_module.Trainer._count, run)
    run._count_taken = functools.partial(trainer_module.Trainer._count_taken, run)
    drain = coord.drain
    if when == "as the drain returns":
        coord.drain = lambda: (drain(), signal_now())[0]  # type: ignore[method-assign]
    elif when == "as the count begins":  # (held, a signal in the count is raised after it)
        monkeypatch.setattr(trainer_module, "uninterrupted", signal_now)
    with contextlib.nullcontext() if when == "after the count" else pytest.raises(KeyboardInterrupt):
        trainer_module.Trainer.drain(run)  # the limit's drain
    assert run.tokens == (5 if when == "after the count" else 0)
    coord.drain = drain  # type: ignore[method-assign]
    monkeypatch.undo()
    trainer_module.Trainer.drain(run)  # the stop's drain
    assert run.tokens == run.interval.tokens == 5 and run.staleness == [1]


def signal_now() -> NoReturn:
    """A Ctrl-C, as Python raises it where it comes."""
    raise KeyboardInterrupt


def test_a_worker_that_has_not_pushed_keeps_its_streams_position():
    """The coordinator moves each worker's stream to the position of its last counted push; a worker that
    has pushed nothing yet (a resumed run's slow worker) keeps the position it was resumed at. Moved to the
    gate's empty (epoch 0, index 0), the checkpoint sent it back to the start of an epoch 0 the run never had."""
    coord = coordinator(2)
    coord.gate.record(0, {"epoch": 4, "index": 2}, StepStats(loss=1.0, nll=1.0, tokens=1, sentences=1), 0)
    coord._collect()
    assert coord.ctx.streams[0].state == {"epoch": 4, "index": 2}
    assert coord.ctx.streams[1].state == {"epoch": 3, "index": 17} and coord.ctx.streams[1].loads == []


def test_a_push_admitted_but_not_counted_is_not_in_the_epoch_collected():
    """A worker's data position was recorded as its push was admitted, before the server counted it: a `train`
    event read between the two had an epoch one push ahead of its own pushes and tokens (7 of 400 events of an
    async run). It moves with the statistics, as the server counts the push."""
    coord = coordinator(2)
    coord.gate.counts[asynchronous.LIMIT] = 1
    assert coord.gate.admit(os.getppid())  # (this process stands in for a worker)
    coord._collect()
    assert coord.ctx.streams[0].state == {"epoch": 3, "index": 17} and coord.ctx.streams[0].loads == []
    coord.gate.record(0, {"epoch": 3, "index": 18}, StepStats(loss=1.0, nll=1.0, tokens=1, sentences=1), 0)
    stats, _ = coord._collect()
    assert coord.ctx.streams[0].state == {"epoch": 3, "index": 18} and stats.tokens == 1


def test_the_coordinator_waits_for_an_update_it_has_not_collected(monkeypatch):
    """`advance` runs until the server has taken at least one more update: with none since the last
    collection it waits (it went back to the trainer at once, with no update, and no statistics)."""
    monkeypatch.setattr(asynchronous.processes, "POLL_S", 0.001)
    coord = coordinator(2)
    coord._check = lambda: None  # type: ignore[method-assign]  # (no processes to watch)
    coord.allow(10)
    returned = threading.Event()
    threading.Thread(target=lambda: (coord.advance(), returned.set()), daemon=True).start()
    assert not returned.wait(0.3)
    coord.server.updates = 1
    assert returned.wait(10) and coord.collected_at == 1


def test_closing_the_coordinator_stops_workers_waiting_at_the_gate(monkeypatch):
    """At the end the coordinator tells the workers to stop through the gate: a worker waiting for it to open,
    or with a push in hand, leaves at once (untold, each waited until it was killed, STOP_GRACE_S later)."""
    monkeypatch.setattr(asynchronous.processes, "POLL_S", 0.001)
    coord = coordinator(2)
    gate, parent = coord.gate, os.getppid()  # (this process stands in for the workers)
    answers: list[bool] = []
    waiting = [threading.Thread(target=lambda: answers.append(gate.wait_open(parent)), daemon=True),
               threading.Thread(target=lambda: answers.append(gate.admit(parent)),
                                daemon=True)]  # fmt: skip
    for thread in waiting:
        thread.start()
    time.sleep(0.1)
    assert answers == []  # the gate is shut (no push allowed yet)
    coord.close()
    for thread in waiting:
        thread.join(5)
    assert answers == [False, False] and int(gate.counts[asynchronous.ADMITTED]) == 0


# ---------------------------------------------------------------------- sync.py, ranks.py


class GroupOfTwo:
    """torch.distributed as rank `rank` of a group of 2 sees it, in process: the other rank's part of an
    all-reduce is the same gradient and the same losses as this rank's, and no wish to stop; a gather at rank
    0 gets rank 1's object as {"rank": 1}."""

    def __init__(self, rank: int):
        self.rank = rank
        self.gathers: list[Any] = []

    def get_backend(self) -> str:
        return "gloo"

    def all_reduce(self, tensor: torch.Tensor) -> None:
        if tensor.dtype == torch.float64:  # the losses and the flags (sync.FLAGS on)
            tensor[:2] *= 2
        else:
            tensor *= 2

    def gather_object(self, obj: Any, gathered: list[Any] | None, dst: int) -> None:
        self.gathers.append(obj)
        if gathered is not None:
            gathered[:] = [obj, {"rank": 1}]


class RankStream:
    """A batch stream whose batches hold `tokens` target tokens and 2 sentences each."""

    def __init__(self, tokens: int):
        self.tokens, self.taken, self.skipped = tokens, 0, 0

    def next(self) -> int:
        self.taken += 1
        return self.tokens

    def skip(self) -> tuple[int, int]:
        self.skipped += 1
        return self.tokens, 2


def sync_rank(monkeypatch: pytest.MonkeyPatch, rank: int = 0, local_accum: int = 1) -> Any:
    """Rank `rank` of a sync group of 2 over a 4-number model whose every batch's gradient is ones, with a
    loss of 3 and an nll of 2 per batch."""
    from async_nmt.train.modes import ranks, sync

    group = GroupOfTwo(rank)
    monkeypatch.setattr(sync, "dist", group)
    monkeypatch.setattr(ranks, "dist", group)

    def push_gradient(model: Any, flat: torch.nn.Parameter, batches: Any, *args: Any) -> StepStats:
        flat.grad.zero_()
        stats = StepStats()
        for tokens in batches:
            flat.grad += 1
            stats.add(StepStats(loss=3.0, nll=2.0, tokens=tokens, sentences=2))
        return stats

    monkeypatch.setattr(ranks, "push_gradient", push_gradient)
    flat = torch.nn.Parameter(torch.zeros(4))
    flat.grad = torch.zeros(4)
    cfg = SimpleNamespace(worker_speeds=None, local_accum=local_accum, label_smoothing=0.1)
    ctx = SimpleNamespace(cfg=cfg, model=None, flat=flat, streams=[RankStream(10), RankStream(7)],
                          device=torch.device("cpu"), amp_dtype=None, rank=rank, world=2,
                          interrupt=threading.Event())  # fmt: skip
    server = ParamServer(flat.data, accum=2, peak_lr=1e-2, warmup=1)
    workers = sync.DistributedSync(ctx, server)  # type: ignore[arg-type]
    workers.group = group
    return workers


def test_a_sync_step_counts_every_ranks_pushes_tokens_and_losses(monkeypatch):
    """A step of a group of 2 with --local-accum 2: this rank's 2 batches, the other rank's 2 skipped in its
    stream and their tokens counted; one update of 2 pushes, both of staleness 0 (one push, or a rank's own
    stream skipped too, before)."""
    workers = sync_rank(monkeypatch, rank=1, local_accum=2)
    stats, staleness = workers.advance()
    assert staleness == [2]
    assert (float(stats.loss), float(stats.nll), stats.tokens, stats.sentences) == (12.0, 8.0, 34, 8)
    assert workers.server.updates == 1 and workers.server.pushes == 2
    streams = workers.ctx.streams
    assert (streams[0].taken, streams[0].skipped, streams[1].taken, streams[1].skipped) == (0, 2, 2, 0)


def test_a_sync_ranks_wish_to_stop_is_agreed_one_step_later(monkeypatch):
    """One rank's wish (a time limit, patience) is sent in a step's small all-reduce and read after the next
    step, when every rank reads it: the group agrees to stop, not interrupted."""
    workers = sync_rank(monkeypatch)
    workers.advance()
    assert workers.agree_stop(True) is False
    workers.advance()  # sends the wish
    assert workers.agreed is False
    workers.advance()  # reads the agreement
    assert workers.agree_stop(False) is True and workers.interrupted is False


def test_ctrl_c_on_one_sync_rank_is_agreed_as_an_interrupt(monkeypatch):
    """A Ctrl-C event set on one rank is sent as its flag: a step later the group agrees to stop, and knows it
    was interrupted (the trainer then saves and ends the run as interrupted)."""
    workers = sync_rank(monkeypatch)
    workers.ctx.interrupt.set()
    workers.advance()
    workers.advance()
    assert workers.agree_stop(False) is True and workers.interrupted is True


def test_ranks_gather_their_states_after_the_step_at_the_fence_or_the_agreed_stop(monkeypatch):
    """Rank 0 gathers every rank's own state after the step that reaches the fence the trainer set (a save
    there), once, and after a step at which the ranks agreed to stop (a save there too), not after others."""
    workers = sync_rank(monkeypatch)
    before = workers.state_dict()["ranks"]  # before any step: every rank where this one stands
    assert len(before) == 2 and all(set(own) == {"rng"} for own in before)
    workers.allow(2)
    workers.advance()
    assert workers.group.gathers == []
    workers.advance()
    assert len(workers.group.gathers) == 1 and workers.gathered_at == 2
    assert workers.state_dict()["ranks"][1] == {"rank": 1}
    workers.allow(10)
    workers.agree_stop(True)
    workers.advance()  # sends the wish
    assert len(workers.group.gathers) == 1
    workers.advance()  # agreed: the trainer saves after this step
    assert len(workers.group.gathers) == 2 and workers.gathered_at == 4


def test_a_resumed_rank_takes_its_own_random_state_and_rank_0_keeps_every_ranks(monkeypatch):
    """Rank 1 resumes with its own saved random state; rank 0 keeps every rank's states for a save before its
    first step (the closing validation of a finished run): it saved its own state for every rank."""
    from async_nmt.train import checkpoint as ckpt

    saved = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        saved.append({"rng": ckpt.rng_state()})
    torch.manual_seed(1)
    expected = torch.rand(3)
    rank1 = sync_rank(monkeypatch, rank=1)
    torch.manual_seed(3)
    rank1.load_state_dict({"ranks": saved[::-1]})  # rank 1's: seed 1's
    assert torch.equal(torch.rand(3), expected) and rank1.gathered is None

    torch.manual_seed(3)
    expected = torch.rand(3)
    rank0 = sync_rank(monkeypatch, rank=0)
    torch.manual_seed(3)  # the checkpoint's own, which the trainer loaded
    rank0.load_state_dict({"ranks": saved})
    assert torch.equal(torch.rand(3), expected)
    assert rank0.state_dict() == {"ranks": saved}  # a save before its first step


def test_a_sync_rank_whose_supervisor_is_gone_leaves_at_its_next_step(monkeypatch):
    """A rank that finds the process that started it gone (the supervisor, or torchrun's agent, was killed)
    leaves after its step, exit 1, instead of training on without anyone to report to."""
    workers = sync_rank(monkeypatch)
    workers.advance()
    workers.parent = -1  # (no process's parent: the one that started this rank is gone)
    with pytest.raises(SystemExit) as left:
        workers.advance()
    assert left.value.code == 1


# ---------------------------------------------------------------------- workers.py


def compute(bin_dir: Path, worker: int, **overrides: Any) -> Any:
    """Async worker `worker`'s compute (of 2 workers) on the micro preset, from its stream's start."""
    from async_nmt.data.binarize import load_manifest
    from async_nmt.train.modes.workers import WorkerCompute

    options = dict(bin_dir=str(bin_dir), preset="micro", max_tokens=1024, dropout=0.0, devices=["cpu"], seed=7,
                   mode="async", workers=2)  # fmt: skip
    cfg = TrainConfig(**{**options, **overrides})
    model_cfg = model_config("micro", load_manifest(bin_dir)["vocab_size"], dropout=0.0)
    return WorkerCompute(cfg, model_cfg, worker, torch.device("cpu"), {"epoch": 1, "index": 0}, 1.0)


def test_each_async_worker_process_draws_from_a_generator_seeded_as_its_own(synthetic_bin: Path):
    """A worker's compute seeds torch with its own seed (`worker_seed`), so that the workers draw different
    dropout masks; seeded with the run's seed, every worker drew the same."""
    from async_nmt.train.modes.workers import worker_seed

    for worker in (0, 1):
        compute(synthetic_bin, worker)
        assert torch.initial_seed() == worker_seed(7, worker)


def test_an_async_workers_push_sums_local_accum_batches_of_its_own_stream(synthetic_bin: Path):
    """--local-accum 2 in an async mode: each push is the gradient of the worker's next 2 batches (one, where
    the option was dropped), from its own share of the data (worker 1's of 2: worker 0's, where the stream
    was built for the wrong worker)."""
    from async_nmt.data.batches import BatchStream
    from async_nmt.data.binarize import load_split

    ones, twos = compute(synthetic_bin, 1), compute(synthetic_bin, 1, local_accum=2)
    own = BatchStream(load_split(synthetic_bin, "train"), 1024, ones.stream.max_len, 7, 1, 2)
    expected = [own.skip() for _ in range(2)]  # (target tokens, sentences) of its first two batches
    pushed = [ones.push(), ones.push()]
    assert [(p.tokens, p.sentences) for p in pushed] == expected
    both = twos.push()
    assert (both.tokens, both.sentences) == (expected[0][0] + expected[1][0], expected[0][1] + expected[1][1])
    assert ones.stream.state_dict() == twos.stream.state_dict() == {"epoch": 1, "index": 2}


def test_staleness_histograms_merge_to_the_longer_ones_length():
    """The trainer merges the staleness histograms of successive `advance` calls: counts add bin by bin and the
    longer one's tail is kept (cut to the shorter one, the staleness of the rarer stale pushes was lost)."""
    from async_nmt.train.modes.workers import histogram, merge_histograms

    assert histogram([2, 0, 2]) == [1, 0, 2] and histogram([]) == []
    assert merge_histograms([1], [0, 2, 1]) == [1, 2, 1] == merge_histograms([0, 2, 1], [1])
    assert merge_histograms([], [3]) == [3]
