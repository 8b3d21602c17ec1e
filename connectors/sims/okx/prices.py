"""Last prices from a Redis price stream (the ``{symbol, price, ts}`` ticks the pipeline
reads, ``argus:prices:stream`` by default), so that market orders fill where the market
the pipeline sees is, rather than at a fixed price. OKX does not take a reference price
with a market order: the venue's own last price is what it fills at."""

from __future__ import annotations

import threading

import redis

from connectors.sims.okx.state import Book

DEFAULT_STREAM = "argus:prices:stream"


class PriceFollower:
    """Reads the stream from its start (the latest tick per symbol wins), then follows it."""

    def __init__(self, book: Book, url: str, stream: str = DEFAULT_STREAM):
        self.book, self.stream = book, stream
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="okx-sim-prices", daemon=True)

    def start(self) -> PriceFollower:
        self.client.ping()  # an address nothing answers on is said at start, not found later
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.client.close()

    def _follow(self) -> None:
        last = "0"
        while not self.stopping.is_set():
            try:
                got = self.client.xread({self.stream: last}, count=1000, block=100)
            except redis.RedisError:
                self.stopping.wait(0.5)  # Redis away for a moment: the last prices stand meanwhile
                continue
            for _, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self._apply(fields)

    def _apply(self, fields: dict[str, str]) -> None:
        symbol, price = fields.get("symbol", ""), fields.get("price")
        parts = symbol.split("-")
        try:
            px = float(price) if price is not None else 0.0
        except ValueError:
            return
        try:
            vol = float(fields.get("volume") or 0)
        except ValueError:
            vol = 0.0
        vol = vol if 0 < vol < float("inf") else 0.0
        if len(parts) == 2 and all(parts) and px > 0 and px == px and px != float("inf"):
            self.book.set_price(symbol, px, vol)
