"""A symbol's last-minute volume from OKX's 1-minute candlesticks, through ccxt
(``fetch_ohlcv``): what slicing measures an order against (``operators/slicing.py``) when
the price stream does not carry volume. A network call: asked off the book's step (a
thread or the sender's), never from it."""

from __future__ import annotations

import time

import ccxt

MINUTE_MS = 60_000


def minute_volume(ex: ccxt.okx, symbol: str, now_ms: int | None = None) -> float | None:
    """The volume of the last complete minute before ``now_ms`` (the minute under way is not
    complete: counting it would read a minute's volume low). 0: that minute had no trade;
    None: the venue lists no candle at all for the symbol yet."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    bars = ex.fetch_ohlcv(symbol, "1m", limit=3)
    if not bars:
        return None
    last = now_ms - now_ms % MINUTE_MS - MINUTE_MS
    return sum(float(b[5]) for b in bars if b[0] == last)
