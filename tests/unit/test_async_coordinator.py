"""The coordinator of async worker processes (`asynchronous.ProcessWorkers`), without processes: its gate
arithmetic and when it lets the trainer go on, on a stand-in server whose counters the test sets."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from async_nmt.train.modes import asynchronous
from async_nmt.train.modes.asynchronous import ADMITTED, COMPLETED, LIMIT, ProcessWorkers
from async_nmt.train.modes.workers import worker_seed


class Stream:
    def load_state_dict(self, state: dict) -> None:
        self.state = state


def coordinator(updates: int, accum: int, pending: int, workers: int = 2) -> ProcessWorkers:
    """A coordinator as `start` leaves it, over a server at `updates` updates holding `pending` pushes of a
    partial sum of `accum`."""
    server = SimpleNamespace(updates=updates, accum=accum, pending_pushes=pending)
    server.counted = lambda read, waiting: (server.updates, server.updates * accum, 1e-3, 0.5, read())
    ctx = SimpleNamespace(devices=["cpu"] * workers, streams=[Stream() for _ in range(workers)])
    coord = ProcessWorkers(ctx, server)  # type: ignore[arg-type]
    coord.base_updates, coord.base_pending = updates, pending
    coord.collected_at = coord.fence = updates
    coord._check = lambda: None  # no processes to watch
    return coord


def test_the_gate_counts_the_pushes_of_a_resumed_partial_sum():
    """A server resumed at update 5 with 1 push of an async-accum 3 sum: 2 more pushes make update 6, and 5
    more update 7; drained after 1 admitted push, the gate lets 1 more in, to finish the sum."""
    coord = coordinator(updates=5, accum=3, pending=1)
    assert coord._pushes_until(6) == 2 and coord._pushes_until(7) == 5
    coord.allow(7)
    assert int(coord.gate.counts[LIMIT]) == 5 and coord.fence == 7
    coord.gate.counts[ADMITTED] = coord.gate.counts[COMPLETED] = 1
    coord.server.updates = 6  # (the stand-in's pushes are done: only the arithmetic is asked)
    coord.drain()
    assert int(coord.gate.counts[LIMIT]) == 2 and coord.fence == 6


def test_at_the_fence_the_trainer_waits_until_every_admitted_push_is_complete(monkeypatch):
    """The server shows the fence's update as soon as the push that makes it has updated shard 0; a push
    still writing its other shards, or its statistics, is not complete. Validation and checkpoints at the
    fence must see every admitted push complete (else a half-updated model, and shards whose counters
    disagree in the checkpoint; a mutation audit found no test that held the code to it)."""
    monkeypatch.setattr(asynchronous.processes, "POLL_S", 0.001)
    coord = coordinator(updates=0, accum=1, pending=0)
    coord.allow(2)
    coord.gate.counts[ADMITTED], coord.gate.counts[COMPLETED] = 2, 1
    coord.server.updates = 2  # the fence, shown by shard 0
    returned = threading.Event()
    waiter = threading.Thread(target=lambda: (coord.advance(), returned.set()), daemon=True)
    waiter.start()
    assert not returned.wait(0.2)  # one admitted push is still under way
    coord.gate.counts[COMPLETED] = 2
    assert returned.wait(5)
    waiter.join(5)


def test_a_fence_reached_between_the_look_and_the_collection_is_waited_for(monkeypatch):
    """The coordinator looks at the server (update 1, below the fence at 2), then collects: by then a push has
    made the fence, but one admitted push is not done on every shard. The trainer validates and saves at the
    update it is given, so it must not get the fence before that push is done (it read the fence from the
    server after the collection, and validated a server still being written)."""
    monkeypatch.setattr(asynchronous.processes, "POLL_S", 0.001)
    coord = coordinator(updates=0, accum=1, pending=0)
    coord.allow(2)
    coord.gate.counts[ADMITTED], coord.gate.counts[COMPLETED] = 2, 1
    coord.server.updates = 1  # what the look sees
    coord.server.counted = lambda read, waiting: (2, 2, 1e-3, 0.5, read())  # what the collection sees
    returned = threading.Event()
    waiter = threading.Thread(target=lambda: (coord.advance(), returned.set()), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 10  # (10 s for a loaded machine)
    while coord.collected_at != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert coord.collected_at == 2 and not returned.wait(0.2)  # collected, and waiting for the push
    coord.gate.counts[COMPLETED] = 2
    assert returned.wait(5)
    waiter.join(5)


def test_before_the_fence_the_trainer_goes_on_at_each_new_update(monkeypatch):
    """Between fences nothing waits for quiet: a new update is enough (the workers never wait for it)."""
    monkeypatch.setattr(asynchronous.processes, "POLL_S", 0.001)
    coord = coordinator(updates=0, accum=1, pending=0)
    coord.allow(10)
    coord.gate.counts[ADMITTED], coord.gate.counts[COMPLETED] = 3, 1
    coord.server.updates = 1
    returned = threading.Event()
    threading.Thread(target=lambda: (coord.advance(), returned.set()), daemon=True).start()
    assert returned.wait(10) and coord.collected_at == 1  # (at once; 10 s for a loaded machine)


@pytest.mark.parametrize("seed", [1, 7])
def test_async_workers_seed_each_their_own_generator(seed: int):
    """Each worker process draws its own dropout masks: every worker of a run a seed of its own."""
    seeds = [worker_seed(seed, w) for w in range(16)]
    assert len(set(seeds)) == len(seeds)
