"""One nmt-train per run folder: the process that owns a run holds an exclusive advisory lock (flock) on
RUN/.nmt-train.lock from before it looks at the folder until it ends.

flock, not a pid file: the kernel drops the lock of a process that dies, even by kill -9, so a run never
stays locked after its trainer is gone. Two trainers on one folder once both exited 0: a --resume wrote
its checkpoints over the running one's and cut its events, and a --force deleted the folder under it.

The lock file is not a run mark (config.RUN_MARKS): a folder that holds only it is a fresh folder, and
starting a run over empties the folder around it rather than deleting it (that would drop the lock).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from async_nmt.config import LOCK_NAME, missing_folders, remove_empty, torchrun_rank
from async_nmt.errors import UserError

# run folders this process holds, by resolved path: [file descriptor, depth]. A second flock from this
# process on another descriptor would be refused like another process's, so a nested `run_lock` (the CLI
# takes it before reading a run to resume, `launch.train` again) counts instead.
_HELD: dict[str, list[int]] = {}


def owns_run() -> bool:
    """Whether this process is the one that writes the run folder: any process outside torchrun, and
    under torchrun only global rank 0 (the other ranks, on this node or others, leave it alone)."""
    ranks = torchrun_rank()
    return ranks is None or ranks[0] == 0


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock (creating the folder where it does not exist) for the block; one line and
    exit 2 where another process holds it or it cannot be taken. On leaving, the lock file goes, and so
    does a folder this made that is still empty."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    made = missing_folders(run_dir)  # (removed again where nothing was written into them)
    try:
        fd = _acquire(run_dir)
    except BaseException:
        remove_empty(made)  # a folder made for a lock file that could not be made or taken
        raise
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        _release(run_dir, fd, made)


def _acquire(run_dir: Path) -> int:
    path = run_dir / LOCK_NAME
    # An owner that ends unlinks the file it locked; a process that opened that file just before locks
    # an orphan, so it checks that its file is still the one the name leads to, and else tries again.
    for _ in range(100):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{run_dir}: cannot make the folder ({err.strerror or err})") from None
        try:
            fd = _open_lock_file(path)
        except OSError as err:  # a read-only file system or folder: nothing could be written there anyway
            raise UserError(f"{run_dir}: cannot create the lock file {LOCK_NAME} ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {owner})" if owner.isdigit() else ""
            raise UserError(f"{run_dir}: in use by another nmt-train{pid}; wait for it to end, or stop it") from None
        except OSError as err:  # a file system without locks (ENOLCK, EOPNOTSUPP)
            os.close(fd)
            raise UserError(f"{run_dir}: cannot lock {LOCK_NAME} ({err.strerror or err})") from None
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message of the process refused
            return fd
        os.close(fd)
    raise UserError(f"{run_dir}: cannot lock {LOCK_NAME} (it keeps being replaced)")


def _open_lock_file(path: Path) -> int:
    """The lock file, opened for writing; refused where it is not one that only nmt-train writes: a symbolic
    link, something other than a regular file, or a file with other hard links (each was written through:
    a link to the run's events.jsonl left it holding a pid)."""
    try:  # (O_NONBLOCK: a FIFO there opens without waiting for a reader)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise UserError(f"{path}: is a symbolic link, not nmt-train's lock file; remove it (the lock's pid would "
                        "be written through it)") from None  # fmt: skip
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
        os.close(fd)
        what = "is not a regular file" if not stat.S_ISREG(status.st_mode) else "has other hard links"
        raise UserError(f"{path}: {what}, not nmt-train's lock file; remove it (the lock's pid would be written "
                        "into it)")  # fmt: skip
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        named, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _release(run_dir: Path, fd: int, made: list[Path]) -> None:
    """Unlink the lock file while still holding it (see `_acquire`), remove the folders `run_lock` made
    that nothing was written to, then let the lock go."""
    try:
        if _same_file(fd, run_dir / LOCK_NAME):
            os.unlink(run_dir / LOCK_NAME)
        remove_empty(made)  # (one that a run began in is not empty: it and those above it stay)
    except OSError:
        pass
    finally:
        os.close(fd)


def clear_run_dir(run_dir: Path) -> None:
    """Empty `run_dir` for a fresh start, keeping the lock file that the owning process holds (deleting and
    making the folder again would leave the lock on a file no other process can find)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for entry in run_dir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
