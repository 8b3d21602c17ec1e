"""Promises the README makes that only a randomised test, or none, guarded: each test
here names the promise it guards and fails when the promise breaks."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

from bytewax.testing import run_main
from typer.testing import CliRunner

import apex.cli

from connectors.clickhouse import AuditStore
from connectors.ledger import Ledger
from connectors.redis_streams import RedisAcker
from connectors.venues.paper import PaperVenue
from dataflows.apex import wire
from dataflows.config import parse
from operators.orders import Order, client_order_id
from tests.helpers import Collector, paper_orders, payload, sig, until
from tests.test_exits import MIN, PIPELINE, T0, replay, signal, tick


class DurabilityCheckingAcker:
    """The real acker, asked first what another process would find in the ledger at the
    moment each entry is acknowledged."""

    def __init__(self, inner: RedisAcker, ledger_path):
        self.inner, self.ledger_path = inner, ledger_path
        self.acked_before_durable: list[str] = []
        self.acked: list[str] = []

    def settle(self, outcomes) -> None:
        db = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=10)
        try:
            for o in outcomes:
                if not (o.terminal and o.stream_id and o.signal_id) or o.outcome == "invalid":
                    continue
                row = db.execute("SELECT stream_id FROM decisions WHERE signal_id = ?", (o.signal_id,)).fetchone()
                (self.acked if row else self.acked_before_durable).append(o.signal_id)
        finally:
            db.close()
        self.inner.settle(outcomes)


def test_an_entry_is_acknowledged_only_once_its_decision_is_committed(tmp_path, redis_server):
    """Promise: acknowledge only after the outcome is durable. At the moment the sink
    acknowledges, another connection to the ledger already sees every acknowledged
    entry's decision: a commit moved after the acknowledgement fails this."""
    r = redis_server.client()
    for i in range(40):
        doc = sig(f"d{i}", timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), ttl_seconds=3600,
                  confidence=0.9 if i % 2 else 0.1)
        r.xadd("argus:signals:stream", {"payload": payload(doc)})
    p = parse(f"state_dir: {tmp_path / 'state'}\nsource: {redis_server.url}\nredis: {{count: 7}}\n"
              "stages:\n  - filter: confidence\n  - size: kelly\n  - execute: {venue: paper}\n",
              tmp_path / "pipeline.yaml", {})
    acker = DurabilityCheckingAcker(RedisAcker(p.redis.model_copy(update={"url": redis_server.url})),
                                    p.ledger_path)
    flow, _ = wire(p, observer=Collector(), redis_overrides={"stop_when_idle_ms": 300}, acker=acker)
    run_main(flow)
    assert acker.acked_before_durable == []
    assert sorted(acker.acked) == sorted(f"d{i}" for i in range(40))
    assert r.xpending("argus:signals:stream", "apex-consumer")["pending"] == 0


def test_a_close_caught_in_the_crash_window_is_finished_at_start_without_a_second_order(tmp_path):
    """Promise: a close whose intent was recorded but whose outcome was not (the process
    died around the send) is finished when the book is rebuilt, by asking the venue:
    the venue's fill closes the trade, and no second close order is sent."""
    seen, trades, _, _, state = replay(tmp_path, [signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.05)])
    assert "t1" not in trades
    ledger, venue = Ledger(state / "ledger.sqlite"), PaperVenue(state / "paper-venue.sqlite")
    (terms,) = ledger.open_trades()
    close = Order(client_order_id("t1", "close"), "t1", "close", "okx", "BTC-USDT", "sell", terms.quantity,
                  94.0, T0 + 100)
    ledger.begin()
    ledger.record_intent(close, "hard_stop")
    ledger.commit()
    venue.place_many([close])  # the venue took it; the process died before recording the fill
    ledger.close()
    venue.db.close()

    seen, trades, _, closed, _ = replay(tmp_path, [tick(T0 + 200, "ETH-USDT", 50.0)])  # the restart
    assert trades["t1"]["exit_reason"] == "hard_stop"
    assert trades["t1"]["exit_price"] == 94.0
    assert PaperVenue(state / "paper-venue.sqlite").orders_sent() == (2, 0)  # the open and one close
    assert [o.outcome for o in seen if o.signal_id == "t1"] == ["closed"]


def test_a_close_intent_the_venue_never_saw_is_sent_once_at_start(tmp_path):
    """The same crash window, the process having died before the close left: asked, the
    venue knows nothing of it, so it is sent now, once."""
    _, _, _, _, state = replay(tmp_path, [signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.05)])
    ledger = Ledger(state / "ledger.sqlite")
    (terms,) = ledger.open_trades()
    ledger.begin()
    ledger.record_intent(Order(client_order_id("t1", "close"), "t1", "close", "okx", "BTC-USDT", "sell",
                               terms.quantity, 94.0, T0 + 100), "hard_stop")
    ledger.commit()
    ledger.close()
    _, trades, _, _, _ = replay(tmp_path, [tick(T0 + 200, "ETH-USDT", 50.0)])
    assert trades["t1"]["exit_reason"] == "hard_stop"
    assert PaperVenue(state / "paper-venue.sqlite").orders_sent() == (2, 0)



def _losers_and_a_volatile_market() -> list[dict]:
    """Six trades closed at a loss (the KellyTracker's multiplier falls to its floor), then
    a held position whose price swings every minute (the book's volatility passes the
    haircut's threshold) and ends below its peak (a drawdown)."""
    out = []
    for i, sym in enumerate(["SOL-USDT", "XRP-USDT", "ADA-USDT", "DOT-USDT", "LTC-USDT", "LINK-USDT"]):
        out += [signal(10 + i, T0 + 10 * i, sym, "buy", 100.0, stop=0.05), tick(T0 + 10 * i + 5, sym, 90.0)]
    out.append(signal(1, T0 + 100, "BTC-USDT", "buy", 100.0, stop=0.9, kelly=0.3, cap=1e6))
    for m in range(1, 11):
        out.append(tick(T0 + 100 + m * MIN, "BTC-USDT", 100.0 * (1.08 if m % 2 else 0.93)))
    return out


def test_a_restart_sizes_the_next_signal_as_the_run_would_have_gone_on(tmp_path):
    """Promise: a restart rebuilds the book from the ledger: the KellyTracker's window, the
    marks, the peak NAV and the volatility from the price series, so the next signal is
    sized as if the process had never stopped (each sizing factor and the size)."""
    after = signal(2, T0 + 100 + 12 * MIN, "ETH-USDT", "buy", 50.0, kelly=0.05, cap=1e6)
    _, _, straight, _, _ = replay(tmp_path / "straight", _losers_and_a_volatile_market() + [after])
    replay(tmp_path / "restarted", _losers_and_a_volatile_market())
    _, _, restarted, _, _ = replay(tmp_path / "restarted", [after])
    factors = ("vol", "vol_factor", "drawdown", "drawdown_factor", "tracker_multiplier", "nav", "kelly", "size_usd")
    expected = {k: straight["t2"][k] for k in factors}
    assert expected["vol_factor"] == 0.7 and expected["tracker_multiplier"] == 0.5  # the test's premise
    assert expected["drawdown"] > 0
    assert {k: restarted["t2"][k] for k in factors} == expected


def test_a_market_entry_delivered_again_is_not_applied_twice(tmp_path):
    """Promise: a market entry the book already took (its acknowledgement lost, so Redis
    hands it out again, in this run or after a restart) neither marks the book over newer
    prices nor fires an exit a second time."""
    held = signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.05)
    seen, trades, _, _, _ = replay(tmp_path, [held, tick(T0 + 10, "BTC-USDT", 93.0, seq=0),
                                              tick(T0 + 20, "BTC-USDT", 101.0), tick(T0 + 10, "BTC-USDT", 93.0)])
    assert [o.reason for o in seen if o.outcome == "tick"] == ["", "", "already applied"]
    assert [o.outcome for o in seen if o.signal_id == "t1"] == ["filled", "closed"]  # one close, not two

    again = signal(2, T0 + 30, "ETH-USDT", "buy", 100.0, stop=0.05)
    _, _, _, _, _ = replay(tmp_path / "b", [again, tick(T0 + 40, "ETH-USDT", 99.0)])
    seen, trades, _, _, _ = replay(tmp_path / "b", [tick(T0 + 40, "ETH-USDT", 90.0)])  # after a restart
    assert [(o.outcome, o.reason) for o in seen] == [("tick", "already applied")]
    assert "t2" not in trades


def test_while_the_audit_store_is_down_entries_stay_pending_and_nothing_new_is_read(tmp_path, redis_server):
    """Promise: once the audit store fails and the outbox backlog passes its bound, entries
    are left pending instead of acknowledged and the worker takes nothing new (so no entry
    climbs towards the dead-letter limit); once the store is back, every entry is decided
    once, acknowledged, and its audit chain reaches the store."""
    from connectors.outbox import Shipper, connect_state

    state = tmp_path / "state"
    state.mkdir()
    blocker = state / "clickhouse"
    blocker.write_text("a file where the embedded store's folder should be: it cannot open")
    r = redis_server.client()
    p = parse(f"state_dir: {state}\nsource: {redis_server.url}\nredis: {{count: 4, claim_idle_ms: 100}}\n"
              "stages:\n  - filter: confidence\n  - size: kelly\n  - execute: {venue: paper}\n",
              tmp_path / "pipeline.yaml", {})
    obs = Collector()
    flow, wiring = wire(p, observer=obs, shipper=Shipper(p.ledger_path, p.clickhouse_dsn, max_backlog=2))
    during: dict = {}
    group = lambda: (r.xinfo_groups("argus:signals:stream") or [{"pending": 0, "lag": None}])[0]  # noqa: E731

    def outage_then_recovery() -> None:
        try:
            shipped = connect_state(p.ledger_path)
            during["failing"] = until(lambda: not shipped.execute("SELECT healthy FROM outbox_state").fetchone()[0])
            for i in range(40):
                doc = sig(f"b{i}", timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), ttl_seconds=3600,
                          confidence=0.9 if i % 2 else 0.1)
                r.xadd("argus:signals:stream", {"payload": payload(doc)})
            during["paused"] = until(lambda: wiring.source.stats["paused"] >= 10 and any(
                not o.terminal and "audit store unavailable" in o.reason for o in list(obs.outcomes)))
            g = group()
            during.update(pending=g["pending"], lag=g["lag"], dead=r.xlen("argus:signals:dead"))
            blocker.unlink()
            during["drained"] = until(lambda: group()["pending"] == 0 and group()["lag"] == 0)
        finally:
            wiring.stop()

    helper = threading.Thread(target=outage_then_recovery)
    helper.start()
    run_main(flow)
    helper.join()
    assert during["failing"] and during["paused"] and during["drained"], during
    assert during["pending"] > 0 and during["lag"] > 0 and during["dead"] == 0, during
    assert r.xlen("argus:signals:dead") == 0
    store = AuditStore(p.clickhouse_dsn)
    try:
        decided = dict(store.query("SELECT signal_id, count() FROM audit_events FINAL"
                                   " WHERE stage = 'SIGNAL_RECEIVED' GROUP BY signal_id"))
    finally:
        store.close()
    assert decided == {f"b{i}": 1 for i in range(40)}
    assert paper_orders(p) == (20, 0)
    assert len({o.signal_id for o in obs.outcomes if o.outcome == "filled" and o.terminal}) == 20


def test_an_unknown_apex_env_is_refused_before_anything_runs(tmp_path):
    """Promise (README): live trading never starts by accident. An APEX_ENV that is neither
    paper nor live ends `apex run` with exit 2 and says why, before the pipeline's state dir
    is touched."""
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps(signal(1, T0, "BTC-USDT", "buy", 100.0)) + "\n")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"source: recording:{rec}\n"
                        + PIPELINE.format(state=tmp_path / "state", fee=0, alert="false"))
    res = CliRunner().invoke(apex.cli.app, ["run", str(pipeline), "--no-progress"], env={"APEX_ENV": "staging"})
    assert res.exit_code == 2, res.output
    assert "APEX_ENV must be paper or live, not 'staging'" in " ".join(res.output.split())
    assert not (tmp_path / "state").exists()
