"""Several `apex run` processes of one consumer group (the scale-out, docs/operations.md), each
watched on its own: every process writes its heartbeats and its reconciliation status under
its consumer's name (``dataflows.cluster.process_tag``), so one that stops is named by the
watchdog while the other beats on, and `apex status` shows each.

Two `apex run` processes on the paper venue and a private redis-server; the watchdog's loop
is the real one, acting through a stand-in for `apex kill` (test_watchdog.py's)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import yaml

from connectors import heartbeat
from connectors.watchdog import Watchdog
from dataflows import cluster
from dataflows.config import parse
from helpers import KELLY_AND_EXECUTE, until
from test_redis_live import APEX, Worker, _no_worker_left_behind, pipeline_yaml, wait_for  # noqa: F401
from test_watchdog import _asked, _stand_in

SECOND = "apex-worker-2"


def _beating(r) -> set[str]:
    return {stage for stage, (_, state) in heartbeat.present(r).items() if state != heartbeat.STOPPED}


def test_the_watchdog_names_the_consumer_whose_process_stopped_and_status_shows_each(tmp_path, redis_server):
    r = redis_server.client()
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=10, claim_idle_ms=3_600_000)
    doc = yaml.safe_load(pipeline.read_text())
    doc["watchdog"] = {"heartbeat_s": 0.5}
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))
    first = Worker(tmp_path, pipeline, "apex-worker-1", state="state-a")  # the default name: plain stages
    second = Worker(tmp_path, pipeline, SECOND, state="state-b")
    both = {"source", "shipper", f"source@{SECOND}", f"shipper@{SECOND}"}
    wait_for(lambda: both <= _beating(r), "both processes' heartbeats", timeout=120, workers=(first, second))

    shown = subprocess.run([APEX, "status", "--redis", redis_server.url], capture_output=True, text=True,
                           check=True, timeout=120).stdout
    assert f"heartbeat source@{SECOND}: running" in shown and "heartbeat source: running" in shown, shown

    command, asked = _stand_in(tmp_path)
    said: list[str] = []
    dog = Watchdog(redis_server.url, pipeline, tmp_path / "state-b", silence_s=2.0, check_s=0.1,
                   command=command, say=said.append)
    # the first process's own watchdog (`apex watchdog --consumer apex-worker-1`): its kill switch
    # reaches the first process's state dir only, so the second's silence is not its to act on
    mine = Watchdog(redis_server.url, pipeline, tmp_path / "state-a", silence_s=2.0, check_s=0.1,
                    command=command, say=said.append, tag="")
    stop = threading.Event()
    watching = [threading.Thread(target=d.run, args=(stop,), daemon=True) for d in (dog, mine)]
    for t in watching:
        t.start()
    try:
        assert until(lambda: both <= set(dog.watch.heard) and {"source", "shipper"} <= set(mine.watch.heard), 30), \
            dog.watch.heard
        os.kill(second.proc.pid, signal.SIGSTOP)  # frozen: its heartbeats stop, its keys expire
        assert until(lambda: dog.actions, 60), said
        (verdict, _), = dog.actions
        silent = {s.stage for s in verdict.act}
        assert {f"source@{SECOND}", f"shipper@{SECOND}"} <= silent, said
        assert all(stage.endswith(f"@{SECOND}") for stage in silent), "the live process was taken for silent"
        assert f"source@{SECOND} silent for" in _asked(asked)[0][6]  # the reason the kill switch was given
        assert {"source", "shipper"} <= _beating(r), "the first process stopped beating"
        assert not any("@" in stage for stage in mine.watch.heard), mine.watch.heard
        assert mine.actions == [] and len(_asked(asked)) == 1, "the first process's watchdog acted"
    finally:
        stop.set()
        for t in watching:
            t.join(10)
        dog.close()
        mine.close()
        os.kill(second.proc.pid, signal.SIGCONT)
    first.term()
    second.term()
    assert first.wait() == 0, first.output()[-3000:]
    assert second.wait() == 0, second.output()[-3000:]


def test_a_process_is_tagged_by_a_consumer_name_of_its_own_and_its_stages_carry_the_tag(tmp_path):
    text = f"state_dir: {tmp_path}\nstages:\n{KELLY_AND_EXECUTE}"
    p = parse(text, tmp_path / "pipeline.yaml", {})
    assert cluster.process_tag(p) == ""  # one process: the plain names
    p.redis = p.redis.model_copy(update={"consumer": "desk-b"})
    assert cluster.process_tag(p) == "@desk-b"
    assert heartbeat.tag_of("book:main@desk-b") == "@desk-b" and heartbeat.tag_of("venue:okx") == ""
