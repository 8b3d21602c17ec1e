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
from helpers import KELLY_AND_EXECUTE, entry, messages, write_recording
from okx_fixtures import PRICES, free_port
from test_gates import clean_env
from test_redis_live import (APEX, GROUP, SAMPLE, STREAM, Worker, _no_worker_left_behind,  # noqa: F401
                             assert_one_terminal_outcome_each, audit_chains, decided, drained, fresh_entries,
                             group, pipeline_yaml, wait_for, xadd_all)


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


# ----- a stop asked while the run is still starting -----


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler of its own for ``sig`` (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:  # not there yet, or gone
        return False
    return False


def test_a_sigterm_the_moment_the_process_can_catch_it_stops_gracefully_and_loses_nothing(tmp_path, redis_server):
    """A stop asked as the process starts (systemd stopping a unit it just started): the
    handler is the command's first act, before its modules, the gates and the flow; the stop
    is kept until there is a flow to stop, which then ends as it starts. What the stream holds
    is still there for the next start, which decides each entry once."""
    r = redis_server.client()
    ids = xadd_all(r, fresh_entries(100, unique=True))
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=10)
    w = Worker(tmp_path, pipeline)
    wait_for(lambda: _catches(w.proc.pid, signal.SIGTERM) or not w.alive(), "the stop handler")
    w.term()
    assert w.wait() == 0, w.output()[-3000:]
    assert "Traceback" not in w.output()
    again = Worker(tmp_path, pipeline, "apex-worker-1", "--stop-when-idle", "2000")
    assert again.wait(180) == 0, again.output()[-3000:]
    assert drained(r, len(ids))
    assert_one_terminal_outcome_each(audit_chains(tmp_path / "state"), ids)


def test_a_sigterm_while_waiting_for_a_venue_ends_the_wait_and_exits_0(tmp_path):
    """The gates run before the flow exists: a stop while they wait for a venue
    (--wait-for-venues) ends the wait, reads nothing and exits 0, not killed where it stood."""
    path = tmp_path / "p.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nvenues:\n  okx: {{kind: okx, url: "
                    f"'http://127.0.0.1:{free_port()}'}}\nstages:\n{KELLY_AND_EXECUTE}")
    rec = write_recording(tmp_path / "rec.jsonl", [entry("1767261600000-0", signal_id="eth-0", symbol="ETH-USDT",
                                                         reference_price=PRICES["ETH-USDT"])])
    err = tmp_path / "err.log"
    with err.open("w") as fh:
        run = subprocess.Popen([APEX, "run", str(path), "--source", f"recording:{rec}", "--no-progress",
                                "--wait-for-venues", "600"], stdout=subprocess.DEVNULL, stderr=fh,
                               env=clean_env(APEX_ENV="paper", OKX_API_KEY="k", OKX_API_SECRET="s",
                                             OKX_API_PASSPHRASE="p"))
    try:
        wait_for(lambda: "asking again" in err.read_text() or run.poll() is not None, "the wait said", timeout=120)
        assert run.poll() is None, err.read_text()
        run.send_signal(signal.SIGTERM)
        code = run.wait(120)
    finally:
        if run.poll() is None:
            run.kill()
    text = err.read_text()
    assert code == 0, text[-3000:]
    assert any("stopped while waiting for the venues" in line for line in messages(text)), text[-3000:]
    assert decided(tmp_path / "state") == 0
    assert "Traceback" not in text


def test_a_stop_asked_before_there_is_a_flow_is_carried_out_once_there_is_one():
    from apex import stopping

    stopped: list[str] = []
    stopping.ASKED.clear()
    try:
        stopping.then(lambda: stopped.append("first"))
        assert stopped == []  # nothing asked yet
        stopping._on_signal(signal.SIGTERM, None)
        assert stopped == ["first"]
        stopping.then(None)
        stopping.then(lambda: stopped.append("second"))  # asked already: carried out at once
        assert stopped == ["first", "second"]
    finally:
        stopping.then(None)
        stopping.ASKED.clear()
