"""SIGKILL in the crash window at a real venue: the OKX simulator takes a batch of orders and
holds its answer back, and Apex is killed while it waits. The restart finds those orders'
intents in its ledger, asks the venue (never sending them again), books what filled, and
goes on: every order was sent to its venue once (counted by the venue on arrival, whether
taken or not), and every entry is acknowledged."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections import Counter

from connectors.sims import prices_from_recording
from connectors.sims.okx import Credentials, running
from helpers import APEX, until
from test_venues_run import PIPELINE, SAMPLE, simulators  # noqa: F401 - the fixture (its IBKR simulator)


def _logged(path) -> list[str]:
    return [json.loads(line)["clOrdId"] for line in path.read_text().splitlines()] if path.exists() else []


def _okx_buy(line: str) -> bool:
    try:
        doc = json.loads(json.loads(line)["fields"]["payload"])
    except (KeyError, TypeError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("venue") == "okx" and doc.get("side") == "buy"


def _status(redis_url: str) -> dict:
    out = subprocess.run([APEX, "status", "--redis", redis_url, "--pipeline", str(PIPELINE), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_kill_while_the_venue_holds_its_answer_sends_nothing_twice(tmp_path, simulators, redis_server):  # noqa: F811
    # an OKX that holds a held answer far longer than the test needs, and a client that waits as
    # long: the window between the venue taking the orders and Apex hearing of it stays open
    # until the kill, however slow the machine
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.read_text().replace("../", f"{PIPELINE.parent.parent}/")
                        .replace("timeout_s: 10                  # one request's limit", "timeout_s: 300", 1))
    state, okx_log = tmp_path / "state", tmp_path / "okx-orders.jsonl"
    # the sample's OKX buys: the account holds no coins to sell, and the held batch must hold
    # orders the venue takes, not refusals
    buys = tmp_path / "okx-buys.jsonl"
    buys.write_text("".join(line + "\n" for line in SAMPLE.read_text().splitlines() if _okx_buy(line)))
    with running(orders_log=okx_log, prices=prices_from_recording(SAMPLE)["okx"], hang_s=600,
                 credentials=Credentials("k", "s", "p")) as okx:
        env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "APEX_OKX_URL": okx.url,
               "APEX_IBKR_PORT": str(simulators["ibkr"]), "OKX_API_KEY": "k", "OKX_API_SECRET": "s",
               "OKX_API_PASSPHRASE": "p"}
        run = [APEX, "run", str(pipeline), "--source", redis_server.url, "--state-dir", str(state), "--no-progress"]
        # the first batch of orders is taken, and its answer held back
        okx.sim.faults.arm("hang", times=1)
        subprocess.run([APEX, "publish", str(buys), "--rate", "0", "--redis", redis_server.url], check=True,
                       capture_output=True)
        first = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"))
        try:
            assert until(lambda: _logged(okx_log), 120), f"no order reached the OKX simulator: {okx.sim.requests()}"
            held = set(_logged(okx_log))
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        db = sqlite3.connect(state / "ledger.sqlite")
        statuses = dict(db.execute("SELECT client_order_id, status FROM executions"))
        db.close()
        assert {statuses.get(cid) for cid in held} == {"intent"}, "the kill was not in the crash window"

        okx.sim.faults.clear()
        again = subprocess.run([*run, "--stop-when-idle", "2000"], env=env, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        status = _status(redis_server.url)
        assert (status["lag"], status["pending"]) == (0, 0)

        # every placement request that reached OKX, each order of it counted, taken or refused
        attempts = okx.placements()
    sent = _logged(okx_log)
    assert max(Counter(sent).values()) == 1, "an order reached OKX twice"
    assert attempts and max(attempts.values()) == 1, "an order was sent to OKX twice"
    assert held <= set(attempts)
    db = sqlite3.connect(state / "ledger.sqlite")
    filled = {cid for (cid,) in db.execute("SELECT client_order_id FROM executions WHERE venue = 'okx'"
                                           " AND status = 'filled'")}
    # IOCs OKX cancelled with nothing filled, its price (the symbol's first reference) beyond their
    # band: cancelled, or rejected as the restart's in-flight checker found them
    protected = {cid for (cid,) in db.execute(
        "SELECT e.client_order_id FROM executions e JOIN decisions d ON d.signal_id = e.signal_id"
        " WHERE e.venue = 'okx' AND d.outcome = 'price_protection'")}
    db.close()
    assert held <= filled | protected, "the orders taken before the kill were not resolved"
    assert set(sent) == filled | protected
