"""The training side of checkpoints: atomic saves, the random state, and the run-folder checks.

The format and its reading side live with the model (`model/checkpoint.py`), so inference never imports
training.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from async_nmt.config import (
    LOCK_NAME,
    RUN_MARKS,
    VOCAB_NAME,
    corpus_languages,
    is_run_folder,
    run_folder_in,
    temporary_beside,
    train_section,
)
from async_nmt.errors import UserError, briefly, reason
from async_nmt.model.checkpoint import FORMAT_VERSION, KEPT, checkpoint_path, params_crc32

# what nmt-train writes into a run folder (README: "The run folder"), and in its checkpoints/ (and the
# temporary files of those writes, which a kill may leave: `not_written_by_training`)
RUN_FILES = frozenset((*RUN_MARKS, VOCAB_NAME, LOCK_NAME, "worker-errors.log"))
SAVE_FILES = frozenset(("last.pt", "best.pt"))
TEMPORARY = re.compile(r"\.(.+)\.\d+\.tmp")  # `temporary_beside`'s names: .NAME.PID.tmp
PROBE = ".write-probe.tmp"  # `check_writable`'s


def not_written_by_training(run_dir: Path) -> list[str]:
    """The files and folders of `run_dir` that nmt-train did not write (a user's notes, translations, an
    average), as paths inside it: what --force must not delete without a word. Training's own temporary files
    (a write that a kill cut short) are those of its names: `.NAME.PID.tmp` (`temporary_beside`: config.json's,
    last.pt's) and `NAME.tmp` (events.jsonl's, best.pt's, a kept save's), and `.write-probe.tmp`."""

    def ours(name: str, own: Callable[[str], bool]) -> bool:
        temporary = TEMPORARY.fullmatch(name)
        return (own(name) or own(name.removesuffix(".tmp"))
                or temporary is not None and (own(temporary[1]) or temporary[1] == "async-nmt"))  # fmt: skip

    def saved(name: str) -> bool:
        return name in SAVE_FILES or KEPT.fullmatch(name) is not None or name == PROBE

    found = [p.name for p in run_dir.iterdir() if not ours(p.name, RUN_FILES.__contains__)]
    saves = run_dir / "checkpoints"
    if saves.is_dir() and not saves.is_symlink():
        found += [f"checkpoints/{p.name}" for p in saves.iterdir() if not ours(p.name, saved)]
    return sorted(found)


def check_run_path(run_dir: Path, bin_dir: Path, resume: bool = False) -> None:
    """Refuse a run folder that is a file, that is the corpus folder or holds it (starting over deletes the
    run folder), or a new one inside another run or a corpus (it was made there, and their --force then
    refused them; a resume of one made before this check goes on): checked before the run's lock is taken,
    which would put its file there."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a run folder")
    if run_dir.resolve() in (bin_dir.resolve(), *bin_dir.resolve().parents):
        raise UserError(f"{run_dir}: the run folder must not be the corpus folder {bin_dir} or hold it")
    if not resume:
        check_not_inside_a_run(run_dir)


def check_not_inside_a_run(folder: Path, what: str = "this run", fix: str = "train into a folder of its own") -> None:
    """Refuse a new `folder` inside a run or a corpus (whose --force it would then block)."""
    for above in folder.resolve().parents:
        kind = "run" if _a_run(above) else "preprocessed corpus" if corpus_languages(above) else None
        if kind is not None:
            raise UserError(f"{folder}: inside the {kind} {above}, whose --force {what} would then block; {fix}")


def _a_run(folder: Path) -> bool:
    """A training run by its files: events.jsonl, and a config.json of a run's sections (a project's own
    config.json, or a stray one in /tmp, is none)."""
    return (folder / "events.jsonl").is_file() and train_section(folder) is not None


def check_run_dir(run_dir: Path, resume: bool, force: bool, bin_dir: Path) -> None:
    """Refuse to overwrite an existing run unless --resume or --force says what to do with it, and a run
    folder that `check_run_path` refuses. A folder that holds only the lock file counts as empty."""
    check_run_path(run_dir, bin_dir, resume)
    if resume:
        last = checkpoint_path(run_dir, "last")
        if not last.is_file():
            # (a last.pt that is a folder, a FIFO or a link to /dev/null was listed among the saves to copy to it)
            odd = os.path.lexists(last)
            others = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")
                            if p.name != "last.pt" and p.is_file()) if run_dir.is_dir() else []  # fmt: skip
            what = "checkpoints/last.pt is not a file" if odd else "no checkpoints/last.pt"
            if others:  # --force would delete them: one may be the lost last.pt
                put = "remove it, then copy" if odd else "copy"
                raise UserError(f"{run_dir}: {what} to resume from, but {', '.join(others)}: {put} the one to go on "
                                "from to last.pt (cp), then --resume")  # fmt: skip
            if odd:
                raise UserError(f"{run_dir}: {what}; nothing to resume")
            again = "; start it over with --force" if is_run_folder(run_dir) else ""  # stopped before a save
            raise UserError(f"{run_dir}: nothing to resume (no checkpoints/last.pt){again}")
    elif run_dir.exists() and any(entry.name != LOCK_NAME for entry in run_dir.iterdir()):
        if not is_run_folder(run_dir):  # --force deletes run folders only: never a mistyped ~/experiments
            raise UserError(f"{run_dir}: exists and is not a run folder (no {', '.join(RUN_MARKS)}); "
                            "train into a new or empty folder")  # fmt: skip
        if not force:
            raise UserError(f"{run_dir}: run folder exists; use --resume to continue it or --force to start over")
        if (inner := run_folder_in(run_dir, below_only=True)) is not None:
            raise UserError(f"{run_dir}: holds another run, {inner}, which --force would delete; move it first")
        if others := not_written_by_training(run_dir):  # (notes, translations, an average went without a word)
            raise UserError(f"{run_dir}: holds what nmt-train did not write ({briefly(others)}), which --force would "
                            "delete; move it out, or train into another folder")  # fmt: skip


OTHER_SAVE = "resume from another save (best.pt, or a kept update-U.pt, copied to last.pt)"  # a last.pt is broken


def check_archive(path: Path) -> None:
    """Refuse a checkpoint whose bytes do not match the CRC-32 its zip archive holds for each entry (torch.load
    checks none). The parameters' own checksum, which translation reads, misses the training state: a
    damaged Adam moment resumed, and the run diverged two updates later, with last.pt the damaged file."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({reason(err)})") from None
    if bad is not None:
        raise UserError(f"{path}: damaged ({bad.split('/', 1)[-1]} does not match its checksum); {OTHER_SAVE}")


def check_writable(folder: Path) -> None:
    """Make `folder` and write a file in it, so that a checkpoints folder that cannot be written fails as the
    run starts, naming it, not at the first save, which may be hours away (a read-only one trained every
    update, then failed there)."""
    probe = folder / PROBE  # (a resume removes *.tmp that a kill left)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OSError(err.errno, f"cannot write a checkpoint there ({err.strerror or err})", str(folder)) from None


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically: a reader sees the old file or the new one, never a torn one. The
    temporary file beside it has a name of its own (a user's file is never it) and goes if the write fails
    or is interrupted. A failed write is an OSError naming `path` (torch's writer raises RuntimeError on a
    full disk), which the CLI prints as one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state, "params_crc32": params_crc32(state["params"])}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):  # named by `path`, not by the temporary file
            raise OSError(err.errno, f"cannot write the checkpoint ({err.strerror or err})", str(path)) from None
        if isinstance(err, RuntimeError):
            why = _full_disk(err, path, state)
            raise OSError(errno.EIO, f"cannot write the checkpoint ({why})", str(path)) from None
        raise


def _full_disk(err: RuntimeError, path: Path, state: dict[str, Any]) -> str:
    """Why torch's writer failed, where it says only where in its C++ (`[enforce fail at inline_container.cc:672]
    . unexpected pos 64 vs 0`): a disk with less room than the parameters alone take is full."""
    needed = state["params"].numel() * state["params"].element_size()
    with contextlib.suppress(OSError):
        if (free := shutil.disk_usage(path.parent).free) < needed:
            return f"the disk is full: {free:,} bytes free, fewer than the parameters' {needed:,}"
    said = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{said}; is the disk full?"


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The random generators' states: Python's, NumPy's, torch's CPU generator and, where `device` is a GPU,
    its CUDA generator (dropout there). Saves before 2026-12-07 held every visible GPU's, by index: a resume
    with fewer GPUs visible failed (a traceback), and one on another GPU took that GPU's unused state."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what `rng_state` saved; the CUDA generator onto `device`, where it is a GPU."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device is None or device.type != "cuda":
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state:  # (an older save: every GPU's, by index; the one of this device's index, if saved)
        index = torch.cuda.current_device() if device.index is None else device.index
        if index < len(state["cuda"]):
            torch.cuda.set_rng_state(state["cuda"][index], device)
