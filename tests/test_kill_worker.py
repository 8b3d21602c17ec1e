"""`apex kill` beside a running worker (`apex run` on a Redis stream, a process of its own):
the command goes through the control stream, the worker carries it out in each book's step
and confirms it in the book's ledger; a second kill finds nothing to do; the worker stays
HALTED (refusing new signals) until `apex resume`, across a restart too."""

from __future__ import annotations

import json
import signal as signals
import sqlite3
import subprocess
from pathlib import Path

from connectors import trading_state_store
from helpers import APEX, until
from operators.orders import client_order_id
from operators.trading_state import ACTIVE, HALTED
from test_exits import PIPELINE, signal
from test_trading_state import T0, MIN


def _publish(tmp_path: Path, redis_url: str, name: str, entries: list[dict]) -> None:
    rec = tmp_path / f"{name}.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
    subprocess.run([APEX, "publish", str(rec), "--rate", "0", "--redis", redis_url], check=True, capture_output=True)


def _rows(ledger: Path, sql: str) -> list[tuple]:
    if not ledger.exists():
        return []
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the worker has not made its tables yet
        return []
    finally:
        db.close()


def _decided(ledger: Path) -> dict[str, tuple[str, str]]:
    return {sid: (o, r) for sid, o, r in _rows(ledger, "SELECT signal_id, outcome, reason FROM decisions")}


def _worker(tmp_path: Path, pipeline: Path, redis_url: str, name: str) -> subprocess.Popen:
    return subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_url, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "w"))


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signals.SIGTERM)
    proc.wait(60)


def _kill(pipeline: Path, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run([APEX, "kill", "--pipeline", str(pipeline), *more], capture_output=True, text=True,
                          timeout=180)


def test_a_kill_reaches_a_running_worker_twice_and_the_book_stays_halted_until_resumed(tmp_path, redis_server):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(state=tmp_path / "state", fee=0, alert="false"))
    ledger = tmp_path / "state" / "ledger.sqlite"
    worker = _worker(tmp_path, pipeline, redis_server.url, "first")
    try:
        _publish(tmp_path, redis_server.url, "opens", [signal(1, T0, "BTC-USDT", "buy", 100.0),
                                                       signal(2, T0 + MIN, "ETH-USDT", "sell", 10.0)])
        assert until(lambda: len(_rows(ledger, "SELECT 1 FROM trades WHERE status = 'open'")) == 2, 120), \
            (tmp_path / "first.log").read_text()[-2000:]
        first = _kill(pipeline, "--reason", "test")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "control stream" in first.stdout and "now HALTED" in first.stdout
        assert "paper: closed 2 position(s) (BTC-USDT sell 100, ETH-USDT buy 1000)" in first.stdout
        assert _rows(ledger, "SELECT 1 FROM trades WHERE status = 'open'") == []
        fills = _rows(ledger, "SELECT client_order_id FROM executions")
        second = _kill(pipeline, "--reason", "test")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "paper: nothing to cancel or close" in second.stdout
        assert _rows(ledger, "SELECT client_order_id FROM executions") == fills  # nothing sent again
        _publish(tmp_path, redis_server.url, "halted", [signal(3, T0 + 2 * MIN, "SOL-USDT", "buy", 10.0)])
        assert until(lambda: "t3" in _decided(ledger), 60)
        assert _decided(ledger)["t3"] == ("dropped", "halted")
    finally:
        _stop(worker)
    # a restart: the state is the ledger's
    worker = _worker(tmp_path, pipeline, redis_server.url, "second")
    try:
        _publish(tmp_path, redis_server.url, "still", [signal(4, T0 + 3 * MIN, "SOL-USDT", "buy", 10.0)])
        assert until(lambda: "t4" in _decided(ledger), 60), (tmp_path / "second.log").read_text()[-2000:]
        assert _decided(ledger)["t4"] == ("dropped", "halted")
        resumed = subprocess.run([APEX, "resume", "--pipeline", str(pipeline)], capture_output=True, text=True,
                                 timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "was HALTED" in resumed.stdout and "now ACTIVE" in resumed.stdout
        _publish(tmp_path, redis_server.url, "again", [signal(5, T0 + 4 * MIN, "SOL-USDT", "buy", 10.0)])
        assert until(lambda: "t5" in _decided(ledger), 60)
        assert _decided(ledger)["t5"][0] == "filled"
    finally:
        _stop(worker)
    db = sqlite3.connect(ledger)
    assert trading_state_store.read(db).state == ACTIVE
    db.close()
    states = [s for (s,) in _rows(ledger, "SELECT state FROM trading_state")]
    assert states == [ACTIVE] and HALTED != ACTIVE
    trail = subprocess.run([APEX, "audit", "--state-dir", str(tmp_path / "state"), "--format", "jsonl"],
                           capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in trail.stdout.splitlines()]
    assert [e["outcome"] for e in events if e["stage"] == "TRADING_STATE"] == [HALTED, ACTIVE]
    kill_attempts = [e["signal_id"] for e in events if e["stage"] == "EXECUTION_ATTEMPT" and e["reason"] == "kill"]
    assert sorted(kill_attempts) == ["t1", "t2"]


FROZEN = """
state_dir: {state}
venues:
  okx: {{kind: okx, url: "{url}"}}
stages:
  - filter: confidence
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: 0}}
"""


def test_a_kill_beside_a_frozen_worker_acts_on_the_venue_itself_and_sells_nothing_twice(tmp_path, redis_server,
                                                                                       monkeypatch):
    from collections import Counter

    from connectors.sims.okx import running
    from dataflows import kill as switch
    from okx_fixtures import PRICES, logged, okx_venue

    env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "OKX_API_KEY": "k", "OKX_API_SECRET": "s",
           "OKX_API_PASSPHRASE": "p"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(FROZEN.format(state=tmp_path / "state", url=server.url))
        ledger = tmp_path / "state" / "ledger.sqlite"
        worker = subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_server.url, "--no-progress"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"))
        try:
            _publish(tmp_path, redis_server.url, "opens", [signal(1, T0, "BTC-USDT", "buy", 100.0)])
            assert until(lambda: _rows(ledger, "SELECT 1 FROM trades WHERE status = 'open'"), 120), \
                (tmp_path / "run.log").read_text()[-2000:]
            assert until(lambda: not _rows(ledger, "SELECT 1 FROM executions WHERE status NOT IN "
                                                   "('filled', 'rejected', 'cancelled', 'denied')"), 60)
            worker.send_signal(signals.SIGSTOP)  # frozen: it holds its state dir and reads nothing
            report = switch.kill(pipeline, None, reason="frozen", confirm_s=2)
            assert report.via == "here: the worker did not confirm"
            assert any("did not confirm" in note for note in report.notes)
            assert report.venues["okx"].closed and not report.venues["okx"].errors, report.lines()
            venue = okx_venue(server.url)
            try:
                def flat() -> bool:
                    return all(q < venue.instrument(*k).min_size for k, q in venue.holdings()[0].items())

                assert flat()
                # again, the worker still frozen: the close is found at the venue, nothing is sent
                again = switch.kill(pipeline, None, reason="frozen", confirm_s=2)
                assert again.venues["okx"].line("okx").startswith("okx: nothing to cancel or close"), again.lines()
                worker.send_signal(signals.SIGCONT)  # it wakes, reads both kills and carries them out too
                assert until(lambda: [c for (c,) in _rows(ledger, "SELECT command_id FROM trading_state")] ==
                             [again.command_id], 60), (tmp_path / "run.log").read_text()[-2000:]
                assert until(lambda: not _rows(ledger, "SELECT 1 FROM executions WHERE status NOT IN "
                                                       "('filled', 'rejected', 'cancelled', 'denied')"), 60)
                assert flat()  # it sold nothing again: it adopted the kill's close
            finally:
                venue.close()
            sent = Counter(o["clOrdId"] for o in logged(tmp_path / "okx.jsonl"))
            assert max(sent.values()) == 1
            # the trade closed by the kill under its own close id, which the worker booked
            close = client_order_id("t1", "close")
            assert sent[close] == 1
            assert _rows(ledger, "SELECT status FROM trades") == [("closed",)]
            assert _rows(ledger, f"SELECT status FROM executions WHERE client_order_id = '{close}'") == [("filled",)]
            held = _rows(ledger, "SELECT SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END) FROM executions"
                                 " WHERE status = 'filled'")[0][0]
            assert abs(held) < 1e-6
            assert _rows(ledger, "SELECT state FROM trading_state") == [(HALTED,)]
        finally:
            worker.send_signal(signals.SIGCONT)
            _stop(worker)


def test_a_worker_kill_finds_no_open_left_working_at_okx_and_sends_no_cancel(tmp_path, redis_server, monkeypatch):
    """An open OKX could not fill is an IOC (price protection): OKX cancelled what did not
    fill, so the kill that follows finds nothing working, halts the book, and asks OKX to
    cancel nothing, once or twice."""
    from connectors.sims.okx import running
    from dataflows import kill as switch
    from okx_fixtures import PRICES

    env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "OKX_API_KEY": "k", "OKX_API_SECRET": "s",
           "OKX_API_PASSPHRASE": "p"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        server.set_fill_ratio(0)  # nothing of the open fills at once: as an IOC, it ends there
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(FROZEN.format(state=tmp_path / "state", url=server.url))
        ledger = tmp_path / "state" / "ledger.sqlite"
        worker = subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_server.url, "--no-progress"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"))
        try:
            _publish(tmp_path, redis_server.url, "opens", [signal(1, T0, "BTC-USDT", "buy", 100.0)])
            assert until(lambda: _rows(ledger, "SELECT status FROM executions") == [("cancelled",)], 120), \
                (tmp_path / "run.log").read_text()[-2000:]
            assert server.sim.book.pending() == []
            first = switch.kill(pipeline, None, reason="test")
            assert first.via == "worker" and first.after == {"": HALTED}
            assert not first.venues["okx"].cancelled and not first.venues["okx"].closed
            assert _rows(ledger, "SELECT 1 FROM trades WHERE status = 'open'") == []  # nothing filled: no trade
            second = switch.kill(pipeline, None, reason="test")
            assert second.venues["okx"].line("okx") == "okx: nothing to cancel or close"
            assert server.sim.requests().get("POST trade/cancel-order", 0) == 0
        finally:
            _stop(worker)
