"""One worker per state dir, and no way around the gates (issue 23, item 8).

Two `apex run` on one state dir traded on one ledger with two books in memory; and
``python -m bytewax.run "dataflows.apex:build(...)"``, which skipped what only the
command line checked, was seen trading under APEX_ENV=live without APEX_LIVE_CONFIRM and
on a ledger the venue contradicted. Every way of starting now passes the same gates
(dataflows/gates.py), and a state dir in use is refused at once, naming its holder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connectors import state_lock
from dataflows.gates import Refused, admit
from helpers import APEX, KELLY_AND_EXECUTE, entry, messages, until, write_recording
from okx_fixtures import CREDENTIAL_ENV, PRICES, held, okx_sim, order  # noqa: F401 - the fixture
from test_live_gate import shipped_with
from test_redis_live import pipeline_yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("APEX_", "OKX_"))}
    return {**base, "COLUMNS": "400", **extra}


def bytewax_run(pipeline: Path, *, cwd: Path, env: dict[str, str], state_dir: Path | None = None,
                source: str | None = None) -> subprocess.CompletedProcess:
    """The dataflow under Bytewax's own runner, as the README shows it."""
    args = [repr(str(pipeline))]
    if source is not None:
        args.append(f"source={str(source)!r}")
    if state_dir is not None:
        args.append(f"state_dir={str(state_dir)!r}")
    return subprocess.run([PYTHON, "-m", "bytewax.run", f"dataflows.apex:build({', '.join(args)})"],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stdout + res.stderr, res.stderr


# --- the paper/live gate under bytewax.run ----------------------------------------------------


def test_bytewax_run_in_live_without_the_confirmation_is_refused_before_anything_trades(tmp_path):
    path = shipped_with(tmp_path, "")  # every market on the paper venue: it would trade at once
    state = tmp_path / "state"
    res = bytewax_run(path, cwd=tmp_path, env=clean_env(APEX_ENV="live"), state_dir=state)
    no_traceback(res)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "APEX_ENV=live: trading real money also needs APEX_LIVE_CONFIRM=yes in the environment",
        "APEX_ENV=live: okx orders would go to the built-in paper venue; "
        "give venues.okx its own kind, or run with APEX_ENV=paper",
        "APEX_ENV=live: ibkr orders would go to the built-in paper venue; "
        "give venues.ibkr its own kind, or run with APEX_ENV=paper",
    ]
    assert not state.exists()  # refused before the state dir, the ledger or a venue was touched


def test_bytewax_run_in_paper_will_not_send_to_an_ibkr_live_port(tmp_path):
    # nothing listens on 4001 here: a run that skipped the gate would fail on the connection,
    # with some other message; the gate's own sentence is what is asserted
    path = shipped_with(tmp_path, "\nvenues:\n  ibkr: {kind: ibkr, port: 4001, account: DU1234567}\n")
    state = tmp_path / "state"
    res = bytewax_run(path, cwd=tmp_path, env=clean_env(APEX_ENV="paper"), state_dir=state)
    no_traceback(res)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "APEX_ENV=paper: venues.ibkr.port 4001 is IB Gateway's live port; use its paper port (4002 IB Gateway, 7497 TWS)"]
    assert not state.exists()


def test_bytewax_run_says_a_users_mistake_in_one_line(tmp_path):
    env = clean_env(APEX_ENV="paper")
    missing = bytewax_run(tmp_path / "nope.yaml", cwd=tmp_path, env=env)
    no_traceback(missing)
    assert missing.returncode == 1
    nope = tmp_path / "nope.yaml"
    assert missing.stderr.splitlines() == [f"error {nope}: {nope}: No such file or directory"]  # as `apex run` says it
    path = shipped_with(tmp_path, "")
    no_recording = bytewax_run(path, cwd=tmp_path, env=env, state_dir=tmp_path / "state",
                               source=f"recording:{tmp_path / 'none.jsonl'}")
    no_traceback(no_recording)
    assert no_recording.returncode == 2
    assert no_recording.stderr.splitlines() == [f"recording {tmp_path / 'none.jsonl'} does not exist"]
    assert state_lock.holder(tmp_path / "state") is None


# --- start-up reconciliation under bytewax.run --------------------------------------------------


def test_bytewax_run_will_not_trade_on_a_ledger_the_okx_simulator_contradicts(okx_sim, tmp_path):
    """The OKX simulator holds BTC that no ledger placed (an order sent by hand): the book says
    nothing is held, the venue says otherwise, and the run is refused before its first decision."""
    (fill,) = okx_sim.venue.place_many([order("by-hand", quantity=0.5)])
    assert fill.quantity == held(0.5), fill  # the account holds the buy less OKX's fee in BTC
    path = tmp_path / "p.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nvenues:\n  okx: {{kind: okx, url: '{okx_sim.url}'}}\n"
                    f"stages:\n{KELLY_AND_EXECUTE}")
    # a signal the venue would take, were the run let in
    rec = write_recording(tmp_path / "rec.jsonl", [entry("1767261600000-0", signal_id="would-trade",
                                                         symbol="ETH-USDT", reference_price=PRICES["ETH-USDT"])])
    res = bytewax_run(path, cwd=tmp_path, env=clean_env(APEX_ENV="paper", **CREDENTIAL_ENV),
                      source=f"recording:{rec}")
    no_traceback(res)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("trading did not start: 1 difference(s) between the book and the venues")
    assert any(line.startswith(f"position_mismatch: venue okx, okx BTC-USDT: the book holds 0, the venue holds "
                               f"{held(0.5):g}") for line in lines), lines
    assert [o["clOrdId"] for o in okx_sim.logged()] == [fill.client_order_id]  # nothing more was sent
    assert not (tmp_path / "state" / "ledger.sqlite").exists()  # nothing was decided


def test_bytewax_run_will_not_trade_on_a_ledger_the_paper_venue_contradicts(tmp_path):
    """A run through bytewax.run trades at the paper venue (the gates let a sound start in);
    with its ledger gone, the next one is refused, naming what differs, and decides nothing."""
    path = shipped_with(tmp_path, "")
    state = tmp_path / "state"
    env = clean_env(APEX_ENV="paper")
    first = bytewax_run(path, cwd=tmp_path, env=env, state_dir=state)
    assert first.returncode == 0, first.stderr
    assert (state / "ledger.sqlite").exists() and (state / "paper-venue.sqlite").exists()
    for f in state.glob("ledger.sqlite*"):
        f.unlink()
    again = bytewax_run(path, cwd=tmp_path, env=env, state_dir=state)
    no_traceback(again)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert lines[-1].startswith("trading did not start: ")
    assert any(line.startswith("position_mismatch: venue paper, okx BTC-USDT: the book holds 0") for line in lines)
    assert not (state / "ledger.sqlite").exists()


# --- one worker per state dir ---------------------------------------------------------------------


def test_a_second_run_on_a_state_dir_in_use_is_refused_at_once_and_a_killed_holders_is_free(tmp_path, redis_server):
    path = pipeline_yaml(tmp_path, redis_server.url)  # a stream: the holder runs until it is stopped
    state = tmp_path / "state"
    env = clean_env(APEX_ENV="paper")
    run = [APEX, "run", str(path), "--state-dir", str(state), "--no-progress"]
    holder = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "holder.log", "w"))
    try:
        def holding() -> bool:
            assert holder.poll() is None, (tmp_path / "holder.log").read_text()
            try:  # the name it writes once it holds the lock (read as is, not through the lock)
                return json.loads((state / state_lock.LOCK_NAME).read_text())["pid"] == holder.pid
            except (OSError, ValueError):
                return False

        assert until(holding, 120), "the first run never took its state dir"

        # --stop-when-idle: were it let in, it would end of itself, and say so with exit 0
        second = subprocess.run([*run, "--stop-when-idle", "200"], env=env, capture_output=True, text=True,
                                timeout=120)
        no_traceback(second)
        assert second.returncode == 1 and second.stdout == ""
        (line,) = second.stderr.splitlines()
        assert line.startswith(f"state dir {state} is in use by pid {holder.pid} (")
        assert line.endswith(f"run {path} --state-dir {state} --no-progress); one run per state dir: stop that "
                             "one first, or give this run a state dir of its own")  # the holder's command line

        # the same pipeline under bytewax.run is refused the same way (a recording: let in, it would end)
        rec = write_recording(tmp_path / "rec.jsonl", [entry("1767261600000-0", signal_id="one")])
        other = bytewax_run(path, cwd=tmp_path, env=env, state_dir=state, source=f"recording:{rec}")
        no_traceback(other)
        assert other.returncode == 1
        assert other.stderr.splitlines() == [line]
        assert holder.poll() is None  # the holder runs on, untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)

    # the kernel dropped the lock with the killed process: nothing stale to clean up
    again = subprocess.run([*run, "--stop-when-idle", "200"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert any(m.startswith("env=paper ") for m in messages(again.stderr)), again.stderr
    assert state_lock.holder(state) is None  # and a run that ends lets go of it


# --- in one process: restarts, and what a gate that refuses leaves behind ------------------------


def pipeline(tmp_path: Path):
    from dataflows.config import parse

    return parse(f"state_dir: {tmp_path / 'state'}\nstages:\n{KELLY_AND_EXECUTE}", tmp_path / "p.yaml", {})


def test_one_process_holds_a_state_dir_once_and_takes_it_again_after_releasing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("APEX_ENV", "paper")
    p = pipeline(tmp_path)
    first = admit(p, print)
    with pytest.raises(Refused) as e:
        admit(p, print)  # a second holder while the first is alive, even in this process
    assert e.value.lines == [f"state dir {p.state_dir} is in use by pid {os.getpid()} "
                             f"({state_lock.command_line()}); one run per state dir: stop that one first, "
                             "or give this run a state dir of its own"]
    first.release()
    admit(p, print).release()  # a restart in the same process
    assert state_lock.holder(p.state_dir) is None


def test_a_refused_start_lets_go_of_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("APEX_ENV", "paper")
    p = pipeline(tmp_path)
    from connectors.venues.paper import PaperVenue

    venue = PaperVenue(tmp_path / "state" / "paper-venue.sqlite")  # a fill no ledger holds
    venue.place_many([order("by-hand")])
    venue.db.close()
    with pytest.raises(Refused) as e:
        admit(p, print)
    assert e.value.lines[-1].startswith("trading did not start: 1 difference(s)")
    assert state_lock.holder(p.state_dir) is None
    state_lock.acquire(p.state_dir).release()


def test_a_child_process_does_not_inherit_the_lock(tmp_path):
    """The audit shipper is a child of the worker; had it inherited the lock, it would hold the
    state dir after the worker was killed, for as long as it drains."""
    lock = state_lock.acquire(tmp_path)
    # close_fds=False: only the lock's own close-on-exec keeps it from the child
    child = subprocess.Popen([PYTHON, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, close_fds=False)
    try:
        # once it runs its own code, its exec has closed (and the kernel let go of) what it did not inherit
        assert child.stdout.readline() == "up\n"
        lock.release()
        state_lock.acquire(tmp_path).release()  # refused if the child still held a copy
    finally:
        child.stdin.close()
        child.wait(30)
