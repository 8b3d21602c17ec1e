"""Apex as a Bytewax cluster (docs/cluster.md): two `apex run` processes on loopback, two books
each, both venue simulators, signals through Redis. Each book decides what a one-process run
of the same pipeline decides, each order reaches its venue once, and the audit trail holds
each book's rows once, in the store of the process that runs it. There is no ClickHouse
server on this machine: each process writes an embedded store of its own (an explicit
``chdb://…{process}`` DSN), and "one audit trail" is checked by querying both."""

from __future__ import annotations

import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from connectors.clickhouse import AuditStore
from dataflows import cluster
from helpers import APEX, until
from okx_fixtures import free_port
from test_venues_together import REPO, SAMPLE, Sims, _ended, _env, _pipeline, _publish, _signals, _status

# Bytewax routes these two to process 0 and those two to process 1 with two workers in all
# (test_placement_is_bytewax_routing_and_stable checks it): each process trades at both venues
BOOKS = {"okx_b": 0, "equities": 0, "okx_a": 1, "tech": 1}
BOOKS_YAML = """
books:
  okx_a: {takes: {venue: okx, source: [mean_reversion, macro, novelty_anomaly]}}
  okx_b: {takes: {venue: okx}}
  tech: {takes: {venue: ibkr, source: [smart_money, mean_reversion, macro]}}
  equities: {takes: {venue: ibkr}}
"""


def _books_pipeline(work: Path, audit: str) -> Path:
    """The venues example with four books, a concentration limit no book reaches (so a book's
    decisions do not depend on the order two consumers read its signals in), and ``audit``."""
    path = _pipeline(work)
    text = path.read_text().replace("max_nav_fraction: 0.05", "max_nav_fraction: 1.0")
    text = text.replace("clickhouse: ${APEX_CLICKHOUSE_DSN:-}", f"clickhouse: {audit}")
    text = text.replace("\nstages:", BOOKS_YAML + "\nstages:", 1)
    path.write_text(text)
    return path


def _start(work: Path, pipeline: Path, redis_url: str, env: dict, state: Path,
           cluster_args: list[tuple[str, ...]]) -> list[tuple[subprocess.Popen, Path]]:
    """One `apex run` per entry of ``cluster_args`` (its -i/-a), all started before any is
    waited for (a cluster's processes wait for each other), until the consumer group exists."""
    procs = []
    for i, extra in enumerate(cluster_args):
        log = work / f"apex-{i}.log"
        procs.append((subprocess.Popen(
            [APEX, "run", str(pipeline), "--source", redis_url, "--state-dir", str(state), "--no-progress",
             "--stop-when-idle", "3000", *extra], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w")), log))

    def ready() -> bool:
        for proc, log in procs:
            assert proc.poll() is None, log.read_text()[-3000:]
        return _status(redis_url, pipeline)["group_exists"]
    assert until(ready, 180), "apex run made no consumer group"
    return procs


def _decisions(ledger: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT signal_id, outcome FROM decisions").fetchall())
    finally:
        db.close()


def _audit(dsn: str) -> Counter:
    """The store's audit events, as (book, signal, stage, outcome), counted. Without a venue's
    "accepted": whether it reaches the book before the fill is the venue's timing, in any run."""
    store = AuditStore(dsn)
    try:
        return Counter(store.query("SELECT book, signal_id, stage, outcome FROM audit_events FINAL"
                                   " WHERE NOT (stage = 'EXECUTION_CONFIRMED' AND outcome = 'accepted')"))
    finally:
        store.close()


def _books_in(trail: Counter) -> Counter:
    return Counter(book for (book, *_) in trail.elements())


def test_placement_is_bytewax_routing_and_stable():
    """The books land where Bytewax's key routing puts them, the same way every time."""
    assert {b: w // 1 for b, w in cluster.owners(list(BOOKS), 2).items()} == BOOKS
    assert cluster.owners(list(BOOKS), 2) == cluster.owners(list(BOOKS), 2)


def test_the_cluster_shape_is_read_as_bytewax_reads_it(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1:1\n\n127.0.0.1:2\n")
    assert cluster.shape_of(2, 1, cluster.addresses_arg(str(hosts))) == \
        cluster.Shape(1, 2, 2, ("127.0.0.1:1", "127.0.0.1:2"))
    assert cluster.shape_of(None, None, None) == cluster.Shape()
    for bad in ((1, 0, None), (1, 2, "a:1;b:2"), (0, None, None)):
        with pytest.raises(ValueError):
            cluster.shape_of(*bad)


@pytest.mark.parametrize("audit, source, says", [
    ("", "redis://127.0.0.1:1/0", "a cluster of 2 processes writes one audit trail to a ClickHouse server"),
    ("chdb://{state}/one-store", "redis://127.0.0.1:1/0", "embedded chDB opens in one process only"),
    ("chdb://{state}/audit-{{process}}", f"recording:{SAMPLE}", "a cluster reads a Redis stream"),
])
def test_a_cluster_refuses_what_it_cannot_run_in_one_line(tmp_path, audit, source, says):
    """Before anything is opened: no traceback, exit 1, the reason."""
    state = tmp_path / "state"
    pipeline = _books_pipeline(tmp_path, audit.format(state=state))
    out = subprocess.run([APEX, "run", str(pipeline), "--source", source, "--state-dir", str(state),
                          "--no-progress", "-i", "0", "-a", "127.0.0.1:1;127.0.0.1:2"],
                         env=_env(None), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (state / "process-0").exists()


def test_two_processes_two_books_each_decide_as_one_process_does(tmp_path, redis_server_factory):
    recording = tmp_path / "signals.jsonl"
    # OKX spot sells only what the account holds: its shorts would be refused or filled by
    # which book's buy came first, an order two consumers do not keep
    lines = _signals(SAMPLE, lambda d: not (d.get("venue") == "okx" and d.get("side") == "sell"))
    recording.write_text("\n".join(lines[:600]) + "\n")
    runs = {}
    for name in ("one", "cluster"):
        work = tmp_path / name
        work.mkdir()
        redis = redis_server_factory()
        sims = Sims(work, recording)
        state = work / "state"
        try:
            pipeline = _books_pipeline(work, f"chdb://{state}/audit-{{process}}" if name == "cluster" else "")
            if name == "one":
                shape = [()]
            else:
                addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
                shape = [("-i", str(i), "-a", addresses) for i in (0, 1)]
            procs = _start(work, pipeline, redis.url, _env(sims), state, shape)
            _publish(recording, redis.url)
            for proc, log in procs:
                _ended(proc, log)
            runs[name] = {b: _decisions(state / "books" / b / "ledger.sqlite") for b in BOOKS}
            for venue in ("okx", "ibkr"):
                sent = sims.logged(venue)
                assert sent and max(Counter(sent).values()) == 1, f"an order reached {venue} twice"
            assert set(sims.okx("GET", "placements").values()) == {1}, "an order was sent to OKX twice"
            if name == "cluster":
                trails = [_audit(f"chdb://{state}/audit-{i}") for i in (0, 1)]
                for book, process in BOOKS.items():  # each book's rows in its own process's store alone
                    held = [_books_in(t)[book] for t in trails]
                    assert held[process] > 0 and held[1 - process] == 0, (book, held)
                    assert sum(1 for _ in (state / "books" / book).glob("run.lock")) == 1
                runs["trail"] = trails[0] + trails[1]
            else:
                runs["one_trail"] = _audit(f"chdb://{state}/clickhouse")
        finally:
            sims.stop()
    for book in BOOKS:
        assert runs["one"][book], f"book {book} decided nothing"
        assert runs["cluster"][book] == runs["one"][book], book
    assert runs["trail"] == runs["one_trail"], (runs["trail"] - runs["one_trail"], runs["one_trail"] - runs["trail"])


def test_a_state_dir_given_on_the_command_line_holds_every_books_ledger(tmp_path):
    """It held only the run's lock: each book's ledger stayed under the file's state_dir."""
    from dataflows.gates import load_pipeline

    p = load_pipeline(_books_pipeline(tmp_path, ""), tmp_path / "given")
    assert {b.ledger_path for b in p.each_book()} == {(tmp_path / "given" / "books" / b / "ledger.sqlite")
                                                      for b in BOOKS}


def test_bytewax_run_passes_the_same_cluster_gates(tmp_path):
    """Started as ``python -m bytewax.run … -i 0 -a …``, the embedded audit store is refused as
    `apex run` refuses it: one line, exit 1, nothing made in the state dir."""
    state = tmp_path / "state"
    pipeline = _books_pipeline(tmp_path, "")
    out = subprocess.run([str(Path(APEX).with_name("python")), "-m", "bytewax.run",
                          f"dataflows.apex:build({str(pipeline)!r}, 'redis://127.0.0.1:1/0', {str(state)!r})",
                          "-i", "0", "-a", "127.0.0.1:1;127.0.0.1:2"],
                         env=_env(None), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 1, out.stderr
    assert "writes one audit trail to a ClickHouse server" in out.stderr and "Traceback" not in out.stderr
    assert not state.exists()


def test_a_book_another_process_holds_is_refused_and_nothing_else_is_kept(tmp_path):
    """Two processes that disagree on placement never run one book twice: the second to lock it
    is refused, naming the holder, and lets go of what it had taken."""
    from dataflows.gates import load_pipeline

    p = load_pipeline(_books_pipeline(tmp_path, ""), tmp_path / "state")
    first = cluster.lock_books(p, frozenset({"tech"}))
    try:
        with pytest.raises(Exception, match="in use by pid"):
            cluster.lock_books(p, frozenset({"okx_a", "tech"}))
        again = cluster.lock_books(p, frozenset({"okx_a"}))  # okx_a was let go
        for lock in again:
            lock.release()
    finally:
        for lock in first:
            lock.release()


def test_a_book_this_process_was_not_admitted_for_does_not_trade(monkeypatch):
    monkeypatch.setitem(cluster._PLACED, "books", frozenset({"tech"}))
    steps = cluster.guarded({"tech": "its step", "okx_a": "another's"})
    assert steps["tech"] == "its step"
    with pytest.raises(RuntimeError, match="did not admit it"):
        steps["okx_a"]
    monkeypatch.delitem(cluster._PLACED, "books")
    plain = {"okx_a": 1}
    assert cluster.guarded(plain) is plain


def test_apex_run_with_two_workers_in_one_process_decides_as_one_worker_does(tmp_path):
    """``-w 2``: the books spread over two workers of one process, on the paper venue; each
    book decides every signal it takes as a one-worker run does."""
    recording = tmp_path / "signals.jsonl"
    recording.write_text("\n".join(SAMPLE.read_text().splitlines()[:300]) + "\n")
    pipeline = _books_pipeline(tmp_path, "")
    text = pipeline.read_text()
    pipeline.write_text(text[:text.index("\nvenues:")] + "\n" + text[text.index("\nbooks:"):])
    decided = {}
    for workers in ("1", "2"):
        state = tmp_path / f"w{workers}"
        out = subprocess.run([APEX, "run", str(pipeline), "--source", f"recording:{recording}", "--state-dir",
                              str(state), "--no-progress", "-w", workers], env=_env(None), capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
        decided[workers] = {b: _decisions(state / "books" / b / "ledger.sqlite") for b in BOOKS}
    assert all(decided["1"].values()), decided["1"]
    assert decided["2"] == decided["1"]
