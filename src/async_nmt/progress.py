"""Progress bars: tqdm's, also on a terminal that reports no rows."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class ProgressBar(tqdm):
    """tqdm's bar, shown too where the terminal reports a height of 0 rows, as a pseudo-terminal may before
    its first resize (`docker run -t`, `script`). tqdm takes the screen to be the reported height less one,
    -1 rows, too few for any bar: it drew nothing, and nmt-train, which prints a line per `train` event only
    where there is no bar, showed no progress at all. A height below 1 is taken as unknown, as tqdm takes
    no height (20 rows)."""

    def _unknown_height(self) -> None:
        # (dynamic_ncols reads it again at every redraw; a disabled bar has none: tqdm.write clears every bar)
        if getattr(self, "nrows", None) is not None and self.nrows < 1:
            self.nrows = None

    def display(self, msg: str | None = None, pos: int | None = None) -> Any:
        self._unknown_height()
        return super().display(msg, pos)

    def clear(self, nolock: bool = False) -> None:
        self._unknown_height()
        super().clear(nolock)
