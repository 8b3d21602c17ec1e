"""A batch's signal_ids are looked up in one query (``Ledger.prefetch``); what it found must
never hide a decision written since, within the batch or after it."""

from __future__ import annotations

from connectors.ledger import PREFETCH, Ledger


def _decide(ledger: Ledger, signal_id: str, stream_id: str, outcome: str) -> None:
    ledger.record_decision(signal_id, stream_id, outcome, "", 1)


def test_prefetch_answers_for_decided_and_new_signals(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.begin()
    _decide(ledger, "sig-old", "1-0", "dropped")
    ledger.commit()

    ledger.begin()
    ledger.prefetch(["sig-old", "sig-new", "sig-old"])
    old = ledger.decided("sig-old")
    assert (old.stream_id, old.outcome) == ("1-0", "dropped")
    assert ledger.decided("sig-new") is None
    ledger.commit()
    ledger.close()


def test_a_decision_flushed_mid_batch_is_seen_by_a_later_entry_of_the_batch(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.begin()
    ledger.prefetch(["sig-a"])
    assert ledger.decided("sig-a") is None
    _decide(ledger, "sig-a", "1-0", "sent")
    ledger.checkpoint()  # the "sent" decision leaves the buffer for the table, before its order is sent
    seen = ledger.decided("sig-a")
    assert seen is not None and (seen.stream_id, seen.outcome) == ("1-0", "sent")
    ledger.commit()
    ledger.close()


def test_what_a_batch_prefetched_is_forgotten_at_its_commit(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.begin()
    ledger.prefetch(["sig-b"])
    ledger.commit()
    other = Ledger(path)  # e.g. a test or tool writing between batches
    other.begin()
    _decide(other, "sig-b", "2-0", "expired")
    other.commit()
    other.close()
    ledger.begin()
    seen = ledger.decided("sig-b")
    assert seen is not None and seen.outcome == "expired"
    ledger.commit()
    ledger.close()


def test_more_ids_than_one_query_binds_are_all_looked_up(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ids = [f"sig-{i}" for i in range(PREFETCH * 2 + 7)]
    ledger.begin()
    for i, sid in enumerate(ids[::3]):
        _decide(ledger, sid, f"{i}-0", "dropped")
    ledger.commit()
    ledger.begin()
    ledger.prefetch(ids)
    assert {sid for sid in ids if ledger.decided(sid) is not None} == set(ids[::3])
    ledger.commit()
    ledger.close()


def test_an_opening_order_written_after_the_prefetch_is_what_the_next_check_reads(tmp_path):
    """The idempotency check reads the batch's prefetched orders: an intent, a fill and a
    refusal written since must each replace what the prefetch found."""
    from operators.fill import Fill
    from operators.orders import Order, client_order_id

    def order(sid: str) -> Order:
        return Order(client_order_id(sid), sid, "open", "okx", "BTC-USDT", "buy", 1.0, 100.0, 1)

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.begin()
    ledger.record_intent(order("sig-old"))
    ledger.commit()

    ledger.begin()
    ledger.prefetch(["sig-old", "sig-x", "sig-y"])
    assert ledger.execution(order("sig-old"))[0] == "intent"
    assert ledger.execution(order("sig-x")) is None
    ledger.record_intent(order("sig-x"))
    assert ledger.execution(order("sig-x"))[0] == "intent"
    ledger.record_fill(Fill("sig-x", client_order_id("sig-x"), "v-1", "okx", "BTC-USDT", "buy", 1.0, 101.0, 0.1, 2))
    assert ledger.execution(order("sig-x"))[:3] == ("filled", "v-1", 101.0)
    ledger.record_intent(order("sig-y"))
    ledger.execution(order("sig-y"))
    ledger.record_rejection(order("sig-y"), "insufficient margin")
    assert ledger.execution(order("sig-y"))[:2] == ("rejected", "insufficient margin")
    ledger.commit()
    ledger.close()
