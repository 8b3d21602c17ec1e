"""Heartbeats and the watchdog: the rule (pure, with properties), the publisher against a
real redis-server, and the watchdog's loop against it, acting through a stand-in for
`apex kill` that records what it was asked (the kill switch itself is tested on its own
branch; the end-to-end tests, in test_watchdog_e2e.py, run the real one)."""

from __future__ import annotations

import json
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors import heartbeat
from connectors.watchdog import Watchdog
from dataflows.config import ConfigError, parse
from helpers import until
from operators.watchdog import Watch

# ----- the rule -----


def test_a_stage_heard_then_silent_past_the_allowance_is_acted_on_once():
    w = Watch(30, since=0)
    assert not w.step(1, {"book:a": 1, "source": 1}).act
    assert not w.step(31, {"book:a": 1, "source": 31}).act  # 30 s: not past it
    v = w.step(31.5, {"book:a": 1, "source": 31})
    assert [s.stage for s in v.act] == ["book:a"]
    assert v.reason() == "watchdog: book:a silent for 30 s"
    assert not w.step(40, {"book:a": 1, "source": 40}).act  # acted on already: once per episode
    assert not w.step(41, {"book:a": 41, "source": 41}).act  # back
    assert w.step(80, {"book:a": 41, "source": 80}).act  # a new episode acts again


def test_a_stage_never_heard_is_not_watched_and_a_vanished_key_is_no_news():
    w = Watch(10, since=0)
    assert not w.step(100, {"book:a": None}).act  # never heard: not started, not frozen
    w.step(101, {"book:a": 101})
    assert [s.stage for s in w.step(112, {"book:a": None}).act] == ["book:a"]  # its key expired


def test_silence_counts_from_the_watchdogs_start_at_the_earliest():
    w = Watch(30, since=1000)
    assert not w.step(1001, {"producer": 10}).act  # a stream whose last entry is old
    assert w.step(1031, {"producer": 10}).act


def test_redis_unreachable_is_said_once_never_acted_on_and_renews_the_allowance():
    w = Watch(10, since=0)
    w.step(1, {"book:a": 1})
    v = w.step(5, None)
    assert "cannot reach Redis" in v.line and not v.act
    assert w.step(100, None) == w.step(101, None)  # said once, silent after
    assert not w.step(101, None).act
    back = w.step(200, {"book:a": 1})  # Redis back, the stage's old beat: a full allowance from now
    assert not back.act and "answers again" in back.line
    assert w.step(211, {"book:a": 1}).act


def test_a_change_of_state_is_said_and_a_silence_names_the_last_state_heard():
    w = Watch(30, since=0)
    first = w.step(1, {"book:a": 1, "source": 1, "venue:okx": 1},
                   {"book:a": "ACTIVE", "source": "running", "venue:okx": "reconnecting"})
    assert first.line == "venue:okx is reconnecting"  # a plain alive or ACTIVE at first is no news
    changed = w.step(2, {"book:a": 2, "venue:okx": 2}, {"book:a": "HALTED", "venue:okx": "connected"})
    assert changed.line == "book:a now HALTED (was ACTIVE); venue:okx now connected (was reconnecting)"
    assert w.step(3, {"book:a": 3}, {"book:a": "HALTED"}).line == ""  # said once
    v = w.step(40, {"book:a": 3, "source": 40, "venue:okx": 40})
    assert v.reason() == "watchdog: book:a silent for 37 s (last HALTED)"


@given(st.lists(st.one_of(st.none(), st.floats(0, 1000)), min_size=1, max_size=40))
def test_never_acts_on_its_own_silence(beats):
    """Whatever was heard before, a look with Redis away never acts."""
    w = Watch(5, since=0)
    now = 0.0
    for b in beats:
        now += 3
        verdict = w.step(now, None if b is None else {"s": b})
        if b is None:
            assert not verdict.act


@given(st.lists(st.floats(0, 50), min_size=1, max_size=30), st.floats(1, 20))
def test_acts_only_on_a_stage_silent_past_the_allowance(gaps, allowance):
    w = Watch(allowance, since=0)
    now, last = 0.0, 0.0
    for gap in gaps:
        now += gap
        v = w.step(now, {"s": last})
        for s in v.act:
            assert s.seconds > allowance
        last = now


def test_the_configuration_is_checked_with_its_paths():
    text = ("stages: [{size: kelly}, {execute: {venue: paper}}]\nwatchdog: {silence_s: 5, heartbeat_s: 5, "
            "action: flatten}\nreconcile: {alert_fraction: 0.01, kill_fraction: 0.005}\nclock: {allowance_s: 0}\n")
    with pytest.raises(ConfigError) as e:
        parse(text, Path("/nowhere/pipeline.yaml"), {})
    joined = "\n".join(e.value.errors)
    assert "watchdog.action" in joined
    assert "reconcile: value error, kill_fraction must be above alert_fraction" in joined
    assert "clock.allowance_s" in joined
    ok = parse("stages: [{size: kelly}, {execute: {venue: paper}}]\nwatchdog: {silence_s: 12, action: reduce}\n",
               Path("/nowhere/pipeline.yaml"), {})
    assert (ok.watchdog.silence_s, ok.watchdog.action, ok.reconcile.every_s, ok.clock.allowance_s) == (12, "reduce",
                                                                                                       60, 1)


# ----- the publisher -----


def test_the_heartbeat_carries_the_stages_own_progress_and_a_ttl(redis_server):
    progress = heartbeat.Progress()
    pub = heartbeat.Publisher(redis_server.url, progress, period_s=0.2).start()
    r = redis_server.client()
    try:
        progress.beat("book:a", "running")
        first = progress.noted()[0][1]
        assert until(lambda: r.get("apex:hb:book:a") is not None, 10)
        doc = json.loads(r.get("apex:hb:book:a"))
        assert doc["state"] == "running" and doc["pid"] > 0 and abs(doc["ts"] - first) < 0.01
        assert 0 < r.ttl("apex:hb:book:a") <= 1  # 3 periods of 0.2 s, rounded up to a second
        # the stage stops: the publisher goes on, but the time it publishes stays the stage's
        written = r.get("apex:hb:book:a")
        assert until(lambda: r.get("apex:hb:book:a") is not None and r.ttl("apex:hb:book:a") > 0 and
                     json.loads(r.get("apex:hb:book:a"))["ts"] == json.loads(written)["ts"], 10)
        progress.beat("book:a")
        assert until(lambda: json.loads(r.get("apex:hb:book:a"))["ts"] > doc["ts"], 10)
    finally:
        pub.stop()
    assert until(lambda: r.get("apex:hb:book:a") is None, 10), "a dead publisher's heartbeat expires"


def test_the_publisher_outlives_redis_going_away(redis_server, caplog):
    progress = heartbeat.Progress()
    pub = heartbeat.Publisher(redis_server.url, progress, period_s=0.1).start()
    try:
        progress.beat("source")
        redis_server.kill()
        assert until(lambda: "cannot reach Redis" in caplog.text, 10)
        redis_server.start()  # same port
        progress.beat("source")
        assert until(lambda: redis_server.client().get("apex:hb:source") is not None, 10)  # it kept going
    finally:
        pub.stop()


# ----- the watchdog's loop -----


def _stand_in(tmp_path: Path) -> tuple[list[str], Path]:
    """An executable that records its arguments: what `apex kill` would have been asked."""
    log = tmp_path / "asked.jsonl"
    script = tmp_path / "apex-stand-in"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\nprint('done')\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)], log


def _asked(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_stage_that_stops_beating_sets_off_the_kill_switch_with_its_reason(redis_server, tmp_path):
    command, log = _stand_in(tmp_path)
    r = redis_server.client()
    said: list[str] = []
    dog = Watchdog(redis_server.url, tmp_path / "pipeline.yaml", tmp_path / "state", silence_s=1.0, check_s=0.05,
                   command=command, say=said.append)
    stop = threading.Event()
    t = threading.Thread(target=dog.run, args=(stop,), daemon=True)
    t.start()
    try:
        beating = threading.Event()
        beating.set()

        def beat() -> None:  # a live source, all along; the book stops after a while
            started = time.time()
            while not stop.is_set():
                r.set("apex:hb:source", heartbeat.encode(time.time(), "running"), ex=3)
                if beating.is_set():
                    r.set("apex:hb:book:a", heartbeat.encode(time.time(), "running"), ex=3)
                stop.wait(0.1)
                if time.time() - started > 0.5:
                    beating.clear()

        threading.Thread(target=beat, daemon=True).start()
        recorded = tmp_path / "state" / "watchdog.jsonl"
        # why is recorded before the kill switch runs, and what it answered after
        assert until(lambda: _asked(log) and recorded.exists() and len(recorded.read_text().splitlines()) == 2,
                     20), said
        asked = _asked(log)
        assert len(asked) == 1
        kill, *rest = asked[0]
        assert kill == "kill"
        assert rest[:4] == ["--pipeline", str(tmp_path / "pipeline.yaml"), "--state-dir", str(tmp_path / "state")]
        assert rest[4] == "--reason" and rest[5].startswith("watchdog: book:a silent for ")
        assert "source" not in rest[5]
        before, after = (json.loads(line) for line in recorded.read_text().splitlines())
        assert before["action"] == "kill" and list(before["silent"]) == ["book:a"] and before["exit"] is None
        assert after["reason"] == before["reason"] and after["exit"] == 0
        assert not until(lambda: len(_asked(log)) > 1, 1.5), "acted twice on one silence"
    finally:
        stop.set()
        t.join(5)
        dog.close()


def test_the_producers_silence_is_read_from_its_stream(redis_server, tmp_path):
    command, log = _stand_in(tmp_path)
    r = redis_server.client()
    dog = Watchdog(redis_server.url, tmp_path / "p.yaml", tmp_path / "s", stream="signals", silence_s=1.0,
                   command=command, action="reduce", say=lambda _: None)
    try:
        r.xadd("signals", {"payload": "{}"})
        assert not dog.look().act
        assert until(lambda: dog.look().act, 10)
        asked = _asked(log)[0]
        assert asked[0] == "reduce" and "producer silent" in asked[asked.index("--reason") + 1]
    finally:
        dog.close()


def test_a_watchdog_that_cannot_reach_redis_says_so_and_does_not_act(redis_server, tmp_path):
    command, log = _stand_in(tmp_path)
    r = redis_server.client()
    said: list[str] = []
    dog = Watchdog(redis_server.url, tmp_path / "p.yaml", tmp_path / "s", silence_s=0.5, command=command,
                   say=said.append)
    try:
        r.set("apex:hb:book:a", heartbeat.encode(time.time(), "running"), ex=60)
        dog.look()
        redis_server.kill()
        assert not until(lambda: dog.look().act, 1.5)  # three allowances with nothing heard
        assert sum("cannot reach Redis" in line for line in said) == 1
        assert _asked(log) == []
        redis_server.start()  # back, the old beat still there (no persistence: a fresh server holds none)
        r = redis_server.client()
        r.set("apex:hb:book:a", heartbeat.encode(time.time() - 100, "running"), ex=60)
        assert not dog.look().act, "acted on a silence it could not see"
        assert any("answers again" in line for line in said)
        assert until(lambda: dog.look().act, 10)  # a real silence, after the allowance
    finally:
        dog.close()


# ----- the heartbeats of a running dataflow -----

FREEZE = '''
import time
from pathlib import Path

FLAG = Path({flag!r})


def hold(signal, portfolio):
    """A stage stuck mid-step: a signal whose id starts with "freeze" holds the book's step
    for as long as the flag file exists."""
    while signal.signal_id.startswith("freeze") and FLAG.exists():
        time.sleep(0.05)
    return True
'''


def frozen_pipeline(tmp_path: Path, redis_url: str, extra: str = "") -> Path:
    """A paper pipeline reading ``redis_url`` whose book's step a signal can freeze."""
    flag = tmp_path / "frozen"
    (tmp_path / "freeze_stage.py").write_text(FREEZE.format(flag=str(flag)))
    from helpers import KELLY_AND_EXECUTE

    text = (f"source: {redis_url}\nstate_dir: {tmp_path / 'state'}\n{extra}"
            f"stages:\n  - filter: freeze_stage:hold\n{KELLY_AND_EXECUTE}")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_a_books_heartbeat_comes_from_its_own_step_and_stops_while_it_is_stuck(redis_server, tmp_path):
    from bytewax.testing import run_main

    from dataflows.apex import wire
    from dataflows.config import load
    from helpers import STREAM, payload, sig

    path = frozen_pipeline(tmp_path, redis_server.url, "watchdog: {heartbeat_s: 0.2, silence_s: 5}\n")
    flag = tmp_path / "frozen"
    p = load(path)
    flow, wiring = wire(p)
    r = redis_server.client()
    seen: dict = {}

    def ts(stage: str) -> float | None:
        raw = r.get(f"apex:hb:{stage}")
        return json.loads(raw)["ts"] if raw else None

    def drive() -> None:
        try:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            r.xadd(STREAM, {"payload": payload(sig("first", timestamp=now, ttl_seconds=3600))})
            seen["beating"] = until(lambda: ts("book:main") is not None and ts("source") is not None, 30)
            idle = ts("book:main")
            seen["idle_beats"] = until(lambda: (ts("book:main") or 0) > idle, 10)  # nothing arrives: still beats
            seen["shipper"] = ts("shipper") is not None
            flag.touch()
            r.xadd(STREAM, {"payload": payload(sig("freeze-1", timestamp=now, ttl_seconds=3600))})
            # stuck: the keys stay (the publisher lives) but the times they carry stop
            seen["stopped"] = until(lambda: ts("book:main") is not None and time.time() - ts("book:main") > 2
                                    and time.time() - ts("source") > 2, 30)
            seen["shipper_alive"] = time.time() - (ts("shipper") or 0) < 2
            flag.unlink()
            seen["again"] = until(lambda: time.time() - (ts("book:main") or 0) < 0.5, 30)
        finally:
            wiring.stop()

    helper = threading.Thread(target=drive)
    helper.start()
    try:
        run_main(flow)
    finally:
        flag.unlink(missing_ok=True)
        helper.join(60)
        wiring.close()
    assert seen == {"beating": True, "idle_beats": True, "shipper": True, "stopped": True, "shipper_alive": True,
                    "again": True}


def test_a_books_heartbeat_carries_its_trading_state_and_status_shows_it(redis_server, tmp_path):
    """A kill on the control stream: the book's heartbeat says HALTED, the watchdog says the
    change, and `apex status`'s lines show it."""
    from bytewax.testing import run_main

    from apex.safety_view import safety_lines, safety_status
    from dataflows.apex import wire
    from dataflows.config import load
    from helpers import STREAM, payload, sig

    path = frozen_pipeline(tmp_path, redis_server.url, "watchdog: {heartbeat_s: 0.2, silence_s: 5}\n")
    flow, wiring = wire(load(path))
    r = redis_server.client()
    said: list[str] = []
    dog = Watchdog(redis_server.url, path, tmp_path / "state", silence_s=30, say=said.append)
    seen: dict = {}

    def state() -> str | None:
        raw = r.get("apex:hb:book:main")
        return json.loads(raw)["state"] if raw else None

    def drive() -> None:
        try:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            r.xadd(STREAM, {"payload": payload(sig("first", timestamp=now, ttl_seconds=3600))})
            seen["active"] = until(lambda: state() == "ACTIVE", 30)
            dog.look()
            r.xadd("apex:control", {"id": "k-1", "command": "kill", "book": "", "reason": "test", "by": "test"})
            seen["halted"] = until(lambda: state() == "HALTED", 30)
            dog.look()
            seen["status"] = [line for line in safety_lines(safety_status(r)) if "book:main" in line]
        finally:
            wiring.stop()

    helper = threading.Thread(target=drive)
    helper.start()
    try:
        run_main(flow)
    finally:
        helper.join(60)
        wiring.close()
        dog.close()
    assert seen.pop("active") and seen.pop("halted"), seen
    assert len(seen["status"]) == 1 and seen["status"][0].startswith("heartbeat book:main: HALTED, "), seen
    assert "apex watchdog: book:main now HALTED (was ACTIVE)" in said, said


def test_a_venue_connections_heartbeat_says_reconnecting_until_the_venue_answers(tmp_path):
    """The real sender against an OKX simulator that is not up yet, then is."""
    from connectors.sims.okx import SimServer
    from okx_fixtures import CREDENTIALS, PRICES, free_port
    from test_sender import Flow, _order

    port = free_port()
    flow = Flow(f"http://127.0.0.1:{port}")
    probe = heartbeat.venues_probe(flow.gateway)
    server = None
    try:
        flow.submit(_order("hb-venue"))
        assert until(lambda: [s for _, _, s in probe()] == ["reconnecting"], 30), probe()
        assert [stage for stage, _, _ in probe()] == ["venue:okx"]
        server = SimServer(port=port, orders_log=tmp_path / "okx.jsonl", prices=PRICES,
                           credentials=CREDENTIALS).start()
        assert until(lambda: [s for _, _, s in probe()] == ["connected"], 30), probe()
    finally:
        flow.close()
        if server is not None:
            server.stop()


def test_a_run_that_ends_on_purpose_says_so_and_the_watchdog_lets_it_go(redis_server, tmp_path):
    command, log = _stand_in(tmp_path)
    progress = heartbeat.Progress()
    shipping = [("shipper", time.time(), "shipping")]  # a probe's stage: gone before the run's end
    pub = heartbeat.Publisher(redis_server.url, progress, probes=[lambda: list(shipping)], period_s=0.2).start()
    r = redis_server.client()
    dog = Watchdog(redis_server.url, tmp_path / "p.yaml", tmp_path / "s", silence_s=1.0, command=command,
                   say=lambda _: None)
    try:
        progress.beat("book:a")
        assert until(lambda: r.get("apex:hb:book:a") is not None, 10)
        assert until(lambda: r.get("apex:hb:shipper") is not None, 10)
        dog.look()
        assert {"book:a", "shipper"} <= set(dog.watch.heard)
        shipping.clear()  # the shipper has stopped first, as at a run's end
        pub.stop()  # the run's end: SIGTERM, or a replay's last entry
        assert json.loads(r.get("apex:hb:book:a"))["state"] == "stopped"
        assert json.loads(r.get("apex:hb:shipper"))["state"] == "stopped"
        assert not until(lambda: dog.look().act, 2.5)  # past the allowance, and past the key's TTL
        assert _asked(log) == [] and not dog.watch.heard
    finally:
        dog.close()


def _standby_stand_in(tmp_path: Path) -> tuple[list[str], Path]:
    """As ``_stand_in``, and with ``--standby`` it waits for its order on stdin, as `apex kill
    --standby` does, and records it (nothing at end of input)."""
    log = tmp_path / "asked.jsonl"
    script = tmp_path / "apex-standby-stand-in"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      "told = sys.stdin.readline() if '--standby' in sys.argv else ''\n"
                      "if '--standby' in sys.argv and not told.strip():\n    sys.exit(0)\n"
                      f"open({str(log)!r}, 'a').write(json.dumps([sys.argv[1:], told]) + '\\n')\nprint('done')\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)], log


def test_a_kill_switch_kept_ready_is_told_why_and_replaced_and_leaves_quietly_at_the_end(redis_server, tmp_path):
    """A frozen worker leaves the kill switch seconds: the watchdog keeps one loaded and
    waiting, tells it the reason when it acts, keeps a new one ready, and lets the last go
    without acting when it stops."""
    command, log = _standby_stand_in(tmp_path)
    r = redis_server.client()
    dog = Watchdog(redis_server.url, tmp_path / "p.yaml", tmp_path / "s", silence_s=0.5, command=command,
                   say=lambda _: None, standby=True)
    first = dog._ready
    try:
        assert first is not None and first.poll() is None
        r.set("apex:hb:book:a", heartbeat.encode(time.time(), "running"), ex=60)
        dog.look()
        assert until(lambda: dog.look().act, 10)
        (argv, told), = [json.loads(line) for line in log.read_text().splitlines()]
        assert argv == ["kill", "--pipeline", str(tmp_path / "p.yaml"), "--state-dir", str(tmp_path / "s"),
                        "--standby"]
        order = json.loads(told)
        assert order["reason"].startswith("watchdog: book:a silent for ") and order["by"] == "watchdog"
        assert order["confirm_within"] == 0  # a silent Apex stage: the worker will not confirm
        assert dog.actions[0][1] == 0 and first.poll() == 0
        assert dog._ready is not None and dog._ready is not first and dog._ready.poll() is None
    finally:
        last = dog._ready
        dog.close()
    assert last is not None and last.returncode == 0
    assert len(log.read_text().splitlines()) == 1, "the standby let go at the end acted"
