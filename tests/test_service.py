"""`apex run` as a long-running service, end to end: a real redis-server, `apex run` as a
process of its own with entries flowing, its metrics and health endpoints scraped, SIGHUP
with a changed filter threshold (applied), SIGHUP with a broken file (refused while the
entries keep flowing), SIGTERM under load (exit 0, nothing pending, nothing lost).

Every wait is on a condition with a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import yaml

from helpers import payload, sig
from test_redis_live import (APEX, GROUP, SAMPLE, STREAM, Worker, _no_worker_left_behind,  # noqa: F401
                             assert_one_terminal_outcome_each, audit_chains, group, pipeline_yaml, wait_for)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def samples(text: str) -> dict[str, float]:
    """Prometheus text: 'name{labels}' -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def entries_total(port: int) -> float:
    status, text = get(port, "/metrics")
    return sum(v for k, v in samples(text).items() if k.startswith("apex_entries_total{")) if status == 200 else 0


def outcome_of(state: Path, signal_id: str) -> tuple[str, str] | None:
    db = state / "ledger.sqlite"
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT outcome, reason FROM decisions WHERE signal_id = ?", (signal_id,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


def probe(r, signal_id: str) -> None:
    """A signal of confidence 0.8, stamped now: it passes `confidence` at 0.65, not at 0.9."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    r.xadd(STREAM, {"payload": payload(sig(signal_id, timestamp=now, confidence=0.8))})


def with_confidence(pipeline: Path, minimum: float) -> None:
    doc = yaml.safe_load(pipeline.read_text())
    first = doc["stages"][0]
    assert first["filter"] == "confidence"
    first["min"] = minimum
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))


def logged(w: Worker) -> list[dict]:
    out = []
    for line in w.output().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_metrics_health_sighup_reload_and_sigterm_under_load(tmp_path, redis_server):
    r = redis_server.client()
    pipeline = pipeline_yaml(tmp_path, redis_server.url)
    port = free_port()
    w = Worker(tmp_path, pipeline, "apex-worker-1", "--metrics-port", str(port), "--log-format", "json")
    producer = subprocess.Popen([APEX, "publish", str(SAMPLE), "--rate", "150", "--redis", redis_server.url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # ready: Redis, the audit store, reconciliation, venues, trading state
        wait_for(lambda: get(port, "/readyz")[0] == 200, "/readyz to say ready", workers=(w,))
        assert get(port, "/healthz") == (200, '{"status": "ok"}\n')
        ready = json.loads(get(port, "/readyz")[1])
        assert set(ready["checks"]) == {"redis", "audit_store", "reconciliation", "venues", "trading_state"}
        wait_for(lambda: entries_total(port) >= 100, "entries counted in /metrics", workers=(w,))
        status, text = get(port, "/metrics")
        found = samples(text)
        assert any(k.startswith('apex_filter_drops_total{book="",filter=') for k in found), text[:2000]
        assert found['apex_stage_seconds_count{stage="portfolio"}'] > 0
        assert found['apex_stage_seconds_count{stage="durable"}'] > 0
        assert found['apex_orders_total{status="submitted",venue="paper"}'] > 0
        assert found['apex_orders_total{status="filled",venue="paper"}'] > 0
        assert found['apex_nav{book=""}'] > 0
        assert found['apex_trading_state{book="",state="ACTIVE"}'] == 1
        assert found['apex_trading_state{book="",state="HALTED"}'] == 0
        # lag and pending are sampled from Redis every few seconds
        wait_for(lambda: f'apex_pending_entries{{stream="{STREAM}"}}' in samples(get(port, "/metrics")[1]),
                 "stream pending sampled", workers=(w,))

        # a probe passes the confidence filter at 0.65
        probe(r, "probe-before")
        wait_for(lambda: outcome_of(w.state, "probe-before"), "the first probe decided", workers=(w,))
        assert outcome_of(w.state, "probe-before")[1] != "confidence"

        # SIGHUP with the threshold raised: applied, and the next probe is dropped by it
        with_confidence(pipeline, 0.9)
        w.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(x["msg"].startswith("reload applied") for x in logged(w)), "the reload applied",
                 workers=(w,))
        probe(r, "probe-after")
        wait_for(lambda: outcome_of(w.state, "probe-after"), "the second probe decided", workers=(w,))
        assert outcome_of(w.state, "probe-after") == ("dropped", "confidence")

        # SIGHUP with a broken file: refused with its YAML path, and entries keep flowing
        good = pipeline.read_text()
        pipeline.write_text(good.replace("min: 0.9", "min: 7"))
        w.proc.send_signal(signal.SIGHUP)
        refusal = wait_for(lambda: next((x for x in logged(w) if x["msg"].startswith("reload refused")), None),
                           "the broken file refused", workers=(w,))
        assert "stages[0].min" in refusal["msg"] and refusal["level"] == "error"
        before = entries_total(port)
        wait_for(lambda: entries_total(port) > before + 20, "entries flowing after the refusal", workers=(w,))
        probe(r, "probe-still")  # the running threshold is still 0.9, not the broken file's
        wait_for(lambda: outcome_of(w.state, "probe-still"), "the third probe decided", workers=(w,))
        assert outcome_of(w.state, "probe-still") == ("dropped", "confidence")

        # a change that cannot be applied live is named, and the run goes on with the old settings
        doc = yaml.safe_load(good)
        doc["redis"]["count"] = 7
        pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))
        w.proc.send_signal(signal.SIGHUP)
        named = wait_for(lambda: [x for x in logged(w) if x["msg"].startswith("reload refused")][1:], "redis refused",
                         workers=(w,))
        assert "redis: changed" in named[0]["msg"]

        # SIGTERM under load: exit 0, nothing left pending
        assert producer.poll() is None, "the producer finished before the stop: not under load"
        w.term()
        assert w.wait() == 0, w.output()[-3000:]
    finally:
        producer.terminate()
        producer.wait(30)
    out = w.output()
    assert "Traceback" not in out
    g = group(r)
    assert g["pending"] == 0
    # nothing lost: every entry the group read has its one terminal outcome in the audit trail
    last = next(x for x in r.xinfo_groups(STREAM) if x["name"] == GROUP)["last-delivered-id"]
    read = [sid for sid, _ in r.xrange(STREAM, max=last)]
    assert len(read) >= 100
    assert_one_terminal_outcome_each(audit_chains(w.state), read)
    # every log line the run wrote to stderr is one JSON object (the summary table is stdout's)
    for line in out.splitlines():
        if line.startswith("{"):
            json.loads(line)
    lines = [x["msg"] for x in logged(w)]
    assert any("orders found in the crash window" in m and "reconciliation clean" in m for m in lines)


def test_a_restart_says_what_it_recovered(tmp_path, redis_server):
    r = redis_server.client()
    pipeline = pipeline_yaml(tmp_path, redis_server.url)
    # entries this consumer took in an earlier life and never acknowledged
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(7):
        probe(r, f"left-{i}")
    r.xreadgroup(GROUP, "apex-worker-1", {STREAM: ">"}, count=7)
    w = Worker(tmp_path, pipeline, "apex-worker-1", "--log-format", "json")
    wait_for(lambda: group(r)["pending"] == 0 and group(r)["acked"] == 7, "the 7 pending decided", workers=(w,))
    w.term()
    assert w.wait() == 0, w.output()[-3000:]
    lines = [x["msg"] for x in logged(w)]
    assert "recovered 7 pending entries, 0 orders found in the crash window, reconciliation clean" in lines, lines


def test_sighup_before_the_first_entry_waits_for_the_first_batch(tmp_path, redis_server):
    """No entry yet: the reload is accepted and applied when the book's first batch comes."""
    r = redis_server.client()
    pipeline = pipeline_yaml(tmp_path, redis_server.url)
    w = Worker(tmp_path, pipeline, "apex-worker-1", "--log-format", "json")
    wait_for(lambda: any("reconciliation clean" in x["msg"] for x in logged(w)), "the start", workers=(w,))
    wait_for(lambda: r.exists(STREAM), "the group made", workers=(w,))
    with_confidence(pipeline, 0.9)
    w.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(x["msg"].startswith("reload accepted") for x in logged(w)), "the reload accepted",
             workers=(w,))
    probe(r, "probe-first")
    wait_for(lambda: outcome_of(w.state, "probe-first"), "the probe decided", workers=(w,))
    assert outcome_of(w.state, "probe-first") == ("dropped", "confidence")
    w.term()
    assert w.wait() == 0
