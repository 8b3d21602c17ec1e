"""The crash window between sending an order and recording its fill: resolved by
asking the venue, never by sending a second order."""

from __future__ import annotations

import pytest

from connectors import outbox
from connectors.execution import Executor
from connectors.ledger import Ledger
from connectors.venues.paper import PaperVenue
from helpers import FakeVenue, audit_query, dies_on_send, entry, make_pipeline, paper_orders, run_entries
from operators.orders import ASK_VENUE, DONE, REFUSED, SEND, Order, client_order_id, next_step

CID = client_order_id("sig-crash")
CHAIN = [("SIGNAL_RECEIVED", "received"), ("FILTER_CHECK", "passed"), ("POSITION_SIZING", "sized"),
         ("EXECUTION_ATTEMPT", "sent"), ("EXECUTION_CONFIRMED", "filled"), ("TRADE_OPEN", "opened")]
ORDER = Order(CID, "sig-crash", "open", "okx", "BTC-USDT", "buy", 50.0, 100.0, 1767261601000)


class Crash(Exception):
    """The process dies here."""


class DiesAfterSending:
    """A venue connection whose process dies right after the venue accepted the order."""

    name = "paper"

    def __init__(self, venue: PaperVenue):
        self.venue = venue

    def place_many(self, orders: list[Order]):
        self.venue.place_many(orders)
        raise Crash

    def lookup(self, order: Order):
        return self.venue.lookup(order)


class DiesBeforeSending(DiesAfterSending):
    def place_many(self, orders: list[Order]):
        raise Crash


@pytest.fixture
def paths(tmp_path):
    return tmp_path / "ledger.sqlite", tmp_path / "paper-venue.sqlite"


def _crash(paths, venue_cls) -> None:
    ledger, venue = Ledger(paths[0]), PaperVenue(paths[1])
    with pytest.raises(Crash):
        Executor(ledger, venue_cls(venue)).execute(ORDER)
    assert ledger.execution(ORDER)[0] == "intent"  # the intent row was written before the send
    assert list(ledger.fills()) == []
    ledger.close()
    venue.db.close()


def test_the_idempotency_rule_never_sends_an_order_the_ledger_knows():
    assert next_step(None) == SEND
    assert next_step("filled") == DONE
    assert next_step("rejected") == REFUSED
    assert next_step("intent") == ASK_VENUE  # the crash window: it may have left
    assert next_step("a status of a newer ledger") == ASK_VENUE  # unknown: ask, never send


def test_crash_after_send_resolves_from_the_venue_without_a_second_order(paths):
    _crash(paths, DiesAfterSending)
    ledger, venue = Ledger(paths[0]), PaperVenue(paths[1])  # the restart
    assert venue.orders_sent() == (1, 0)
    fill, sent = Executor(ledger, venue).execute(ORDER)
    assert sent is False
    assert (fill.signal_id, fill.client_order_id, fill.symbol, fill.side, fill.quantity, fill.price) == (
        "sig-crash", CID, "BTC-USDT", "buy", 50.0, 100.0)
    assert venue.orders_sent() == (1, 0)
    assert ledger.execution(ORDER)[0] == "filled"
    assert list(ledger.fills()) == [fill]
    # and once recorded, later calls are answered by the ledger alone
    again, sent = Executor(ledger, venue).execute(ORDER)
    assert (again, sent) == (fill, False)
    assert venue.orders_sent() == (1, 0)


def test_crash_before_send_sends_once_on_restart(paths):
    _crash(paths, DiesBeforeSending)
    ledger, venue = Ledger(paths[0]), PaperVenue(paths[1])
    assert venue.orders_sent() == (0, 0)
    fill, sent = Executor(ledger, venue).execute(ORDER)
    assert sent is True
    assert fill.client_order_id == CID
    assert venue.orders_sent() == (1, 0)
    assert ledger.execution(ORDER)[0] == "filled"


def test_executing_the_same_order_twice_sends_once(paths):
    ledger, venue = Ledger(paths[0]), PaperVenue(paths[1], slippage_bps=10, fee_bps=5)
    ex = Executor(ledger, venue)
    first, sent1 = ex.execute(ORDER)
    second, sent2 = ex.execute(ORDER)
    assert (sent1, sent2) == (True, False)
    assert second == first
    assert first.price == pytest.approx(100.1)  # 10 bps against a buy
    assert first.fee_usd == pytest.approx(50.0 * 100.1 * 0.0005)
    assert venue.orders_sent() == (1, 0)


def test_paper_venue_refuses_a_second_order_under_one_client_id(paths):
    from connectors.venues import Rejected

    def place(order):
        (result,) = venue.place_many([order])
        if isinstance(result, Rejected):
            raise result

    venue = PaperVenue(paths[1])
    place(ORDER)
    with pytest.raises(Rejected, match="duplicate client order id"):
        place(ORDER)
    assert venue.orders_sent() == (1, 1)


def test_dataflow_crash_after_send_then_redelivery_is_resolved_without_sending(tmp_path):
    """The venue accepts the order and the step dies before recording the fill;
    the entry stays pending and is delivered again: the fill is taken from the venue."""
    def place_then_die(orders, place):
        fills = place(orders)
        if len(venue.calls) == 1:
            raise RuntimeError("killed after the venue accepted the order")
        return fills

    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    venue = FakeVenue(p, place_then_die)
    e = entry("1767261601000-0", signal_id="sig-crash")
    col = run_entries(tmp_path, p, [e, e], venues=venue)
    first, again = col.outcomes
    assert (first.outcome, first.terminal) == ("error", False)
    assert first.reason == "RuntimeError: killed after the venue accepted the order"
    assert (again.stream_id, again.outcome, again.terminal) == ("1767261601000-0", "filled", True)
    # the retry goes on from the attempt: what came before was queued with the intent
    assert [(ev.seq, ev.stage, ev.outcome) for ev in again.events] == [
        (4, "EXECUTION_CONFIRMED", "filled"), (5, "TRADE_OPEN", "opened")]
    assert again.events[0].details["resolved_without_send"] is True
    assert venue.sent() == [client_order_id("sig-crash")]  # placed once, never again
    assert paper_orders(p) == (1, 0)
    # the audit trail holds the whole chain once, in order
    rows = audit_query(p, "SELECT seq, stage, outcome, count() FROM audit_events FINAL WHERE signal_id = 'sig-crash'"
                          " GROUP BY seq, stage, outcome ORDER BY seq")
    assert rows == [(i, stage, outcome, 1) for i, (stage, outcome) in enumerate(CHAIN)]


def test_a_checkpoint_makes_the_order_in_flight_durable_and_no_decision_without_its_audit_rows(paths):
    """The checkpoint before a send commits the intent, its "sent" decision and the audit rows
    of how it was decided; a drop
    decided earlier in the batch waits for the batch's commit with its audit rows, so a
    crash between the two leaves neither (the entry is redelivered and decided again)."""
    ledger = Ledger(paths[0])
    ledger.begin()
    ledger.record_decision("sig-drop", "1-0", "dropped", "confidence", 1)
    ledger.rows["filter_drops"].append({"signal_id": "sig-drop"})
    ledger.record_decision("sig-crash", "2-0", "sent", "", 1)
    ledger.sent_rows["audit_events"].append({"signal_id": "sig-crash", "stage": "EXECUTION_ATTEMPT"})
    ledger.record_intent(ORDER)
    ledger.checkpoint()
    ledger.db.close()  # the process dies here: the open transaction is lost
    again = Ledger(paths[0])
    assert again.decided("sig-drop") is None
    queued = [outbox.decode(b) for (b,) in again.db.execute("SELECT rows FROM outbox")]
    assert queued == [{"audit_events": [{"signal_id": "sig-crash", "stage": "EXECUTION_ATTEMPT"}]}]
    assert again.decided("sig-crash").outcome == "sent"
    assert again.execution(ORDER)[0] == "intent"
    assert again.intent("sig-crash") == ORDER


def test_an_open_whose_entry_never_comes_back_is_booked_from_the_venue_at_the_next_start(tmp_path):
    """The venue took the order, the worker died before recording it, and the entry was
    dead-lettered (the venue stayed away through every redelivery). The next start asks
    the venue: the position is booked and the signal's chain completed, nothing sent."""
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    venue = dies_on_send(p, accept=True)
    first = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="sig-crash")], venues=venue)
    assert [(o.outcome, o.terminal) for o in first.outcomes] == [("error", False)]
    later = run_entries(tmp_path, p, [entry("1767261700000-0", signal_id="sig-other", symbol="ETH-USDT")],
                        name="later.jsonl", venues=venue)
    recovered = later.by_signal("sig-crash")
    assert [(o.stream_id, o.outcome) for o in recovered] == [("1767261601000-0", "filled")]
    assert [(ev.seq, ev.stage) for ev in recovered[0].events] == [(4, "EXECUTION_CONFIRMED"), (5, "TRADE_OPEN")]
    assert recovered[0].events[0].details["resolved_without_send"] is True
    assert [o.outcome for o in later.by_signal("sig-other")] == ["filled"]
    assert venue.sent() == [client_order_id("sig-crash"), client_order_id("sig-other")]  # sig-crash placed once
    ledger = Ledger(p.ledger_path)
    assert ledger.decided("sig-crash").outcome == "filled"
    assert [t.signal_id for t in ledger.open_trades()] == ["sig-crash", "sig-other"]
    rows = audit_query(p, "SELECT stage, outcome, count() FROM audit_events FINAL WHERE signal_id = 'sig-crash'"
                          " GROUP BY stage, outcome, seq ORDER BY seq")
    assert rows == [(stage, outcome, 1) for stage, outcome in CHAIN]


def test_an_open_the_venue_never_saw_stays_an_intent_at_start_and_its_redelivery_sends_it_once(tmp_path):
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    venue = dies_on_send(p, accept=False)
    e = entry("1767261601000-0", signal_id="sig-crash")
    run_entries(tmp_path, p, [e], venues=venue)
    later = run_entries(tmp_path, p, [entry("1767261700000-0", signal_id="sig-other", symbol="ETH-USDT")],
                        name="later.jsonl", venues=venue)
    assert later.by_signal("sig-crash") == []  # no position exists: nothing to book
    ledger = Ledger(p.ledger_path)
    assert ledger.execution(_order_of("sig-crash"))[0] == "intent"
    assert ledger.decided("sig-crash").outcome == "sent"
    ledger.close()
    again = run_entries(tmp_path, p, [e], name="again.jsonl", venues=venue)  # its entry, delivered again
    assert [o.outcome for o in again.by_signal("sig-crash")] == ["filled"]
    assert venue.sent().count(client_order_id("sig-crash")) == 2 and paper_orders(p) == (2, 0)  # tried, then placed once


def _order_of(signal_id: str) -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", "okx", "BTC-USDT", "buy", 1.0, 100.0, 0)


def test_a_chain_found_after_the_attempt_goes_on_numbering_from_it():
    from operators.audit import SENT_EVENTS, Chain

    chain = Chain.after_send("1-0", "sig-crash", 5, "macro", "okx", "BTC-USDT")
    chain.add("EXECUTION_CONFIRMED", "filled", ts_ms=9)
    ev = chain.events[0]
    assert (ev.seq, ev.stream_id, ev.signal_id, ev.ts_ms, ev.source, ev.venue, ev.symbol) == (
        SENT_EVENTS, "1-0", "sig-crash", 9, "macro", "okx", "BTC-USDT")


def test_an_outcome_queues_each_event_once_its_chain_before_the_order_leaves_the_rest_after():
    from operators.audit import Chain, Outcome

    chain = Chain("1-0", "sig-crash", 5, "macro", "okx", "BTC-USDT")
    for stage in ("SIGNAL_RECEIVED", "FILTER_CHECK", "POSITION_SIZING", "EXECUTION_ATTEMPT"):
        chain.add(stage, "ok")
    out = Outcome("s", "1-0", "sig-crash", "sent", events=chain.events)
    before = {t: [] for t in outbox.TABLES}
    out.queue(before, 7)
    chain.add("EXECUTION_CONFIRMED", "filled")
    out.executions.append({"signal_id": "sig-crash"})
    after = {t: [] for t in outbox.TABLES}
    out.queue(after, 8)
    assert [(r[2], r[3], r[13]) for r in before["audit_events"]] == [
        (0, "SIGNAL_RECEIVED", 7), (1, "FILTER_CHECK", 7), (2, "POSITION_SIZING", 7), (3, "EXECUTION_ATTEMPT", 7)]
    assert before["executions"] == []
    assert [(r[2], r[3], r[13]) for r in after["audit_events"]] == [(4, "EXECUTION_CONFIRMED", 8)]
    assert after["executions"] == [{"signal_id": "sig-crash"}]
