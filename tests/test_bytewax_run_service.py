"""Started as ``python -m bytewax.run "dataflows.apex:build(...)"``, Apex serves a supervisor
what `apex run` serves (docs/service.md): the metrics and health endpoint on the file's
``metrics_port``, and SIGHUP's reload, which applies a changed threshold and refuses a broken
file while the process goes on (SIGHUP's default would have ended it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from helpers import until
from okx_fixtures import free_port
from test_venues_together import REPO, _env, _pipeline


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _said(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line).get("msg", ""))
        except ValueError:
            continue
    return out


def test_bytewax_run_serves_metrics_health_and_reloads_on_sighup(tmp_path, redis_server):
    port = free_port()
    pipeline = _pipeline(tmp_path, venues=False)
    pipeline.write_text(f"metrics_port: {port}\n" + pipeline.read_text())
    log = tmp_path / "bytewax.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run",
         f"dataflows.apex:build({str(pipeline)!r}, {redis_server.url!r}, {str(tmp_path / 'state')!r})"],
        cwd=REPO, env=_env(None), stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert until(ready, 120), log.read_text()[-3000:]
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert "apex_trading_state" in _get(f"http://127.0.0.1:{port}/metrics")[1]

        pipeline.write_text(pipeline.read_text().replace("min: 0.65", "min: 0.7", 1))
        proc.send_signal(signal.SIGHUP)
        assert until(lambda: any(m.startswith("reload accepted") for m in _said(log)), 60), log.read_text()[-3000:]
        assert "min: 0.65 → 0.7" in next(m for m in _said(log) if m.startswith("reload accepted"))

        pipeline.write_text(pipeline.read_text().replace("min: 0.7", "min: lots", 1))
        proc.send_signal(signal.SIGHUP)
        assert until(lambda: any(m.startswith("reload refused") for m in _said(log)), 60), log.read_text()[-3000:]
        assert proc.poll() is None and _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        proc.kill()  # bytewax.run has no graceful stop of its own (docs/operations.md)
        proc.wait(60)
    assert "Traceback" not in log.read_text()


def test_bytewax_run_says_what_its_start_recovered_its_workers_pending_entries_included(tmp_path, redis_server):
    """The start line `apex run` says, under bytewax.run too: with -w 2 its workers read as
    ``CONSUMER-0`` and ``CONSUMER-1``, and what those left pending is what the start recovers."""
    from dataflows.gates import load_pipeline
    from test_redis_live import fresh_entries

    pipeline = _pipeline(tmp_path, venues=False)
    cfg = load_pipeline(pipeline, None, redis_server.url).redis
    r = redis_server.client()
    for rec in fresh_entries(5, unique=True):
        r.xadd(cfg.stream, rec["fields"])
    r.xgroup_create(cfg.stream, cfg.group, id="0", mkstream=True)
    r.xreadgroup(cfg.group, f"{cfg.consumer}-1", {cfg.stream: ">"}, count=2)  # an earlier life's, never acked
    r.xreadgroup(cfg.group, "someone-else", {cfg.stream: ">"}, count=1)  # not this process's
    log = tmp_path / "bytewax.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "-w", "2",
         f"dataflows.apex:build({str(pipeline)!r}, {redis_server.url!r}, {str(tmp_path / 'state')!r})"],
        cwd=REPO, env=_env(None), stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        def started() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return any("found in the crash window" in m for m in _said(log))
        assert until(started, 120), log.read_text()[-3000:]
        line = next(m for m in _said(log) if "found in the crash window" in m)
        assert line == "recovered 2 pending entries, 0 orders found in the crash window, reconciliation clean", line
    finally:
        proc.kill()  # bytewax.run has no graceful stop of its own (docs/operations.md)
        proc.wait(60)
    assert "Traceback" not in log.read_text()
