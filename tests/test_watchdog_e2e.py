"""The watchdog and reconciliation while running, end to end: `apex run` in a process of its
own against both venue simulators (`apex sim okx`, `apex sim ibkr`) and a private
redis-server, `apex watchdog` in another.

"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from connectors.ledger_view import LedgerView
from connectors.live_reconcile import CONTROL_STREAM
from connectors.reconcile import reconcile
from connectors.venues.ibkr import IbkrVenue
from operators.orders import client_order_id
from helpers import APEX, payload, sig, until
from okx_fixtures import KEY, PASSPHRASE, SECRET, okx_venue
from test_venues_together import PRICES, Sims, _env, _pipeline, _start

NAV = 1_000_000.0
BTC = "BTC-USDT"


def _pipeline_with(tmp: Path, extra: str, freeze: bool = False) -> Path:
    """The venues example, with ``extra`` sections and, with ``freeze``, a first stage a
    signal can hold stuck (test_watchdog.FREEZE)."""
    from test_watchdog import FREEZE

    path = _pipeline(tmp)
    text = path.read_text()
    if freeze:
        (tmp / "freeze_stage.py").write_text(FREEZE.format(flag=str(tmp / "frozen")))
        text = text.replace("\nstages:\n", "\nstages:\n  - filter: freeze_stage:hold\n", 1)
    path.write_text(extra + text)
    return path


def _okx(sims: Sims, what: str, body: dict) -> dict:
    req = urllib.request.Request(f"{sims.okx_url}/sim/{what}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def _reconciled(r, venue: str) -> dict | None:
    raw = r.hget("apex:reconciliation", venue)
    return json.loads(raw) if raw else None


def _controls(r) -> list[dict]:
    return [fields for _, fields in r.xrange(CONTROL_STREAM)]


def _signals(r, n: int, prefix: str = "s") -> None:
    """``n`` buys at each venue, fresh, at the simulators' prices, that every filter passes."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i in range(n):
        for venue, symbol in (("okx", BTC), ("ibkr", "AAPL")):
            doc = sig(f"{prefix}-{venue}-{i}", timestamp=now, ttl_seconds=3600, venue=venue, symbol=symbol,
                      confidence=0.9, regime="trending_up", reference_price=_price(venue, symbol),
                      suggested_kelly=0.02, max_position_usd=20_000.0)
            r.xadd("argus:signals:stream", {"payload": payload(doc)})


def _price(venue: str, symbol: str) -> float:
    from connectors.sims import prices_from_recording

    return prices_from_recording(PRICES)[venue][symbol]


def _flat_at_the_venues(sims: Sims) -> bool:
    """Both accounts hold nothing Apex trades and have no open order (dust and the fee coin aside)."""
    okx = okx_venue(sims.okx_url, api_key=KEY, secret=SECRET, passphrase=PASSPHRASE)
    ib = IbkrVenue("127.0.0.1", sims.ports["ibkr"], 91, "", connect_timeout=2.0, request_timeout=2.0)
    try:
        report = reconcile({"okx": okx, "ibkr": ib}, {}, set())
        return report.ok and not okx.open_orders() and not ib.open_orders()
    finally:
        okx.close()
        ib.close()


def _ledger_flat(state: Path) -> bool:
    held: dict = {}
    with LedgerView(state / "ledger.sqlite") as ledger:
        for fill in ledger.fills():
            held[(fill.venue, fill.symbol)] = held.get((fill.venue, fill.symbol), 0.0) + fill.signed_qty
        live = [o for kind in ("open", "close") for o, _, _ in ledger.dangling(kind)]
    return not live and all(abs(q) < 1e-6 for q in held.values())


def _open_trades(state: Path) -> dict[str, tuple[str, float]]:
    """The ledger's open trades: signal id -> (venue, quantity)."""
    with LedgerView(state / "ledger.sqlite") as ledger:
        return {t.signal_id: (t.venue, t.quantity) for t in ledger.open_trades()}


def _filled_at_both(state: Path) -> bool:
    if not (state / "ledger.sqlite").exists():
        return False
    with LedgerView(state / "ledger.sqlite") as ledger:
        return {f.venue for f in ledger.fills()} >= {"okx", "ibkr"}


def _reconciliation_events(pipeline: Path, state: Path, env: dict) -> list[dict]:
    """The trail's RECONCILIATION events, as `apex audit --format jsonl` prints them."""
    out = subprocess.run([APEX, "audit", "--pipeline", str(pipeline), "--state-dir", str(state), "--format", "jsonl"],
                         capture_output=True, text=True, env=env, timeout=120).stdout
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [e for e in events if e["stage"] == "RECONCILIATION"]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ----- runs now: reconciliation and the clock inside a real run -----


def test_a_running_worker_reconciles_alerts_at_a_tenth_percent_asks_to_close_at_one_percent_and_checks_the_clock(
        tmp_path, redis_server):
    sims = Sims(tmp_path, PRICES, ibkr_args=("--clock-skew-s", "-4"))  # IB's clock 4 s behind
    r = redis_server.client()
    proc = None
    try:
        _okx(sims, "clock", {"skew_s": 3})  # OKX's 3 s ahead: the start's check says both
        pipeline = _pipeline_with(tmp_path, "reconcile: {every_s: 1}\n")
        state = tmp_path / "state"
        env = _env(sims) | {"APEX_SOURCE": redis_server.url}
        proc = _start(tmp_path, "run", pipeline, redis_server.url, env, state, idle_ms=None)
        log = tmp_path / "run.log"
        assert until(lambda: len(_controls(r)) == 2, 60), log.read_text()[-3000:]
        clocks = sorted(c["reason"] for c in _controls(r))
        assert all(c["command"] == "reduce" and c["by"] == "reconciliation" for c in _controls(r))
        assert "clock: venue ibkr" in clocks[0] and "behind" in clocks[0], clocks
        assert "clock: venue okx" in clocks[1] and "ahead of" in clocks[1], clocks
        assert until(lambda: (_reconciled(r, "okx") or {}).get("level") == "ok"
                     and (_reconciled(r, "ibkr") or {}).get("level") == "ok", 60), log.read_text()[-3000:]
        # heartbeats of the running stages
        stages = lambda: {k.removeprefix("apex:hb:") for k in r.scan_iter("apex:hb:*")}  # noqa: E731
        assert until(lambda: {"source", "book:main", "shipper"} <= stages(), 30), stages()

        _okx(sims, "balance", {"ccy": "BTC", "amount": 0.001 * NAV / _price("okx", BTC)})  # 0.1% of NAV
        assert until(lambda: (_reconciled(r, "okx") or {}).get("level") == "alert", 60), log.read_text()[-3000:]
        assert [c["command"] for c in _controls(r)] == ["reduce", "reduce"], "an alert asked for more"
        status = subprocess.run([APEX, "status", "--redis", redis_server.url, "--pipeline", str(pipeline)],
                                capture_output=True, text=True, check=True, env=env).stdout
        assert "reconciliation: venue okx and the books differ by" in status and "above the alert threshold" in status
        assert "heartbeat book:main" in status
        assert "above the alert threshold" in log.read_text()
        # and in the book's audit trail, recorded by its step (read while the worker runs)
        assert until(lambda: _reconciliation_events(pipeline, state, env), 60), log.read_text()[-3000:]
        event = _reconciliation_events(pipeline, state, env)[0]
        assert event["outcome"] == "alert" and "above the alert threshold" in event["reason"]
        assert event["details"]["reconciled_venue"] == "okx"
        assert event["details"]["ratio"] == pytest.approx(0.001, rel=0.05)

        _okx(sims, "balance", {"ccy": "BTC", "amount": 0.01 * NAV / _price("okx", BTC)})  # 1% of NAV
        assert until(lambda: [c["command"] for c in _controls(r)] == ["reduce", "reduce", "kill"], 60), \
            log.read_text()[-3000:]
        kill = _controls(r)[2]
        assert kill["by"] == "reconciliation" and kill["book"] == "" and "above the kill threshold" in kill["reason"]
    finally:
        if proc is not None:
            _stop(proc)
        sims.stop()


def test_a_frozen_worker_sets_off_the_watchdog_with_its_reason(tmp_path, redis_server):
    """The watchdog's side of the frozen book: a real worker stuck in its book's step, a real
    `apex watchdog` that notices and runs the kill switch with the reason (what the kill
    switch then does is the test below, once it is merged)."""
    sims = Sims(tmp_path, PRICES)
    r = redis_server.client()
    procs: list[subprocess.Popen] = []
    flag = tmp_path / "frozen"
    try:
        pipeline = _pipeline_with(tmp_path, "watchdog: {silence_s: 10, producer: false}\n", freeze=True)
        state = tmp_path / "state"
        env = _env(sims) | {"APEX_SOURCE": redis_server.url}  # what apex kill and the watchdog read
        procs.append(_start(tmp_path, "run", pipeline, redis_server.url, env, state, idle_ms=None))
        log = tmp_path / "run.log"
        _signals(r, 2)
        assert until(lambda: _filled_at_both(state), 120), log.read_text()[-3000:]
        assert until(lambda: {"apex:hb:venue:okx", "apex:hb:venue:ibkr"} <= set(r.scan_iter("apex:hb:venue:*")), 30)
        procs.append(subprocess.Popen([APEX, "watchdog", "--pipeline", str(pipeline), "--state-dir", str(state),
                                       "--redis-url", redis_server.url],
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / "watchdog.log", "w")))
        assert until(lambda: "watching" in (tmp_path / "watchdog.log").read_text(), 30)
        assert not until(lambda: (state / "watchdog.jsonl").exists(), 12), "acted on a live worker"
        flag.touch()
        _signals(r, 1, prefix="freeze")
        assert until(lambda: (state / "watchdog.jsonl").exists(), 30), (tmp_path / "watchdog.log").read_text()
        record = json.loads((state / "watchdog.jsonl").read_text().splitlines()[0])
        # the book first: its step beat last before it stuck (the source may follow a moment later)
        assert record["action"] == "kill" and "book:main" in record["silent"], record
        assert record["reason"].startswith("watchdog: book:main silent for 1"), record
        assert "venue:okx" not in record["silent"] and "shipper" not in record["silent"], record
        said = (tmp_path / "watchdog.log").read_text()
        assert "running apex kill" in said and "Traceback" not in said
    finally:
        flag.unlink(missing_ok=True)
        for proc in reversed(procs):
            _stop(proc)
        sims.stop()


# ----- need the kill switch -----


def test_a_move_of_one_percent_of_nav_behind_apexs_back_closes_everything_at_both_venues(tmp_path, redis_server):
    sims = Sims(tmp_path, PRICES)
    r = redis_server.client()
    proc = None
    try:
        pipeline = _pipeline_with(tmp_path, "reconcile: {every_s: 2}\n")
        state = tmp_path / "state"
        env = _env(sims) | {"APEX_SOURCE": redis_server.url}
        proc = _start(tmp_path, "run", pipeline, redis_server.url, env, state, idle_ms=None)
        log = tmp_path / "run.log"
        _signals(r, 3)
        assert until(lambda: _filled_at_both(state), 120), log.read_text()[-3000:]
        held = float(_okx_balance(sims, "BTC"))
        _okx(sims, "balance", {"ccy": "BTC", "amount": held + 0.01 * NAV / _price("okx", BTC)})
        assert until(lambda: _flat_at_the_venues(sims) and _ledger_flat(state), 120), log.read_text()[-3000:]
    finally:
        if proc is not None:
            _stop(proc)
        sims.stop()


def _okx_balance(sims: Sims, ccy: str) -> float:
    okx = okx_venue(sims.okx_url)
    try:
        return okx.balances().get(ccy, 0.0)
    finally:
        okx.close()


def test_a_frozen_book_is_halted_its_orders_cancelled_and_its_positions_closed_within_35_s(tmp_path, redis_server):
    sims = Sims(tmp_path, PRICES)
    r = redis_server.client()
    procs: list[subprocess.Popen] = []
    flag = tmp_path / "frozen"
    try:
        pipeline = _pipeline_with(tmp_path, "watchdog: {silence_s: 30}\n", freeze=True)
        state = tmp_path / "state"
        env = _env(sims) | {"APEX_SOURCE": redis_server.url}  # what apex kill and the watchdog read
        procs.append(_start(tmp_path, "run", pipeline, redis_server.url, env, state, idle_ms=None))
        log = tmp_path / "run.log"
        _okx(sims, "fill-ratio", {"ratio": 0.5})  # half of each OKX open fills: its IOC cancels the rest
        _signals(r, 3)
        assert until(lambda: _filled_at_both(state), 120), log.read_text()[-3000:]
        # the kill's sale is a market order: at a venue that filled only half of each, no sale
        # could ever come down to dust (OKX itself fills a market order to the book's depth)
        _okx(sims, "fill-ratio", {"ratio": 1})
        procs.append(subprocess.Popen([APEX, "watchdog", "--pipeline", str(pipeline), "--state-dir", str(state),
                                       "--redis-url", redis_server.url],
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / "watchdog.log", "w")))
        assert until(lambda: r.get("apex:hb:book:main") is not None, 30)
        flag.touch()
        frozen_at = time.monotonic()
        _signals(r, 1, prefix="freeze")  # its id starts with "freeze": the book's step holds on it
        assert until(lambda: (state / "watchdog.jsonl").exists(), 35), (tmp_path / "watchdog.log").read_text()
        assert until(lambda: _flat_at_the_venues(sims), max(1.0, 35 - (time.monotonic() - frozen_at))), \
            (tmp_path / "watchdog.log").read_text()[-3000:]
        record = json.loads((state / "watchdog.jsonl").read_text().splitlines()[0])
        assert record["action"] == "kill" and "book:main" in record["silent"], record
        opened = _open_trades(state)
        assert {venue for venue, _ in opened.values()} == {"okx", "ibkr"}
        flag.unlink()  # the worker moves again: its ledger learns what the kill switch did
        assert until(lambda: _ledger_flat(state), 120), log.read_text()[-3000:]
        assert _flat_at_the_venues(sims)
        # one close per trade at its venue, under the trade's own close id: the kill sent it,
        # the woken worker adopted it; nothing reached a venue twice
        for venue in ("okx", "ibkr"):
            sent = Counter(sims.logged(venue))
            assert max(sent.values()) == 1, f"an order reached {venue} twice"
            for sid in (s for s, (v, _) in opened.items() if v == venue):
                assert sent[client_order_id(sid, "close")] == 1, sid
        assert _open_trades(state) == {}
        # the frozen step's own signals, decided once it woke after the kill, opened nothing: the
        # OKX one passes every filter (IBKR's is over its concentration limit) and is refused halted
        with LedgerView(state / "ledger.sqlite") as ledger:
            frozen = dict(ledger.db.execute("SELECT signal_id, reason FROM decisions WHERE signal_id LIKE 'freeze%'"
                                            " AND outcome = 'dropped'").fetchall())
        assert set(frozen) == {"freeze-okx-0", "freeze-ibkr-0"} and frozen["freeze-okx-0"] == "halted", frozen
    finally:
        flag.unlink(missing_ok=True)
        for proc in reversed(procs):
            _stop(proc)
        sims.stop()
