"""The outbox between the ledger and ClickHouse: shipped in bulk, never in the worker's way."""

from __future__ import annotations

import fcntl
import gc
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from connectors import outbox
from connectors.clickhouse import AuditStore
from connectors.ledger import Ledger, WalKeeper
from helpers import until


def wal_bytes(ledger_path) -> int:
    return os.path.getsize(f"{ledger_path}-wal")


def _queue(ledger: Ledger, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        ledger.begin()
        ledger.rows["filter_drops"].append([f"s{i}", f"{i}-0", "confidence", 1, "a", "okx", "BTC-USDT", 0.5,
                                            "choppy"])  # DROP_COLUMNS
        ledger.commit()


def test_the_shipper_records_progress_while_the_worker_holds_the_ledgers_write_lock(tmp_path):
    """A niced shipper holding the ledger's write lock stalled the worker's next commit by
    many ms (SQLite's busy handler sleeps); its watermark now lives in a file of its own."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _queue(ledger, 3)
    store = AuditStore(f"chdb://{tmp_path / 'ch'}")
    db, state = outbox.connect(path), outbox.connect_state(path)
    state.execute("PRAGMA busy_timeout=0")  # waiting would show up as "database is locked"
    ledger.begin()  # the worker's open transaction: BEGIN IMMEDIATE holds the write lock
    seq, full, _ = outbox.ship_once(db, store, outbox.reconcile(db, state))
    outbox.mark(state, seq)
    ledger.commit()
    assert (seq, full) == (3, False)
    assert store.query("SELECT count() FROM filter_drops") == [(3,)]
    assert state.execute("SELECT shipped_seq FROM outbox_state").fetchone()[0] == 3


def test_a_watermark_ahead_of_a_new_ledger_is_reset_so_nothing_is_skipped(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _queue(ledger, 2)
    ledger.close()
    state = outbox.connect_state(path)
    outbox.mark(state, 2)
    path.unlink()  # the ledger is removed, its shipped-state file left behind
    ledger = Ledger(path)
    _queue(ledger, 1)
    db = outbox.connect(path)
    assert outbox.reconcile(db, state) == 0
    assert state.execute("SELECT shipped_seq FROM outbox_state").fetchone()[0] == 0


def test_a_full_chunk_says_more_is_waiting(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox, "CHUNK", 2)
    path = tmp_path / "ledger.sqlite"
    _queue(Ledger(path), 3)
    store = AuditStore(f"chdb://{tmp_path / 'ch'}")
    db = outbox.connect(path)
    assert outbox.ship_once(db, store, 0) == (2, True, 2)  # two outbox rows, one drop each
    assert outbox.ship_once(db, store, 2) == (3, False, 1)
    assert outbox.ship_once(db, store, 3) == (3, False, 0)
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 3  # the worker prunes


class _Store:
    """Stands in for ClickHouse (what is measured is the shipper's own round): its insert
    makes garbage-collected objects the way clickhouse-connect's column building does."""

    def __init__(self, fail: bool = False):
        self.fail, self.rows = fail, 0

    def write(self, rows: dict[str, list], book: str = "") -> None:
        made = [[i, {"k": i}] for i in range(50_000)]  # ~140 collections at CPython's 700
        self.rows += sum(map(len, rows.values()))
        self.made = len(made)
        if self.fail:
            raise ConnectionError("store down")


def _collections_during(fn) -> int:
    """Cyclic collections while ``fn`` runs and in the allocations right after it, where one
    left pending by a large young generation would run."""
    gc.collect()  # from an empty young generation: nothing else is due within this
    seen, after = [], []
    me = threading.get_ident()
    # the callback runs on the thread whose allocation set the collection off: another test's
    # thread still alive (a venue's socket retrying) is not this round's doing
    gc.callbacks.append(lambda phase, _info: seen.append(phase)
                        if phase == "start" and threading.get_ident() == me else None)
    try:
        fn()
        after += [[] for _ in range(100)]  # the allocations that would trigger it
    finally:
        gc.callbacks.pop()
    return len(seen)


_ROUND_ALONE = """
import gc, sys
sys.path.insert(0, sys.argv[1])
from connectors import outbox
from test_outbox import _Store, _collections_during
db, store = outbox.connect(sys.argv[2]), _Store()
print(_collections_during(lambda: outbox.ship_once(db, store, 0)), store.rows, gc.isenabled())
"""


def test_a_round_runs_without_cyclic_collections_and_leaves_the_collector_as_it_was(tmp_path):
    """Collections during a round walked its millions of decoded objects again and again:
    decoding a replay's outbox took 2.0 s with them and 0.22 s without, and a replay's end
    waited for the round in hand. The decoded rows are freed before the collector is back on:
    alive then, the first allocation after collected them all once more (0.13 s a round)."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.begin()
    ledger.rows["filter_drops"] += [[f"s{i}", f"{i}-0", "confidence", 1, "a", "okx", "BTC-USDT", 0.5, "choppy"]
                                    for i in range(5_000)]  # one outbox row, 5,000 lists decoded
    ledger.commit()
    # counted in a process of its own: a thread an earlier test left alive allocates into the
    # same young generation, and a collection its allocations make due may start on this thread
    child = subprocess.run([sys.executable, "-c", _ROUND_ALONE, str(Path(__file__).parent), str(path)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["0", "5000", "True"]  # collections, rows shipped, collector on after
    db = outbox.connect(path)
    with pytest.raises(ConnectionError):  # a failed insert: the collector is back on all the same
        outbox.ship_once(db, _Store(fail=True), 0)
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        outbox.ship_once(db, _Store(), 0)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_shipper_comes_back_sooner_while_rows_pour_in():
    """A replay's end waited up to a whole interval's rows (0.3-0.6 s of a 7 s run) for the
    last round; a trickle still ships once an interval, each insert's fixed cost amortized."""
    assert outbox.next_wait(0) == outbox.INTERVAL_S
    assert outbox.next_wait(outbox.BUSY_ROWS - 1) == outbox.INTERVAL_S
    assert outbox.next_wait(outbox.BUSY_ROWS) == outbox.BUSY_INTERVAL_S < outbox.INTERVAL_S


def test_the_ledger_restarts_its_wal_so_the_file_stops_growing(tmp_path, monkeypatch):
    """The shipper's PASSIVE checkpoints never complete under a worker committing every few
    ms, so the WAL only grew (1.7 GB in two minutes at 200 fills/s); the ledger restarts it
    every RESTART_EVERY commits and the file is overwritten from its start."""
    from connectors import ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "RESTART_EVERY", 10**9)
    grows = Ledger(tmp_path / "grows.sqlite")
    _queue(grows, 5)
    before = wal_bytes(grows.path)
    _queue(grows, 50)
    assert wal_bytes(grows.path) > before  # without restarts

    monkeypatch.setattr(ledger_mod, "RESTART_EVERY", 1)
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _queue(ledger, 5)
    before = wal_bytes(path)
    _queue(ledger, 50)
    assert wal_bytes(path) == before
    assert outbox.connect(path).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 55


@pytest.mark.parametrize("made_with", [None, 1024], ids=["new ledger", "ledger made with 1 KiB pages"])
def test_the_ledger_restarts_its_wal_once_the_keeper_sees_it_past_the_limit(tmp_path, monkeypatch, made_with):
    """Counted in commits alone, the bound on the WAL grew with the page size and the bytes a
    commit writes; the worker's ``WalKeeper`` reports the WAL's length, and past
    WAL_LIMIT_BYTES the next batch's commit starts it over. A ledger made before 4 KiB pages
    keeps its 1 KiB (a page size is fixed at creation), and its frames count at that size."""
    from connectors import ledger as ledger_mod

    path = tmp_path / "ledger.sqlite"
    page = made_with or outbox.PAGE_SIZE
    with monkeypatch.context() as m:
        m.setattr(outbox, "PAGE_SIZE", page)
        Ledger(path).close()
    monkeypatch.setattr(ledger_mod, "RESTART_EVERY", 10**9)
    keeper = WalKeeper(path, interval_s=3600)  # no passes of its own within the test: the test sets what it saw
    ledger = Ledger(path, wal_keeper=keeper)
    assert ledger.db.execute("PRAGMA page_size").fetchone()[0] == page
    _queue(ledger, 5)
    keeper.frames = (ledger_mod.WAL_LIMIT_BYTES - 1) // page
    before = wal_bytes(path)
    _queue(ledger, 20)
    assert wal_bytes(path) > before and keeper.frames > 0  # under the limit: no restart

    keeper.frames = ledger_mod.WAL_LIMIT_BYTES // page
    _queue(ledger, 1)  # this commit restarts it
    assert keeper.frames == 0
    high = wal_bytes(path)
    _queue(ledger, 20)
    assert wal_bytes(path) == high  # overwritten from its start
    assert outbox.connect(path).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 46
    ledger.close()


def test_the_ledger_gets_its_page_size_whichever_connection_creates_it(tmp_path):
    """The shipper's handle opens the ledger before the worker's Ledger in a live run."""
    outbox.connect(tmp_path / "ledger.sqlite")
    assert Ledger(tmp_path / "ledger.sqlite").db.execute("PRAGMA page_size").fetchone()[0] == outbox.PAGE_SIZE


def test_outbox_rows_are_stored_compressed_and_ship(tmp_path):
    """LZ4 frames, since the outbox's bytes were a large share of every commit."""
    import lz4.frame

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _queue(ledger, 2)
    stored = [blob for (blob,) in ledger.db.execute("SELECT rows FROM outbox ORDER BY seq")]
    assert [outbox.decode(b)["filter_drops"][0][0] for b in stored] == ["s0", "s1"]
    assert all(len(lz4.frame.decompress(b)) > 0 for b in stored)
    store = AuditStore(f"chdb://{tmp_path / 'ch'}")
    try:
        seq, _, _ = outbox.ship_once(outbox.connect(path), store, 0)
        assert seq == 2
        assert store.query("SELECT signal_id, stream_id, confidence, regime FROM filter_drops FINAL"
                           " ORDER BY signal_id") == [("s0", "0-0", 0.5, "choppy"), ("s1", "1-0", 0.5, "choppy")]
    finally:
        store.close()


def _wal_index(path) -> tuple[int, int]:
    """(frames in the WAL, frames copied back into the database): mxFrame and nBackfill
    from the WAL index (the -shm file), as every connection sees them."""
    import struct

    raw = open(f"{path}-shm", "rb").read(100)
    return struct.unpack_from("=I", raw, 16)[0], struct.unpack_from("=I", raw, 96)[0]


def test_the_wal_keeper_copies_the_wal_back_while_the_worker_writes_on(tmp_path):
    """The worker's thread never copies the WAL itself but at a restart, and then finds
    nothing left to copy but what came since the keeper's last pass."""
    
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, keep_wal=True)
    try:
        _queue(ledger, 20)
        frames, copied = _wal_index(path)
        assert frames > 0
        # the keeper's thread, on its own schedule
        assert until(lambda: _wal_index(path)[1] >= frames), "the WAL keeper never copied the WAL back"
        ledger.begin()  # the worker goes on committing meanwhile
        ledger.commit()
        assert ledger.restart_wal()
    finally:
        ledger.close()


def test_a_restart_that_a_reader_is_in_the_way_of_returns_at_once_and_is_tried_again(tmp_path, monkeypatch):
    """A reader (the shipper) holding a snapshot makes a restart return at once, without
    sleeping in SQLite's busy handler, and the restart stays due: the first commit after
    the reader has gone starts the WAL over."""
    from connectors import ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "RESTART_EVERY", 3)
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _queue(ledger, 2)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM outbox").fetchone()  # holds a snapshot in the WAL
    assert not ledger.restart_wal()  # busy: nothing reset
    assert ledger.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    _queue(ledger, 1, start=2)  # the third commit: due, and the reader still in the way
    frames = _wal_index(path)[0]
    reader.execute("COMMIT")
    _queue(ledger, 1, start=3)  # tried again after this commit...
    _queue(ledger, 1, start=4)  # ...so this one is written from the WAL's start
    assert _wal_index(path)[0] < frames
    assert ledger.restart_wal()


def test_a_worker_ledger_dropped_without_close_stops_its_wal_thread(tmp_path):
    """A finished dataflow lets go of its ledger without closing it; its keeper thread must
    not outlive it (a test run builds a hundred dataflows in one process)."""
    import gc

    before = {t for t in threading.enumerate() if t.name == "apex-wal"}
    ledger = Ledger(tmp_path / "ledger.sqlite", keep_wal=True)
    (thread,) = {t for t in threading.enumerate() if t.name == "apex-wal"} - before
    assert thread.is_alive()
    del ledger
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_event_details_travel_as_objects_and_land_as_the_same_sorted_json_text(tmp_path):
    """The worker queues an event's details as they are and the shipper writes them as
    JSON text with sorted keys."""
    from operators.audit import Chain

    chain = Chain("1-0", "sig-d", 1, "macro", "okx", "BTC-USDT")
    chain.add("FILTER_CHECK", "dropped", "confidence", checked=[("confidence", False)], age_ms=5)
    chain.add("POSITION_SIZING", "sized", size_usd=10.0, z=1.5, a={"y": 2, "b": None})
    rows = [ev.as_row(7) for ev in chain.events]
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.begin()
    ledger.rows["audit_events"] += rows
    ledger.commit()
    store = AuditStore(f"chdb://{tmp_path / 'ch'}")
    try:
        outbox.ship_once(outbox.connect(path), store, 0)
        assert store.query("SELECT seq, details FROM audit_events FINAL ORDER BY seq") == [
            (0, '{"age_ms":5,"checked":[["confidence",false]]}'),
            (1, '{"a":{"b":null,"y":2},"z":1.5}'),
        ]
    finally:
        store.close()


def test_the_shipper_keeps_off_one_core_so_the_worker_finds_it_free(tmp_path):
    """Embedded ClickHouse ran the niced shipper's insert threads on every core, the worker's
    included; off one core, emit → order p99 at 200/s fell ~10% in alternating pairs."""
    cores = os.sched_getaffinity(0)
    shipper = outbox.Shipper(tmp_path / "ledger.sqlite", f"chdb://{tmp_path / 'ch'}")
    Ledger(tmp_path / "ledger.sqlite").close()
    shipper.start()
    try:
        pid = shipper.pid
        expected = cores - {min(cores)} if len(cores) > 1 else cores
        # the child sets it once imported: wait for it
        assert until(lambda: os.sched_getaffinity(pid) == expected), os.sched_getaffinity(pid)
    finally:
        shipper.stop()



def test_a_second_shipper_on_the_same_state_dir_waits_for_the_first_to_exit(tmp_path):
    """Promise (README): one shipper runs per state dir, behind a lock file, so a restarted
    worker's shipper waits for a killed one's to finish draining (embedded ClickHouse opens
    in one process only); then it ships what is left."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _queue(ledger, 2)
    dsn = f"chdb://{tmp_path / 'ch'}"
    first, second = outbox.Shipper(path, dsn), outbox.Shipper(path, dsn)
    first.start()
    try:
        assert until(lambda: first.shipped_seq == 2), "the first shipper's round"
        with open(tmp_path / "shipper.lock", "w") as probe:  # what a second shipper would find
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second.start()  # the restarted worker's
        _queue(ledger, 1, start=2)
        first.stop()  # drained and gone: the second takes over
        _queue(ledger, 1, start=3)
        assert until(lambda: second.shipped_seq == 4), "the second shipper's round"
    finally:
        first.stop()
        second.stop()
    assert (first.problem, second.problem) == (None, None)
    store = AuditStore(dsn)
    try:
        assert store.query("SELECT count() FROM filter_drops FINAL") == [(4,)]
    finally:
        store.close()
