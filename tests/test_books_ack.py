"""Several books: a market entry reaches every book, and it is acknowledged only once every
one of them has made its outcome durable, however far one book lags behind the others.

tests/test_books.py checks the ledgers at each acknowledgement too, but there both books
usually commit before the entry reaches the sink anyway, so an entry passed on after its
first book's copy went unnoticed (a mutation review found it). Here one book is held back
on purpose: its first close waits at the venue until the other book's copy of a price fall
has reached the step that gathers the copies. If that step holds the copy back, as it must,
the held book goes on; if it passes the copy on, the held book goes on only once the sink
has it, so the early acknowledgement comes while the held book has nothing durable, and the
acker, which reads every book's ledger at that moment, sees it. No timing decides anything:
each wait is on a condition, its bound only ends a failing run."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import bytewax.operators
from bytewax.testing import cluster_main

from dataflows.apex import wire
from dataflows.config import parse
from helpers import FakeVenue
from operators.signal import VENUES
from test_exits import PRICES, signal, tick

T = 1767261600000
COINS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "ADA-USDT", "LINK-USDT", "DOT-USDT", "LTC-USDT"]
BOOKS = """
state_dir: {state}
books:
  held: {{takes: {{source: macro}}, initial_nav_usd: 1000000}}
  quick: {{takes: {{source: trend_following}}, initial_nav_usd: 1000000}}
stages:
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: 0}}
"""
BOUND_S = 60  # bounds a failure only: every wait below ends as soon as its condition holds
HELD = {f"t{i}" for i in range(len(COINS))}  # the held book's trades


def opening(n: int, ms: int, symbol: str) -> dict:
    """A signal only the held book takes (source macro): a long with a 5% stop."""
    return signal(n, ms, symbol, "buy", 100.0, stop=0.05, regimes=())


def quick_opening(n: int, ms: int, symbol: str) -> dict:
    """A signal only the quick book takes (source trend_following): a long with a 15% stop."""
    e = signal(n, ms, symbol, "buy", 100.0, stop=0.15, regimes=())
    doc = json.loads(e["fields"]["payload"])
    doc["source"] = "trend_following"
    e["fields"]["payload"] = json.dumps(doc)
    return e


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


def _book(path: Path) -> tuple[tuple[int, int] | None, dict[str, str]]:
    """What a book's ledger holds as of its last commit, read on a connection of its own:
    the last market entry it took, and its trades' states."""
    if not path.exists():
        return None, {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT state FROM book").fetchone()
        trades = dict(db.execute("SELECT signal_id, status FROM trades"))
    finally:
        db.close()
    taken = json.loads(row[0])["taken"].get(PRICES) if row else None
    return (tuple(taken) if taken else None), trades


class DurableAcker:
    """The sink's acker: at the moment each entry is acknowledged, reads every book's
    ledger, to see what is durable then. ``on_settle``: told of each entry the sink was
    handed, acknowledged or left pending, once the whole batch was read (the held book must
    not commit in the middle of a reading)."""

    def __init__(self, ledgers: dict[str, Path], on_settle):
        self.ledgers, self.on_settle = ledgers, on_settle
        self.acked: list[str] = []
        self.seen: dict[str, dict] = {}

    def settle(self, outcomes) -> None:
        for o in outcomes:
            if o.terminal and o.stream_id:
                self.acked.append(o.stream_id)
                self.seen[o.stream_id] = {book: _book(path) for book, path in self.ledgers.items()}
        for o in outcomes:
            self.on_settle(o.stream_id)


def run_with_a_held_book(tmp_path: Path, monkeypatch, entries: list[dict], falls: set[str],
                         quick_fails: frozenset[str] = frozenset()) -> DurableAcker:
    """Replay ``entries`` over the two books under two workers, the held book's first close
    held at the venue until the quick book's copy of one of ``falls`` has reached the step
    that gathers the copies; if that step passed it on there and then, until the sink has
    it, so an early acknowledgement comes while the held book has nothing durable.
    ``quick_fails``: the quick book's trades whose close the venue fails, as a dying
    connection does."""
    p = parse(BOOKS.format(state=tmp_path / "state"), tmp_path / "pipeline.yaml", {})
    held_ledger = next(b.ledger_path for b in p.books if b.book == "held")
    go_on = threading.Event()  # the held book may finish its closes
    lagging: list[str] = []  # falls whose quick copy was gathered, or at the sink, before the held book took them
    timed_out: list[str] = []

    def behind(stream_id: str) -> None:
        taken, _ = _book(held_ledger)
        if taken is None or taken < _id(stream_id):
            lagging.append(stream_id)

    def on_settle(stream_id: str) -> None:
        if stream_id in falls and not go_on.is_set():
            behind(stream_id)
            go_on.set()  # the sink has it already: if acknowledged, the acker has read the ledgers

    acker = DurableAcker({b.book: b.ledger_path for b in p.books}, on_settle)
    real_stateful_map = bytewax.operators.stateful_map

    def watched_stateful_map(step_id, up, mapper):
        """The gathering step, watched, its answers unchanged: while the held book is held,
        the only copy of a fall that can reach it is the quick book's."""
        if step_id != "gather":
            return real_stateful_map(step_id, up, mapper)

        def gather(state, o):
            state, out = mapper(state, o)
            if o.stream_id in falls and not go_on.is_set():
                behind(o.stream_id)
                if out is None:  # held back, as it should be: the held book may go on
                    go_on.set()
                # passed on instead: the held book goes on once the sink has it
            return state, out

        return real_stateful_map(step_id, up, gather)

    # dataflows/apex.py builds its gathering with bytewax.operators.stateful_map: watching it
    # is the one way to know the quick copy was held back, the moment the held book may go on
    monkeypatch.setattr(bytewax.operators, "stateful_map", watched_stateful_map)

    def on_send(orders, place):
        for o in orders:
            if o.kind == "close" and o.signal_id in quick_fails:
                raise RuntimeError("connection lost while sending")
            if o.kind == "close" and o.signal_id in HELD and not go_on.wait(BOUND_S):
                timed_out.append(o.signal_id)
                go_on.set()  # the run goes on, failed, without waiting at every close
        return place(orders)

    def venues():
        v = FakeVenue(p, on_send)
        return {market: v for market in VENUES}

    rec = tmp_path / "rec.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
    flow, _ = wire(p, source=f"recording:{rec}", acker=acker, venues=venues)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    # the setting the promise is tested in: the quick book's copy of a fall reached the gathering
    # (or the sink) while the held book had not taken that fall yet
    assert timed_out == [], "the held book waited for a copy of a fall that never came"
    assert lagging, "the quick book's copy of a fall never overtook the held book's"
    return acker


def assert_durable_when_acknowledged(acker: DurableAcker, entries: list[dict]) -> None:
    for e in entries:
        if e["stream"] == PRICES and e["id"] in acker.seen:
            for book, (taken, _) in acker.seen[e["id"]].items():
                assert taken is not None and taken >= _id(e["id"]), f"{e['id']} acknowledged before {book} took it"


def test_a_market_entry_waits_for_the_book_that_lags(tmp_path, monkeypatch):
    """Promise: with several books, a market entry is acknowledged only once every book it
    reached made its outcome durable, even when one book is far behind the others."""
    # the held book opens one trade per coin; later each coin falls 10%, through its stop
    entries = [e for i, coin in enumerate(COINS)
               for e in (tick(T + i, coin, 100.0), opening(i, T + 100 + i, coin))]
    falls = [tick(T + 1000 + 10 * i, coin, 90.0) for i, coin in enumerate(COINS)]
    acker = run_with_a_held_book(tmp_path, monkeypatch, entries + falls, {f["id"] for f in falls})

    assert sorted(acker.acked) == sorted(e["id"] for e in entries + falls), "each entry acknowledged exactly once"
    assert_durable_when_acknowledged(acker, entries + falls)
    for i, fall in enumerate(falls):
        _, trades = acker.seen[fall["id"]]["held"]
        assert trades[f"t{i}"] == "closed", f"{fall['id']} acknowledged before the held book's close was durable"


def test_a_market_entry_one_book_failed_on_stays_pending(tmp_path, monkeypatch):
    """Promise: a market entry is acknowledged as done only if every book's outcome of it
    was; one book's failure (its close lost with the connection) leaves the entry pending,
    to be delivered again, however the other books fared and in whatever order they came."""
    entries = [e for i, coin in enumerate(COINS)
               for e in (tick(T + i, coin, 100.0), opening(i, T + 100 + i, coin))]
    # the quick book holds every coin too, with a wider stop that the fall also goes through
    entries += [quick_opening(100 + i, T + 200 + i, coin) for i, coin in enumerate(COINS)]
    falls = [tick(T + 1000 + 10 * i, coin, 80.0) for i, coin in enumerate(COINS)]
    failing = frozenset(f"t{100 + i}" for i in range(len(COINS)))
    acker = run_with_a_held_book(tmp_path, monkeypatch, entries + falls, {f["id"] for f in falls}, failing)

    assert not {f["id"] for f in falls} & set(acker.acked), "an entry a book failed on was acknowledged"
    assert sorted(acker.acked) == sorted(e["id"] for e in entries), "every other entry acknowledged once"
    assert_durable_when_acknowledged(acker, entries)
