"""Funding on perpetual swaps, read off the decision path and handed to the books.

For each venue trading swaps, a thread of its own asks the venue every ``every_s`` for the
funding it booked to the account since the last look (OKX: bills of type 8), shares each
payment among the books by their positions at its time (read from their ledgers, which
hold every fill, ``operators/funding.attribute``), and puts each book's share on the
gateway's queue, where the venue-event source carries it into the book's step like a venue
event (``dataflows/funding_step``). The first look is made before trading starts, from the
first fill a book's ledger holds on that venue; a bill read twice is booked once."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from connectors.venues import Venue, VenueDown
from operators.funding import FUNDING, FundingEvent, attribute

log = logging.getLogger("apex.funding")

EVERY_S = 60.0  # funding is booked every 8 hours on OKX: a minute late is nothing


def position_at(ledger: Path, market: str, symbol: str, ts_ms: int) -> float:
    """A book's position in an instrument at ``ts_ms``, from the fills its ledger holds."""
    if not ledger.exists():
        return 0.0
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        (qty,) = db.execute(
            "SELECT COALESCE(SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END), 0) FROM executions"
            " WHERE venue=? AND symbol=? AND kind != ? AND filled_ms <= ?"
            " AND (status='filled' OR (status='cancelled' AND quantity > 0))",
            (market, symbol, FUNDING, ts_ms)).fetchone()
    finally:
        db.close()
    return float(qty)


def first_fill(ledger: Path, market: str) -> int | None:
    """When a book's first fill on the market was, None if it has none."""
    if not ledger.exists():
        return None
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        (ts,) = db.execute("SELECT MIN(filled_ms) FROM executions WHERE venue=? AND kind != ? AND filled_ms"
                           " IS NOT NULL", (market, FUNDING)).fetchone()
    finally:
        db.close()
    return int(ts) if ts is not None else None


class FundingReader:
    def __init__(self, venues: Callable[[], Mapping[str, Venue]], ledgers: Mapping[str, Path],
                 put: Callable[[FundingEvent], None], every_s: float = EVERY_S,
                 done: Callable[[], bool] = lambda: False):
        """``venues``: the pipeline's real venues by market (those trading swaps are read);
        ``ledgers``: each book's ledger by book name; ``put``: where each share goes;
        ``done``: whether the run is over (the thread then ends)."""
        self.venues, self.ledgers, self.put, self.every_s = venues, dict(ledgers), put, every_s
        self.done = done
        self._since: dict[str, int] = {}
        # bills handed at the ``since`` instant: the venue lists from that instant on, so they
        # come again at the next look and are left out then
        self._at_since: dict[str, set[str]] = {}
        self._down: set[str] = set()  # markets whose venue could not be asked at the last look
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_once(self) -> list[FundingEvent]:
        """One look at every swap venue; the shares put, and returned."""
        out: list[FundingEvent] = []
        for market, venue in sorted(self.venues().items()):
            if not getattr(venue, "swap", False):
                continue
            since = self._since.get(market)
            if since is None:
                firsts = [t for t in (first_fill(p, market) for p in self.ledgers.values()) if t is not None]
                if not firsts:
                    continue  # no book ever traded here: nothing can be its funding
                since = min(firsts)
            try:
                payments = venue.funding(since)  # type: ignore[attr-defined]
            except VenueDown as err:
                if market not in self._down:
                    log.warning("funding on %s could not be read (asked again in %gs): %s", market, self.every_s, err)
                self._down.add(market)
                continue
            self._down.discard(market)
            seen = self._at_since.get(market, set())
            for p in payments:
                if p.ts_ms < since or (p.ts_ms == since and p.bill_id in seen):
                    continue
                held = {book: position_at(path, market, p.symbol, p.ts_ms) for book, path in self.ledgers.items()}
                shares = attribute(p.amount_usd, held)
                if not shares:
                    log.warning("funding bill %s on %s %s (%.8g USD) is on no book's position: left unbooked",
                                p.bill_id, market, p.symbol, p.amount_usd)
                net = sum(held.values())
                for book, amount in sorted(shares.items()):
                    ev = FundingEvent(book, market, p.symbol, p.bill_id, amount, p.mark, p.ts_ms, held[book], net)
                    self.put(ev)
                    out.append(ev)
                if p.ts_ms > since:
                    since, seen = p.ts_ms, set()
                seen.add(p.bill_id)
            self._since[market], self._at_since[market] = since, seen
        return out

    def start(self) -> FundingReader:
        """The first look now, then one every ``every_s`` in a thread of its own."""
        self._look()
        self._thread = threading.Thread(target=self._run, name="funding", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s) and not self.done():
            self._look()

    def _look(self) -> None:
        try:
            self.read_once()
        except Exception:  # noqa: BLE001 - a failed look must not stop trading nor the next look: logged
            log.exception("funding: a look failed; the next is in %gs", self.every_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
