"""The available funds a venue reports, handed to the book for the margin filter.

A venue that keeps its account's figure pushed to it (IBKR: ``available_funds_now``) is
read at most once every few seconds, from what it already holds, so no decision waits on
the network; a venue without one (the paper venue) leaves the book to its own estimate,
so a paper run decides exactly as it always has.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from connectors.venues import Rejected, Venue
from operators.portfolio import Portfolio
from operators.signal import VENUES

EVERY_S = 2.0


class VenueFunds:
    def __init__(self, venue_for: Callable[[str], Venue], every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        """``venue_for``: the venue of a market (the desk's egress knows them)."""
        self._venue_for, self.every_s, self._clock = venue_for, every_s, clock
        self._last: float | None = None

    def update(self, book: Portfolio) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        for market in VENUES:
            try:
                venue = self._venue_for(market)
            except Rejected:  # no venue for the market: nothing to say
                continue
            read = getattr(venue, "available_funds_now", None)
            if read is not None:
                book.set_available_funds(market, read())
