"""Correlations between symbols, estimated from the price ticks the book sees, and the
combined risk of positions through them.

Ticks of different symbols arrive at their own moments, so each symbol's price is
sampled once a minute on the stream clock (the last price seen in the minute, carried
forward through minutes without a tick) and correlations are those of the one-minute
log returns over the trailing window of completed minutes. On the stream clock, a
replay reaches the numbers the live run did.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Callable

MAX_WINDOW_MINUTES = 1440  # one day of minutes: the most a window in pipeline.yaml may ask for


class ReturnsEstimator:
    """Per symbol, its last price in each of the latest minutes in which it ticked, as many
    as a window of ``minutes`` needs (none when no filter asks: a wide price stream would
    otherwise be kept for nothing). Correlations are computed when asked and kept until the
    minute changes, as every signal of a minute asks for the same ones."""

    def __init__(self, minutes: int = 0) -> None:
        self.minutes = minutes
        self._closes: dict[str, deque[tuple[int, float]]] = {}
        self._minute: int | None = None  # the latest minute a tick was seen in
        self._returns: dict[tuple[str, int], list[float | None]] = {}
        self._rho: dict[tuple[str, str, int, int], float | None] = {}

    def observe(self, symbol: str, price: float, clock_ms: int) -> None:
        if not self.minutes:
            return
        minute = clock_ms // 60_000
        closes = self._closes.get(symbol)
        if closes is None:
            # the window's returns need its minutes' closes, the close before them and the latest minute's
            closes = self._closes[symbol] = deque(maxlen=self.minutes + 2)
        if closes and closes[-1][0] >= minute:  # the same minute (or a clock that did not advance)
            closes[-1] = (closes[-1][0], price)
        else:
            closes.append((minute, price))
        if self._minute is None or minute > self._minute:
            self._minute = minute
            self._returns.clear()
            self._rho.clear()

    def state(self) -> dict:
        """The minutes' closes kept, for the book's ledger: a restart that forgot them would
        judge the next signals as if no correlation were known."""
        return {"minute": self._minute, "closes": {s: [list(c) for c in closes] for s, closes in self._closes.items()}}

    def restore(self, state: dict) -> None:
        """The closes ``state`` holds, as many of the latest as this window keeps (a window
        changed between the runs keeps what fits)."""
        self._returns.clear()
        self._rho.clear()
        if not self.minutes:
            return
        self._minute = state.get("minute")
        self._closes = {s: deque(((int(m), float(p)) for m, p in closes), maxlen=self.minutes + 2)
                        for s, closes in state.get("closes", {}).items()}

    def _series(self, symbol: str, window: int) -> list[float | None]:
        """The symbol's one-minute log returns over the ``window`` minutes completed before
        the latest one, oldest first; None where it had no price yet at either end."""
        key = (symbol, window)
        got = self._returns.get(key)
        if got is not None:
            return got
        assert self._minute is not None
        first = self._minute - window - 1  # the close before the window's first return
        closes = self._closes.get(symbol, ())
        prices: list[float | None] = []
        at = None
        it = iter(closes)
        pending = next(it, None)
        for minute in range(first, self._minute):
            while pending is not None and pending[0] <= minute:
                at = pending[1]
                pending = next(it, None)
            prices.append(at)
        out = [math.log(b / a) if a and b else None for a, b in zip(prices, prices[1:])]
        self._returns[key] = out
        return out

    def correlation(self, a: str, b: str, window: int, min_returns: int) -> float | None:
        """Pearson correlation of the two symbols' one-minute returns over the trailing
        ``window`` completed minutes (at most the ``minutes`` kept); None when fewer than ``min_returns`` minutes have a
        return of both, or when either did not move at all (no correlation to speak of)."""
        if a == b:
            return 1.0
        if self._minute is None:
            return None
        if b < a:
            a, b = b, a
        key = (a, b, window, min_returns)
        if key in self._rho:
            return self._rho[key]
        pairs = [(x, y) for x, y in zip(self._series(a, window), self._series(b, window))
                 if x is not None and y is not None]
        rho = None
        if len(pairs) >= min_returns:
            xs, ys = zip(*pairs)
            try:
                rho = max(-1.0, min(1.0, statistics.correlation(xs, ys)))
            except statistics.StatisticsError:  # a constant series
                rho = None
        self._rho[key] = rho
        return rho


Rho = Callable[[str, str], "float | None"]  # a pair's correlation, None when it is not known


def combined_risk(risks: dict[str, float], rho: Rho) -> float:
    """sqrt(wᵀ C w): ``risks`` maps each symbol to its signed risk ``w`` (what its positions
    lose to their stops, positive long and negative short); ``C[i][j] = rho(i, j)``, with
    ``C[i][i] = 1``. A pair whose correlation is unknown (None: too little history) is taken
    as perfectly correlated in the direction that adds their risks, ``C[i][j] = sign(w_i w_j)``,
    so that what is not known is never counted as a hedge. Estimated pairwise, ``C`` need
    not be positive semi-definite: a negative total is taken as 0."""
    syms = sorted(s for s, w in risks.items() if w)
    total = 0.0
    for i, a in enumerate(syms):
        wa = risks[a]
        total += wa * wa
        for b in syms[i + 1:]:
            wb = risks[b]
            r = rho(a, b)
            if r is None:
                r = 1.0 if wa * wb > 0 else -1.0
            total += 2 * wa * wb * r
    return math.sqrt(max(0.0, total))
