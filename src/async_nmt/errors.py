"""User-facing errors: the CLI prints them as one line on stderr and exits with their `exit_code`; how the
CLI's process ends (`exit_at_once`, `sigterm_interrupts`, `new_notice`); and `run_script`, which ends the
scripts/ the same way."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console

_AT_ONCE = [False]
# A Ctrl-C or SIGTERM this soon after the last one that counted is the same notice delivered twice: GNU
# `timeout` sends its signal to the command and then to its process group; a batch scheduler (Slurm's
# `scancel`, its time limit) signals every process of a job, and torchrun's agent passes its own on to the
# ranks. A second Ctrl-C counts as a second notice (which stops at once, without a checkpoint) only after
# this; a SIGTERM after the first notice never does (`new_notice`).
REPEAT_S = 1.0
_LAST_NOTICE = [-float("inf")]


class UserError(Exception):
    """A problem with the user's input (file, option, checkpoint): one line, no traceback, exit code 2."""

    exit_code = 2


class WorkerFailed(UserError):
    """A worker process raised or died, so the run stopped: one line naming the worker, exit code 1."""

    exit_code = 1


GZIP_MAGIC = b"\x1f\x8b"  # a gzip file's first bytes


def not_utf8(name: str, line: int, head: bytes, detail: str = "") -> UserError:
    """The error for line `line` of `name`, which is not UTF-8 (`detail`: where in it); `head`: the text's
    first bytes, whose byte order mark names a UTF-16 file (as some editors save), as do NUL bytes beside its
    characters without one (`unmarked_utf16`), or whose magic number a gzip file, with the command that
    converts it."""
    utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff")
    hint = "; it is UTF-16: convert it (iconv -f UTF-16 -t UTF-8)" if utf16 else ""
    if not utf16 and (order := unmarked_utf16(head)) is not None:
        hint = f"; {utf16_without_mark(order)}"
    if head[:2] == GZIP_MAGIC:
        hint = "; it is gzip-compressed: decompress it (zcat)"
    return UserError(f"{name}: line {line} is not valid UTF-8{f' ({detail})' if detail else ''}{hint}")


def unmarked_utf16(head: bytes) -> str | None:
    """The byte order, LE or BE, where a text's first bytes (up to 64) read as UTF-16 without a byte order
    mark: a NUL byte beside each Latin character (`H\\0e\\0` little-endian, `\\0H\\0e` big-endian), which
    UTF-8 text does not hold (`head[1::2]`: the high bytes of little-endian UTF-16); else None. (A file cut
    from a UTF-16 one, or written so, has no mark; where its text is ASCII it is valid UTF-8, with a NUL byte
    in every other place.)"""
    pairs = head[: min(64, len(head)) // 2 * 2]
    if len(pairs) < 4:
        return None
    for order, high, low in (("LE", pairs[1::2], pairs[0::2]), ("BE", pairs[0::2], pairs[1::2])):
        if high.count(0) * 4 >= len(high) * 3 and low.count(0) * 4 <= len(low):
            return order
    return None


def utf16_without_mark(order: str) -> str:
    return f"it is UTF-16 ({order}) without a byte order mark: convert it (iconv -f UTF-16{order} -t UTF-8)"


def check_not_unmarked_utf16(name: str, head: bytes) -> None:
    """UserError where a text's first bytes (its first line at least, the newline's too) read as UTF-16 without
    a byte order mark (`unmarked_utf16`): as ASCII it is valid UTF-8, and was read as text with a NUL piece in
    every other place (a corpus's pairs dropped, a translation of nonsense, a BLEU of a line count off by
    one)."""
    if (order := unmarked_utf16(head)) is not None:
        raise UserError(f"{name}: line 1 has a NUL byte beside each character; {utf16_without_mark(order)}")


def lone_returns(data: bytes) -> int:
    """The carriage returns in `data` that end no \\r\\n."""
    return data.count(b"\r") - data.count(b"\r\n")


def check_line_ends(name: str, lines: int, newlines: int, returns: int) -> None:
    """A text of `lines` lines, `newlines` \\n and `returns` carriage returns that end no \\r\\n (`lone_returns`),
    more of them than line ends but a last one, is one whose lines end in \\r alone (old Mac files), read as
    one line: refused, with the fix (preprocess, score and translate alike; translate made one line of
    thirty sentences, truncated). A stray \\r inside a line, or ending the text, is text."""
    if returns > newlines + 1:
        raise UserError(f"{name}: {lines:,} line(s) but {returns:,} carriage returns (\\r) inside them: are its "
                        f"lines ended by \\r alone? Convert them to \\n (e.g. tr '\\r' '\\n')")  # fmt: skip


class OutOfMemory(UserError):
    """A device ran out of memory on a batch: one line that says which batch and what to lower, exit code 1."""

    exit_code = 1


class TrainingDiverged(UserError):
    """The training loss became NaN, infinite or over 10 times a uniform guess's, or the valid loss not finite:
    the run stopped without saving, exit code 1."""

    exit_code = 1


def reason(err: BaseException, limit: int = 160) -> str:
    """A library exception's message as a clause for a one-line error: its first non-empty line, spaces
    collapsed; one longer than `limit` characters is cut after its first sentence, or else on a word
    boundary (with "...")."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else type(err).__name__
    if len(text) <= limit:
        return text
    end = text.find(". ")
    if 0 < end < limit:
        return text[: end + 1]
    return text[: limit - 3].rsplit(" ", 1)[0] + "..."


def failure_line(err: BaseException) -> str:
    """`TYPE: FIRST LINE` of an exception that failed a worker (the line the run's error names it by)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def exit_at_once() -> None:
    """Have the CLI end this process with `os._exit` once its command is done, the exit code unchanged, and
    skip the interpreter's finalization. For torchrun's async rank 0: a worker's push that arrives late
    completes the receive rank 0 posted, and the thread waiting on it, woken while the interpreter
    finalizes, is ended through C++ frames that forbid it ("terminate called without an active
    exception": SIGABRT, and torchrun reports a failed run)."""
    _AT_ONCE[0] = True


def exits_at_once() -> bool:
    return _AT_ONCE[0]


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM (`kill`, `timeout`, a batch scheduler's notice) raises KeyboardInterrupt as
    Ctrl-C does, so that a command cleans up and ends the same way (the CLI prints "interrupted", exit code
    130); and either one that repeats the last within `REPEAT_S` is dropped (`new_notice`). Only the main
    thread can install it; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, interrupt_handler) for sig in heeded(signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def heeded(*numbers: int) -> list[int]:
    """Of the signals `numbers`, those this process does not ignore. One ignored as it started stays ignored:
    a job that a script starts with `&` ignores Ctrl-C, which is its terminal's foreground job's (the `nmt`
    CLI and the scripts took it over, and a Ctrl-C of the foreground stopped them too)."""
    return [number for number in numbers if signal.getsignal(number) is not signal.SIG_IGN]


def stop_hint(notice: str) -> str:
    """`notice`, a first Ctrl-C's or SIGTERM's, with how to stop at once: Ctrl-C again, where it is heeded
    (`heeded`; where it is ignored, nothing but SIGKILL stops the process at once, and it says nothing)."""
    return f"{notice} (Ctrl-C again to stop at once, unsaved)" if heeded(signal.SIGINT) else notice


def new_notice(number: int = signal.SIGINT) -> bool:
    """Whether a Ctrl-C or SIGTERM (signal `number`), which came now, is a new notice to stop: not within
    `REPEAT_S` of the last one that was (the same notice delivered twice), and never a SIGTERM after one.
    The copies of a scheduler's SIGTERM (torchrun's agent's, `timeout`'s) may come seconds apart on a loaded
    machine, and the second stopped the run at once, unsaved; only a person's second Ctrl-C means that
    (the scheduler's own SIGKILL comes when its grace is over)."""
    now = time.monotonic()
    if now - _LAST_NOTICE[0] < REPEAT_S or (number == signal.SIGTERM and _LAST_NOTICE[0] > -math.inf):
        return False
    _LAST_NOTICE[0] = now
    return True


def notice_within(seconds: float) -> bool:
    """Whether a notice to stop (Ctrl-C, SIGTERM) came to this process in the last `seconds` (`new_notice`)."""
    return time.monotonic() - _LAST_NOTICE[0] < seconds


def interrupt_handler(number: int, _frame: object) -> None:
    """KeyboardInterrupt, as Python's Ctrl-C handler, but for the same notice delivered twice (`new_notice`)."""
    if new_notice(number):
        raise KeyboardInterrupt


class SecondInterrupt(KeyboardInterrupt):
    """A second Ctrl-C while the first was held (`held_interrupts(second_stops=True)`): stop at once, unsaved
    (the state may be half changed)."""


@contextlib.contextmanager
def held_interrupts(second_stops: bool = False, notice: str | None = None) -> Iterator[list[int]]:
    """Within the block, a Ctrl-C or SIGTERM that would raise KeyboardInterrupt (`interrupts`) is recorded in
    the list yielded instead (a repeat of the same notice is not, nor a SIGTERM after one: `new_notice`), and
    the first prints `notice`, if any, on stderr at once; with `second_stops`, a second one raises
    SecondInterrupt at once. Python runs handlers in the main thread, whichever thread
    the kernel hands a signal to, so this holds it for the whole process (a blocked signal mask in one
    thread held nothing). Elsewhere than in the main thread, nothing is held."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def hold(number: int, _frame: object) -> None:
        if new_notice(number):
            caught.append(number)
            if second_stops and len(caught) > 1:
                raise SecondInterrupt
            if notice is not None and len(caught) == 1:
                print(notice, file=sys.stderr, flush=True)

    held = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM) if interrupts(sig)}
    try:
        yield caught
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


def interrupts(number: int) -> bool:
    """Whether signal `number` raises KeyboardInterrupt here (Python's Ctrl-C, or `sigterm_interrupts`)."""
    return signal.getsignal(number) in (signal.default_int_handler, interrupt_handler)


class ScriptParser(argparse.ArgumentParser):
    """argparse's parser for a script run by `run_script`: a bad option or value is one line, `error: MESSAGE
    (see `SCRIPT --help`)`, exit code 2, as the `nmt` CLI says it (argparse printed its usage first, eight
    lines for bench_train.py). Parse inside `main`, where run_script takes the UserError."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see `{self.prog} --help`)")


_NOT_UTF8_BYTE = re.compile("[\udc80-\udcff]")  # how Python holds a byte of a name that is not UTF-8


def shown(text: str) -> str:
    """`text` as any output can hold it: the bytes of a name that are not UTF-8 (which Python holds as
    surrogates, os.fsdecode(b"run\\xff") == "run\\udcff", and a file, a font or stderr cannot write) as
    backslash escapes, run\\xff."""
    return _NOT_UTF8_BYTE.sub(lambda byte: f"\\x{ord(byte[0]) - 0xDC00:02x}", text)


class _MessagesStream:
    """stderr that never fails the command it reports on: a message it cannot take (`2>/dev/full`, a closed
    pipe) is dropped, as `2>/dev/null` would drop it (a warning ended `nmt translate` with exit code 1 and
    no output). A name that is not UTF-8 is shown as the report's tables show it (`shown`: run\\xff; Python's
    stderr wrote run\\udcff)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(shown(text))
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def messages_never_fail() -> None:
    """Make stderr safe for messages, at a command's start. Where it is closed (`2>&-`), Python's is None: a
    progress bar or a check of it failed then, and the error could not be said (exit code 1, no output, no
    word), and a print to it went to stdout; so /dev/null takes its place, on file descriptor 2 too, which
    worker processes inherit. A stderr that cannot be written is wrapped so that a message is dropped
    rather than fail the command (`_MessagesStream`)."""
    if isinstance(sys.stderr, _MessagesStream):
        return
    if sys.stderr is None:
        try:
            os.fstat(2)
        except OSError:
            fd = os.open(os.devnull, os.O_WRONLY)
            if fd != 2:
                os.dup2(fd, 2)
                os.close(fd)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)  # fmt: skip
    sys.stderr = _MessagesStream(sys.stderr)  # type: ignore[assignment]


def run_script(main: Callable[[], object]) -> None:
    """Run a script's `main()` and end its process much as the `nmt` CLI ends a command, without a traceback: a
    UserError is `error: MESSAGE` on stderr and exit code `err.exit_code` (2; a failed worker, running out of
    memory, a diverged loss: 1); a missing file or folder (FileNotFoundError) `error: PATH: REASON` and exit
    code 2, as bad input (the CLI checks its inputs first, a missing one being a UserError, exit code 2, and
    gives 1 to one it did not foresee); any other error of the system (a full disk) `error: PATH: REASON`
    and exit code 1; Ctrl-C (KeyboardInterrupt) `interrupted` and exit code 130, and SIGTERM (`kill`,
    `timeout`) as Ctrl-C. Any other exception keeps its traceback (a bug). A reader of stdout that has gone
    (`| head`) ends it quietly, exit code 0, as it ends a command (it was `error: Broken pipe`, exit code
    1). When `main` returns, so does this (what it returns is ignored), once what it printed is written
    out: a full disk there is `error: stdout: cannot write (REASON)`, exit code 1 (it was Python's
    `Exception ignored` at exit, exit code 120).

        if __name__ == "__main__":
            run_script(main)
    """
    messages_never_fail()
    try:
        with sigterm_interrupts(), stdout_named():  # SIGTERM as Ctrl-C (it ended scripts without a word)
            main()
            if sys.stdout is not None:
                sys.stdout.flush()  # what it printed, written out (a full disk there names stdout)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        drop_stdout()  # (Python's flush at exit then fails not)
        sys.exit(0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as err:
        print(f"error: {system_error(err)}", file=sys.stderr)
        settle_stdout()
        sys.exit(2 if isinstance(err, FileNotFoundError) else 1)


class _NamedStdout:
    """stdout, whose failed write (a full disk) is an error that names stdout: Python's names no file, so
    `error: No space left on device` did not say where."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._named(self._stream.write, text)

    def flush(self) -> None:
        self._named(self._stream.flush)

    @staticmethod
    def _named(call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:  # (the reader has gone: ended quietly)
            raise
        except OSError as err:
            raise cannot_write(err, "stdout") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def stdout_named() -> Iterator[None]:
    """Within it, a failed write to `sys.stdout` names stdout (`_NamedStdout`); stdout as it was after."""
    stream = sys.stdout
    if stream is None:
        yield
        return
    sys.stdout = _NamedStdout(stream)
    try:
        yield
    finally:
        if isinstance(sys.stdout, _NamedStdout):  # (main replaced it not)
            sys.stdout = stream


def settle_stdout() -> None:
    """Before a command ends on an error: write out what stdout still holds, or, where it cannot take it (a
    full disk), drop it, so that Python's own flush at exit does not fail again: that added `Exception
    ignored ... No space left on device` to the error's one line, and exit code 120 (where stdout is
    buffered, as it is unless PYTHONUNBUFFERED is set)."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        drop_stdout()


def cannot_write(err: OSError, where: str) -> OSError:
    """A failed write (a full disk) as an error of the system named by `where` (a file, or "stdout", which a
    failed print names not): `error: WHERE: cannot write (REASON)`."""
    return OSError(err.errno, f"cannot write ({err.strerror or err})", where)


def drop_stdout() -> None:
    """Point stdout at /dev/null: what it holds, and anything written to it after, goes nowhere."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def briefly(items: Sequence[str], at_most: int = 3) -> str:
    """Names (runs, files, line numbers) as a message lists them: the first `at_most` and how many more (the
    40 runs of docs/results made one warning line of 6 KB); all of them where one more would be named
    instead ("and 1 more" is no shorter)."""
    if len(items) <= at_most + 1:
        return ", ".join(items)
    return f"{', '.join(items[:at_most])} and {len(items) - at_most} more"


def system_error(err: OSError) -> str:
    """`PATH: REASON` (or `REASON` where the error names no file): how an error of the system is one line; a
    copy or a rename that failed names both files as `FROM -> TO: REASON` (it read `FROM: TO: REASON`, as if
    the first had failed)."""
    names = [str(name) for name in (err.filename, err.filename2) if name is not None]
    where = f"{' -> '.join(names)}: " if names else ""
    return f"{where}{err.strerror or err}"


SYMLINK_LOOP = "Symlink loop from "  # pathlib's message


def symlink_loop(err: BaseException) -> str | None:
    """The path that a RuntimeError of pathlib's `resolve` names as a loop of symbolic links (Python 3.11 and
    3.12 raise that, not the OSError that `open` and `stat` raise for one); None for any other error."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not text.startswith(SYMLINK_LOOP):
        return None
    try:  # (the path as repr() wrote it)
        return str(ast.literal_eval(text[len(SYMLINK_LOOP) :]))
    except (ValueError, SyntaxError):
        return text[len(SYMLINK_LOOP) :]


def stdout_console(**options: object) -> Console:
    """A rich Console on stdout whose reader, once gone (`| true`), is a BrokenPipeError as for any other
    write, which the CLI ends quietly (`cli.reader_gone`); rich's own answer is to exit 1."""
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return StdoutConsole(**options)  # type: ignore[arg-type]
