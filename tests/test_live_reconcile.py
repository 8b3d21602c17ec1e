"""Reconciliation while running and the clock check: the thresholds (pure, with
properties), then the comparison against the real OKX and IBKR simulators through the real
ccxt and ib_async clients, with a real redis-server for the control stream and the status."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apex.safety_view import safety_lines, safety_status
from connectors import metrics
from connectors.live_reconcile import ALERTS_STREAM, CONTROL_STREAM, LiveReconciler, ask
from dataflows.config import parse
from helpers import KELLY_AND_EXECUTE, until
from ibkr_fixtures import connect, gateway  # noqa: F401  (fixtures)
from okx_fixtures import PRICES, okx_sim  # noqa: F401  (fixtures)
from operators.drift import ALERT, KILL, OK, Clock, clock_offset, gap_usd, judge
from operators.reconcile import POSITION_MISMATCH, UNKNOWN_OPEN_ORDER, Difference

NAV = 1_000_000.0

# ----- the thresholds -----


def test_thresholds_as_the_issue_sets_them():
    assert judge(0.001 * NAV, NAV, 0.0005, 0.005).level == ALERT  # 0.1%: an alert only
    assert judge(0.01 * NAV, NAV, 0.0005, 0.005).level == KILL  # 1%: close everything
    assert judge(0.0004 * NAV, NAV, 0.0005, 0.005).level == OK
    assert judge(0.005 * NAV, NAV, 0.0005, 0.005).level == ALERT  # at the kill fraction: not above it
    assert judge(0, NAV, 0.0005, 0.005, unpriced=("okx X",)).level == ALERT  # unvalued: said, not ignored


def test_only_positions_apart_are_valued_at_their_price():
    diffs = [Difference(POSITION_MISMATCH, "okx", "okx", "BTC-USDT", 1.0, 3.5),
             Difference(POSITION_MISMATCH, "okx", "okx", "ETH-USDT", 2.0, 0.0),
             Difference(POSITION_MISMATCH, "okx", "okx", "ZZZ-USDT", 0.0, 1.0),
             Difference(UNKNOWN_OPEN_ORDER, "okx", "okx", "BTC-USDT", venue_qty=100.0)]
    prices = {"BTC-USDT": 100.0, "ETH-USDT": 50.0}
    gap, unpriced = gap_usd(diffs, lambda market, symbol: prices.get(symbol))
    assert gap == pytest.approx(2.5 * 100 + 2 * 50)
    assert unpriced == ("okx ZZZ-USDT",)


@given(st.floats(0, 1e7), st.floats(1, 1e8), st.floats(1e-5, 0.01), st.floats(1.01, 100))
def test_the_level_rises_with_the_gap(gap, nav, alert, factor):
    kill = min(alert * factor, 0.99)
    low, high = judge(gap, nav, alert, kill), judge(gap * 2 + 1, nav, alert, kill)
    order = [OK, ALERT, KILL]
    assert order.index(high.level) >= order.index(low.level)
    assert (low.level == KILL) == (gap / nav > kill)


def test_the_clock_offset_takes_the_middle_of_the_round_trip():
    assert clock_offset(1005.0, 1000.0, 1002.0) == 4.0
    assert Clock("okx", 1.5, 1.0).off and not Clock("okx", -0.9, 1.0).off
    assert "REDUCING" in Clock("okx", -2, 1.0).line() and "behind" in Clock("okx", -2, 1.0).line()


# ----- against the simulators -----


def _pipeline(tmp_path: Path, extra: str = "") -> object:
    text = f"state_dir: {tmp_path / 'state'}\n{extra}stages:\n{KELLY_AND_EXECUTE}"
    return parse(text, tmp_path / "pipeline.yaml", {})


def _controls(r) -> list[dict]:
    return [fields for _, fields in r.xrange(CONTROL_STREAM)]


def _asking(r):
    """The kill switch as the reconciler asks for it, recorded as a command on the control
    stream (the real one, `apex kill`, is test_watchdog_e2e's)."""
    return lambda reason: ask(r, CONTROL_STREAM, "kill", reason)


def test_a_position_moved_by_a_tenth_percent_of_nav_is_an_alert_and_one_percent_closes_everything(
        okx_sim, redis_server, tmp_path):
    r = redis_server.client()
    said: list[str] = []
    alerts: list = []
    p = _pipeline(tmp_path)
    rec = LiveReconciler(p, lambda: {"okx": okx_sim.venue}, redis_server.url, say=said.append, kill=_asking(r),
                         alerts=alerts.append)
    try:
        assert rec.once()["okx"].level == OK and alerts == []
        assert metrics.RECONCILIATION.labels(book=metrics.ALL_BOOKS, venue="okx")._value.get() == 0
        okx_sim.server.set_balance("BTC", 0.001 * NAV / PRICES["BTC-USDT"])  # 0.1% of NAV, behind Apex's back
        drift = rec.once()["okx"]
        assert drift.level == ALERT and drift.ratio == pytest.approx(0.001)
        assert metrics.RECONCILIATION.labels(book=metrics.ALL_BOOKS, venue="okx")._value.get() == \
            pytest.approx(0.001)
        assert _controls(r) == [], "an alert closed something"
        assert any("above the alert threshold" in line for line in said)
        assert [f["level"] for _, f in r.xrange(ALERTS_STREAM)] == ["alert"]
        [alert] = alerts  # one for the pipeline's one book, for its step to record
        assert (alert.book, alert.venue, alert.level) == ("", "okx", "alert")
        assert alert.ratio == pytest.approx(0.001) and "above the alert threshold" in alert.line
        status = safety_status(r)
        assert status["reconciliation"]["okx"]["level"] == "alert"
        assert any("0.1000% of NAV" in line for line in safety_lines(status))

        okx_sim.server.set_balance("BTC", 0.01 * NAV / PRICES["BTC-USDT"])  # 1%
        assert rec.once()["okx"].level == KILL
        asked = _controls(r)
        assert len(asked) == 1
        assert asked[0]["command"] == "kill" and asked[0]["by"] == "reconciliation" and asked[0]["book"] == ""
        assert "above the kill threshold" in asked[0]["reason"] and len(asked[0]["id"]) == 36
        rec.once()
        assert len(_controls(r)) == 1, "asked for the kill switch twice for one difference"
    finally:
        rec.client.close()


def test_the_loop_runs_on_its_own_thread_at_the_configured_period(okx_sim, redis_server, tmp_path):
    r = redis_server.client()
    p = _pipeline(tmp_path, "reconcile: {every_s: 0.2}\nclock: {every_s: 0.2}\n")
    rec = LiveReconciler(p, lambda: {"okx": okx_sim.venue}, redis_server.url, say=lambda _: None,
                         kill=_asking(r)).start()
    try:
        assert until(lambda: r.hget("apex:reconciliation", "okx") is not None, 30)
        okx_sim.server.set_balance("ETH", 0.02 * NAV / PRICES["ETH-USDT"])
        assert until(lambda: [f["command"] for f in _controls(r)] == ["kill"], 30)
    finally:
        rec.stop()


def test_a_venue_that_cannot_be_asked_is_said_and_closes_nothing(okx_sim, redis_server, tmp_path):
    r = redis_server.client()
    said: list[str] = []
    rec = LiveReconciler(_pipeline(tmp_path), lambda: {"okx": okx_sim.venue}, redis_server.url, say=said.append)
    try:
        okx_sim.server.arm("http_5xx", times=100, paths=("account/balance",))
        assert "okx" not in rec.once()
        assert any("could not be asked" in line for line in said)
        assert _controls(r) == []
        assert safety_status(r)["reconciliation"]["okx"]["level"] == "unreachable"
    finally:
        rec.client.close()


def test_a_venue_clock_off_by_more_than_the_allowance_sends_the_books_reducing(
        okx_sim, gateway, connect, redis_server, tmp_path):  # noqa: F811
    r = redis_server.client()
    said: list[str] = []
    ib = connect()
    rec = LiveReconciler(_pipeline(tmp_path), lambda: {"okx": okx_sim.venue, "ibkr": ib}, redis_server.url,
                         say=said.append, kill=_asking(r))
    try:
        clocks = {c.venue: c for c in rec.clocks()}
        assert set(clocks) == {"okx", "ibkr"} and not any(c.off for c in clocks.values()), clocks
        assert _controls(r) == []
        okx_sim.server.skew_clock(3.0)
        clocks = {c.venue: c for c in rec.clocks()}
        assert clocks["okx"].off and clocks["okx"].offset_s == pytest.approx(3.0, abs=0.5)
        assert not clocks["ibkr"].off
        asked = _controls(r)
        assert [(a["command"], a["by"]) for a in asked] == [("reduce", "reconciliation")]
        assert "clock: venue okx" in asked[0]["reason"] and "REDUCING" in asked[0]["reason"]
        rec.clocks()
        assert len(_controls(r)) == 1, "said and asked again for one skew"
        gateway.skew_clock(-5)
        clocks = {c.venue: c for c in rec.clocks()}
        assert clocks["ibkr"].off and clocks["ibkr"].offset_s == pytest.approx(-5, abs=1.0)
        assert [a["command"] for a in _controls(r)] == ["reduce", "reduce"]
    finally:
        rec.client.close()


def test_one_venue_away_while_the_other_drifts_the_drift_is_still_acted_on(
        okx_sim, gateway, connect, redis_server, tmp_path):  # noqa: F811
    r = redis_server.client()
    said: list[str] = []
    ib = connect()
    rec = LiveReconciler(_pipeline(tmp_path), lambda: {"okx": okx_sim.venue, "ibkr": ib}, redis_server.url,
                         say=said.append, kill=_asking(r))
    try:
        assert {v: d.level for v, d in rec.once().items()} == {"okx": OK, "ibkr": OK}
        gateway.refuse_connections(True)
        okx_sim.server.set_balance("BTC", 0.01 * NAV / PRICES["BTC-USDT"])
        looked = rec.once()
        assert "ibkr" not in looked and looked["okx"].level == KILL
        assert any("venue ibkr could not be asked" in line for line in said)
        assert [(c["command"], c["by"]) for c in _controls(r)] == [("kill", "reconciliation")]
        status = safety_status(r)["reconciliation"]
        assert (status["okx"]["level"], status["ibkr"]["level"]) == ("kill", "unreachable")
    finally:
        gateway.refuse_connections(False)
        rec.client.close()


@pytest.mark.filterwarnings("error")
def test_a_look_after_the_ib_connection_closed_says_so_and_leaves_no_coroutine_unawaited(
        gateway, connect, redis_server, tmp_path):  # noqa: F811
    """At a worker's stop the gateway closes the venues while the reconciler's thread may
    still look: a closed IB connection is a venue that cannot be asked, and the coroutine
    each call makes is never left un-awaited (a RuntimeWarning at its collection)."""
    import gc

    said: list[str] = []
    ib = connect()
    rec = LiveReconciler(_pipeline(tmp_path), lambda: {"ibkr": ib}, redis_server.url, say=said.append,
                         kill=_asking(redis_server.client()))
    try:
        assert [c.venue for c in rec.clocks()] == ["ibkr"]
        ib.close()
        assert rec.clocks() == []
        assert rec.once() == {}
        gc.collect()  # a coroutine never awaited warns when it is collected
    finally:
        rec.client.close()
    assert any("clock: venue ibkr's time could not be asked" in line for line in said), said
    assert any("venue ibkr could not be asked" in line for line in said), said


def test_the_threads_beside_a_stopping_worker_ask_no_venue_once_the_gateway_closed(
        gateway, connect, redis_server, tmp_path):  # noqa: F811
    """The gateway closes the venues when the dataflow ends, before the threads beside it
    stop: from then on reconciliation has nothing to ask (a look then would only say the
    venues are away)."""
    from connectors.sender import Gateway
    from dataflows import safety

    gw = Gateway({})
    ib = connect()
    s = safety.start(_pipeline(tmp_path), redis_server.url, gateway=gw, venues=lambda: {"ibkr": ib}, remote=True)
    try:
        [rec] = [part for part in s.parts if isinstance(part, LiveReconciler)]
        assert rec.venues() == {"ibkr": ib}
        gw.close()
        assert rec.venues() == {}
    finally:
        s.stop()


def test_each_process_of_several_keeps_its_own_status_and_status_shows_each(okx_sim, redis_server, tmp_path):
    """Several processes compare their own books with one venue: each writes its status under
    its own name (``dataflows.cluster.process_tag``), none over another's, and `apex status`
    lists each with the process that compared."""
    r = redis_server.client()
    recs = [LiveReconciler(_pipeline(tmp_path / name), lambda: {"okx": okx_sim.venue}, redis_server.url,
                           say=lambda _: None, kill=_asking(r), tag=tag)
            for name, tag in (("a", ""), ("b", "@apex-worker-2"))]
    try:
        first, second = recs
        assert first.once()["okx"].level == OK
        okx_sim.server.set_balance("BTC", 0.001 * NAV / PRICES["BTC-USDT"])  # only the second looks after it
        assert second.once()["okx"].level == ALERT
        status = safety_status(r)["reconciliation"]
        assert (status["okx"]["level"], status["okx@apex-worker-2"]["level"]) == (OK, ALERT), status
        lines = safety_lines(safety_status(r))
        assert any("above the alert threshold" in line and line.endswith(", apex-worker-2)") for line in lines), lines
        ok, alert = sorted(lines, key=lambda line: "alert threshold" in line)
        assert "(ok, " in ok and "apex-worker-2" not in ok, lines
        assert "(alert, " in alert and alert.endswith(" s ago, apex-worker-2)"), lines
    finally:
        for rec in recs:
            rec.client.close()
