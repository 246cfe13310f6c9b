"""Worker processes: spawn them, notice the first failure (and report its root cause), stop them all.

Workers are `torch.multiprocessing` spawn processes in the caller's process group (a SIGKILL of the group
takes them too), marked daemon (they die with a parent that exits), and they ignore SIGINT: Ctrl-C is the
parent's to handle. A worker that raises puts one line and its traceback on an error queue and exits 1;
the parent polls for that, and for workers that died without a word (a signal, the OOM killer), and stops
the run within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing import util as mp_util
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm import tqdm

from async_nmt.errors import (
    UserError,
    WorkerFailed,
    failure_line,
    heeded,
    held_interrupts,
    messages_never_fail,
    new_notice,
)

POLL_S = 0.001  # how often waiting loops look at shared counters
STOP_GRACE_S = 5.0  # a worker still running this long after it was told to stop is terminated
# testing hook: "W:N" makes worker W raise at its N-th push, "W:N:kill" die, "W:N:kill-locked" die holding a lock
FAIL_ENV = "ASYNC_NMT_FAIL_WORKER"
INTERRUPT_ENV = "ASYNC_NMT_INTERRUPT_AT"  # testing hook: "N": Ctrl-C reaches the server as it takes its N-th push
# testing hook: "R:N": a scheduler's SIGTERM reaches the torchrun server's node as it takes rank R's push, from N on
STOP_NODE_ENV = "ASYNC_NMT_STOP_NODE_AT"
_NODE_STOPPED = [False]
MESSAGE_GRACE_S = 0.2  # how long a failure waits for the other processes' exits and messages
PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the parent's to handle (Ctrl-C, a scheduler's notice)


def context() -> Any:
    """The spawn context, from which every lock and queue that worker processes share is made: multiprocessing's
    resource tracker is started first, in a session of its own (`start_resource_tracker`)."""
    start_resource_tracker()
    return mp.get_context("spawn")


def spawn(target: Callable[..., None], args: Sequence[tuple]) -> list[Any]:
    """Start one process per argument tuple (spawned, daemon). They ignore SIGINT from their first
    instruction: a spawned process imports torch and the CLI (seconds) before `worker_process` runs, and a
    Ctrl-C then printed a traceback from each and killed them; an ignored signal stays ignored across the
    exec, and Python leaves it so. So for SIGTERM, which `worker_process` ignores too. The parent ignores
    them only while it forks (a Ctrl-C then is lost; it once ignored them for the whole spawn, and a Ctrl-C
    or a scheduler's SIGTERM as the workers started was lost and the run went on to its limit); the caller
    holds a signal that comes while the workers start (`uninterrupted`), since they read the shared state
    the parent would tear down."""
    processes = []
    with _children_ignore_stop_signals():
        for i, process_args in enumerate(args):
            process = context().Process(target=target, args=process_args, daemon=True, name=f"nmt-worker-{i}")
            process.start()
            processes.append(process)
    return processes


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (if it is not running yet) in a session of its own, before the
    locks and queues that worker processes share are made. Their named semaphores live in /dev/shm; once the
    last process that uses the tracker is gone, it unlinks those that were not unlinked (their processes were
    killed), quietly (it warned of "leaked semaphore objects" under the killed run's last line), and leaves. It
    ignores SIGINT and SIGTERM; in the run's process group it died with the run at `kill -KILL -PGID` (a
    scheduler's end of a job), and every such kill left them in /dev/shm for good."""
    from multiprocessing import resource_tracker

    original = mp_util.spawnv_passfds
    prologue = 'import os, warnings; os.setsid(); warnings.filterwarnings("ignore", "resource_tracker: There appear")'

    def in_own_session(path: Any, args: Sequence[str], passfds: Any) -> int:
        if len(args) >= 2 and args[-2] == "-c":  # (python -c CODE: the tracker's command line)
            args = [*args[:-1], f"{prologue}; {args[-1]}"]
        return original(path, args, passfds)

    mp_util.spawnv_passfds = in_own_session
    try:
        resource_tracker.ensure_running()
    finally:
        mp_util.spawnv_passfds = original


@contextmanager
def _children_ignore_stop_signals() -> Iterator[None]:
    """The processes forked meanwhile start with SIGINT and SIGTERM ignored: the parent ignores them for the
    fork itself (multiprocessing's `util.spawnv_passfds`; where that is not there, for the whole block)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    original = getattr(mp_util, "spawnv_passfds", None)
    if original is None:
        before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
        return

    def spawnv_passfds(*args: Any, **kwargs: Any) -> int:
        before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            return original(*args, **kwargs)
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    mp_util.spawnv_passfds = spawnv_passfds
    try:
        yield
    finally:
        mp_util.spawnv_passfds = original


@contextmanager
def worker_process(worker: int, device: str, errors: Any) -> Iterator[None]:
    """The body of a worker process: any exception becomes a message on `errors` and exit code 1 (2: a user
    error). SIGINT and SIGTERM are ignored: Ctrl-C is the parent's, which stops the workers itself, and so is
    SIGTERM, which a batch scheduler (`scancel`, `kill -TERM -PGID`) sends to the whole process group: a
    sync rank it killed failed the run before the parent could save (`stop` kills a worker that stays)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    messages_never_fail()  # (a sync rank 0 prints the run's messages: a full stderr failed it)
    die_with_parent()
    # tqdm's default lock is a named semaphore; a worker stopped by SIGTERM would leave it behind
    tqdm.set_lock(threading.RLock())
    try:
        yield
    except SystemExit:
        raise
    except UserError as err:
        errors.put((worker, device, f"user:{err.exit_code}", str(err), ""))
        _release_locals(err)
        raise SystemExit(err.exit_code) from None
    except BaseException as err:
        errors.put((worker, device, "error", failure_line(err), traceback.format_exc()))
        _release_locals(err)
        if dist.is_available() and dist.is_initialized():
            _exit_past_the_group(1)
        raise SystemExit(1) from None


def leave_group(code: int = 0) -> NoReturn:
    """End a sync rank that is done (trained, or stopped by an agreed Ctrl-C with exit code 130): leave its
    process group, then the process, without the interpreter's finalization. There, gloo's threads may still
    hold work whose tensors are freed as the interpreter goes, and the rank aborted ("terminate called
    without an active exception", SIGABRT), seen once as a spawned gloo rank exited: its supervisor would
    have taken a finished run for a failed one."""
    dist.destroy_process_group()
    _exit_past_the_group(code)


def _exit_past_the_group(code: int) -> NoReturn:
    """End a sync rank without the interpreter's exit, whose teardown of its process group (a failed rank's
    most likely broken) may stop a gloo thread in the middle of its work: the process then aborted,
    "terminate called without an active exception" under the run's one line (seen once, in a full test run
    under load). A failed rank's message is on the queue already."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # (None where the command's stdout was closed: a finished run failed on it)
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(code)


def _release_locals(err: BaseException) -> None:
    """Drop the local variables of the frames the exception passed through. The exception outlives this
    process's last line (SystemExit's context holds it), and with it the worker's model and its handles on
    the coordinator's shared CUDA memory, which it then never released: the coordinator, as their
    producer, printed a second line ("Producer process has been terminated before all shared CUDA tensors
    released") under the worker's one-line error on an H200 (this fix is not yet rerun there)."""
    traceback.clear_frames(err.__traceback__)


def check_workers(processes: Sequence[Any], errors: Any, devices: Sequence[str], run_dir: Path) -> None:
    """Raise the first failure of a worker: the root cause first. A worker that died without a word (a
    signal, the OOM killer) is the cause of the errors the others then report (a sync rank's all-reduce
    fails when its peer is gone), so it is named first and the first error message after it."""
    failed = any(p.exitcode not in (None, 0, 130) for p in processes)
    if errors.empty() and not failed:
        return
    time.sleep(MESSAGE_GRACE_S)  # the other processes' messages and exits may still be on their way
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    senders = {message[0] for message in messages}
    silent = [(w, p.exitcode) for w, p in enumerate(processes) if p.exitcode not in (None, 0, 130) and w not in senders]
    if silent:
        worker, code = silent[0]
        how = killed_by(-code) if code < 0 else f"exited with code {code}"
        then = f"; then worker {messages[0][0]} failed: {_briefly(messages[0][3])}" if messages else ""
        raise WorkerFailed(f"worker {worker} ({devices[worker]}) {how}{then}")
    worker, device, kind, message, trace = messages[0]
    if kind.startswith("user:"):  # the worker's own one-line error (a bad option, a divergence)
        error = UserError(message)
        error.exit_code = int(kind.split(":")[1])
        raise error
    log = run_dir / "worker-errors.log"
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"worker {worker} ({device}):\n{trace}\n")
        where = f" (traceback in {log})"
    except OSError:
        where = ""
    raise WorkerFailed(f"worker {worker} ({device}) failed: {message}{where}")


def _briefly(message: str) -> str:
    """A worker's error that the cause named before it explains, in brief: gloo's names its source file and
    line and adds advice ("[.../gloo/transport/tcp/pair.cc:537] Read error [...]: Connection reset by peer.
    This is typically caused by a remote worker crashing. ... GLHF!"), which made the run's one line long."""
    message = re.sub(r"\[[^\]\s]*\.(?:cc|cpp|h):\d+\]\s*", "", message)
    return re.split(r"\.? This is typically caused by", message, maxsplit=1)[0]


def stop(processes: Sequence[Any], grace_s: float = STOP_GRACE_S) -> None:
    """Wait for processes told to stop; kill what is still running. Not SIGTERM first: workers ignore it
    (`worker_process`), and a second of waiting for each in turn made a second Ctrl-C slow."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join()


def wake(processes: Sequence[Any]) -> None:
    """Continue those of `processes` that SIGSTOP holds (a debugger, `kill -STOP`), for a stop that waits on
    them: for a push admitted before it, or in a sync group's next all-reduce. It waited for them without end,
    the run unsaved. SIGCONT does nothing to a process that runs."""
    for process in processes:
        if process.exitcode is None and process.pid is not None:  # (started, not ended)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)


@contextmanager
def uninterrupted(second_stops: bool = False, notice: str | None = None) -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM where it stands for Ctrl-C) off a section that must not stop halfway: an
    update half applied, a message exchange with a worker half done (that worker then waits for an answer
    that never comes), workers starting. A signal that came meanwhile is raised as KeyboardInterrupt when the
    section ends, and the first prints `notice` at once, if given; with `second_stops`, a second one is
    raised at once as `errors.SecondInterrupt`, which stops unsaved (a section that may wait long; one that
    repeats the last, or a SIGTERM, `errors.new_notice`, is no second one).
    If the section raises, its error wins and the signal is dropped: the state may be half changed then,
    and an interrupt would save it. In a thread other than the main one, or where the signals are not
    Ctrl-C's, nothing changes."""
    with held_interrupts(second_stops, notice) as caught:
        yield
    if caught:
        raise KeyboardInterrupt


@contextmanager
def stop_signals_set(flag: Any, message: str | None) -> Iterator[None]:
    """Within the block, Ctrl-C or SIGTERM sets `flag` (printing `message`, if any) for the code to stop at
    its next step; a second Ctrl-C raises KeyboardInterrupt at once (only after `errors.REPEAT_S`: one sooner
    is the same notice; a SIGTERM never is a second, `errors.new_notice`). For torchrun's sync ranks, whose agent
    passes a node's Ctrl-C or a scheduler's SIGTERM on to them: the ranks agree on it at their next step,
    as spawned ranks do on their supervisor's. In a thread other than the main one, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(number: int, _frame: Any) -> None:
        if not new_notice(number):
            return
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        if message:
            print(message, file=sys.stderr)

    before = {sig: signal.signal(sig, on_signal) for sig in heeded(*STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so that no worker outlives a killed
    trainer; elsewhere the workers' own checks of `parent_alive` do it, between batches."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the line above
        os._exit(1)


def parent_alive(parent_pid: int) -> bool:
    """Whether the process that started this one still runs (workers leave when it was killed)."""
    return os.getppid() == parent_pid


def maybe_fail(worker: int, pushes: int, lock: Any = None) -> None:
    """The testing hook: at its N-th push worker W raises (ASYNC_NMT_FAIL_WORKER=W:N) or is killed by
    SIGKILL (W:N:kill), as by the OOM killer; or is so killed while it holds `lock` (W:N:kill-locked), which
    is then never released."""
    spec = os.environ.get(FAIL_ENV, "")
    if spec == f"{worker}:{pushes}":
        raise RuntimeError(f"injected failure ({FAIL_ENV}={spec})")
    if spec in (f"{worker}:{pushes}:kill", f"{worker}:{pushes}:kill-locked"):
        if spec.endswith("-locked") and lock is not None:
            lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_interrupt(pushes: int) -> None:
    """The testing hook: Ctrl-C (SIGINT to this process) as the server takes push N (ASYNC_NMT_INTERRUPT_AT=N),
    between receiving its gradient and answering the worker."""
    if os.environ.get(INTERRUPT_ENV) == str(pushes):
        os.kill(os.getpid(), signal.SIGINT)


def maybe_stop_node(pushes: int, src: int) -> None:
    """The testing hook: SIGTERM to this torchrun rank's agent, which passes it on to the node's ranks, as the
    server takes a push of worker rank R, its N-th or a later one (ASYNC_NMT_STOP_NODE_AT=R:N), between
    receiving the gradient and answering. A worker of this node is then gone before its answer."""
    spec = os.environ.get(STOP_NODE_ENV, "")
    if not spec or _NODE_STOPPED[0]:
        return
    rank, first = (int(part) for part in spec.split(":"))
    if src == rank and pushes >= first:
        _NODE_STOPPED[0] = True
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(1.0)  # the worker ends meanwhile


class EmulatedSpeed:
    """--worker-speeds on a real worker: after each step it waits (1/speed - 1) times the step's time, so the
    step seems to take 1/speed as long. On CUDA the step is timed with the device's queue drained, since its
    kernels run after the host has moved on; and a process's first step (the CUDA context, cuBLAS and the
    allocator warming up) is not slowed: at speed 0.1 its sleep, nine times that warm-up, could outlast a
    short run (on an H200 the tests' slowed workers then left no staleness at all). At speed 1 it does
    nothing, not even a sync."""

    def __init__(self, speed: float, device: torch.device):
        self.speed, self.device = speed, device
        self.start = 0.0
        self.steps = 0

    def _drain(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin(self) -> None:
        if self.speed < 1:
            self._drain()
            self.start = time.perf_counter()

    def end(self) -> None:
        if self.speed < 1:
            self._drain()
            if self.steps:
                time.sleep((time.perf_counter() - self.start) * (1 / self.speed - 1))
            self.steps += 1


def killed_by(number: int) -> str:
    """How a process that `number` killed ended, in words: `was killed by signal 9 (SIGKILL, ...)`."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"was killed by signal {number}"
    if number == signal.SIGKILL:  # (nothing of the worker's own could say so: it has no chance to)
        name += ", as the kernel's out-of-memory killer sends when memory runs out"
    return f"was killed by signal {number} ({name})"


def cpu_threads(device: str, devices: list[str]) -> int:
    """Intra-op threads for the process of `devices` (one a process, on this machine) that trains on
    `device`: the CPU ones share the cores this process may run on, each core once; one on a GPU, whose CPU
    work is its steps' host side, takes its share of the cores among all of them (each took every core: 8
    GPU workers on 16 cores ran 128 threads that spin-wait, against one another's Python)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    sharing = sum(d == "cpu" for d in devices) if device == "cpu" else len(devices)
    return max(1, cores // max(1, sharing))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
