"""The venue interface, as the paper venue answers it."""

from __future__ import annotations

from connectors.venues import FILLED, REJECTED, Ack, Instrument, Venue
from connectors.venues.paper import PaperVenue
from operators.filters import DEFAULT_UNIVERSE
from operators.orders import Order
from helpers import FakeVenue, entry, make_pipeline, run_entries


def _order(cid: str, side: str = "buy", qty: float = 2.0, price: float = 100.0, symbol: str = "BTC-USDT") -> Order:
    return Order(cid, "sig-" + cid, "open", "okx", symbol, side, qty, price, 1)


def test_the_paper_venue_implements_the_interface(tmp_path):
    venue: Venue = PaperVenue(tmp_path / "venue.sqlite")
    assert venue.name == "paper"


def test_submitted_orders_are_acknowledged_and_their_fates_come_as_updates(tmp_path):
    venue = PaperVenue(tmp_path / "venue.sqlite")
    acks = venue.submit([_order("ax1"), _order("ax2", price=0.0), _order("ax1")])
    assert acks == [Ack("ax1", True), Ack("ax2", False, "no price"),
                    Ack("ax1", False, "duplicate client order id ax1")]
    updates = venue.updates()
    assert [(u.client_order_id, u.status) for u in updates] == [("ax1", FILLED), ("ax2", REJECTED), ("ax1", REJECTED)]
    assert updates[0].fill == venue.lookup(_order("ax1"))
    assert venue.updates() == []  # each fate is told once
    assert venue.lookup(_order("ax2", price=0.0)) is None


def test_positions_and_balances_follow_the_fills(tmp_path):
    venue = PaperVenue(tmp_path / "venue.sqlite", fee_bps=10, cash_usd=1000.0)
    venue.place_many([_order("ax1"), _order("ax2", side="sell", qty=0.5, price=120.0),
                      _order("ax3", symbol="ETH-USDT", qty=1.0)])
    venue.place_many([_order("ax4", side="sell", symbol="ETH-USDT", qty=1.0)])
    assert venue.positions() == {("okx", "BTC-USDT"): 1.5}
    fees = (200.0 + 60.0 + 100.0 + 100.0) * 10 / 10_000
    assert venue.balances()["USD"] == 1000.0 - 200.0 + 60.0 - 100.0 + 100.0 - fees
    assert venue.open_orders() == []


def test_instruments_carry_the_lot_rules_as_data(tmp_path):
    venue = PaperVenue(tmp_path / "venue.sqlite")
    listed = {(i.venue, i.symbol): i for i in venue.instruments()}
    assert set(listed) == {(v, s) for v, symbols in DEFAULT_UNIVERSE.items() for s in symbols}
    assert listed["ibkr", "AAPL"] == Instrument("ibkr", "AAPL", 1.0, 0.01, 1.0)
    assert listed["okx", "BTC-USDT"] == Instrument("okx", "BTC-USDT", 1e-8, 1e-8, 1e-8)
    # a symbol it does not list, on a market it simulates, trades on that market's rules
    assert venue.instrument("ibkr", "IBM") == Instrument("ibkr", "IBM", 1.0, 0.01, 1.0)
    assert venue.instrument("kraken", "BTC-USD") is None


class ListsItsOwnLots(FakeVenue):
    """A venue whose instruments trade in lots of 0.5 coin, and which does not trade SOL."""

    def instrument(self, venue: str, symbol: str) -> Instrument | None:
        if symbol == "SOL-USDT":
            return None
        return Instrument(venue, symbol, 0.5, 0.01, 0.5)


def test_the_step_sizes_in_the_lots_the_venue_passed_in_lists(tmp_path):
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    col = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="sig-1", reference_price=300.0),
                                    entry("1767261601000-1", signal_id="sig-2", symbol="SOL-USDT")],
                      venues=ListsItsOwnLots(p))
    assert [(o.signal_id, o.outcome, o.reason) for o in col.outcomes] == [
        ("sig-1", "filled", ""), ("sig-2", "dropped", "not_listed")]
    (fill,) = col.outcomes[0].executions
    assert fill["quantity"] == 16.5  # 5,000 USD at 300: 16.67 coins, down to a whole number of half coins


class CountsAsks(ListsItsOwnLots):
    """The same, counting the symbols it is asked about (each a round trip at a real venue)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked: list[str] = []

    def instrument(self, venue: str, symbol: str) -> Instrument | None:
        self.asked.append(symbol)
        return super().instrument(venue, symbol)


def test_a_signal_a_filter_dropped_before_the_book_is_not_asked_of_the_venue(tmp_path):
    """Its lot would size nothing; asking would hold the book a round trip (issue 23)."""
    p = make_pipeline(tmp_path, "  - filter: confidence\n    min: 0.65\n")
    venue = CountsAsks(p)
    col = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="sig-1", symbol="ETH-USDT", confidence=0.3),
                                    entry("1767261601000-1", signal_id="sig-2", reference_price=300.0)],
                      venues=venue)
    assert [(o.signal_id, o.outcome, o.reason) for o in col.outcomes] == [
        ("sig-1", "dropped", "confidence"), ("sig-2", "filled", "")]
    assert venue.asked == ["BTC-USDT"]
