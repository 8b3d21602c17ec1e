"""Slicing's volume from the venues' 1-minute candles, for symbols whose price ticks do not
carry it, read off the decision path and handed to the books.

A book's step notes the symbols it wants volume for (``WATCHED.add``: a set add, in the
step's thread; a tick without volume, an order it could not measure). A thread of its own
asks each venue that reports candles (``minute_volume``: OKX's ``market/candles`` through
ccxt ``fetch_ohlcv``) for each such symbol once a minute, just after the minute turns, and
puts each answer, one per book, on the gateway's queue, where the venue-event source
carries it into the book's step (``dataflows/slicing_step.py``). Nothing here is asked from
a step, and a step never waits for it: until a candle has come, the symbol has no volume
and its orders go whole, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from connectors.venues import Venue, VenueDown
from operators.slicing import MINUTE_MS, CandleVolume

log = logging.getLogger("apex.candles")

AFTER_TURN_S = 2.0  # a look this long after a minute turns: the venue has closed its candle
IDLE_S = 1.0  # how soon a reader with nothing to ask (no venue open yet) looks again: no request made


class Watched:
    """The symbols some book wants a venue's volume for. A symbol new to it wakes the reader,
    so its first candle is asked for at once rather than at the next minute's turn."""

    def __init__(self) -> None:
        self._symbols: set[str] = set()
        self.news = threading.Event()

    def add(self, symbol: str) -> None:
        if symbol not in self._symbols:
            self._symbols.add(symbol)
            self.news.set()

    def symbols(self) -> list[str]:
        return sorted(set(self._symbols))


WATCHED = Watched()  # this process's books'


class CandleReader:
    def __init__(self, venues: Callable[[], Mapping[str, Venue]], books: list[str],
                 put: Callable[[CandleVolume], None], watched: Watched = WATCHED,
                 done: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.time):
        """``venues``: the pipeline's real venues by market (those with candles are asked);
        ``books``: the books to tell; ``put``: where each word goes; ``done``: whether the
        run is over (the thread then ends); ``clock``: the wall clock, in seconds."""
        self.venues, self.books, self.put, self.watched = venues, list(books), put, watched
        self.done, self.clock = done, clock
        self._asked: dict[tuple[str, str], int] = {}  # (market, symbol) -> the last minute asked for
        self._down: set[str] = set()
        self.told = 0  # the words put so far
        self.asking = False  # the last look had a venue with candles and a symbol to ask it of
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_once(self) -> list[CandleVolume]:
        """Every watched symbol's last complete minute, asked of each venue with candles at
        most once per minute; the words put, and returned."""
        now_ms = int(self.clock() * 1000)
        minute = now_ms - now_ms % MINUTE_MS - MINUTE_MS
        out: list[CandleVolume] = []
        self.asking = False
        for market, venue in sorted(self.venues().items()):
            ask = getattr(venue, "minute_volume", None)
            if ask is None:
                continue
            symbols = self.watched.symbols()
            self.asking = self.asking or bool(symbols)
            for symbol in symbols:
                if self._asked.get((market, symbol)) == minute:
                    continue
                try:
                    volume = ask(market, symbol, now_ms)
                except VenueDown as err:
                    if market not in self._down:
                        log.warning("candles on %s could not be read (asked again next minute): %s", market, err)
                    self._down.add(market)
                    break
                self._down.discard(market)
                self._asked[(market, symbol)] = minute
                if volume is None:
                    continue  # not listed there, or no candle yet
                for book in self.books:
                    ev = CandleVolume(book, market, symbol, minute, volume)
                    self.put(ev)
                    out.append(ev)
                    self.told += 1
        return out

    def start(self) -> CandleReader:
        self._thread = threading.Thread(target=self._run, name="apex-candles", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.watched.news.set()

    def _run(self) -> None:
        while not (self._stop.is_set() or self.done()):
            self.watched.news.clear()  # before the look: a symbol added during it wakes the next
            try:
                self.read_once()
            except Exception as e:  # noqa: BLE001 - a failed look is said and tried next minute
                log.warning("candles could not be read: %s: %s", type(e).__name__, e)
            now = self.clock()
            # the next minute's turn, or a symbol new to the watch, whichever comes first; while
            # there is nothing to ask (the books have not opened their venues yet), a second
            wait = MINUTE_MS / 1000 - now % 60 + AFTER_TURN_S if self.asking else IDLE_S
            self.watched.news.wait(wait)
