"""Price protection through `apex run`, with both venues trading at once: OKX through the real
ccxt client against `apex sim okx`, IBKR through the real ib_async client against
`apex sim ibkr`. Every order is a marketable limit (IOC) at its reference ± the band: a venue
price beyond it fills nothing (`price_protection`, with the reference and the venue's price);
a fill booked beyond it anyway is an alert (log, audit, `apex status`); a simulator with no
price for an instrument refuses the order and says how to give it one."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from connectors.sims.ibkr import running as ibkr_running
from connectors.sims.okx import running as okx_running
from helpers import APEX, KELLY_AND_EXECUTE, entry, write_recording
from okx_fixtures import raw
from test_gates import clean_env, no_traceback

REF = {"BTC-USDT": 95_000.0, "ETH-USDT": 3_400.0, "AAPL": 230.0, "MSFT": 430.0}
NO_PRICE = "start it with --prices or --redis"


def _pipeline(tmp: Path, okx_url: str, ibkr_port: int, execute_extra: str = "") -> Path:
    path = tmp / "pipeline.yaml"
    stages = KELLY_AND_EXECUTE + (f"      {execute_extra}\n" if execute_extra else "")
    path.write_text(f"state_dir: {tmp / 'state'}\nvenues:\n  okx: {{kind: okx, url: '{okx_url}'}}\n"
                    f"  ibkr: {{kind: ibkr, port: {ibkr_port}, account: DU1234567}}\nstages:\n{stages}")
    return path


def _recording(tmp: Path, *signals: tuple[str, str, str, str]) -> Path:
    """(signal_id, venue, symbol, side) each, at its symbol's reference price."""
    return write_recording(tmp / "rec.jsonl", [
        entry(f"1767261600000-{i}", signal_id=sid, venue=venue, symbol=symbol, side=side,
              reference_price=REF[symbol], max_position_usd=3400.0)
        for i, (sid, venue, symbol, side) in enumerate(signals)])


def _run(path: Path, rec: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([APEX, "run", str(path), "--source", f"recording:{rec}", "--no-progress"],
                         capture_output=True, text=True, timeout=300,
                         env=clean_env(APEX_ENV="paper", OKX_API_KEY="k", OKX_API_SECRET="s", OKX_API_PASSPHRASE="p"))
    no_traceback(res)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _ledger(tmp: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{tmp / 'state' / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _decisions(tmp: Path) -> dict[str, tuple[str, str]]:
    return {sid: (o, r) for sid, o, r in _ledger(tmp, "SELECT signal_id, outcome, reason FROM decisions")}


def _orders(tmp: Path) -> dict[str, tuple[str, float]]:
    return {sid: (st, q) for sid, st, q in _ledger(tmp, "SELECT signal_id, status, quantity FROM executions"
                                                       " WHERE kind = 'open'")}


def _audit(tmp: Path) -> list[dict]:
    res = subprocess.run([APEX, "audit", "--state-dir", str(tmp / "state"), "--format", "jsonl"],
                         capture_output=True, text=True, timeout=120, env=clean_env())
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def _events(audit: list[dict], signal_id: str, outcome: str) -> list[dict]:
    return [e for e in audit if e.get("signal_id") == signal_id and e.get("outcome") == outcome]


def _details(event: dict) -> dict:
    d = event.get("details")
    return json.loads(d) if isinstance(d, str) else d


def test_a_venue_price_ten_times_the_reference_fills_nothing_at_either_venue_while_in_band_orders_fill(tmp_path):
    """The issue's case: BTC at the venue 10x its reference. Nothing fills, the outcome says
    price_protection with the reference and the venue's price, the book and the venue's
    balances are untouched, and a line is logged; meanwhile in-band orders fill at both
    venues, and MSFT 10x at IBKR is protected the same way."""
    okx_prices = {"BTC-USDT": REF["BTC-USDT"], "ETH-USDT": REF["ETH-USDT"] * 1.001}
    ibkr_prices = {"AAPL": REF["AAPL"] * 0.999, "MSFT": 10 * REF["MSFT"]}
    with okx_running(prices=okx_prices, orders_log=tmp_path / "okx-orders.jsonl") as okx, \
            ibkr_running(prices=ibkr_prices, cash=100_000.0, orders_log=tmp_path / "ibkr-orders.jsonl") as ib:
        # as the issue did it: the venue's BTC moved 10x through its control route, half of each order filling
        assert raw(okx.url, "POST", "/sim/price", {"instId": "BTC-USDT", "px": 10 * REF["BTC-USDT"]})[0] == 200
        assert raw(okx.url, "POST", "/sim/fill-ratio", {"ratio": 0.5})[0] == 200
        path = _pipeline(tmp_path, okx.url, ib.port)
        rec = _recording(tmp_path, ("btc", "okx", "BTC-USDT", "buy"), ("eth", "okx", "ETH-USDT", "buy"),
                         ("aapl", "ibkr", "AAPL", "buy"), ("msft", "ibkr", "MSFT", "buy"),
                         ("btc-later", "okx", "BTC-USDT", "buy"))
        res = _run(path, rec)
        btc_held = okx.sim.book.balances.get("BTC")
        btc_tick = float(okx.sim.book.tick("BTC-USDT"))
        usdt_left = float(okx.sim.book.balances["USDT"])
        okx_fills = [(f["instId"], float(f["fillPx"]) * float(f["fillSz"])) for f in okx.sim.book.fills]

    decided = _decisions(tmp_path)
    # a later BTC signal is judged on its own reference, not on a phantom mark: protected, never price_band
    for sid, venue_px in (("btc", 950_000), ("msft", 4_300), ("btc-later", 950_000)):
        outcome, reason = decided[sid]
        assert outcome == "price_protection", (sid, decided[sid])
        assert f"reference {REF['MSFT' if sid == 'msft' else 'BTC-USDT']:g}" in reason
        assert f"venue price {venue_px:g}" in reason, reason
    assert decided["eth"][0] == decided["aapl"][0] == "filled", decided  # ETH half filled: the rest cancelled
    orders = _orders(tmp_path)
    assert orders["btc"] == ("cancelled", 0.0) and orders["msft"] == ("cancelled", 0.0), orders
    assert orders["eth"][0] == "cancelled" and orders["eth"][1] > 0 and orders["aapl"][0] == "filled"

    # nothing of BTC was bought: no BTC at the venue, no trade in the book, USDT spent on ETH alone
    assert not btc_held
    assert [inst for inst, _ in okx_fills] == ["ETH-USDT"]
    assert usdt_left == pytest.approx(1_000_000 - okx_fills[0][1], abs=1e-6)
    trades = {sid for (sid,) in _ledger(tmp_path, "SELECT signal_id FROM trades")}
    assert trades == {"eth", "aapl"}
    # said in the log, once per protected order
    said = [line for line in res.stderr.splitlines() if "nothing filled within the price band" in line]
    assert len(said) == 3 and sum("BTC-USDT" in line for line in said) == 2 and any("MSFT" in line for line in said)

    audit = _audit(tmp_path)
    (protected,) = _events(audit, "btc", "price_protection")
    assert protected["stage"] == "EXECUTION_CONFIRMED"
    d = _details(protected)
    assert d["reference"] == 95_000.0 and d["venue_price"] == 950_000.0
    # the band's edge (95,475), rounded to the instrument's tick towards the reference
    assert 95_475.0 - btc_tick < d["limit"] <= 95_475.0 and d["limit"] / btc_tick == pytest.approx(
        round(d["limit"] / btc_tick))
    assert not _events(audit, "btc", "opened")


def test_an_order_whose_venue_has_no_price_is_refused_with_the_line_saying_how_to_give_one(tmp_path):
    with okx_running(prices={"ETH-USDT": REF["ETH-USDT"]}) as okx, \
            ibkr_running(prices={"AAPL": REF["AAPL"]}, cash=100_000.0) as ib:
        path = _pipeline(tmp_path, okx.url, ib.port)
        rec = _recording(tmp_path, ("btc", "okx", "BTC-USDT", "buy"), ("msft", "ibkr", "MSFT", "buy"),
                         ("eth", "okx", "ETH-USDT", "buy"), ("aapl", "ibkr", "AAPL", "buy"))
        _run(path, rec)
        assert okx.sim.book.prices.keys() == {"ETH-USDT"}  # refused, never priced on the fly
    decided = _decisions(tmp_path)
    for sid, symbol in (("btc", "BTC-USDT"), ("msft", "MSFT")):
        outcome, reason = decided[sid]
        assert outcome == "rejected" and NO_PRICE in reason and symbol in reason, decided[sid]
    assert decided["eth"][0] == decided["aapl"][0] == "filled"


def test_a_fill_booked_beyond_the_band_is_an_alert_in_the_log_the_audit_and_apex_status(tmp_path, redis_server):
    """A venue price a tenth of the reference: a buy limit does not stop a fill far *below*
    it, so the order fills, and that fill, 90% from the price the decision sized with, is
    an alert. The in-band fill at the other venue is none."""
    with okx_running(prices={"BTC-USDT": REF["BTC-USDT"] / 10}) as okx, \
            ibkr_running(prices={"AAPL": REF["AAPL"]}, cash=100_000.0) as ib:
        path = _pipeline(tmp_path, okx.url, ib.port)
        rec = _recording(tmp_path, ("btc", "okx", "BTC-USDT", "buy"), ("aapl", "ibkr", "AAPL", "buy"))
        res = _run(path, rec)
    assert _decisions(tmp_path)["btc"][0] == "filled"
    alerts = [line for line in res.stderr.splitlines() if "PRICE ALERT" in line]
    # the venue fills at its ask, a spread above the last price of 9,500
    assert len(alerts) == 1 and "BTC-USDT" in alerts[0] and "reference 95000" in alerts[0], res.stderr[-2000:]

    (away,) = _events(_audit(tmp_path), "btc", "price_away")
    filled_at = _details(away)["price"]
    assert filled_at == pytest.approx(9_500.0, rel=1e-3) and _details(away)["reference"] == 95_000.0

    status = subprocess.run([APEX, "status", "--redis", redis_server.url, "--pipeline", str(path), "--json"],
                            capture_output=True, text=True, timeout=60, env=clean_env())
    assert status.returncode == 0, status.stderr
    (alert,) = json.loads(status.stdout)["price_alerts"]
    assert (alert["venue"], alert["symbol"], alert["reference"], alert["price"]) == ("okx", "BTC-USDT", 95_000.0,
                                                                                     filled_at)
    shown = subprocess.run([APEX, "status", "--redis", redis_server.url, "--pipeline", str(path)],
                           capture_output=True, text=True, timeout=60, env=clean_env())
    assert "PRICE ALERTS: 1" in shown.stdout and f"BTC-USDT buy filled at {filled_at:g}, reference 95000" in shown.stdout


def test_a_partial_fill_books_what_filled_and_says_the_rest_was_cancelled(tmp_path):
    with okx_running(prices={"ETH-USDT": REF["ETH-USDT"]}) as okx, \
            ibkr_running(prices={"AAPL": REF["AAPL"]}, cash=100_000.0) as ib:
        okx.sim.book.set_fill_ratio(0.5)
        ib.faults.partial = 0.5
        path = _pipeline(tmp_path, okx.url, ib.port)
        _run(path, _recording(tmp_path, ("eth", "okx", "ETH-USDT", "buy"), ("aapl", "ibkr", "AAPL", "buy")))
    orders = _orders(tmp_path)
    for sid in ("eth", "aapl"):
        outcome, reason = _decisions(tmp_path)[sid]
        assert outcome == "filled" and "the rest was cancelled" in reason, (sid, outcome, reason)
        assert orders[sid][0] == "cancelled" and orders[sid][1] > 0
    (held,) = _ledger(tmp_path, "SELECT quantity FROM trades t JOIN executions e ON e.signal_id = t.signal_id"
                                " WHERE t.signal_id = 'aapl' AND e.kind = 'open'")
    assert held[0] == orders["aapl"][1]


def test_the_paper_venue_applies_the_same_band_to_its_own_fills(tmp_path):
    """A paper venue set to slip more than the band fills nothing: price_protection."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nstages:\n"
                    + KELLY_AND_EXECUTE.replace("slippage_bps: 0", "slippage_bps: 80") + "      max_slippage_bps: 50\n")
    _run(path, _recording(tmp_path, ("btc", "okx", "BTC-USDT", "buy")))
    outcome, reason = _decisions(tmp_path)["btc"]
    assert outcome == "price_protection" and "reference 95000, limit 95475, venue price 95760" in reason, reason
    assert _orders(tmp_path)["btc"][0] == "rejected"  # the paper venue answers at once: nothing rests
    assert not _ledger(tmp_path, "SELECT signal_id FROM trades")


def test_okx_asked_after_an_ioc_it_cancelled_says_price_protection_with_its_price(tmp_path):
    """The in-flight checker's question (after a restart, or an answer lost): an IOC OKX
    cancelled with nothing filled is told as not marketable at its limit, with OKX's price,
    never as a plain refusal."""
    from connectors.venues import Rejected
    from operators.orders import Order, client_order_id
    from operators.protection import is_protection, venue_price_in
    from okx_fixtures import okx_venue

    with okx_running(prices={"BTC-USDT": 10 * REF["BTC-USDT"]}) as okx:
        venue = okx_venue(okx.url)
        try:
            # the band's edge on the instrument's tick (10 at this price), as Apex computes it
            o = Order(client_order_id("asked"), "asked", "open", "okx", "BTC-USDT", "buy", 0.01, 95_000.0, 1,
                      95_470.0)
            venue.place_many([o])
            with pytest.raises(Rejected) as said:
                venue.lookup(o)
        finally:
            venue.close()
        (record,) = okx.sim.book.orders.values()
    assert record["ordType"] == "ioc" and record["px"] == "95470" and record["state"] == "canceled"
    assert is_protection(str(said.value)) and venue_price_in(str(said.value)) == 950_000.0
