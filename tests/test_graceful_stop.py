"""A signal to the whole process group stops Apex gracefully (issue 16, item 5).

systemd's default stop and Ctrl-C in a terminal signal every process of the group, the
shipper child included. The stop must still leave every acknowledged entry's audit rows
in ClickHouse, and a replay must stop as a live run does: the batch in hand decided and
recorded, the summary printed, exit 0, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from connectors.recording import count_entries
from test_redis_live import (APEX, GROUP, SAMPLE, STREAM, Worker, _no_worker_left_behind,  # noqa: F401
                             assert_one_terminal_outcome_each, audit_chains, decided, group, pipeline_yaml,
                             wait_for)


def acknowledged(r) -> list[str]:
    """Stream ids the group read and no longer has pending."""
    last = next(g for g in r.xinfo_groups(STREAM) if g["name"] == GROUP)["last-delivered-id"]
    pending = {p["message_id"] for p in r.xpending_range(STREAM, GROUP, "-", "+", 100_000)}
    return [sid for sid, _ in r.xrange(STREAM, max=last) if sid not in pending]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_leaves_every_acknowledged_entry_in_clickhouse(tmp_path, redis_server, sig):
    r = redis_server.client()
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=10)
    w = Worker(tmp_path, pipeline, session=True)
    producer = subprocess.Popen([APEX, "publish", str(SAMPLE), "--rate", "300", "--redis", redis_server.url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: r.exists(STREAM) and group(r)["acked"] >= 200, "some entries acknowledged", workers=(w,))
        os.killpg(w.proc.pid, sig)
        assert w.wait() == 0, w.output()[-3000:]
    finally:
        producer.terminate()
        producer.wait(30)
    assert "Traceback" not in w.output()
    acked = acknowledged(r)
    assert len(acked) >= 200
    assert_one_terminal_outcome_each(audit_chains(tmp_path / "state"), acked)


def test_ctrl_c_during_a_replay_finishes_the_batch_in_hand_and_prints_the_summary(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    (tmp_path / "gatemod.py").write_text(
        "import os, time\n"
        "def hold(signal, portfolio, path):\n"
        "    if os.path.exists(path):\n"
        "        open(path + '.held', 'w').close()  # the test's cue: the replay is mid-way\n"
        "    while os.path.exists(path):\n"
        "        time.sleep(0.005)\n"
        "    return True\n")
    pipeline = pipeline_yaml(tmp_path, "redis://unused:6379/0", prefix=({"filter": "gatemod:hold", "path": str(gate)},))
    state, summary = tmp_path / "state", tmp_path / "summary.json"
    with (tmp_path / "out.log").open("w") as out, (tmp_path / "err.log").open("w") as err:
        run = subprocess.Popen([APEX, "run", str(pipeline), "--source", f"recording:{SAMPLE}", "--state-dir",
                                str(state), "--no-progress", "--json", str(summary)],
                               stdout=out, stderr=err, cwd=tmp_path, start_new_session=True,
                               env={**os.environ, "APEX_ENV": "paper", "COLUMNS": "200"})
    try:
        wait_for(lambda: (tmp_path / "gate.held").exists() or run.poll() is not None, "the replay to hold")
        os.killpg(run.pid, signal.SIGINT)
        gate.unlink()
        code = run.wait(120)
    finally:
        if run.poll() is None:
            run.kill()
    stderr, stdout = (tmp_path / "err.log").read_text(), (tmp_path / "out.log").read_text()
    assert "Traceback" not in stderr and "panicked" not in stderr, stderr[-3000:]
    assert code == 0, stderr[-3000:]
    assert "entries in" in stdout  # the summary
    entries = json.loads(summary.read_text())["entries"]
    assert 0 < entries < count_entries(SAMPLE), "Ctrl-C did not stop the replay early"
    assert decided(state) > 0
    assert len(audit_chains(state)) == entries  # everything decided was shipped
