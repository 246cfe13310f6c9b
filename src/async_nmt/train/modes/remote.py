"""async and async-accum across processes that torchrun started, on one machine or several.

Rank 0 is the coordinator and the parameter server. It runs the trainer (events, validation, checkpoints)
and holds the master parameters, Adam and the update rule (`ParamServer`, one shard). Every other rank is
a worker that loops: compute a gradient on the parameters it last pulled, push it to rank 0 with its
statistics and data position, and receive the parameters once the server has taken the push.

Pushes travel as gloo point-to-point messages of CPU tensors (a GPU worker goes through pinned host
buffers; NCCL has no receive from any source, which a server that serves whoever comes first needs).
Rank 0 receives the next push from any worker, so nobody waits for anybody. The gate is rank 0 not
answering: a push that arrives when the server has reached the next fence (a validation, a checkpoint,
the end) waits, its gradient not yet taken, until the coordinator opens the gate further. Since the server
applies each push before it answers, it is always between pushes when the trainer validates or saves.

Failures: each worker publishes its host and a heartbeat in torchrun's store, and a line when it fails.
Rank 0 stops the run with one line that names the worker's rank, host and error, or says that its
heartbeat stopped. A worker leaves when rank 0 is gone: its next message to it fails, and it says so in
one line. The store lives on rank 0's node, so a worker stops using it at its first failed call.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from async_nmt.config import ModelConfig, TrainConfig, from_dict
from async_nmt.errors import WorkerFailed, exit_at_once, failure_line, notice_within, reason
from async_nmt.train import processes
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import ModeContext, WorkerCompute, Workers, histogram
from async_nmt.train.step import StepStats

HEADER, GRAD, REPLY, PARAMS = 7001, 7002, 7003, 7004  # message tags (apart from those gloo numbers collectives with)
# a push's header: its statistics, the update count its parameters came from, and the worker's data position
TOKENS, LOSS, NLL, SENTENCES, PULLED, EPOCH, INDEX = range(7)
HEARTBEAT_S = 0.5  # how often a worker says it is alive
SILENT_S = 5.0  # a worker not heard of for this long has stopped
CHECK_S = 0.5  # how often rank 0 looks at the store while it waits
# torchrun's agent stops (SIGTERM) a node's other ranks when one of them ends, and those say so in the store;
# one of them is named only once the worker that ended would have been found silent too: the heartbeats
# show the order of two deaths a tenth of a second apart (the agent's) only to a heartbeat and a check
STOPPED_S = SILENT_S + 2 * (HEARTBEAT_S + CHECK_S)
PREFIX = "async_nmt/"
DONE = f"{PREFIX}done"  # rank 0 ended the run: a worker that then loses it leaves without an error
# how long rank 0 waits at the end for the workers' next pushes to tell them to stop; a worker still
# computing then finds rank 0 gone and leaves quietly (an environment override lets tests shorten it)
CLOSE_WAIT_S = float(os.environ.get("ASYNC_NMT_CLOSE_WAIT_S", processes.STOP_GRACE_S + SILENT_S))


def _key(what: str, rank: int) -> str:
    return f"{PREFIX}{what}/{rank}"


class _Receive:
    """A posted receive from any source, waited for on a thread (its wait releases the GIL)."""

    def __init__(self, work: Any):
        self.work, self.error = work, None
        self.done = threading.Event()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        try:
            self.work.wait()
        except Exception as err:  # a lost connection: raised in the watching thread
            self.error = err
        self.done.set()

    def source(self) -> int:
        if self.error is not None:
            raise self.error
        return self.work._source_rank()


class RemoteWorkers(Workers):
    """Rank 0's side: serve the workers' pushes in arrival order, up to the fence the trainer sets."""

    def __init__(self, ctx: ModeContext, server: ParamServer):
        self.ctx, self.server = ctx, server
        self.ranks = list(range(1, ctx.world))  # the workers
        self.store = dist.distributed_c10d._get_default_store()
        numel = server.numel
        on_gpu = server.params.device.type == "cuda"  # then pinned: the copies to and from it run faster
        self.params_cpu = torch.empty(numel, pin_memory=True) if on_gpu else server.params
        self.grad = torch.empty(numel, pin_memory=on_gpu)
        self.header = torch.empty(8, dtype=torch.float64)
        self.pending: Any = None  # the posted receive of the next header
        self.parked: list[tuple[int, torch.Tensor]] = []  # headers of pushes that arrived at the fence
        self.fence = server.updates
        self.stats, self.staleness = StepStats(), []
        self.pushes = [0] * len(self.ranks)
        self.heard: dict[int, tuple[int, float]] = {}  # heartbeat count and when it last moved (from start)
        self.told: set[int] = set()  # workers told to stop
        self.failed = False  # a worker failed: nobody is waited for any more
        self.cut_short = False  # the SIGTERM that stops this node ended a worker of it first (`_lost`)
        self.closing = False  # the run has ended: a lost connection is a worker gone already (`close`)
        self.checked = 0.0  # when the workers' health was last looked at

    def start(self) -> None:
        exit_at_once()  # a receive left posted at the end must not wake in the interpreter's finalization
        positions = [stream.state_dict() for stream in self.ctx.streams]
        setup: list[Any] = [positions, asdict(self.ctx.model_cfg), self.server.updates]
        dist.broadcast_object_list(setup, src=0)
        self._copy_params()
        dist.broadcast(self.params_cpu, src=0)
        self.heard = {r: (-1, time.monotonic()) for r in self.ranks}

    def allow(self, updates: int) -> None:
        self.fence = max(self.fence, updates)

    def advance(self) -> tuple[StepStats, list[int]]:
        start = self.server.updates
        while self.server.updates == start:
            if self.parked and self.server.updates < self.fence:
                self._serve(*self.parked.pop(0))
                continue
            src, header = self._next_header()
            if self.server.updates < self.fence:
                self._serve(src, header)
            else:
                self.parked.append((src, header))
        return self._collect()

    def taken(self) -> None:
        self.stats, self.staleness = StepStats(), []

    def drain(self) -> tuple[StepStats, list[int]]:
        """A partial async-accum sum is completed with the pushes that come next (kept as it is where a
        worker's connection was lost to the SIGTERM that stops the run, `_lost`: the checkpoint holds it)."""
        try:
            while self.server.pending_pushes:
                src, header = self.parked.pop(0) if self.parked else self._next_header()
                self._serve(src, header)
        except (KeyboardInterrupt, WorkerFailed):  # (WorkerFailed: another connection lost after it)
            if not self.cut_short:
                raise
        self.fence = max(self.fence, self.server.updates)
        return self._collect()

    @property
    def worker_pushes(self) -> list[int]:  # type: ignore[override]
        return list(self.pushes)

    def state_dict(self) -> dict[str, Any]:
        return {"worker_pushes": list(self.pushes)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:  # (None: saved before 2026-12-05, when the counts started again at a resume)
            self.pushes = list(state["worker_pushes"])

    def close(self) -> None:
        """Tell every worker to stop when its next push comes (one waiting at the fence at once), for at
        most CLOSE_WAIT_S. Every worker's heartbeat has seen the run end before rank 0 leaves, so one still
        computing leaves quietly when it finds rank 0 gone. A worker stopped by SIGTERM (a scheduler's that
        stops this node too) is not waited for: the save waited STOPPED_S for it to be found silent. After
        a failure nobody is told: the workers leave when rank 0's connections close."""
        if self.failed:
            return
        self.closing = True
        ended = time.monotonic()
        self.store.set(DONE, "1")
        try:
            for src, _ in self.parked:
                self._refuse(src)
            self.parked = []
            while self._awaited() and self._header_ready(ended + CLOSE_WAIT_S, until=lambda: not self._awaited()):
                src, _ = self._next_header()
                self._refuse(src)
            if not self._awaited():
                return
        except (WorkerFailed, RuntimeError):  # a worker already gone; the others leave when rank 0 does
            pass
        # those still computing learn of the end from the store
        time.sleep(max(0.0, ended + 2 * HEARTBEAT_S + CHECK_S - time.monotonic()))

    def _awaited(self) -> list[int]:
        """The workers not yet told to stop that have not stopped (by SIGTERM) on their own."""
        return [rank for rank in self.ranks if rank not in self.told and not self.store.check([_key("stopped", rank)])]

    # ------------------------------------------------------------------ messages
    def _header_ready(self, deadline: float = math.inf, until: Callable[[], bool] = lambda: False) -> bool:
        """Wait for the next push's header from any worker, until `deadline` (a monotonic time) at most, or
        until `until()` holds (looked at as often as the workers' health, which is watched meanwhile)."""
        if self.pending is None:  # gloo completes a receive only in wait(): a thread waits, this one watches
            with processes.uninterrupted():  # a posted receive is never dropped (it would swallow a header)
                self.pending = _Receive(dist.irecv(self.header, tag=HEADER))
        while not self.pending.done.wait(CHECK_S):
            self._check()
            if time.monotonic() >= deadline or until():
                return False
        return True

    def _next_header(self) -> tuple[int, torch.Tensor]:
        """The next push's header from any worker, and its sender."""
        self._header_ready()
        if time.monotonic() - self.checked > CHECK_S:  # busy: look between pushes too
            self._check()
        try:
            src = self.pending.source()
        except RuntimeError as err:
            self._lost(err)
        self.pending = None
        return src, self.header.clone()

    def _lost(self, err: RuntimeError) -> None:
        """A connection closed under a message: name the worker whose heartbeat stopped (or that said why).
        But where a SIGTERM came to this process meanwhile, the scheduler's (or the agent's) that stops
        this node stopped its workers too, one of them in an exchange with this one: the run stops as on
        Ctrl-C, with what it has (it failed, without a checkpoint, for a worker "stopped by SIGTERM").
        So after a Ctrl-C, which stops the run anyway. Once the run has ended (`close`), a lost connection is
        a worker gone already: a SIGTERM's KeyboardInterrupt from here passed the checkpoint saved before
        it, and the run ended with "interrupted", not "interrupted: saved" (CI, under load)."""
        if self.cut_short or self.closing:  # (the workers left leave when rank 0 does)
            raise WorkerFailed(f"a worker's connection was lost: {reason(err)}")
        deadline = time.monotonic() + STOPPED_S + 2 * CHECK_S
        while time.monotonic() < deadline:
            if notice_within(STOPPED_S + 2 * CHECK_S):
                self.cut_short = True
                raise KeyboardInterrupt
            self._check()
            time.sleep(CHECK_S)
        self.failed = True
        raise WorkerFailed(f"a worker's connection was lost: {reason(err)}")

    def _serve(self, src: int, header: torch.Tensor) -> None:
        try:
            with processes.uninterrupted():  # Ctrl-C between the messages would leave the worker waiting
                self._take(src, header)
        except RuntimeError as err:
            self._lost(err)

    def _take(self, src: int, header: torch.Tensor) -> None:
        dist.recv(self.grad, src=src, tag=GRAD)
        processes.maybe_interrupt(self.server.pushes + 1)
        processes.maybe_stop_node(self.server.pushes + 1, src)
        values = header.tolist()
        worker = src - 1
        grad = self.grad if self.server.params.device.type == "cpu" else self.grad.to(self.server.params.device)
        staleness = self.server.push(grad, int(values[TOKENS]), int(values[PULLED]))
        self.stats.add(StepStats(values[LOSS], values[NLL], int(values[TOKENS]), int(values[SENTENCES])))
        self.staleness.append(staleness)
        self.pushes[worker] += 1
        self.ctx.streams[worker].load_state_dict({"epoch": int(values[EPOCH]), "index": int(values[INDEX])})
        dist.send(torch.tensor([self.server.updates, 0]), dst=src, tag=REPLY)
        self._copy_params()
        dist.send(self.params_cpu, dst=src, tag=PARAMS)

    def _refuse(self, src: int) -> None:
        with processes.uninterrupted():
            dist.recv(self.grad, src=src, tag=GRAD)  # the worker waits until its gradient is taken
            dist.send(torch.tensor([self.server.updates, 1]), dst=src, tag=REPLY)
            self.told.add(src)

    def _copy_params(self) -> None:
        if self.params_cpu.data_ptr() != self.server.params.data_ptr():
            self.params_cpu.copy_(self.server.params)

    def _collect(self) -> tuple[StepStats, list[int]]:
        """The statistics of the pushes served since the trainer last counted them: kept until `taken`, so that
        a stop's drain returns them too (a Ctrl-C came as `advance` or a limit's `drain` returned them)."""
        return self.stats, histogram(self.staleness)

    def _check(self) -> None:
        """Raise a worker failure: an error a worker reported, else the worker whose heartbeat stopped first
        (when one worker dies, torchrun's agent stops its node's other ranks a moment later: those must not
        be named for it, whatever their rank)."""
        now = self.checked = time.monotonic()
        silent = []
        for rank in self.ranks:
            if self.store.check([_key("error", rank)]):
                self._fail(rank, self.store.get(_key("error", rank)).decode())
            beats = self.store.add(_key("alive", rank), 0)
            count, since = self.heard[rank]
            if beats != count:
                self.heard[rank] = (beats, now)
            elif now - since > SILENT_S and rank not in self.told:
                silent.append(rank)
        stopped = {rank for rank in silent if self.store.check([_key("stopped", rank)])}
        ended = [rank for rank in silent if rank not in stopped or now - self.heard[rank][1] > STOPPED_S]
        if ended:
            rank = min(ended, key=lambda r: (r in stopped, self.heard[r][1], r))
            if rank in stopped:  # its whole node was stopped (a scheduler's SIGTERM), or the one that died hid
                self._fail(rank, "stopped by SIGTERM (its torchrun agent's, or a scheduler's)")
            self._fail(rank, f"no heartbeat for {SILENT_S:.0f} s (killed, or its host is gone)")

    def _fail(self, rank: int, what: str) -> None:
        self.failed = True
        self.store.set(f"{PREFIX}failed", str(rank))  # the other workers then leave without a word
        raise WorkerFailed(self._describe(rank, what))

    def _describe(self, rank: int, what: str) -> str:
        host = self.store.get(_key("host", rank)).decode() if self.store.check([_key("host", rank)]) else "?"
        return f"worker rank {rank} on {host} failed: {what}"


# ---------------------------------------------------------------------- a worker rank
_KEPT: list[socket.socket] = []  # sockets that live as long as the process


class ServerLost(Exception):
    """A message to or from rank 0 failed: rank 0 is gone (killed, failed, or it stopped the run)."""


class _Link:
    """A worker's calls to torchrun's store, which lives on rank 0's node. The first call that fails means the
    store is gone with it, and none is made after it: each failed call prints a C++ warning with a stack
    trace (about 16 lines) that would bury the worker's one line. The heartbeat, the main thread and the
    SIGTERM watcher share one link, so whichever fails first spares the others."""

    def __init__(self, store: Any):
        self.store, self.gone = store, False
        self.lock = threading.Lock()  # a call in flight when another fails is not followed by more

    def call(self, method: str, *args: Any, default: Any = None) -> Any:
        if not self.lock.acquire(timeout=2 * HEARTBEAT_S):  # a call hangs on a host gone silent: not another
            return default
        try:
            if self.gone:
                return default
            return getattr(self.store, method)(*args)
        except Exception:
            self.gone = True
            return default
        finally:
            self.lock.release()

    def run_failed(self) -> bool:
        """Whether rank 0 stopped the run for a worker's failure (and named it)."""
        return bool(self.call("check", [f"{PREFIX}failed"], default=False))


def run_worker_rank(cfg: TrainConfig, rank: int, device: torch.device) -> None:
    """A worker rank: pull, compute a gradient, push it to rank 0; until rank 0 says stop. Ctrl-C is rank
    0's to handle (it saves, then stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    link = _Link(dist.distributed_c10d._get_default_store())
    link.call("set", _key("host", rank), socket.gethostname())
    _watch_sigterm(link, rank)
    beating, ended = threading.Event(), threading.Event()
    heart = threading.Thread(target=_heartbeat, args=(link, rank, beating, ended), daemon=True)
    heart.start()
    try:
        _work(cfg, rank, device)
    except Exception as err:
        beating.set()  # no more store calls from the heartbeat: the store may be going with rank 0
        if ended.is_set():  # rank 0 ended the run while this worker computed: nothing failed, and the group
            raise SystemExit(0) from None  # is not torn down (that would wait for rank 0, which is gone)
        if link.run_failed():  # rank 0 stopped the run for another worker's failure, and named it
            raise SystemExit(1) from None
        if isinstance(err, ServerLost):  # nobody is left to take an error: say it here, at once
            if _first_on_node("lost"):
                print(f"error: worker rank {rank} on {socket.gethostname()} lost rank 0 (the server): {err}",
                      file=sys.stderr)  # fmt: skip
            raise SystemExit(1) from None
        line = failure_line(err)
        link.call("set", _key("error", rank), line)
        deadline = time.monotonic() + 2 * CHECK_S + 1.0
        while not link.run_failed() and not link.gone and time.monotonic() < deadline:
            time.sleep(0.05)
        if not link.run_failed():  # rank 0 did not take the message (it is gone): say it here
            print(f"error: worker rank {rank} on {socket.gethostname()}: {line}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        beating.set()


def _first_on_node(what: str) -> bool:
    """Whether this is the first of its node's ranks to ask (all of torchrun's ranks on a node share its agent
    as their parent): the ranks that lost rank 0 print one line per node. An abstract Unix socket's name is
    the token: bound by one process at a time, freed when it exits. Elsewhere than on Linux, always true."""
    try:
        token = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except (AttributeError, OSError):
        return True
    try:
        token.bind(f"\0async_nmt/{os.getppid()}/{what}")
    except OSError as err:
        token.close()
        return err.errno != errno.EADDRINUSE
    _KEPT.append(token)
    return True


def _watch_sigterm(link: _Link, rank: int) -> None:
    """On SIGTERM, say so in the store, then leave (exit 143, as a shell reports SIGTERM). torchrun's agent
    sends it to a node's other ranks when one of them ends, and rank 0 must not name those for it. A thread
    acts on it, through the signal module's wakeup fd: the main thread may wait in a message for long, and
    Python runs a handler only there."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda *_: None)  # a handler, so that the wakeup fd hears of it

    def watch() -> None:
        while signal.SIGTERM not in reader.recv(64):
            pass
        link.call("set", _key("stopped", rank), "1")
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    _KEPT.extend((reader, writer))


def _heartbeat(link: _Link, rank: int, stop: threading.Event, ended: threading.Event) -> None:
    """Say every HEARTBEAT_S that this worker lives, and learn whether rank 0 has ended the run."""
    while not stop.wait(HEARTBEAT_S) and not link.gone:
        link.call("add", _key("alive", rank), 1)
        if link.call("check", [DONE], default=False):
            ended.set()


def _message(op: Any, *args: Any, **kwargs: Any) -> None:
    """A message to or from rank 0; one that fails raises ServerLost (the worker's only peer is rank 0)."""
    try:
        op(*args, **kwargs)
    except RuntimeError as err:  # gloo's words, less the source line it starts with ("[.../pair.cc:553] ")
        raise ServerLost(re.sub(r"^\[[^\]]*\.cc:\d+\] ", "", reason(err))) from err


def _work(cfg: TrainConfig, rank: int, device: torch.device) -> None:
    worker = rank - 1
    setup: list[Any] = [None, None, None]
    _message(dist.broadcast_object_list, setup, src=0)
    positions, model_dict, pulled = setup
    speed = cfg.worker_speeds[worker] if cfg.worker_speeds else 1.0
    compute = WorkerCompute(cfg, from_dict(ModelConfig, model_dict), worker, device, positions[worker], speed)
    flat, stream = compute.flat, compute.stream
    pinned = device.type == "cuda"
    params = torch.empty(flat.numel(), pin_memory=pinned)
    grad = torch.empty(flat.numel(), pin_memory=pinned)
    _message(dist.broadcast, params, src=0)
    flat.data.copy_(params)
    reply = torch.empty(2, dtype=torch.int64)
    pushes, copied = 0, None
    while True:
        stats = compute.push()
        pushes += 1
        processes.maybe_fail(worker, pushes)
        position = stream.state_dict()
        header = torch.tensor([stats.tokens, float(stats.loss), float(stats.nll), stats.sentences, pulled,
                               position["epoch"], position["index"], 0], dtype=torch.float64)  # fmt: skip
        _message(dist.send, header, dst=0, tag=HEADER)
        grad.copy_(flat.grad)
        _message(dist.send, grad, dst=0, tag=GRAD)
        _message(dist.recv, reply, src=0, tag=REPLY)
        if reply[1]:  # stop
            return
        if copied is not None:  # (the copy from `params` is done before the next pull overwrites it; the read of
            copied.synchronize()  # the push's loss made sure of it too, but only by the way)
        _message(dist.recv, params, src=0, tag=PARAMS)
        flat.data.copy_(params, non_blocking=pinned)
        if pinned:
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(device))
        pulled = int(reply[0])
