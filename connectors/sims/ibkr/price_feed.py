"""Last prices for the simulated gateway from the Redis price stream (``{symbol,
price}`` entries, as Argus publishes them), so its fills follow the market the pipeline
sees. The latest price of each symbol already on the stream is taken at start, then new
entries as they come; the feed waits out a Redis that is down rather than stopping."""

from __future__ import annotations

import re
import threading

import redis

from connectors.redis_streams import connect
from connectors.sims.ibkr.state import SimState

BACKLOG = 10_000  # entries read back at start for each symbol's latest price
STOCK = re.compile(r"[A-Z][A-Z.]{0,5}")  # a US ticker such as AAPL or BRK.B
BLOCK_MS = 500  # how long one read waits, so a stop is noticed soon


class PriceFeed:
    def __init__(self, state: SimState, url: str, stream: str):
        self.state, self.url, self.stream = state, url, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ibkr-sim-prices", daemon=True)

    def start(self) -> PriceFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(BLOCK_MS / 1000 + 5)

    def _run(self) -> None:
        r: redis.Redis | None = None
        last = None
        while not self._stop.is_set():
            try:
                r = r or connect(self.url)
                if last is None:
                    last = self._backlog(r)
                for _, entries in r.xread({self.stream: last}, block=BLOCK_MS) or []:
                    for entry_id, fields in entries:
                        self._apply(fields)
                        last = entry_id
            except redis.RedisError:
                r = None
                self._stop.wait(1.0)

    def _backlog(self, r: redis.Redis) -> str:
        entries = r.xrevrange(self.stream, count=BACKLOG)
        for _, fields in reversed(entries):
            self._apply(fields)
        return entries[0][0] if entries else "0-0"

    def _apply(self, fields: dict) -> None:
        try:
            price = float(fields["price"])
        except (KeyError, ValueError):
            return  # a regime update, or not a price
        symbol = fields.get("symbol", "")
        if price > 0 and STOCK.fullmatch(symbol):  # the stream also carries crypto pairs, no stocks of IB's
            self.state.set_price(symbol, price)
