"""Slicing in the book's step: an order too large for its symbol's volume becomes a plan
(``operators/slicing.py``) kept in the ledger (``connectors/slicing_plans.py``), and each
child leaves as an opening order of its own when it falls due.

The schedule runs on the stream's clock, like the exits: each entry the book takes (a
signal, a tick) releases the children due by its time, so a replay slices as a live run
does. A child is an order with its own signal id (the parent's, ``#`` and its index) and
its own trade, so the ledger keeps one order per signal and kind as it always has; its
client order id is derived from the parent's. Its release is settled in the batch's
transaction with its intent: a restart resumes the schedule and never sends a child
twice. A child due while the book is HALTED or REDUCING is not sent (``halted``), and the
kill switch marks every unsent child so at once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping

from connectors.candle_volume import WATCHED, CandleReader
from connectors.sender import Gateway
from connectors.venues import Venue

from connectors.slicing_plans import SlicePlans
from dataflows.desk import Desk
from dataflows.opens import Opens
from operators import audit_rows as R
from operators.audit import EXECUTION_ATTEMPT, SLICED, Chain, Event, Outcome
from operators.market import Tick
from operators.orders import Order
from operators.portfolio import Portfolio
from operators.protection import limit_price
from operators.signal import Signal
from operators.slicing import SEND, CandleVolume, MinuteVolume, SlicingParams, TooThin, needs_slicing, plan
from operators.trading_state import ACTIVE, KILL, TRADING_STATE


class Slicer:
    def __init__(self, desk: Desk, opens: Opens, params: SlicingParams, wall: Callable[[], float] = time.time):
        """``wall``: the wall clock (seconds), which a venue's candles are on."""
        self.desk, self.opens, self.p, self.wall = desk, opens, params, wall
        self.volume = MinuteVolume()  # from the price stream's ticks; not kept: a minute refills it
        self.candles: dict[str, CandleVolume] = {}  # symbol -> a venue's latest candle (connectors/candle_volume.py)
        self._plans: SlicePlans | None = None
        # what the book was last told of the children not sent yet: (the book, its trading state);
        # None: tell it again (a new plan, a child released, a restart)
        self._told: tuple[int, str] | None = None

    @property
    def plans(self) -> SlicePlans:
        if self._plans is None:  # on the ledger's connection: in its transactions
            self._plans = SlicePlans(self.desk.ledger.db)
        return self._plans

    def on_tick(self, tick: Tick, clock_ms: int) -> None:
        if tick.volume is not None and tick.symbol is not None and tick.price is not None:
            self.volume.add(tick.symbol, clock_ms, tick.volume)
        elif tick.symbol is not None and tick.price is not None:
            WATCHED.add(tick.symbol)  # no volume on its ticks: the venues' candles are asked

    def on_candle(self, ev: CandleVolume) -> None:
        held = self.candles.get(ev.symbol)
        if held is None or ev.minute_ms >= held.minute_ms:
            self.candles[ev.symbol] = ev

    def minute_volume(self, symbol: str) -> float | None:
        """The symbol's last-minute volume: its ticks' when they carry it, else the latest
        candle a venue reported while it is fresh (on the wall clock, the candles' own)."""
        vol = self.volume.last_minute(symbol)
        if vol is not None:
            return vol
        candle = self.candles.get(symbol)
        return candle.volume if candle is not None and candle.fresh(int(self.wall() * 1000)) else None

    def slice(self, out: Outcome, chain: Chain, order: Order, sig: Signal, lot: float, tick: float,
              clock_ms: int) -> Outcome | None:
        """The parent's outcome when ``order`` is too large to go whole, else None."""
        if self.desk.executor.state() != ACTIVE:
            return None  # the trading state judges it whole, as any order (refused, or a reduction let out)
        vol = self.minute_volume(order.symbol)
        if vol is None:
            WATCHED.add(order.symbol)  # sent whole this time; its venue's candles are asked from now on
        if not needs_slicing(order.quantity, vol, self.p.max_volume_share):
            return None
        assert vol is not None
        try:
            pl = plan(order.client_order_id, order.quantity, order.price, vol, clock_ms, self.p, lot)
        except TooThin as why:
            R.rejected(chain, f"too large for its market: {why}")
            out.outcome, out.reason = "rejected", f"too large for its market: {why}"
            return self.desk.record(out)
        self.plans.keep_parent(pl.parent_id, json.dumps({
            "signal": sig.model_dump(mode="json"), "venue": order.venue, "symbol": order.symbol,
            "side": order.side, "price": order.price, "tick": tick}))
        self.plans.record(pl, order.symbol)
        self._told = None  # the whole parent counts in the book's exposure from now on
        span_s = (pl.children[-1].due_ms - clock_ms) / 1000
        out.outcome, out.reason = SLICED, f"{len(pl.children)} children over {span_s:g} s"
        chain.add(EXECUTION_ATTEMPT, SLICED, out.reason, children=len(pl.children), minute_volume=vol,
                  max_volume_share=self.p.max_volume_share,
                  children_ids=[c.client_order_id for c in pl.children])
        return self.desk.record(out)

    def due(self, book: Portfolio, clock_ms: int, outs: list[Outcome]) -> None:
        """Every child due by ``clock_ms`` handed to the opening orders (sent with the batch)."""
        if self._plans is None and not self._has_plans():
            return
        trading = self.desk.executor.state()
        if self._told != (id(book), trading):  # a kill (a change of state) may have halted children
            self._tell(book)
        released = self.plans.release(clock_ms, self.minute_volume, self.p.max_volume_share, trading != ACTIVE)
        if released:
            self._tell(book)  # before the children leave: each reserves its own share as it goes
        for parent_id, child, fate in released:
            doc = json.loads(self.plans.parent(parent_id) or "{}")
            sig = Signal.model_validate(doc["signal"])
            if fate != SEND:  # said on the parent: its outcome is the sum of its children's
                # no entry owns it: named by its child, as a command's events are by the command
                ev = Chain(f"slicing:{child.client_order_id}", sig.signal_id, clock_ms, sig.source, doc["venue"],
                           doc["symbol"]).add(
                    EXECUTION_ATTEMPT, "not_sent", fate, child=child.index, client_order_id=child.client_order_id,
                    quantity=child.quantity)
                self.desk.ledger.rows["audit_events"].append(ev.as_row(clock_ms))
                continue
            child_sid = f"{sig.signal_id}#{child.index}"
            csig = sig.model_copy(update={"signal_id": child_sid})
            price = book.marks.get(doc["symbol"], doc["price"])
            order = Order(child.client_order_id, child_sid, "open", doc["venue"], doc["symbol"], doc["side"],
                          child.quantity, price, clock_ms,
                          limit_price(doc["side"], price, self.desk.p.execute.max_slippage_bps, doc["tick"]))
            chain = Chain("", child_sid, clock_ms, sig.source, order.venue, order.symbol)
            R.attempt(chain, order, self.desk.executor.venue_for(order.venue).name,
                      f"child {child.index} of {parent_id}", size_usd=child.quantity * price)
            out = Outcome("", "", child_sid, "sent", "", chain.events)
            outs.append(self.opens.open(book, out, chain, order, csig, fresh=True))

    def _tell(self, book: Portfolio) -> None:
        """The book's exposure counts every sliced order's children not sent yet as if they
        had filled at the book's marks: another signal's filters (concentration, gross, a
        sector) cannot take the room the rest of a parent already holds."""
        unsent: dict[tuple[str, str], tuple[float, float]] = {}
        for parent_id, symbol, quantity in self.plans.unsent():
            doc = json.loads(self.plans.parent(parent_id) or "{}")
            key = (doc.get("venue", ""), symbol)
            signed = quantity if doc.get("side") == "buy" else -quantity
            held, _ = unsent.get(key, (0.0, 0.0))
            unsent[key] = (held + signed, float(doc.get("price", 0.0)))
        book.unsent = unsent
        self._told = (id(book), self.desk.executor.state())

    def next_due_ms(self) -> int | None:
        return self.plans.next_due_ms()

    def _has_plans(self) -> bool:
        return self.desk.ledger.db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'slices'").fetchone() is not None



def halt_children(db: sqlite3.Connection, trigger: str, now_ms: int) -> list[Event]:
    """The kill switch, in a worker's step or without one (``dataflows/kill.py``): no child
    not sent yet will be. One audit event per parent, saying how much was not sent."""
    plans = SlicePlans(db)
    out = []
    for pid, quantity in plans.halt().items():
        sid = json.loads(plans.parent(pid) or "{}").get("signal", {}).get("signal_id", "")
        out.append(Chain(trigger, sid, now_ms).add(TRADING_STATE, "halted", KILL, unsent_children_quantity=quantity))
    return out


def start_candles(books: list, venues: Mapping[str, Venue], gateway: Gateway) -> CandleReader | None:
    """The candle reader of a pipeline whose books slice (None otherwise): its words queued
    for the books' steps. ``venues``: the real venues shared by the books, as they are opened."""
    slicing = [b.book for b in books if b.execute.slicing is not None]
    if not slicing:
        return None
    return CandleReader(lambda: dict(venues), slicing, gateway.events.put, done=lambda: gateway.closed).start()
