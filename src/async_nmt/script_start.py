"""What each of scripts/*.py imports first, before torch: a Ctrl-C or SIGTERM while they import (about a
second) ends them as one later does, `interrupted` and exit code 130. Ctrl-C printed a traceback of the
import, and SIGTERM (as `timeout` sends it) ended them without a word. `errors.run_script` takes the
signals over as the script's main() starts. Only in the process that runs the script: a process it spawns,
which imports the script again, keeps its signals as they were (ignored, while a worker starts)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading


def _interrupted(_number: int, _frame: object) -> None:
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # (stderr closed or gone: the exit code still says it)
        pass
    os._exit(130)


def _install() -> None:
    if threading.current_thread() is not threading.main_thread() or multiprocessing.parent_process() is not None:
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # (someone else's: left alone)
        return
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _interrupted)


_install()
