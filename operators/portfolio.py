"""The one book every decision reads and every fill changes.

Kept in a single Bytewax stateful step keyed on one portfolio key, so each
signal sees every earlier fill: concurrent decisions would let two orders
pass a concentration check that only one of them should.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from operators.correlation import ReturnsEstimator
from operators.daily_loss import DayLoss
from operators.exits import ClosedTrade, TradeTerms, regime_exit, stop_hit
from operators.fill import Fill
from operators.filters import PortfolioView
from operators.kelly import KellyParams, KellyTracker
from operators.limits import Limits, PriceGuard

MINUTES_PER_YEAR = 365 * 24 * 60


def _economics(fill: Fill) -> tuple:
    return fill.quantity, fill.price, fill.fee_usd, fill.ts_ms


class VolEstimator:
    """Annualized volatility of the book from one-minute NAV returns on the
    stream clock (the last NAV seen in each minute), over the trailing
    ``window`` minutes, scaled by sqrt(minutes per year): crypto trades all
    year, and a replay must reach the same number as the live run did."""

    def __init__(self, window: int = 60):
        self._returns: deque[float] = deque(maxlen=window)
        self._annualized: float | None = None  # every sizing reads it; it changes once a minute
        self._minute: int | None = None
        self._last_close: float | None = None
        self._current: float | None = None

    def observe(self, clock_ms: int, nav: float) -> None:
        minute = clock_ms // 60_000
        if self._minute is not None and minute != self._minute and self._current is not None:
            if self._last_close is not None and self._last_close > 0 and self._current > 0:
                self._returns.append(math.log(self._current / self._last_close))
                self._annualized = None
            self._last_close = self._current
        self._minute = minute
        self._current = nav

    def state(self) -> dict:
        """What a restart needs to go on estimating as if it had never stopped."""
        return {"returns": list(self._returns), "minute": self._minute, "last_close": self._last_close,
                "current": self._current}

    def restore(self, state: dict) -> None:
        self._returns.clear()
        self._returns.extend(state["returns"])
        self._minute, self._last_close, self._current = state["minute"], state["last_close"], state["current"]
        self._annualized = None

    def annualized(self) -> float:
        if self._annualized is None:
            n = len(self._returns)
            if n < 2:
                return 0.0
            mean = sum(self._returns) / n
            var = sum((r - mean) ** 2 for r in self._returns) / (n - 1)
            self._annualized = math.sqrt(var) * math.sqrt(MINUTES_PER_YEAR)
        return self._annualized


@dataclass
class Portfolio:
    initial_nav: float
    kelly: KellyParams
    limits: Limits = field(default_factory=Limits)
    correlation_minutes: int = 0  # the price history its correlation_budget filters need
    cash: float = field(init=False)
    peak: float = field(init=False)
    positions: dict[tuple[str, str], float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)  # by symbol: venues' symbols do not collide
    open_trades: dict[str, TradeTerms] = field(default_factory=dict)
    regime: str | None = None
    fills: int = 0

    def __post_init__(self) -> None:
        self.cash = self.initial_nav
        self.peak = self.initial_nav
        self.tracker = KellyTracker(self.kelly.tracker)
        self.vol_estimator = VolEstimator()
        self.day_loss = DayLoss(self.initial_nav)  # the daily_loss filter's: the UTC day's opening and lowest NAV
        self.returns = ReturnsEstimator(self.correlation_minutes)  # correlation_budget's one-minute returns
        self._guard = PriceGuard(self.limits)
        self._market_ids: dict[str, tuple[int, int]] = {}  # stream -> the last market entry taken
        self._nav: float | None = None  # every decision reads NAV; only marks and fills change it
        # kept up to date symbol by symbol: rebuilding it from every position on each
        # fill was a sixth of the portfolio step once a few hundred symbols were held
        self._values: dict[tuple[str, str], float] = {}
        self._keys: dict[str, list[tuple[str, str]]] = {}  # symbol -> position keys (venues)
        self._by_symbol: dict[str, set[str]] = {}
        self._deadlines: list[tuple[int, str]] = []  # heap: max-holding exits in clock order
        self._marks_before: dict[str, float | None] = {}  # signal_id -> mark, while its order is in flight
        self._venue_funds: dict[str, float] = {}  # market -> available funds its venue reported
        self._in_flight: dict[str, tuple[str, float]] = {}  # signal_id -> (market, notional) reserved
        # orders at a remote venue whose fate is not known: an IOC may fill less than reserved or
        # nothing, so the risk filters value each position as if every such order adding to it
        # filled and none taking from it did (``exposures``)
        self._unsure: dict[str, tuple[tuple[str, str], float]] = {}  # signal_id -> (key, signed qty)
        self._unsure_by_key: dict[tuple[str, str], list[float]] = {}  # key -> [Σ buys, Σ sells, how many]
        self._exposures: dict[tuple[str, str], float] = {}  # key -> value the risk filters judge by
        # sliced orders' children not sent yet, by (venue, symbol): (signed quantity, the parent's
        # price); set by the book's step from its ledger (dataflows/slicing_step.py)
        self.unsent: dict[tuple[str, str], tuple[float, float]] = {}

    @property
    def nav(self) -> float:
        if self._nav is None:
            self._nav = self.cash + sum(self._values.values())
        return self._nav

    @property
    def drawdown(self) -> float:
        return max(0.0, 1 - self.nav / self.peak) if self.peak > 0 else 0.0

    def position_values(self) -> dict[tuple[str, str], float]:
        """Marked value of every non-flat position."""
        return self._values

    def surely_held(self, key: tuple[str, str], side: str) -> float:
        """The position an order on ``side`` brings toward zero whatever the orders still at
        a remote venue fill: those on ``side`` counted filled (they take from it too), those
        against it not (they may fill nothing). A buy still working counted as held would let
        a sell decided beside it through as a reduction, a short once the buy is cut."""
        buys, sells, _ = self._unsure_by_key.get(key, (0.0, 0.0, 0))
        settled = self.positions.get(key, 0.0) - buys + sells
        return settled - sells if side == "sell" else settled + buys

    def exposures(self) -> dict[tuple[str, str], float]:
        """What the risk filters judge each position by: its marked value, or, while orders
        whose fate is unknown are at a remote venue, the larger of the position with every one
        of them on its side filled and with none of those against it filled. A reservation
        counted as filled would let a buy that is then cut at its limit hide a sell's exposure.
        A sliced order's children not sent yet count the same way, on their side, valued at the
        mark (else their parent's price): another signal cannot take the room they will need."""
        if not self.unsent:
            return self._exposures
        out = dict(self._exposures)
        for key, (quantity, price) in self.unsent.items():
            buys, sells, _ = self._unsure_by_key.get(key, (0.0, 0.0, 0))
            settled = self.positions.get(key, 0.0) - buys + sells
            longest, shortest = settled + buys + max(quantity, 0.0), settled - sells + min(quantity, 0.0)
            value = (longest if abs(longest) >= abs(shortest) else shortest) * self.marks.get(key[1], price)
            if value:
                out[key] = value
            else:
                out.pop(key, None)
        return out

    def _mark(self, symbol: str, price: float) -> None:
        self.marks[symbol] = price
        for key in self._keys.get(symbol, ()):
            q = self.positions[key]
            if q:
                self._values[key] = q * price
            else:
                self._values.pop(key, None)
            self._expose(key, q, price)
        self._nav = None

    def _expose(self, key: tuple[str, str], q: float, price: float) -> None:
        unsure = self._unsure_by_key.get(key)
        if unsure is not None:
            buys, sells, _ = unsure
            settled = q - buys + sells
            longest, shortest = settled + buys, settled - sells
            q = longest if abs(longest) >= abs(shortest) else shortest
        if q:
            self._exposures[key] = q * price
        else:
            self._exposures.pop(key, None)

    def market_entry_is_new(self, stream: str, stream_id: str) -> bool:
        """Whether the book has not yet taken this market entry: entries of a stream come
        in stream-id order, so one at or below the last taken is a redelivery."""
        last = self._market_ids.get(stream)
        return last is None or _id(stream_id) > last

    def market_entry_taken(self, stream: str, stream_id: str) -> None:
        self._market_ids[stream] = _id(stream_id)

    def market_state(self) -> dict:
        """What the book learnt from the market rather than from its fills: the marks, the
        peak NAV, the regime and the volatility. Fills alone rebuild positions and cash; a
        restart without these would mark every position at its last fill, forget the
        drawdown and size the next signal with no volatility haircut."""
        state = {"marks": self.marks, "peak": self.peak, "regime": self.regime, "vol": self.vol_estimator.state(),
                 "taken": self._market_ids, "day": self.day_loss.state()}
        if self.returns.minutes:  # correlation_budget's price history: kept only when a filter asks for it
            state["corr"] = self.returns.state()
        return state

    def restore_market(self, state: dict) -> None:
        """After the fills are applied: the market as the book last saw it (``market_state``)."""
        for symbol, price in state["marks"].items():
            self._mark(symbol, price)
        self.peak = state["peak"]  # the NAVs seen while the fills were applied again were never real
        self.regime = state["regime"]
        self.vol_estimator.restore(state["vol"])
        self._market_ids = {stream: tuple(i) for stream, i in state["taken"].items()}
        self.day_loss = DayLoss(self.nav)  # a state written before the day was kept: the day starts again
        if "day" in state:
            self.day_loss.restore(state["day"])
        if "corr" in state:  # a state written before the history was kept: it starts again
            self.returns.restore(state["corr"])

    def view(self, proposed_usd: float) -> PortfolioView:
        # the venue's figure knows nothing yet of the orders still in flight: they are taken off it
        reserved: dict[str, float] = {}
        for market, usd in self._in_flight.values() if self._venue_funds else ():
            reserved[market] = reserved.get(market, 0.0) + usd
        return PortfolioView(self.nav, self.exposures(), proposed_usd, self._venue_funds, reserved,
                             self.open_trades, self.marks, self.day_loss, self.returns)

    def set_available_funds(self, market: str, usd: float | None) -> None:
        """The available funds the market's venue reports, read by the margin filter in
        place of the book's own estimate; None: the venue has said nothing, estimate again."""
        if usd is None:
            self._venue_funds.pop(market, None)
        else:
            self._venue_funds[market] = usd

    def price_of(self, venue: str, symbol: str) -> float | None:
        return self.marks.get(symbol)

    def refuses_price(self, symbol: str, price: float) -> str | None:
        """Why a tick's price must not mark the book (None: believe it). Asked before
        ``on_price``: a price that is refused neither marks nor triggers an exit."""
        return self._guard.check(symbol, price, self.marks.get(symbol))

    def refuses_reference(self, symbol: str, price: float) -> str | None:
        """Why a signal's reference price must not size an order: outside the band
        around the symbol's mark, or unbelievable when there is no mark yet."""
        return self.limits.outside_band(price, self.marks.get(symbol))

    def _observe(self, clock_ms: int) -> None:
        nav = self.nav
        self.peak = max(self.peak, nav)
        self.vol_estimator.observe(clock_ms, nav)
        self.day_loss.observe(clock_ms, nav)

    def apply_fill(self, fill: Fill) -> None:
        """Cash, position and mark; opening and closing fills alike."""
        key = (fill.venue, fill.symbol)
        if key not in self.positions:
            self._keys.setdefault(fill.symbol, []).append(key)
        self.positions[key] = self.positions.get(key, 0.0) + fill.signed_qty
        self.cash -= fill.signed_qty * fill.price + fill.fee_usd
        self._mark(fill.symbol, fill.price)
        self.fills += 1
        self._observe(fill.ts_ms)

    def _unapply(self, fill: Fill, mark: float) -> None:
        self.positions[(fill.venue, fill.symbol)] -= fill.signed_qty
        self.cash += fill.signed_qty * fill.price + fill.fee_usd
        self._mark(fill.symbol, mark)
        self.fills -= 1

    def reserve(self, expected: Fill, terms: TradeTerms, *, remote: bool = False) -> None:
        """An order in flight counts as filled as expected until the venue answers
        (``settle`` or ``release``): a risk check later in the batch sees its exposure.
        ``remote``: at a venue that answers later, where it may fill less or nothing; until
        then the risk filters count it only where it adds exposure (``exposures``)."""
        self._marks_before[expected.signal_id] = self.marks.get(expected.symbol)
        self._in_flight[expected.signal_id] = (expected.venue, abs(expected.quantity * expected.price))
        if remote:
            self._unsure_add(expected.signal_id, (expected.venue, expected.symbol), expected.signed_qty)
        self.apply_fill(expected)
        self.open(terms)

    def _unsure_add(self, signal_id: str, key: tuple[str, str], qty: float) -> None:
        self._unsure[signal_id] = (key, qty)
        sides = self._unsure_by_key.setdefault(key, [0.0, 0.0, 0])
        sides[0 if qty > 0 else 1] += abs(qty)
        sides[2] += 1

    def _unsure_drop(self, signal_id: str) -> None:
        """The order's fate is known (or its booking changes): it no longer counts as unsure."""
        found = self._unsure.pop(signal_id, None)
        if found is None:
            return
        key, qty = found
        sides = self._unsure_by_key[key]
        sides[0 if qty > 0 else 1] -= abs(qty)
        sides[2] -= 1
        if not sides[2]:  # none left: no sum kept of nothing, whatever the rounding left in it
            del self._unsure_by_key[key]
        mark = self.marks.get(key[1])
        if mark is not None:
            self._expose(key, self.positions.get(key, 0.0), mark)

    def _mark_before(self, expected: Fill) -> float | None:
        """The symbol's mark as the reservation found it, unless a price has come since
        (and the reservation no longer in flight: it is settled or released)."""
        self._in_flight.pop(expected.signal_id, None)
        self._unsure_drop(expected.signal_id)
        before = self._marks_before.pop(expected.signal_id, None)
        now = self.marks.get(expected.symbol)  # None: another order's release unmarked it
        return before if now == expected.price else now

    def settle(self, expected: Fill, actual: Fill, terms: TradeTerms) -> None:
        """The venue's fill replaces the reserved one (nothing to do when they agree)."""
        before = self._mark_before(expected)
        if _economics(actual) == _economics(expected):
            return
        self._unapply(expected, expected.price if before is None else before)
        self.apply_fill(actual)
        before = self.open_trades[terms.signal_id]
        self.open_trades[terms.signal_id] = terms  # same symbol: the same order filled
        if terms.deadline_ms != before.deadline_ms:  # the old heap entry is skipped by ``due``
            heapq.heappush(self._deadlines, (terms.deadline_ms, terms.signal_id))

    def rebook(self, old: Fill, new: Fill) -> None:
        """What the book holds for an order in flight changes (part of it filled at its own
        price): position and cash move by the difference; the symbol's mark stays."""
        key = (old.venue, old.symbol)
        if old.signal_id in self._unsure:
            self._unsure_drop(old.signal_id)
            self._unsure_add(new.signal_id, key, new.signed_qty)
        self.positions[key] += new.signed_qty - old.signed_qty
        self.cash += (old.signed_qty * old.price + old.fee_usd) - (new.signed_qty * new.price + new.fee_usd)
        self._mark(old.symbol, self.marks[old.symbol])

    def release(self, expected: Fill) -> None:
        """The order never filled (refused, or its fate unknown until a retry asks the venue)."""
        before = self._mark_before(expected)
        self._unapply(expected, expected.price if before is None else before)
        terms = self.open_trades.pop(expected.signal_id)
        held = self._by_symbol.get(terms.symbol, set())
        held.discard(expected.signal_id)
        if before is None and not held:  # no price but the order's own, and no other order on it: unmarked again
            self.marks.pop(expected.symbol, None)

    def trades_in(self, symbol: str) -> list[str]:
        """The signal ids of the open trades in ``symbol``, in order."""
        return sorted(self._by_symbol.get(symbol, ()))

    def open(self, terms: TradeTerms) -> None:
        self.open_trades[terms.signal_id] = terms
        self._by_symbol.setdefault(terms.symbol, set()).add(terms.signal_id)
        heapq.heappush(self._deadlines, (terms.deadline_ms, terms.signal_id))

    def close(self, signal_id: str, fill: Fill, reason: str) -> ClosedTrade:
        terms = self.open_trades.pop(signal_id)
        self._by_symbol.get(terms.symbol, set()).discard(signal_id)
        closed = ClosedTrade(terms, fill.price, fill.ts_ms, fill.fee_usd, reason)
        self.tracker.record(closed.won, terms.expected_win_rate)
        return closed

    def on_price(self, symbol: str, price: float, clock_ms: int) -> list[TradeTerms]:
        """Mark the symbol; return the open trades whose hard stop this price hits."""
        self._mark(symbol, price)
        self._observe(clock_ms)
        self.returns.observe(symbol, price, clock_ms)
        ids = self._by_symbol.get(symbol, ())
        return [self.open_trades[sid] for sid in sorted(ids) if stop_hit(self.open_trades[sid], price)]

    def on_regime(self, regime: str, on_alert: bool) -> list[tuple[TradeTerms, str]]:
        self.regime = regime
        out = []
        for sid in sorted(self.open_trades):
            reason = regime_exit(self.open_trades[sid], regime, on_alert)
            if reason:
                out.append((self.open_trades[sid], reason))
        return out

    def due(self, clock_ms: int) -> list[TradeTerms]:
        """Open trades whose maximum holding time has passed on the stream clock."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= clock_ms:
            deadline, sid = heapq.heappop(self._deadlines)
            terms = self.open_trades.get(sid)
            if terms is not None and terms.deadline_ms == deadline:  # not one a settle replaced
                out.append(terms)
        return out

    def retry_due(self, terms: TradeTerms) -> None:
        """A max-holding close that could not be sent is due again on the next entry."""
        heapq.heappush(self._deadlines, (terms.deadline_ms, terms.signal_id))


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
