"""From a received signal to either a named drop or an order to send.

Filters run in the order ``pipeline.yaml`` lists them and the first that fails
names the drop. Stateless filters run earlier, each in its own Bytewax step,
and hand over the position of their failure (``early``); the portfolio step
then runs only the portfolio filters listed before that position, so the
reason recorded is exactly what running the list top to bottom would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.audit import FILTER_CHECK, POSITION_SIZING, SIGNAL_RECEIVED, Chain
from operators.filters import Filter
from operators.kelly import KellyParams, Sizing, size
from operators.limits import PRICE_BAND
from operators.portfolio import Portfolio
from operators.signal import Signal
from operators.spot import SPOT_CANNOT_SHORT, exit_below_min, sell_on_spot


NO_PRICE = "no_price"  # no reference price and no mark: nothing to size with
MIN_SIZE = "min_size"  # sized below the venue's smallest lot (on spot: a buy whose exit could not be sold)
NOT_LISTED = "not_listed"  # the market's venue does not list the instrument: it trades no lot of it
# a remote venue still being asked in what lots it trades the instrument: not a refusal of
# the instrument, so it is kept apart from not_listed (the next signal may well be sized)
INSTRUMENT_PENDING = "instrument_pending"
# PRICE_BAND: a reference price the book cannot believe (far from the mark, or absurd)
# SPOT_CANNOT_SHORT: a sell signal where its market is spot (operators/spot.py)
SIZING_DROPS = (NO_PRICE, PRICE_BAND, MIN_SIZE, NOT_LISTED, INSTRUMENT_PENDING,
                SPOT_CANNOT_SHORT)  # after every filter passed


@dataclass(frozen=True, slots=True)
class EarlyDrop:
    """The first stateless filter that failed: its place in the list and name."""

    index: int
    name: str


@dataclass(slots=True)
class Verdict:
    outcome: str  # duplicate | expired | dropped | order
    reason: str | None = None
    checked: list[tuple[str, bool]] = field(default_factory=list)
    sizing: Sizing | None = None  # None when dropped before anything needed the size
    age_ms: int = 0
    details: dict = field(default_factory=dict)  # what a drop at sizing was about, for its audit event

    @property
    def filters_passed(self) -> bool:
        """Every filter passed (an order, or dropped at sizing)."""
        return self.outcome == "order" or self.reason in SIZING_DROPS


def ttl_left_ms(emitted_ms: int, ttl_seconds: int, clock_ms: int) -> int:
    """What is left of a signal's TTL at ``clock_ms`` (negative once it has run out): how long
    its order may still wait to leave."""
    return emitted_ms + ttl_seconds * 1000 - clock_ms


def is_expired(age_ms: int, ttl_seconds: int) -> bool:
    """``age_ms``: the stream clock less the signal's emit time."""
    return age_ms > ttl_seconds * 1000


def sizing_price(signal: Signal, book: Portfolio) -> tuple[float, str | None]:
    """The price a signal is sized at and why the book refuses it (None: it does not): the
    reference price, or the symbol's mark without one; 0.0 when there is neither, or when
    the reference price is refused (so nothing is sized on it, not even for a filter)."""
    ref = signal.reference_price
    if ref is None:
        return book.price_of(signal.venue, signal.symbol) or 0.0, None
    why = book.refuses_reference(signal.symbol, ref)
    if why:
        return 0.0, why
    return ref, None


def proposed_sizing(signal: Signal, book: Portfolio, params: KellyParams, price: float, lot_size: float) -> Sizing:
    return size(
        signal,
        nav=book.nav,
        vol=book.vol_estimator.annualized(),
        drawdown=book.drawdown,
        tracker_multiplier=book.tracker.multiplier(),
        price=price,
        params=params,
        lot_size=lot_size,
    )


def judge(
    signal: Signal,
    *,
    clock_ms: int,
    already_decided: bool,
    book: Portfolio,
    filters: list[Filter],
    early: EarlyDrop | None,
    kelly: KellyParams,
    lot_size: float | None,
    emitted_ms: int | None = None,
    spot: str | None = None,
    min_size: float = 0.0,
) -> Verdict:
    """``lot_size``: the instrument's, as its venue lists it (0: the venue does not
    trade it; None: a remote venue has not said yet). ``emitted_ms``: the signal's emit time if the caller has it already
    (validation computes it to check the clock), else it is computed here. ``spot``: where
    the signal's market is spot, what a sell does to the book's longs (``operators/spot.py``);
    ``min_size``: the smallest quantity the venue takes of the instrument (0: not known)."""
    age = clock_ms - (signal.emitted_ms if emitted_ms is None else emitted_ms)
    if already_decided:
        return Verdict("duplicate", "signal_id already decided", age_ms=age)
    if is_expired(age, signal.ttl_seconds):
        return Verdict("expired", "ttl", age_ms=age)
    # sized when a portfolio filter needs the size or every filter passed: most signals
    # are dropped before either, and sizing was a tenth of judging one
    sizing: Sizing | None = None
    price, refused = 0.0, None  # looked up once something needs the size (refused: why, if it is)
    checked: list[tuple[str, bool]] = []
    view = None
    stop = early.index if early else len(filters)
    for f in filters[:stop]:
        if not f.needs_portfolio:
            checked.append((f.name, True))  # passed in its own step already
            continue
        if view is None:
            price, refused = sizing_price(signal, book)
            sizing = proposed_sizing(signal, book, kelly, price, lot_size or 0.0)
            book.day_loss.observe(clock_ms, book.nav)  # a UTC day may have begun since the last price
            view = book.view(sizing.size_usd)
        ok = f(signal, view)
        checked.append((f.name, ok))
        if not ok:
            return Verdict("dropped", f.name, checked, sizing, age)
    if early:
        checked.append((early.name, False))
        return Verdict("dropped", early.name, checked, sizing, age)
    if sizing is None:
        price, refused = sizing_price(signal, book)
        sizing = proposed_sizing(signal, book, kelly, price, lot_size or 0.0)
    if spot is not None and signal.side == "sell":  # whatever its size: no short trade is opened
        return Verdict("dropped", SPOT_CANNOT_SHORT, checked, sizing, age, sell_on_spot(signal, book, spot))
    instrument = f"{signal.venue} {signal.symbol}"
    if lot_size is None:
        return Verdict("dropped", INSTRUMENT_PENDING, checked, sizing, age,
                       {"why": f"{instrument}: its venue has not said yet in what lots it trades"})
    if lot_size <= 0:
        return Verdict("dropped", NOT_LISTED, checked, sizing, age,
                       {"why": f"{instrument}: its venue does not list it"})
    if refused:
        return Verdict("dropped", PRICE_BAND, checked, sizing, age, _refused_price(signal, book, refused))
    if sizing.price <= 0:
        return Verdict("dropped", NO_PRICE, checked, sizing, age)
    if sizing.quantity <= 0:
        return Verdict("dropped", MIN_SIZE, checked, sizing, age)
    if spot is not None and exit_below_min(sizing.quantity, min_size):
        return Verdict("dropped", MIN_SIZE, checked, sizing, age,
                       {"why": f"{instrument}: {sizing.quantity:g} bought holds, less the fee kept in the coin, "
                               f"less than the {min_size:g} its venue takes: its exit could never be sold"})
    return Verdict("order", None, checked, sizing, age)


def audit_verdict(v: Verdict, signal: Signal, chain: Chain, decided_at: str = "") -> None:
    """The audit events a verdict leaves on its chain, as far as the signal got: its
    receipt (or why it was not received), the filters, the sizing. ``decided_at``: for a
    duplicate, the earlier decision ("<stream id> as <outcome>")."""
    if v.outcome == "duplicate":
        chain.add(SIGNAL_RECEIVED, "duplicate", f"signal_id decided at {decided_at}")
        return
    if v.outcome == "expired":
        chain.add(SIGNAL_RECEIVED, "expired", "ttl", age_ms=v.age_ms, ttl_seconds=signal.ttl_seconds)
        return
    chain.add(SIGNAL_RECEIVED, "received", age_ms=v.age_ms, version=signal.version,
              unknown_fields=signal.unknown_fields())
    passed = v.filters_passed
    chain.add(FILTER_CHECK, "passed" if passed else "dropped", "" if passed else v.reason or "",
              checked=v.checked)
    if not passed:
        return
    sz = v.sizing
    assert sz is not None
    sized = v.outcome == "order"
    chain.add(POSITION_SIZING, "sized" if sized else "dropped", "" if sized else v.reason or "",
              size_usd=sz.size_usd, **(sz.factors() | v.details))


def _refused_price(signal: Signal, book: Portfolio, why: str) -> dict:
    """A price_band drop's details: the reference price refused and the mark it was held
    against (None: no mark yet, so only the limits were), in place of the 0.0 the sizing
    was given so that nothing would be sized on the refused price."""
    return {"price": signal.reference_price, "mark": book.marks.get(signal.symbol), "why": why}


def drop_row(v: Verdict, signal: Signal, stream_id: str, clock_ms: int) -> list | None:
    """The audit store's row (``DROP_COLUMNS``) of a signal a filter dropped; None for any
    other verdict (an order, a drop at sizing, an expired or duplicate signal)."""
    if v.outcome != "dropped" or v.filters_passed:
        return None
    return [signal.signal_id, stream_id, v.reason, clock_ms, signal.source, signal.venue, signal.symbol,
            signal.confidence, signal.regime]
