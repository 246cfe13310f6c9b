"""What each of scripts/*.py imports first, before torch: a Ctrl-C or SIGTERM while they import (about a
second) ends them as one later does, `interrupted` and exit code 130. Ctrl-C printed a traceback of the
import, and SIGTERM (as `timeout` sends it) ended them without a word. `errors.run_script` takes the
signals over as the script's main() starts.

Only where the importer is the script that the process runs (`__main__`): a process that a script spawns
imports it again as `__mp_main__`, and keeps its signals as they were (ignored, while a worker starts); a
test that imports a script's functions leaves pytest's own handlers alone (it once took over pytest's
Ctrl-C, which then ended the test run)."""

from __future__ import annotations

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


def _importer_name() -> str | None:
    """`__name__` of the module whose import of this one runs now (past the frames of the import system)."""
    frame = sys._getframe(0)
    while frame is not None and frame.f_globals.get("__name__") == __name__:  # (this module's own frames)
        frame = frame.f_back
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return None if frame is None else frame.f_globals.get("__name__")


def _install() -> None:
    if threading.current_thread() is not threading.main_thread() or _importer_name() != "__main__":
        return
    for number in (signal.SIGINT, signal.SIGTERM):  # (one ignored as it started stays ignored: `errors.heeded`)
        if signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, _interrupted)


_install()
