"""The predicted time of moving parameters over a link: what the simulated modes' clock charges, and what
`nmt report --link-gbps` re-prices. Apart from the modes (and torch), so that the report loads neither."""

from __future__ import annotations

PUSH_LINKS = 2  # an async push moves the gradient to the server and the new parameters back


def link_seconds(params: int, link_gbps: float) -> float:
    """The predicted time of one transfer of `params` fp32 parameters over a link of `link_gbps` Gb/s."""
    return params * 4 / (link_gbps * 1e9 / 8)


def all_reduce_links(workers: int) -> float:
    """A ring all-reduce of the parameters among `workers` costs 2 (W-1)/W transfers of them."""
    return 2 * (workers - 1) / workers
