"""The one egress: every order reaches a venue through ``Executor.send``, and only
after ``prepare`` applied the idempotency rule to it; venues are passed in by market."""

from __future__ import annotations

import pytest

from connectors.execution import Executor, NotCleared
from connectors.ledger import Ledger
from connectors.venues import Rejected
from connectors.venues.paper import PaperVenue
from helpers import FakeVenue, entry, make_pipeline, run_entries
from operators.orders import Order, client_order_id


def _order(signal_id: str, venue: str = "okx", symbol: str = "BTC-USDT") -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", venue, symbol, "buy", 1.0, 100.0, 1)


class Recording:
    """A venue that fills everything and remembers each batch it was sent."""

    def __init__(self, paper: PaperVenue, name: str):
        self.paper, self.name, self.batches = paper, name, []

    def place_many(self, orders):
        self.batches.append([o.client_order_id for o in orders])
        return self.paper.place_many(orders)

    def lookup(self, order):
        return self.paper.lookup(order)


def test_an_order_prepare_did_not_clear_never_leaves(tmp_path):
    venue = Recording(PaperVenue(tmp_path / "venue.sqlite"), "paper")
    ex = Executor(Ledger(tmp_path / "ledger.sqlite"), venue)
    with pytest.raises(NotCleared):
        ex.send([_order("sig-1")])
    assert venue.batches == []
    ex.execute(_order("sig-1"))
    with pytest.raises(NotCleared):  # filled: the rule says never again
        ex.send([_order("sig-1")])
    assert venue.batches == [[client_order_id("sig-1")]]


def test_resolve_asks_the_venue_about_an_intent_and_never_sends(tmp_path):
    venue = Recording(PaperVenue(tmp_path / "venue.sqlite"), "paper")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ex = Executor(ledger, venue)
    order = _order("sig-1")
    assert ex.resolve(order) is None  # unknown to the ledger: nothing to resolve
    assert ex.prepare(order) is None  # its intent recorded
    assert ex.resolve(order) is None  # the venue never saw it
    venue.paper.place_many([order])  # taken by the venue; the process died before recording it
    fill = ex.resolve(order)
    assert fill == venue.paper.lookup(order)
    assert ledger.execution(order)[0] == "filled"
    assert venue.batches == []


def test_orders_go_to_the_venue_of_their_market_one_batch_each(tmp_path):
    okx = Recording(PaperVenue(tmp_path / "okx.sqlite"), "okx-venue")
    ibkr = Recording(PaperVenue(tmp_path / "ibkr.sqlite"), "ibkr-venue")
    ex = Executor(Ledger(tmp_path / "ledger.sqlite"), {"okx": okx, "ibkr": ibkr})
    orders = [_order("a"), _order("b", "ibkr", "AAPL"), _order("c")]
    for o in orders:
        assert ex.prepare(o) is None
    results = ex.send(orders)
    assert [r.client_order_id for r in results] == [o.client_order_id for o in orders]
    assert okx.batches == [[client_order_id("a"), client_order_id("c")]]
    assert ibkr.batches == [[client_order_id("b")]]
    assert ex.venue_for("ibkr") is ibkr
    with pytest.raises(Rejected, match="no venue for kraken"):
        ex.venue_for("kraken")


def test_the_wiring_sends_through_the_venues_passed_in_by_market(tmp_path):
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    okx = FakeVenue(p)
    col = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="sig-1"),
                                    entry("1767261601000-1", signal_id="sig-2", venue="ibkr", symbol="AAPL")],
                      venues={"okx": okx})
    assert [(o.signal_id, o.outcome, o.reason) for o in col.outcomes] == [
        ("sig-1", "filled", ""), ("sig-2", "dropped", "not_listed")]  # no venue trades it: nothing is sized
    assert okx.sent() == [client_order_id("sig-1")]


class Forgetful:
    """A venue that knows its orders by client order id alone, as IB does across sessions:
    its fills carry no signal id, a clock in whole seconds, and what it really filled."""

    name = "forgetful"

    def __init__(self, filled: float):
        self.filled = filled
        self.taken: dict[str, Order] = {}

    def _fill(self, order: Order):
        from operators.fill import Fill

        return Fill("", order.client_order_id, "ib-7", order.venue, order.symbol, order.side, self.filled, 101.0,
                    1.0, order.ts_ms // 1000 * 1000)

    def place_many(self, orders):
        self.taken.update({o.client_order_id: o for o in orders})
        return [self._fill(o) for o in orders]

    def lookup(self, order):
        return self._fill(order) if order.client_order_id in self.taken else None


@pytest.mark.parametrize("found_at_restart", [False, True])
def test_a_venue_fill_is_booked_under_the_order_with_what_really_filled(tmp_path, found_at_restart):
    """Bugs this catches: a fill the venue answers without the signal id recorded nothing;
    a partial fill was recorded at the intent's size; a venue clock in whole seconds put
    the fill before the order in the audit trail."""
    venue = Forgetful(filled=0.4)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ex = Executor(ledger, venue)
    order = Order(client_order_id("sig-1"), "sig-1", "open", "ibkr", "AAPL", "buy", 1.0, 100.0, 1_767_261_600_456)
    if found_at_restart:
        assert ex.prepare(order) is None
        venue.place_many([order])  # taken; the process died before recording it
        fill = ex.resolve(order)
    else:
        fill, sent = ex.execute(order)
        assert sent
    assert (fill.signal_id, fill.quantity, fill.order_id) == ("sig-1", 0.4, "ib-7")
    assert fill.ts_ms == order.ts_ms
    assert ledger.execution(order)[0] == "filled"
    assert [(f.signal_id, f.quantity) for f in ledger.fills()] == [("sig-1", 0.4)]
