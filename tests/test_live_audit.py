"""`apex audit` and `apex report` on a live system (issue 16, item 7).

While a worker runs, its shipper holds the embedded ClickHouse, which opens in one
process only: the shipper answers read-only queries on a socket beside the store,
and the commands read through it, then directly once the worker has stopped.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from connectors.audit_query import TrailUnavailable, ask
from test_redis_live import (APEX, Worker, _no_worker_left_behind, drained, fresh_entries,  # noqa: F401
                             pipeline_yaml, signal_id, wait_for, xadd_all)


def shipped_all(state: Path) -> bool:
    """The shipper's watermark has reached the last outbox row the worker wrote."""
    try:
        with sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True) as ledger, \
                sqlite3.connect(f"file:{state / 'ledger-shipped.sqlite'}?mode=ro", uri=True) as shipped:
            top = ledger.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            mark = shipped.execute("SELECT shipped_seq FROM outbox_state").fetchone()
    except sqlite3.OperationalError:  # not created yet
        return False
    return bool(top and mark and mark[0] >= top[0])


def apex(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([APEX, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "300"})


def test_audit_and_report_read_the_trail_while_the_worker_runs(tmp_path, redis_server):
    r = redis_server.client()
    recs = fresh_entries(60, unique=True)
    xadd_all(r, recs)
    w = Worker(tmp_path, pipeline_yaml(tmp_path, redis_server.url, count=10))
    state = w.state
    wait_for(lambda: drained(r, 60) and shipped_all(state), "every entry decided and shipped", workers=(w,))
    sid = next(s for s in (signal_id(rec["fields"]) for rec in recs) if s)

    audit = apex("audit", "--state-dir", str(state), sid, cwd=tmp_path)
    assert audit.returncode == 0, audit.stderr
    assert f"decision chain of {sid}" in audit.stdout and "Traceback" not in audit.stderr
    lines = apex("audit", "--state-dir", str(state), "--format", "jsonl", cwd=tmp_path)
    assert lines.returncode == 0, lines.stderr
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert sid in {e["signal_id"] for e in events} and all(e["ts"].endswith("Z") for e in events)
    report = apex("report", "--state-dir", str(state), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "headline" in report.stdout and "Traceback" not in report.stderr
    assert w.alive(), "the worker stopped: the commands did not read a live system"

    sock = state / "clickhouse.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    with pytest.raises(TrailUnavailable, match="only SELECT"):
        ask(sock, "DROP TABLE audit_events", None)
    with pytest.raises(TrailUnavailable, match="READONLY"):  # ClickHouse itself refuses a write
        ask(sock, "WITH 1 AS x SELECT x SETTINGS readonly = 0", None)

    w.term()
    assert w.wait() == 0, w.output()[-3000:]
    assert not sock.exists()
    with socket.socket(socket.AF_UNIX) as dead:  # a socket nobody answers on, as a killed shipper leaves
        dead.bind(str(sock))
    after = apex("audit", "--state-dir", str(state), sid, cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert after.stdout == audit.stdout  # read directly now: the same chain, the same figures
    assert apex("report", "--state-dir", str(state), cwd=tmp_path).stdout == report.stdout


def test_an_unreachable_clickhouse_is_one_line_not_a_traceback(tmp_path):
    for command in ("audit", "report"):
        res = apex(command, "--clickhouse", "http://default:secret@127.0.0.1:1/apex", cwd=tmp_path)
        assert res.returncode == 1
        assert res.stderr.startswith("apex: cannot read ClickHouse at 127.0.0.1:1") and "secret" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
