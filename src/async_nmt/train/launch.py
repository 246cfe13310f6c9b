"""Worker processes: spawn them, notice the first failure, stop them all, and supervise a sync group.

Workers are `torch.multiprocessing` spawn processes in the caller's process group (a SIGKILL of the group
takes them too), marked daemon (they die with a parent that exits), and they ignore SIGINT: Ctrl-C is the
parent's to handle. A worker that raises puts one line and its traceback on an error queue and exits 1;
the parent polls for that, and for workers that died without a word (a signal, the OOM killer), and stops
the run within a fraction of a second.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp
from tqdm import tqdm

from async_nmt.errors import UserError, WorkerFailed

POLL_S = 0.001  # how often waiting loops look at shared counters
STOP_GRACE_S = 5.0  # a worker still running this long after it was told to stop is terminated
FAIL_ENV = "ASYNC_NMT_FAIL_WORKER"  # testing hook: "W:N" makes worker W raise at its N-th push
PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies


def context() -> Any:
    return mp.get_context("spawn")


def spawn(target: Callable[..., None], args: Sequence[tuple]) -> list[Any]:
    """Start one process per argument tuple (spawned, daemon)."""
    processes = []
    for i, process_args in enumerate(args):
        process = context().Process(target=target, args=process_args, daemon=True, name=f"nmt-worker-{i}")
        process.start()
        processes.append(process)
    return processes


@contextmanager
def worker_process(worker: int, device: str, errors: Any) -> Iterator[None]:
    """The body of a worker process: any exception becomes a message on `errors` and exit code 1 (2: a user
    error). SIGINT is ignored: Ctrl-C is the parent's, which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    # tqdm's default lock is a named semaphore; a worker stopped by SIGTERM would leave it behind
    tqdm.set_lock(threading.RLock())
    try:
        yield
    except SystemExit:
        raise
    except UserError as err:
        errors.put((worker, device, f"user:{err.exit_code}", str(err), ""))
        raise SystemExit(err.exit_code) from None
    except BaseException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        errors.put((worker, device, "error", f"{type(err).__name__}: {first}".rstrip(": "), traceback.format_exc()))
        raise SystemExit(1) from None


def check_workers(processes: Sequence[Any], errors: Any, devices: Sequence[str], run_dir: Path) -> None:
    """Raise the first failure of a worker: a message it sent, or a non-zero exit without one."""
    if not errors.empty():
        worker, device, kind, message, trace = errors.get()
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
    for worker, process in enumerate(processes):
        if process.exitcode not in (None, 0, 130):
            time.sleep(0.2)  # a message may still be on its way
            if not errors.empty():
                check_workers(processes, errors, devices, run_dir)
            code = process.exitcode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise WorkerFailed(f"worker {worker} ({devices[worker]}) {how}")


def stop(processes: Sequence[Any], grace_s: float = STOP_GRACE_S) -> None:
    """Wait for processes told to stop; terminate, then kill, what is still running."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join()


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


def maybe_fail(worker: int, pushes: int) -> None:
    """The testing hook: raise in worker W at its N-th push when ASYNC_NMT_FAIL_WORKER=W:N."""
    spec = os.environ.get(FAIL_ENV)
    if spec and spec == f"{worker}:{pushes}":
        raise RuntimeError(f"injected failure ({FAIL_ENV}={spec})")


def cpu_threads(workers_on_cpu: int) -> int:
    """Threads for each of `workers_on_cpu` CPU workers, so that together they fill the cores once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers_on_cpu))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supervise(processes: Sequence[Any], errors: Any, devices: Sequence[str], run_dir: Path, interrupt: Any) -> int:
    """Wait for a group of ranks (sync mode) to finish; the first failure stops them all.

    Ctrl-C sets `interrupt`, which the ranks agree on at their next step: rank 0 saves a checkpoint and
    exits 130. A second Ctrl-C stops them at once. Returns the exit code to leave with."""
    try:
        while any(p.is_alive() for p in processes):
            try:
                check_workers(processes, errors, devices, run_dir)
                time.sleep(0.05)
            except KeyboardInterrupt:
                if interrupt.is_set():
                    raise
                interrupt.set()
                print("interrupted: stopping at the next step (Ctrl-C again to stop at once)", file=sys.stderr)
        check_workers(processes, errors, devices, run_dir)
    except BaseException:
        stop(processes, grace_s=0.0)
        raise
    return 130 if interrupt.is_set() else 0
