"""The service's parts one at a time: secrets masked, log lines a machine can read and no
third-party chatter, the reload's refusals and swaps, the health endpoint, the start that
waits for a venue, and `apex config show`."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from connectors import logs
from connectors import metrics as m
from connectors.sims.okx import running
from dataflows import reload, service
from dataflows.config import load
from helpers import (APEX, KELLY_AND_EXECUTE, dies_on_send, entry, make_pipeline, messages, run_entries,
                     write_recording)
from okx_fixtures import PRICES, free_port
from operators import masking
from test_gates import clean_env, no_traceback
from test_redis_live import pipeline_yaml, wait_for

PASSWORDS = st.text(alphabet=st.characters(blacklist_characters="@/\n", blacklist_categories=("Cs",)), min_size=1)


@given(PASSWORDS)
def test_a_password_in_a_url_never_shows(password):
    shown = masking.url(f"http://apex:{password}@clickhouse:8123/apex")
    assert shown == "http://apex:***@clickhouse:8123/apex"


@given(st.text(min_size=1).filter(lambda v: not masking._ENV_NAME.match(v)))
def test_a_secret_named_setting_never_shows_its_value(value):
    tree = {"venues": {"okx": {"secret": value, "passphrase": [value], "kind": "okx"}}}
    shown = masking.masked(tree)
    assert shown == {"venues": {"okx": {"secret": "***", "passphrase": ["***"], "kind": "okx"}}}


def test_an_environment_variables_name_is_shown_it_is_no_secret():
    assert masking.masked({"api_key": "OKX_API_KEY", "url": "redis://h:6379/0"}) == \
        {"api_key": "OKX_API_KEY", "url": "redis://h:6379/0"}


def _captured(fmt: str) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    logs.setup(fmt, stream=stream)
    return stream, logging.getLogger().handlers[0]


def test_json_logs_are_one_object_a_line_with_their_context_and_no_third_party_chatter():
    stream, _ = _captured("json")
    try:
        logging.getLogger("apex.test").info("decided\nacross lines", extra={"book": "main", "signal_id": "s-1",
                                                                              "stage": "portfolio"})
        logging.getLogger("ccxt.base.exchange").info("a request sent")  # below WARNING: dropped
        logging.getLogger("ib_async.wrapper").debug("a message in")
        logging.getLogger("aiohttp.access").info("GET /")
        # a third party's WARNING passes (but ib_async's: the IBKR venue says what those mean, in its own lines)
        logging.getLogger("aiohttp.client").warning("connection lost")
    finally:
        logs.setup("human", stream=io.StringIO())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {k: first[k] for k in ("level", "logger", "msg", "book", "signal_id", "stage")} == {
        "level": "info", "logger": "apex.test", "msg": "decided\nacross lines", "book": "main",
        "signal_id": "s-1", "stage": "portfolio"}
    assert first["ts"].endswith("Z")
    assert (second["logger"], second["level"], second["msg"]) == ("aiohttp.client", "warning", "connection lost")


def test_a_human_log_line_names_its_context():
    stream, _ = _captured("human")
    logging.getLogger("apex.test").warning("held", extra={"book": "b1"})
    assert stream.getvalue().rstrip().endswith("WARNING apex.test: held [book=b1]")


def test_an_unknown_log_format_is_refused():
    try:
        logs.chosen("xml", io.StringIO())
    except ValueError as e:
        assert "json or human" in str(e)
    else:
        raise AssertionError("xml accepted")


def _pipeline(tmp_path: Path, **changes) -> Path:
    path = pipeline_yaml(tmp_path, "redis://127.0.0.1:1/0")
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key == "confidence":
            doc["stages"][0]["min"] = value
        elif key == "vol_haircut":
            next(s for s in doc["stages"] if "size" in s)["vol_haircut"] = value
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_reload_swaps_filters_at_ingress_and_kelly_at_the_books_batch(tmp_path, caplog):
    path = _pipeline(tmp_path)
    running_p = load(path)
    confidence = running_p.filters[0]
    before = running_p.kelly
    r = reload.Reloader(running_p, lambda: load(path))
    _pipeline(tmp_path, confidence=0.9, vol_haircut=0.5).replace(path)
    with caplog.at_level(logging.INFO, "apex.reload"):
        assert r.request()
    assert "pipeline filter confidence.min: 0.65 → 0.9" in caplog.text
    assert "pipeline size: kelly.vol_haircut: 0.3 → 0.5" in caplog.text
    assert confidence.params["min"] == 0.65 and running_p.kelly is before  # nothing swapped off the worker
    r.at_ingress()
    assert confidence.params["min"] == 0.9 and running_p.kelly is before
    r.at_batch(running_p)
    assert running_p.kelly.vol_haircut == 0.5 and not r.waiting
    assert not r.request()  # the file says what runs now: nothing to do


def test_a_reload_refuses_a_broken_file_and_what_cannot_change_live_naming_each(tmp_path, caplog):
    path = _pipeline(tmp_path)
    running_p = load(path)
    r = reload.Reloader(running_p, lambda: load(path))
    path.write_text(path.read_text().replace("min: 0.65", "min: 7").replace("max_nav_fraction: 0.05",
                                                                            "max_nav_fraction: -1"))
    with caplog.at_level(logging.INFO, "apex.reload"):
        assert not r.request()
    assert "stages[0].min" in caplog.text and "stages[3].max_nav_fraction" in caplog.text
    caplog.clear()
    _pipeline(tmp_path, confidence=0.9, state_dir=str(tmp_path / "elsewhere"), metrics_port=9999).replace(path)
    with caplog.at_level(logging.INFO, "apex.reload"):
        assert not r.request()
    assert "state_dir: changed" in caplog.text and "metrics_port: changed" in caplog.text
    assert not r.waiting and running_p.filters[0].params["min"] == 0.65


def test_a_reload_that_reorders_the_stages_is_named(tmp_path):
    path = _pipeline(tmp_path)
    old = load(path)
    doc = yaml.safe_load(path.read_text())
    doc["stages"][0], doc["stages"][1] = doc["stages"][1], doc["stages"][0]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert reload.not_live(old, load(path)) == [
        "pipeline stages: changed; it cannot change while the run goes on (restart to apply it)"]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_readyz_names_the_check_that_fails_and_healthz_stays_ok():
    state = {"venues": "ok"}
    endpoint = m.Endpoint(0, lambda: {"redis": "ok", **state}).start()
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        assert _get(base + "/readyz") == (200, {"status": "ready", "checks": {"redis": "ok", "venues": "ok"}})
        state["venues"] = "not connected: okx"
        assert _get(base + "/readyz") == (503, {"status": "not ready",
                                                "checks": {"redis": "ok", "venues": "not connected: okx"}})
        assert _get(base + "/healthz") == (200, {"status": "ok"})
        m.set_trading_state("b1", "HALTED")
        with urllib.request.urlopen(base + "/metrics", timeout=5) as res:
            text = res.read().decode()
        assert 'apex_trading_state{book="b1",state="HALTED"} 1.0' in text
        assert 'apex_trading_state{book="b1",state="ACTIVE"} 0.0' in text
    finally:
        endpoint.close()


def test_a_venue_down_at_start_is_waited_for_said_once_then_the_run_goes_on(tmp_path):
    port = free_port()
    path = tmp_path / "p.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nvenues:\n  okx: {{kind: okx, url: 'http://127.0.0.1:{port}'}}\n"
                    f"stages:\n{KELLY_AND_EXECUTE}")
    rec = write_recording(tmp_path / "rec.jsonl", [entry("1767261600000-0", signal_id="eth-0", symbol="ETH-USDT",
                                                         reference_price=PRICES["ETH-USDT"])])
    err = tmp_path / "err.log"
    with err.open("w") as fh:
        run = subprocess.Popen([APEX, "run", str(path), "--source", f"recording:{rec}", "--no-progress",
                                "--wait-for-venues", "120"], stdout=subprocess.DEVNULL, stderr=fh,
                               env=clean_env(APEX_ENV="paper", OKX_API_KEY="k", OKX_API_SECRET="s",
                                             OKX_API_PASSPHRASE="p"))
    try:
        wait_for(lambda: "asking again" in err.read_text() or run.poll() is not None, "the wait said", timeout=120)
        assert run.poll() is None, err.read_text()
        with running(port=port, prices=PRICES):
            code = run.wait(180)
    finally:
        if run.poll() is None:
            run.kill()
    text = err.read_text()
    assert code == 0, text[-3000:]
    said = messages(text)
    assert sum("asking again for up to 120 s (--wait-for-venues)" in line for line in said) == 1, said
    assert any(line.startswith("venue_unreachable: venue okx") for line in said)
    # ccxt and aiohttp under it: nothing of theirs written raw, every line one JSON object
    assert [line for line in text.splitlines() if line.strip() and not line.startswith("{")] == []
    no_traceback(subprocess.CompletedProcess([], code, "", text))


def test_config_show_masks_secrets_and_shows_the_effective_settings(tmp_path):
    path = _pipeline(tmp_path, clickhouse="http://apex:hunter2-not-shown@127.0.0.1:8123/apex")
    res = subprocess.run([APEX, "config", "show", str(path), "--format", "json"], capture_output=True, text=True,
                         timeout=120, env=clean_env())
    assert res.returncode == 0, res.stderr
    assert "hunter2-not-shown" not in res.stdout
    doc = json.loads(res.stdout)
    assert doc["clickhouse"] == "http://apex:***@127.0.0.1:8123/apex"
    assert doc["stages"][0] == {"filter": "confidence", "min": 0.65}
    assert doc["redis"]["count"] == 50  # the file's own, defaults filled around it
    broken = subprocess.run([APEX, "config", "show", str(_pipeline(tmp_path, confidence=7))], capture_output=True,
                            text=True, timeout=120, env=clean_env())
    assert broken.returncode == 1 and "stages[0].min" in broken.stderr and "Traceback" not in broken.stderr




def test_a_restart_says_what_became_of_the_order_in_the_crash_window(tmp_path, caplog):
    """The venue took the order and the worker died before recording it: the next start
    counts it in the crash window, and the book says it finished it (filled, nothing sent)."""
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    venue = dies_on_send(p, accept=True)
    first = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="sig-crash")], venues=venue)
    assert [o.outcome for o in first.outcomes] == ["error"]
    assert service.crash_window(p) == 1
    assert service.start_line(7, service.crash_window(p), "clean") == (
        "recovered 7 pending entries, 1 order found in the crash window (settled as the books start), "
        "reconciliation clean")
    with caplog.at_level(logging.INFO, "apex.portfolio"):
        run_entries(tmp_path, p, [entry("1767261700000-0", signal_id="sig-other", symbol="ETH-USDT")],
                    name="later.jsonl", venues=venue)
    said = [r for r in caplog.records if "crash window" in r.getMessage()]
    assert [r.getMessage() for r in said] == ["1 order(s) found in the crash window: finished: sig-crash filled at okx"]
    assert (said[0].stage, said[0].book) == ("recovery", "")
    assert service.crash_window(p) == 0


BOOKS = """
books:
  fast:
    takes: {{source: macro}}
    stages:
      - filter: confidence
        min: {fast}
      - size: kelly
      - execute: {{venue: paper}}
  rest: {{}}
stages:
  - filter: confidence
    min: 0.65
  - size: kelly
  - execute: {{venue: paper}}
"""


def test_a_reload_of_one_books_stages_swaps_that_books_filter_only(tmp_path, caplog):
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + BOOKS.format(fast=0.7))
    running_p = load(path)
    fast, rest = (b.filters[0] for b in running_p.each_book())
    r = reload.Reloader(running_p, lambda: load(path))
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + BOOKS.format(fast=0.8))
    with caplog.at_level(logging.INFO, "apex.reload"):
        assert r.request()
    assert "books.fast filter confidence.min: 0.7 → 0.8" in caplog.text and "books.rest" not in caplog.text
    r.at_ingress()
    assert (fast.params["min"], rest.params["min"]) == (0.8, 0.65)
    for book in running_p.each_book():
        r.at_batch(book)
    assert not r.waiting


def test_a_metrics_port_in_use_is_one_line_and_exit_2(tmp_path):
    path = _pipeline(tmp_path)
    rec = write_recording(tmp_path / "rec.jsonl", [entry("1767261600000-0", signal_id="s-0")])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([APEX, "run", str(path), "--source", f"recording:{rec}", "--no-progress",
                              "--metrics-port", str(port)], capture_output=True, text=True, timeout=300,
                             env=clean_env(APEX_ENV="paper"))
    no_traceback(res)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"apex run: cannot serve metrics on 127.0.0.1:{port}: Address already in use (choose another "
        "--metrics-port, or 0 for none)")


def test_the_default_log_format_is_human_in_a_terminal_and_json_elsewhere():
    import os

    main, other = os.openpty()
    try:
        with open(other, "w", closefd=False) as tty:
            assert logs.chosen(None, tty) == "human"
    finally:
        os.close(main)
        os.close(other)
    assert logs.chosen(None, io.StringIO()) == "json"


def _ledger_state(p, state: str) -> None:
    import sqlite3

    from connectors import trading_state_store

    p.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(p.ledger_path)
    trading_state_store.ensure(db)
    trading_state_store.write(db, trading_state_store.TradingState(state, "test", "cli", "c1", 1))
    db.commit()
    db.close()


def test_readyz_reads_each_books_trading_state_and_is_ready_unless_one_is_unknown(tmp_path):
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    run = service.Service(p, f"recording:{tmp_path / 'none.jsonl'}", None)
    assert run.checks()["trading_state"] == "ok"  # no ledger yet: the book starts ACTIVE
    _ledger_state(p, "HALTED")
    assert run.checks()["trading_state"] == "ok"  # halted is a known state: a decision, not a fault
    _ledger_state(p, "PAUSED")
    endpoint = m.Endpoint(0, run.checks).start()
    try:
        code, body = _get(f"http://127.0.0.1:{endpoint.port}/readyz")
    finally:
        endpoint.close()
    assert code == 503 and body["checks"]["trading_state"] == "unknown: (one): unknown state 'PAUSED'"


def test_the_trading_state_gauge_starts_from_the_ledgers_state(tmp_path):
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    _ledger_state(p, "REDUCING")
    run = service.start(p, f"recording:{tmp_path / 'none.jsonl'}", None, lambda: p, free_port())
    try:
        assert m.TRADING_STATE.labels(book="", state="REDUCING")._value.get() == 1
        assert m.TRADING_STATE.labels(book="", state="ACTIVE")._value.get() == 0
    finally:
        run.close()


def test_the_sampler_sets_each_heartbeats_age(tmp_path, redis_server):
    import time

    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    r = redis_server.client()
    r.set("apex:hb:book:sampled", json.dumps({"ts": time.time() - 30, "state": "ok"}))
    r.set("apex:hb:garbled", "not json")
    service.Service(p, redis_server.url, None).sample()
    assert m.HEARTBEAT_AGE.labels(stage="book:sampled")._value.get() >= 30
    stages = {s.labels["stage"] for metric in m.REGISTRY.collect() for s in metric.samples
              if s.name == "apex_heartbeat_age_seconds"}
    assert "book:sampled" in stages and "garbled" not in stages  # a heartbeat written wrong is skipped
