import fcntl
import io
import os
import pty
import struct
import termios

import pytest
from tqdm import tqdm

from async_nmt.progress import ProgressBar


def drawn_on_a_terminal(bar_class: type[tqdm], rows: int, cols: int) -> str:
    """What a bar of 5 steps wrote to a pseudo-terminal of `rows` x `cols` (dynamic_ncols, as nmt-train's),
    with a line written through the bar in the middle."""
    try:
        master, slave = pty.openpty()
    except OSError as err:  # (a container without /dev/pts)
        pytest.skip(f"no pseudo-terminal here: {err}")
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    with os.fdopen(slave, "w") as screen:
        assert screen.isatty() and os.get_terminal_size(screen.fileno()) == (cols, rows)
        with bar_class(total=5, dynamic_ncols=True, file=screen, mininterval=0, desc="train") as bar:
            for step in range(5):
                bar.update(1)
                if step == 2:
                    bar.write("update 3: a line", file=screen)
    output = b""
    while chunk := _read(master):
        output += chunk
    os.close(master)
    return output.decode("utf-8", "replace")


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # (the slave side is closed: all has been read)
        return b""


@pytest.mark.parametrize("rows, cols", [(0, 100), (40, 100), (40, 0), (0, 0)])
def test_the_bar_shows_on_a_terminal_that_reports_no_rows(rows: int, cols: int):
    """A pseudo-terminal may report 0 rows before its first resize (`docker run -t`, `script`); tqdm took the
    screen to be -1 rows high and drew nothing, so nmt-train showed no progress at all (it prints lines only
    where there is no bar)."""
    drawn = drawn_on_a_terminal(ProgressBar, rows, cols)
    assert "5/5" in drawn and "update 3: a line" in drawn
    if rows == 0:
        assert "5/5" not in drawn_on_a_terminal(tqdm, rows, cols)  # (what this mends: tqdm's own bar)
    # no columns: taken as unknown, the line whole (tqdm's own cut its last character, and drew 1 cell of bar)
    assert ("5/5 [" in drawn and "it/s]" in drawn) and "it/s]" in drawn.split("update 3")[0], drawn
    if cols == 0 and rows > 0:
        assert "it/s]" not in drawn_on_a_terminal(tqdm, rows, cols)


def test_a_line_written_beside_a_disabled_bar_is_written():
    """A disabled bar (stderr not a terminal) has no height; a line written meanwhile clears every bar, and
    `nmt translate` failed with an AttributeError there."""
    screen = io.StringIO()
    with ProgressBar(total=3, file=screen, disable=True) as bar:
        bar.update(1)
        ProgressBar.write("a line", file=screen)
    assert screen.getvalue() == "a line\n"


def test_a_bar_on_a_clock_shows_that_clocks_time_not_the_wall_clocks():
    """nmt-train's bar runs on the training clock, which stands still in validations: its time was the wall
    clock's there, then set back after each validation (user test: 00:04, then 00:03)."""
    now = [100.0]
    screen = io.StringIO()
    bar = ProgressBar(total=10, clock=lambda: now[0], file=screen, disable=False, mininterval=0)
    now[0] = 104.0
    bar.update(4)
    assert bar.format_dict["elapsed"] == 4.0 and bar.format_dict["rate"] == pytest.approx(1.0)
    bar.refresh()  # (a redraw during a validation, as a line written through the bar makes it)
    assert "[00:04<00:06" in screen.getvalue().rsplit("\r", 1)[-1]
    now[0] = 105.0
    bar.update(1)
    assert bar.format_dict["elapsed"] == 5.0
    bar.close()
