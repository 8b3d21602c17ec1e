"""Slicing's volume from the venues' candles, for symbols whose ticks carry none: the reader
(a thread off the decision path) asks the OKX simulator through the real ccxt client at most
once a minute per symbol and hands each answer to the books; the book's step measures an
order against the latest candle while it is fresh, and against its ticks' volume first."""

from __future__ import annotations

import time

from connectors.candle_volume import WATCHED, CandleReader, Watched
from connectors.venues import VenueDown
from helpers import STREAM, payload, sig
from okx_fixtures import okx_sim, raw  # noqa: F401  (fixtures)
from operators.slicing import MINUTE_MS, CandleVolume
from test_order_events import PRICES, _split
from test_slicing_wake import T0, _entry, _logic


def test_the_reader_asks_each_symbol_once_a_minute_and_tells_every_book(okx_sim):  # noqa: F811
    for px, vol in ((101.0, 2.0), (103.0, 3.5)):
        assert raw(okx_sim.url, "POST", "/sim/price", {"instId": "BTC-USDT", "px": px, "vol": vol})[0] == 200
    bar = okx_sim.venue._here().ex.fetch_ohlcv("BTC/USDT", "1m")[-1]  # the latest minute with a trade
    watched = Watched()
    watched.add("BTC-USDT")
    watched.add("AAPL")  # OKX lists no such instrument: nothing to say of it
    got: list[CandleVolume] = []
    clock = [(bar[0] + MINUTE_MS + 2_000) / 1000]  # just after that minute turned
    reader = CandleReader(lambda: {"okx": okx_sim.venue}, ["a", "b"], got.append, watched, clock=lambda: clock[0])
    assert reader.read_once() == got == [CandleVolume("a", "okx", "BTC-USDT", bar[0], bar[5]),
                                         CandleVolume("b", "okx", "BTC-USDT", bar[0], bar[5])]
    assert bar[5] > 0
    assert reader.read_once() == []  # asked once a minute
    clock[0] += 60
    assert [(e.minute_ms, e.volume) for e in reader.read_once()] == [(bar[0] + MINUTE_MS, 0.0)] * 2  # a quiet one


def test_a_venue_that_cannot_be_asked_is_said_once_and_asked_again_next_minute(caplog):
    class Away:
        def minute_volume(self, market, symbol, now_ms):
            raise VenueDown("away")

    watched = Watched()
    watched.add("BTC-USDT")
    clock = [1_900_000_002.0]
    reader = CandleReader(lambda: {"okx": Away()}, [""], lambda ev: None, watched, clock=lambda: clock[0])
    assert reader.read_once() == [] and reader.read_once() == []
    assert caplog.text.count("could not be read") == 1


def _ticks(p, volume: str | None):
    fields = {"symbol": "BTC-USDT", "price": "100"} | ({"volume": volume} if volume else {})
    return [_entry(p, PRICES, T0 - 50_000 + i * 10_000, dict(fields)) for i in range(5)]


def _order(p, n: int):
    doc = sig(f"sig-{n}", timestamp="2026-01-01T10:00:00.000Z", suggested_kelly=0.05, max_position_usd=3000.0)
    return _entry(p, STREAM, T0 + n, {"payload": payload(doc)})


def test_a_book_without_volume_on_its_ticks_slices_by_a_fresh_candle(tmp_path):
    p, step, logic, wall = _logic(tmp_path)
    now_ms = int(wall[0] * 1000)
    minute = now_ms - now_ms % MINUTE_MS - MINUTE_MS
    # 30 BTC, no volume known: sent whole, and the symbol is watched from its ticks on
    outs, cmds = _split(logic.on_batch([*_ticks(p, None), _order(p, 1)])[0])
    assert [o.outcome for o in outs if o.signal_id == "sig-1"] == ["sent"] and len(cmds) == 1
    assert "BTC-USDT" in WATCHED.symbols()
    # a candle of 200 in the last minute: 5 % is 10, so 30 BTC go as three children
    logic.on_batch([CandleVolume("", "okx", "BTC-USDT", minute, 200.0)])
    outs, cmds = _split(logic.on_batch([_order(p, 2)])[0])
    assert [(o.outcome, o.reason) for o in outs if o.signal_id == "sig-2"] == [("sliced", "3 children over 200 s")]
    assert [c.order.quantity for c in cmds] == [10.0]
    # an older candle told late changes nothing; a candle gone stale is no volume
    logic.on_batch([CandleVolume("", "okx", "BTC-USDT", minute - MINUTE_MS, 1.0)])
    assert step.slicer.minute_volume("BTC-USDT") == 200.0
    wall[0] += 3 * 60
    assert step.slicer.minute_volume("BTC-USDT") is None


def test_the_ticks_volume_comes_before_a_candle(tmp_path):
    p, step, logic, wall = _logic(tmp_path)
    now_ms = int(wall[0] * 1000)
    logic.on_batch([*_ticks(p, "40"), CandleVolume("", "okx", "BTC-USDT", now_ms - now_ms % MINUTE_MS, 1e9)])
    assert step.slicer.minute_volume("BTC-USDT") == 200.0


def test_a_live_run_slices_by_the_simulators_candles_when_its_ticks_carry_no_volume(
        tmp_path, redis_server, monkeypatch):
    """`apex run`'s dataflow on a Redis stream with the OKX simulator: the ticks say no volume,
    the simulator's candles say 200 in the last minute, so 30 BTC leave as children of 10."""
    import json
    import sqlite3
    import threading

    from bytewax.testing import run_main

    from connectors.sims.okx import running
    from dataflows.apex import wire
    from dataflows.config import load
    from helpers import KELLY_AND_EXECUTE, until
    from operators.orders import client_order_id
    from operators.slicing import child_order_id

    for k, v in {"OKX_API_KEY": "k", "OKX_API_SECRET": "s", "OKX_API_PASSPHRASE": "p", "APEX_ENV": "paper"}.items():
        monkeypatch.setenv(k, v)
    log = tmp_path / "okx-orders.jsonl"
    with running(prices={"BTC-USDT": 100.0}, orders_log=log) as okx:
        assert raw(okx.url, "POST", "/sim/price", {"instId": "BTC-USDT", "px": 100.0, "vol": 200.0})[0] == 200
        # the candle of the minute that volume traded in is the last complete one once it has turned
        traded = time.time() * 1000
        assert until(lambda: time.time() * 1000 >= traded - traded % MINUTE_MS + MINUTE_MS + 500, 70)
        path = tmp_path / "pipeline.yaml"
        path.write_text(f"source: {redis_server.url}\nstate_dir: {tmp_path / 'state'}\n"
                        f"venues:\n  okx: {{kind: okx, url: '{okx.url}'}}\nstages:\n{KELLY_AND_EXECUTE}"
                        "      slicing: {max_volume_share: 0.05, window_s: 300}\n")
        p = load(path)
        flow, wiring = wire(p)
        r = redis_server.client()
        seen: dict = {}
        first = child_order_id(client_order_id("sig-1"), 0)

        def decided(sid: str) -> str | None:
            if not p.ledger_path.exists():
                return None
            db = sqlite3.connect(f"file:{p.ledger_path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT outcome || ' ' || reason FROM decisions WHERE signal_id = ?",
                                 (sid,)).fetchone()
            except sqlite3.OperationalError:
                return None
            finally:
                db.close()
            return row[0] if row else None

        def signal(sid: str) -> None:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            doc = sig(sid, timestamp=now, ttl_seconds=3600, venue="okx", symbol="BTC-USDT", reference_price=100.0,
                      suggested_kelly=0.05, max_position_usd=3000.0)
            r.xadd(STREAM, {"payload": payload(doc)})

        def drive() -> None:
            try:
                r.xadd(p.prices.stream, {"symbol": "BTC-USDT", "price": "100"})  # no volume: watched
                seen["candle"] = until(lambda: wiring.candles.told > 0 and wiring.gateway.events.empty(), 30)
                signal("sig-1")
                seen["sliced"] = until(lambda: decided("sig-1") is not None, 30) and decided("sig-1")
                seen["child"] = until(lambda: log.exists() and any(
                    json.loads(line)["clOrdId"] == first for line in log.read_text().splitlines()), 30)
            finally:
                wiring.stop()

        helper = threading.Thread(target=drive)
        helper.start()
        try:
            run_main(flow)
        finally:
            helper.join(120)
            wiring.close()
    assert seen == {"candle": True, "sliced": "sliced 3 children over 200 s", "child": True}, seen
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert [float(d["sz"]) for d in sent if d["clOrdId"] == first] == [10.0]
