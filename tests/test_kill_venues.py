"""The kill switch on both simulators through the real ccxt and ib_async clients, with no
worker and beside a running one, each twice: flat at both venues (dust aside), each order
at its venue once, one audit event per action, and the second kill sends nothing."""

from __future__ import annotations

import json
import signal as signals
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

from connectors.venues.ibkr import IbkrVenue
from helpers import APEX, until
from okx_fixtures import okx_venue, raw
from test_venues_run import PIPELINE, SAMPLE, simulators  # noqa: F401 - the fixture

ENTRIES = 400  # of the sample: trades opened at both venues, a few minutes of signals


def _env(ports: dict) -> dict:
    return {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "APEX_OKX_URL": f"http://127.0.0.1:{ports['okx']}",
            "APEX_IBKR_PORT": str(ports["ibkr"]), "OKX_API_KEY": "k", "OKX_API_SECRET": "s",
            "OKX_API_PASSPHRASE": "p"}


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.read_text().replace("../", f"{PIPELINE.parent.parent}/"))
    part = tmp_path / "part.jsonl"
    part.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:ENTRIES]))
    return pipeline, part


def _sent(tmp_path: Path) -> dict[str, list[str]]:
    out = {}
    for venue, key in (("okx", "clOrdId"), ("ibkr", "orderRef")):
        log = tmp_path / f"{venue}-orders.jsonl"
        out[venue] = [json.loads(line)[key] for line in log.read_text().splitlines()] if log.exists() else []
    return out


def _flat(ports: dict) -> dict:
    """What each venue still holds beyond dust."""
    okx = okx_venue(f"http://127.0.0.1:{ports['okx']}")
    try:
        held = {k: q for k, q in okx.holdings()[0].items() if q >= okx.instrument(*k).min_size}
    finally:
        okx.close()
    ib = IbkrVenue(port=ports["ibkr"], client_id=99)
    try:
        held |= ib.positions()
    finally:
        ib.close()
    return held


def _kill(pipeline: Path, state: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([APEX, "kill", "--pipeline", str(pipeline), "--state-dir", str(state), "--reason", "t"],
                          capture_output=True, text=True, env=env, timeout=600)


def _open_trades(ledger: Path) -> list[tuple[str, int]]:
    if not ledger.exists():
        return []
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT json_extract(terms, '$.venue'), COUNT(*) FROM trades WHERE status = 'open'"
                          " GROUP BY 1 ORDER BY 1").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def _live(ledger: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT client_order_id FROM executions WHERE status IN "
                          "('intent', 'submitted', 'accepted', 'partially_filled', 'unknown')").fetchall()
    finally:
        db.close()


def _audit(state: Path, env: dict) -> list[dict]:
    trail = subprocess.run([APEX, "audit", "--state-dir", str(state), "--format", "jsonl"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert trail.returncode == 0, trail.stderr
    return [json.loads(line) for line in trail.stdout.splitlines()]


def _check_twice(tmp_path: Path, ports: dict, pipeline: Path, state: Path, env: dict) -> None:
    first = _kill(pipeline, state, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "now HALTED" in first.stdout
    for venue in ("okx", "ibkr"):
        assert any(line.startswith(f"{venue}: ") and "closed" in line for line in first.stdout.splitlines()), \
            first.stdout
    assert _flat(ports) == {}
    sent = _sent(tmp_path)
    for venue, ids in sent.items():
        assert max(Counter(ids).values()) == 1, f"an order reached {venue} twice"
    second = _kill(pipeline, state, env)
    assert second.returncode == 0, second.stdout + second.stderr
    for venue in ("okx", "ibkr"):
        assert any(line.startswith(f"{venue}: nothing to cancel or close") for line in second.stdout.splitlines()), \
            second.stdout
    assert _sent(tmp_path) == sent  # the second kill sent nothing
    assert _flat(ports) == {}
    closed_at_venues = {cid for ids in sent.values() for cid in ids} - set(_before_kill)
    seen: dict = {}

    def audited() -> bool:  # a running worker ships its audit rows a moment after it commits them
        events = _audit(state, env)
        seen["states"] = [e["outcome"] for e in events if e["stage"] == "TRADING_STATE" and not e["signal_id"]]
        seen["actions"] = Counter(_details(e).get("client_order_id") for e in events if e["reason"] == "kill" and (
            e["stage"] == "EXECUTION_ATTEMPT" or (e["stage"] == "TRADING_STATE" and e["outcome"] == "flattened")))
        return closed_at_venues <= set(seen["actions"])

    # every order the kills sent has its one event (a close a venue refused has its event too)
    assert until(audited, 120), (len(closed_at_venues), seen)
    assert seen["states"] == ["HALTED"]  # set once: the second kill changed nothing
    assert max(seen["actions"].values()) == 1


def _details(event: dict) -> dict:
    d = event.get("details") or {}
    return json.loads(d) if isinstance(d, str) else d


_before_kill: list[str] = []


def test_kill_with_no_worker_twice_leaves_both_venues_flat(tmp_path, simulators):  # noqa: F811
    pipeline, part = _setup(tmp_path)
    env, state = _env(simulators), tmp_path / "state"
    run = subprocess.run([APEX, "run", str(pipeline), "--source", f"recording:{part}", "--state-dir", str(state),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [v for v, _ in _open_trades(state / "ledger.sqlite")] == ["ibkr", "okx"]
    _before_kill[:] = [cid for ids in _sent(tmp_path).values() for cid in ids]
    _check_twice(tmp_path, simulators, pipeline, state, env)


def test_kill_beside_a_running_worker_twice_leaves_both_venues_flat(tmp_path, simulators, redis_server):  # noqa: F811
    pipeline, part = _setup(tmp_path)
    env, state = _env(simulators), tmp_path / "state"
    worker = subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_server.url, "--state-dir", str(state),
                               "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "worker.log", "w"))
    try:
        subprocess.run([APEX, "publish", str(part), "--rate", "0", "--redis", redis_server.url], check=True,
                       capture_output=True)
        ledger = state / "ledger.sqlite"
        assert until(lambda: [v for v, _ in _open_trades(ledger)] == ["ibkr", "okx"], 300), \
            (tmp_path / "worker.log").read_text()[-3000:]
        status = [APEX, "status", "--redis", redis_server.url, "--pipeline", str(pipeline), "--json"]

        def decided() -> bool:
            got = json.loads(subprocess.run(status, capture_output=True, text=True, check=True).stdout)
            return (got["lag"], got["pending"]) == (0, 0)

        assert until(decided, 300)  # every entry decided and acknowledged: nothing more is decided
        # ...and every open it decided reached its end (an entry is acknowledged once its intent is durable)
        assert until(lambda: not _live(ledger), 300)
        _before_kill[:] = [cid for ids in _sent(tmp_path).values() for cid in ids]
        _check_twice(tmp_path, simulators, pipeline, state, env)
        assert "control stream" in _kill(pipeline, state, env).stdout
    finally:
        worker.send_signal(signals.SIGTERM)
        worker.wait(60)


def test_a_kill_waits_out_an_okx_account_whose_rate_another_client_used_up(tmp_path, simulators):  # noqa: F811
    """A worker beside the kill shares the account's request rate: OKX refuses the kill's
    reads of the balance for a while (50011). The kill waits them out instead of leaving
    the coins it could not read behind."""
    pipeline, part = _setup(tmp_path)
    env, state = _env(simulators), tmp_path / "state"
    run = subprocess.run([APEX, "run", str(pipeline), "--source", f"recording:{part}", "--state-dir", str(state),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    url = f"http://127.0.0.1:{simulators['okx']}"
    # more refusals than a worker's step waits out, at every read of the balance the kill makes
    status, _ = raw(url, "POST", "/sim/fault", {"kind": "rate_limit", "times": 9, "paths": ["account/balance"]})
    assert status == 200
    killed = _kill(pipeline, state, env)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "rate" not in killed.stdout, killed.stdout
    assert _flat(simulators) == {}
    assert _open_trades(state / "ledger.sqlite") == []
