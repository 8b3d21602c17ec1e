"""The simulator's market volume: a tape of what traded (its own fills, and the market's
volume a test or the price stream tells it), answered as OKX's 1-minute candlesticks
(``market/candles``) so a client reads a symbol's last-minute volume as it would from OKX.
Kept in memory only: a restarted simulator's volume starts again from nothing."""

from __future__ import annotations

from collections import deque
from decimal import Decimal

MINUTE_MS = 60_000
KEPT_MS = 1440 * MINUTE_MS  # OKX's recent candles reach back 1 440 bars


def _s(d: Decimal) -> str:
    return format(d.normalize(), "f")


class Tape:
    def __init__(self) -> None:
        self._trades: dict[str, deque[tuple[int, Decimal, Decimal]]] = {}

    def add(self, inst: str, ts_ms: int, px: Decimal, sz: Decimal) -> None:
        q = self._trades.setdefault(inst, deque())
        q.append((ts_ms, px, sz))
        while q and q[0][0] < ts_ms - KEPT_MS:
            q.popleft()

    def candles(self, inst: str, now_ms: int, limit: int = 100) -> list[list[str]]:
        """OKX's rows, newest first: [ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]; the
        current minute's bar is unconfirmed ("0"). Minutes without a trade have no bar."""
        bars: dict[int, list] = {}
        for ts, px, sz in self._trades.get(inst, ()):
            start = ts - ts % MINUTE_MS
            b = bars.get(start)
            if b is None:
                bars[start] = [px, px, px, px, sz, sz * px]
            else:
                b[1], b[2], b[3] = max(b[1], px), min(b[2], px), px
                b[4] += sz
                b[5] += sz * px
        current = now_ms - now_ms % MINUTE_MS
        rows = [[str(t), _s(o), _s(h), _s(lo), _s(c), _s(v), _s(q), _s(q), "0" if t >= current else "1"]
                for t, (o, h, lo, c, v, q) in sorted(bars.items(), reverse=True)]
        return rows[:limit]
