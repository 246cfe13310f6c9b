"""Progress bars: tqdm's, also on a terminal that reports no rows or no columns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm import tqdm


class ProgressBar(tqdm):
    """tqdm's bar, shown too where the terminal reports a height of 0 rows, as a pseudo-terminal may before
    its first resize (`docker run -t`, `script`). tqdm takes the screen to be the reported height less one,
    -1 rows, too few for any bar: it drew nothing, and nmt-train, which prints a line per `train` event only
    where there is no bar, showed no progress at all. A height below 1 is taken as unknown, as tqdm takes
    no height (20 rows); a width below 1 likewise as unknown, as tqdm takes no width (a bar of 10 cells and
    the whole line; it drew a bar of 1 cell and cut the line's last character).

    With `clock`, the bar's time (elapsed, rate, time to go) is that clock's seconds instead of the wall
    clock's: nmt-train's training clock, which leaves out validations and checkpoints. (Its bar was set back
    after each, and showed meanwhile the wall time, which then went back by the validation's length.)"""

    def __init__(self, *args: Any, clock: Callable[[], float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if clock is not None:
            self._time = clock
            self.last_print_t = self.start_t = clock()

    def _unknown_height(self) -> None:
        # (dynamic_ncols reads it again at every redraw; a disabled bar has none: tqdm.write clears every bar)
        if getattr(self, "nrows", None) is not None and self.nrows < 1:
            self.nrows = None

    @property
    def format_dict(self) -> dict[str, Any]:  # (where dynamic_ncols reads the width again, at every redraw)
        found = super().format_dict
        if found.get("ncols") is not None and found["ncols"] < 1:
            self.ncols = found["ncols"] = None
        return found

    def display(self, msg: str | None = None, pos: int | None = None) -> Any:
        self._unknown_height()
        return super().display(msg, pos)

    def clear(self, nolock: bool = False) -> None:
        self._unknown_height()
        super().clear(nolock)
