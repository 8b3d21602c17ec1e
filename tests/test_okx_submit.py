"""``OkxVenue.submit`` as the engine's sender thread uses it, against the loopback simulator
through the real ccxt client: an order OKX already holds (51016) inside a batch of new
ones is what OKX holds, never a refusal; several threads send at once; ``cancel``."""

from __future__ import annotations

import threading

import pytest

from connectors.venues import CANCELLED, FILLED, REJECTED, OrderUpdate
from helpers import until
from okx_fixtures import PRICES, held, okx_sim, okx_venue, order, raw  # noqa: F401
from operators.fill import Fill


def _place_elsewhere(url: str, o, px: float | None = None) -> str:
    """The order placed by someone else (another process, or an answer this one lost); a
    limit order resting at ``px`` if given."""
    body = {"instId": o.symbol, "tdMode": "cash", "side": o.side, "ordType": "market", "sz": str(o.quantity),
            "tgtCcy": "base_ccy", "clOrdId": o.client_order_id}
    if px is not None:
        body |= {"ordType": "limit", "px": str(px)}
    _, answer = raw(url, "POST", "/api/v5/trade/order", body)
    assert answer["code"] == "0"
    return answer["data"][0]["ordId"]


def test_a_duplicated_client_order_id_in_a_mixed_batch_is_what_okx_holds(okx_sim):
    """OKX answers the batch with code 2: two orders placed, one refused 51016 (an order under
    its clOrdId is there already). ccxt raises nothing: that order comes back as a parsed
    order marked rejected. It is looked up and told as OKX holds it; it is never refused,
    and never sent a third time. OKX refuses a clOrdId only while an order under it is open:
    the one placed elsewhere rests (a limit buy below the ask) until the price comes to it."""
    venue = okx_venue(okx_sim.url, fill_wait_s=60)  # the resting order is not cancelled meanwhile
    dup, new1, new2 = order("dup-held"), order("dup-new1", symbol="ETH-USDT"), order("dup-new2")
    ord_id = _place_elsewhere(okx_sim.url, dup, px=100.0)
    told: list[OrderUpdate] = []
    venue.on_update = told.append
    try:
        acks = venue.submit([new1, dup, new2])
        assert [(a.client_order_id, a.accepted, a.unknown) for a in acks] == [
            (new1.client_order_id, True, False), (dup.client_order_id, True, False),
            (new2.client_order_id, True, False)]
        okx_sim.server.set_price("BTC-USDT", 99.9)  # the ask falls to 99.91: the resting buy fills at 100
        assert until(lambda: {u.client_order_id for u in told if u.status == FILLED} == {
            o.client_order_id for o in (new1, dup, new2)}, 10)
    finally:
        venue.close()
    (dup_fill,) = [u for u in told if u.client_order_id == dup.client_order_id and u.status == FILLED]
    assert dup_fill.fill.order_id == ord_id and dup_fill.fill.quantity == pytest.approx(0.5 * (1 - 0.0008))
    assert dup_fill.fill.price == 100.0  # a maker's fill, at its own price
    assert REJECTED not in {u.status for u in told}
    assert okx_sim.server.placements()[dup.client_order_id] == 2  # elsewhere, then in the batch: refused
    assert [line["clOrdId"] for line in okx_sim.logged()].count(dup.client_order_id) == 1


@pytest.mark.parametrize("fault", ["drop", "code_50004", "hang"])
def test_an_order_taken_without_an_answer_comes_back_unknown_never_raised(okx_sim, fault):
    """OKX takes the order, then the connection drops, or it answers 50004, or it answers
    after the client gave up: ``submit`` says unknown (it never raises for an order that
    may be at OKX), and ``lookup`` finds the fill; it was sent once."""
    venue = okx_venue(okx_sim.url, timeout_ms=300)
    okx_sim.server.arm(fault)
    o = order("unk-" + fault.replace("_", ""))
    (ack,) = venue.submit([o])
    assert (ack.accepted, ack.unknown, ack.sent) == (False, True, True) and ack.reason
    fill = venue.lookup(o)
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(held(0.5))
    assert okx_sim.server.placements() == {o.client_order_id: 1}
    venue.close()


def test_several_sender_threads_submit_at_once(okx_sim):
    """Four threads, an instrument each, forty orders each, sent at the same moment: every
    order is taken once, filled, and told once as filled."""
    venue = okx_sim.venue
    told: list[OrderUpdate] = []
    lock = threading.Lock()

    def keep(u: OrderUpdate) -> None:
        with lock:
            told.append(u)

    venue.on_update = keep
    symbols = sorted(PRICES)[:4]
    batches = [[order(f"t{n}x{i}", symbol=sym, quantity=0.01) for i in range(40)] for n, sym in enumerate(symbols)]
    start = threading.Barrier(len(batches))
    acks: dict[int, list] = {}

    def send(n: int) -> None:
        start.wait()
        acks[n] = venue.submit(batches[n])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a.accepted for n in acks for a in acks[n]) and len(acks) == len(batches)
    every = {o.client_order_id for b in batches for o in b}
    assert until(lambda: {u.client_order_id for u in list(told) if u.status == FILLED} == every, 30)
    filled = [u.client_order_id for u in told if u.status == FILLED]
    assert sorted(filled) == sorted(every)  # each told filled once
    assert okx_sim.server.placements() == {cid: 1 for cid in every}
    assert okx_sim.server.stats()["rate_limited"] == 0


def test_cancel_leaves_the_fill_and_tells_the_end(okx_sim):
    """An order half filled and still working is cancelled on request: its end is told, with
    what filled; an order of a previous run, never submitted here, is told the same way."""
    okx_sim.server.set_fill_ratio(0.5)
    venue = okx_venue(okx_sim.url, fill_wait_s=600)  # nothing cancelled by the venue's own bound
    mine, older = order("cx-mine"), order("cx-older")
    _place_elsewhere(okx_sim.url, older)
    assert venue.submit([mine])[0].accepted
    told: list[OrderUpdate] = []
    venue.on_update = told.append
    for o in (mine, older):
        venue.cancel(o)
    ends = lambda: {u.client_order_id: u for u in told if u.status == CANCELLED}  # noqa: E731
    assert until(lambda: len(ends()) == 2, 10)
    for o in (mine, older):
        assert ends()[o.client_order_id].fill.quantity == pytest.approx(held(0.25))
    assert venue.open_orders() == []
    venue.close()
