"""What made a result: the code's versions and the device's name, which a run's `start` event and every
benchmark line record, so that a figure can be traced to the commit, the torch, the Python and the card
that produced it, and timings from different machines are not compared unawares."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

from async_nmt import __version__

_HERE = Path(__file__).resolve().parent


def device_name(device: torch.device | str) -> str:
    """What a device is, as timings that compare need it the same: a GPU's name (`NVIDIA H200`); for the
    CPU, its model (`/proc/cpuinfo`'s, else the platform's). Not the threads torch computes on: a run's
    trainer and its worker processes or sync ranks each take a share of the cores, so that a sync run and an
    async one on the same machine named them differently (the benchmarks give them apart)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def timed_on(device: torch.device | str) -> dict[str, str | int]:
    """What a benchmark line says of where it was timed: `device_name`, and the `threads` torch computes on."""
    return {"device_name": device_name(device), "threads": torch.get_num_threads()}


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:  # (not Linux)
        pass
    return platform.processor() or platform.machine() or "cpu"


def versions() -> dict[str, str | None]:
    """`async_nmt` (the package's version), `commit` (`source_commit`), `torch`, `cuda` (the CUDA torch was
    built for; None for a CPU build) and `python`."""
    return {"async_nmt": __version__, "commit": source_commit(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}  # fmt: skip


@functools.cache
def source_commit() -> str | None:
    """The git commit of the checkout this package runs from (an editable install, as `make` makes), with
    `+dirty` where its tracked files differ from it (a change not committed yet, in any of them); None where
    the package is not a file of a git checkout (an installed copy, even one in a `.venv` inside a
    checkout) or git cannot say, unless the environment names it in `ASYNC_NMT_COMMIT` (a copy of the tree
    without its `.git`). Asked once a process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}  # (GIT_DIR points elsewhere)

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(_HERE), *args], capture_output=True, text=True, env=env,
                              timeout=30, stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    named = os.environ.get("ASYNC_NMT_COMMIT") or None
    try:
        if git("ls-files", "--error-unmatch", "--", "__init__.py").returncode != 0:
            return named
        head = git("rev-parse", "--verify", "HEAD")
        if head.returncode != 0:
            return named
        dirty = git("diff", "--quiet", "HEAD", "--").returncode
    except (OSError, subprocess.SubprocessError):  # no git; one that hangs
        return named
    if dirty not in (0, 1):
        return named
    return head.stdout.strip() + ("+dirty" if dirty == 1 else "")
