"""SIGKILL in the crash window at a real venue: the OKX simulator takes a batch of orders and
holds its answer back, and Apex is killed while it waits. The restart finds those orders'
intents in its ledger, asks the venue (never sending them again), books what filled, and
goes on: every order reached its venue once, and every entry is acknowledged."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import urllib.request
from collections import Counter

from helpers import APEX, until
from test_venues_run import PIPELINE, SAMPLE, simulators  # noqa: F401 - the fixture


def _okx_control(port: int, what: str, body: dict) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/sim/{what}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def _logged(path) -> list[str]:
    return [json.loads(line)["clOrdId"] for line in path.read_text().splitlines()] if path.exists() else []


def _status(redis_url: str) -> dict:
    out = subprocess.run([APEX, "status", "--redis", redis_url, "--pipeline", str(PIPELINE), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_kill_while_the_venue_holds_its_answer_sends_nothing_twice(tmp_path, simulators, redis_server):  # noqa: F811
    env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "APEX_OKX_URL": f"http://127.0.0.1:{simulators['okx']}",
           "APEX_IBKR_PORT": str(simulators["ibkr"]), "OKX_API_KEY": "k", "OKX_API_SECRET": "s",
           "OKX_API_PASSPHRASE": "p"}
    state, okx_log = tmp_path / "state", tmp_path / "okx-orders.jsonl"
    run = [APEX, "run", str(PIPELINE), "--source", redis_server.url, "--state-dir", str(state), "--no-progress"]
    # the first batch of orders is taken, and its answer held past the client's patience
    _okx_control(simulators["okx"], "fault", {"kind": "hang", "times": 1})
    first = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"))
    try:
        assert until(lambda: _status(redis_server.url)["group_exists"], 60), "apex run did not start"
        subprocess.run([APEX, "publish", str(SAMPLE), "--rate", "0", "--redis", redis_server.url], check=True,
                       capture_output=True)
        assert until(lambda: _logged(okx_log), 60), "no order reached the OKX simulator"
        held = set(_logged(okx_log))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    db = sqlite3.connect(state / "ledger.sqlite")
    statuses = dict(db.execute("SELECT client_order_id, status FROM executions"))
    db.close()
    assert {statuses.get(cid) for cid in held} == {"intent"}, "the kill was not in the crash window"

    _okx_control(simulators["okx"], "clear-faults", {})
    again = subprocess.run([*run, "--stop-when-idle", "2000"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _status(redis_server.url)["lag"] == 0 and _status(redis_server.url)["pending"] == 0

    sent = _logged(okx_log)
    assert max(Counter(sent).values()) == 1, "an order reached OKX twice"
    db = sqlite3.connect(state / "ledger.sqlite")
    filled = {cid for (cid,) in db.execute("SELECT client_order_id FROM executions WHERE venue = 'okx'"
                                           " AND status = 'filled'")}
    db.close()
    assert held <= filled, "the orders taken before the kill were not adopted"
    assert set(sent) == filled
