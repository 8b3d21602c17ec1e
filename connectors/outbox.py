"""The audit outbox: ClickHouse rows queued in the ledger, shipped in bulk by a child process.

Each outcome's rows are written to the ``outbox`` table in the same SQLite
transaction as the decision itself, so the audit record is durable exactly
when the decision is, and an entry can be acknowledged at the speed of a
SQLite commit instead of waiting for ClickHouse inserts, which are far slower
even embedded. The shipper moves the rows to ClickHouse in large inserts and
records how far it got, in a small SQLite file of its own beside the ledger;
a crash in between ships them again, and the ReplacingMergeTree keys fold the
repeat away. The ledger's own writer deletes shipped rows (``Ledger.prune``):
the shipper never takes the ledger's write lock, which a niced process could
hold while descheduled, stalling the worker's next commit by many ms.

If ClickHouse is down the outbox grows; once the shipper reports failure and
the backlog passes ``max_backlog`` outbox rows (one a batch, two when it sent orders),
the sink stops acknowledging, so stream entries stay pending instead of piling up
behind a dead store.

    python -m connectors.outbox DSN BOOK:LEDGER...    # runs until its stdin closes, then flushes
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import contextmanager
from collections.abc import Mapping
from pathlib import Path

import lz4.frame
import orjson

from connectors.audit_query import absolute, socket_path

log = logging.getLogger("apex.outbox")

SCHEMA = "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, rows BLOB NOT NULL);"
STATE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox_state (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " shipped_seq INTEGER NOT NULL, healthy INTEGER NOT NULL, last_error TEXT NOT NULL);"
    "INSERT OR IGNORE INTO outbox_state VALUES (1, 0, 1, '');"
)
TABLES = ("audit_events", "filter_drops", "executions", "trades")
# An embedded ClickHouse insert has a large fixed CPU cost whatever its size (one part, one
# query): inserting several times a second per table took the shipper a whole core.
INTERVAL_S = 1.0
# ...except while rows pour in (a replay, a saturated stream): a round this large pays its
# inserts' fixed cost many times over, and a run's end waits for the last round's rows.
BUSY_ROWS = 10_000
BUSY_INTERVAL_S = 0.25
PAGE_SIZE = 4096  # the ledger's page size, set by whichever connection creates the file (see Ledger)
CHUNK = 2_000  # outbox rows (one or two a batch) per ClickHouse insert
# How long the shipper may take to drain once told to stop (or orphaned): past it, the
# rest stays in the outbox for the next start rather than holding the stop up forever.
DRAIN_LIMIT_S = 120.0


def enqueue(db: sqlite3.Connection, rows: dict[str, list]) -> None:
    """Inside the caller's transaction: the rows become durable with it. LZ4 frames: an
    audit chain's JSON shrinks several times over for little CPU, and every byte saved is
    a byte not written to the WAL, copied to the ledger, read back and freed."""
    db.execute("INSERT INTO outbox (rows) VALUES (?)", (pack(rows),))


def pack(value) -> bytes:
    """An outbox row's audit rows as JSON in an LZ4 frame. The options of the audit's
    ``dumps``: details may hold numpy numbers or objects shown as text."""
    return lz4.frame.compress(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str))


def decode(blob: bytes):
    """What ``pack`` stored."""
    return orjson.loads(lz4.frame.decompress(blob))


def connect(ledger_path: Path) -> sqlite3.Connection:
    Path(ledger_path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(ledger_path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # the ledger's, whichever of us creates the file
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    # per connection: without it the shipper's own small writes trigger fsyncing checkpoints
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(SCHEMA)
    return db


def state_path(ledger_path: Path) -> Path:
    return Path(ledger_path).with_name(Path(ledger_path).stem + "-shipped.sqlite")


def connect_state(ledger_path: Path) -> sqlite3.Connection:
    """How far the shipper got: written by the shipper alone, read by the worker."""
    db = sqlite3.connect(state_path(ledger_path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.executescript(STATE_SCHEMA)
    return db


def reconcile(db: sqlite3.Connection, state: sqlite3.Connection) -> int:
    """The shipped watermark, reset when the ledger beside it is newer than it (a state
    dir whose ledger was removed): re-shipping folds, skipping would lose audit rows."""
    seq = state.execute("SELECT shipped_seq FROM outbox_state").fetchone()[0]
    top = (db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone() or [0])[0]
    if seq > top:
        mark(state, 0)
        return 0
    return seq


class Shipper:
    """The dataflow's handle on shipping: a child process, so the worker never waits
    for ClickHouse, live or replaying: on a second core the child makes a replay faster
    than shipping inline in the worker's thread would, and live and replay share one path.

    One child ships every book's ledger (``ledgers``: a path, or paths by book): embedded
    ClickHouse opens in one process only. Each ledger keeps its own watermark, and its
    rows reach the store with its book's name."""

    def __init__(self, ledgers: Path | Mapping[str, Path], dsn: str, *, max_backlog: int = 5_000):
        # absolute: the child runs in the repository's folder, not the worker's
        by_book = ledgers if isinstance(ledgers, Mapping) else {"": ledgers}
        self.ledgers = {book: Path(p).resolve() for book, p in by_book.items()}
        self.ledger_path = next(iter(self.ledgers.values()))
        self.dsn = absolute(dsn)
        self.max_backlog = max_backlog
        self.problem: str | None = None  # why the audit trail may be incomplete, for the run's end
        self._proc: subprocess.Popen | None = None
        self._dbs: dict[Path, tuple[sqlite3.Connection, sqlite3.Connection]] = {}
        self._lock = threading.Lock()

    def _conns(self, path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The ledger's outbox and the shipper's watermark beside it, opened on first use."""
        conns = self._dbs.get(path)
        if conns is None:
            conns = self._dbs[path] = (connect(path), connect_state(path))
        return conns

    @property
    def db(self) -> sqlite3.Connection:
        return self._conns(self.ledger_path)[0]

    @property
    def state_db(self) -> sqlite3.Connection:
        return self._conns(self.ledger_path)[1]

    def start(self) -> None:
        with self._lock:
            for path in self.ledgers.values():
                reconcile(*self._conns(path))
            if self._proc is None:
                # its own session: a signal to the worker's process group (Ctrl-C, systemd's
                # stop) must not end it before it has shipped what the worker acknowledged
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "connectors.outbox", self.dsn,
                     *(f"{book}:{path}" for book, path in self.ledgers.items())],
                    stdin=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1], start_new_session=True,
                )

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs; None before ``start`` and after ``stop``."""
        proc = self._proc
        return None if proc is None else proc.pid

    def state(self, path: Path | None = None) -> tuple[int, bool, str]:
        """(shipped watermark, healthy, last error) of one ledger (the first by default)."""
        seq, healthy, err = self._conns(path or self.ledger_path)[1].execute(
            "SELECT shipped_seq, healthy, last_error FROM outbox_state").fetchone()
        return seq, bool(healthy), err

    @property
    def shipped_seq(self) -> int:
        return self.state()[0]

    def shipped(self, book: str = "") -> int:
        """How far the child has shipped this book's outbox (its ledger's writer prunes up to it)."""
        return self.state(self.ledgers[book])[0]

    def backlog(self) -> int:
        left = 0
        for path in self.ledgers.values():
            top = self._conns(path)[0].execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
            left += top - self.state(path)[0]
        return left

    def accepting(self) -> tuple[bool, str]:
        """(False, why) when entries should stay pending: the store fails (or nothing ships
        it any more) and the queue is long."""
        healthy, err = True, ""
        for path in self.ledgers.values():
            _, ok, why = self.state(path)
            if not ok:
                healthy, err = False, why
        proc = self._proc
        if proc is not None and proc.poll() is not None and self.problem is None:
            self.problem = f"the audit shipper exited with code {proc.returncode} while the run went on"
            log.error("%s: audit rows stay in the outbox until the next start", self.problem)
        if self.problem is not None:
            healthy, err = False, self.problem
        return healthy or self.backlog() < self.max_backlog, err

    def stop(self, timeout_s: float = DRAIN_LIMIT_S + 30) -> None:
        """Let the child drain the outboxes and exit; then drop what it shipped. What it could
        not ship stays for the next start, and ``problem`` says so."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            proc.stdin.close()  # type: ignore[union-attr]
            try:
                code = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            err = ""
            for path in self.ledgers.values():
                self._conns(path)[0].execute("DELETE FROM outbox WHERE seq <= ?", (self.state(path)[0],))
                err = err or self.state(path)[2]
            left = self.backlog()
            if code != 0 and self.problem is None:
                self.problem = f"the audit shipper exited with code {code}"
            if left > 0:
                why = f" ({self.problem or err})" if self.problem or err else ""
                self.problem = (f"{left} outbox rows were not shipped to ClickHouse{why}; "
                                "they stay in the ledger and ship on the next start")
        for db, state in self._dbs.values():
            db.close()
            state.close()
        self._dbs = {}


def mark(db: sqlite3.Connection, seq: int) -> None:
    db.execute("UPDATE outbox_state SET shipped_seq=?, healthy=1, last_error=''", (seq,))


def failed(db: sqlite3.Connection, err: Exception) -> None:
    db.execute("UPDATE outbox_state SET healthy=0, last_error=?", (f"{type(err).__name__}: {err}",))
    log.warning("audit store write failed, rows kept in the outbox: %s", err)


def next_wait(rows_shipped: int) -> float:
    """Seconds until the next round, after one that shipped ``rows_shipped`` rows."""
    return BUSY_INTERVAL_S if rows_shipped >= BUSY_ROWS else INTERVAL_S


def ship_once(db: sqlite3.Connection, store, shipped_seq: int, book: str = "") -> tuple[int, bool, int]:
    """Ship one chunk past ``shipped_seq``, its rows marked with ``book``; returns the new
    watermark, whether the chunk was full, and how many rows it held."""
    batch = db.execute("SELECT seq, rows FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                       (shipped_seq, CHUNK)).fetchall()
    if not batch:
        return shipped_seq, False, 0
    with no_collections():
        shipped = _ship(store, batch, book)
    return batch[-1][0], len(batch) == CHUNK, shipped


def _ship(store, batch: list[tuple[int, bytes]], book: str) -> int:
    """Decode and insert a round; what it made is freed on return, still inside ``no_collections``."""
    merged: dict[str, list] = {t: [] for t in TABLES}
    for _, blob in batch:
        for table, rows in decode(blob).items():
            merged[table].extend(rows)
    store.write(merged, book)
    return sum(map(len, merged.values()))


@contextmanager
def no_collections():
    """No cyclic collection while a round is in hand. A round decodes tens of thousands of
    rows into millions of lists, dicts and strings, all alive until the insert, and a
    collection every few hundred allocations walked them again and again, several times the
    cost of the decoding itself, and the end of a replay waits for the round in hand. The
    decoded rows hold no cycles; reference counting frees them before the collector is back
    (else its first collection would walk them all once more). clickhouse-connect leaves a
    few objects in cycles a round: the collector, back on, takes them a few rounds later,
    so the shipper's memory does not grow for it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def spare_a_core() -> None:
    """Keep this process (and the threads it starts later, ClickHouse's among them) off the
    lowest core it may use, so the worker usually finds that core free and its caches warm.
    Niced, the shipper still ran insert threads on every core between signals, delaying
    the worker's orders; kept off one core it no longer does, and throughput is unchanged."""
    cores = os.sched_getaffinity(0)
    if len(cores) > 1:
        os.sched_setaffinity(0, cores - {min(cores)})


def main(dsn: str, ledgers: list[str]) -> None:
    """``ledgers``: ``BOOK:PATH`` each ("" for the one book of a pipeline without books)."""
    # Only the worker stops the shipper, by closing its stdin (or by dying): a SIGINT or SIGTERM
    # meant for the whole service (systemd signals every process of the unit) is the worker's
    # to act on, and the shipper drains what the worker acknowledged before it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from clickhouse_connect.driver import options

    from connectors.audit_server import SharedStore, serve

    # The shipper inserts lists. clickhouse-connect resolves pandas lazily to check for a
    # DataFrame, which imported it at the first insert: a delay at the end of every short run.
    options.pd = None

    # The audit trail may lag by a moment; a decision may not. Embedded ClickHouse
    # spreads an insert over every core, so the shipper yields the CPU to the worker,
    # and keeps off one core altogether (``spare_a_core``).
    os.nice(19)
    spare_a_core()
    # One shipper a state dir: a worker restarted after SIGKILL starts its own while the
    # killed one's is still draining, and embedded ClickHouse opens in one process only.
    books = [(book, Path(path)) for book, _, path in (arg.partition(":") for arg in ledgers)]
    lock = open(books[0][1].with_name("shipper.lock"), "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)

    outboxes = []  # [book, ledger, watermark db, shipped seq]
    for book, path in books:
        db, state = connect(path), connect_state(path)
        outboxes.append([book, db, state, reconcile(db, state)])
    # while the worker runs, `apex audit` and `apex report` can read the store only through us
    store = SharedStore(dsn)
    server = serve(socket_path(dsn), store) if dsn.startswith("chdb://") else None
    closing, finished = threading.Event(), threading.Event()
    threading.Thread(target=watch_parent, args=(closing, finished), daemon=True).start()
    backoff = INTERVAL_S
    while True:
        done = closing.is_set()
        rows, state = 0, outboxes[0][2]
        try:
            for ob in outboxes:
                book, db, state, seq = ob
                # One chunk a round unless a backlog fills chunks (or at the end): looping until
                # caught up never slept once inserts ran slower than the worker produced rows.
                more = True
                while more:
                    with store.lock:  # a query waits for the chunk in hand, not for the whole round
                        new, full, n = ship_once(db, store.get(), seq, book)
                    if new == seq:
                        break
                    seq, more, rows = new, full or done, rows + n
                    ob[3] = seq
                    mark(state, seq)
            backoff = next_wait(rows)
        except Exception as err:  # noqa: BLE001 - keep the rows, report, try again later
            failed(state, err)
            store.drop()
            backoff = min(max(backoff * 2, 0.2), 5.0)
            if done:
                break
        if done:
            break
        closing.wait(backoff)
    if server is not None:
        server.close()
    store.close()
    for _, db, state, _ in outboxes:
        db.close()
        state.close()
    finished.set()


def watch_parent(closing: threading.Event, finished: threading.Event) -> None:
    """Stdin closes when the worker stops us or dies: drain, within ``DRAIN_LIMIT_S``."""
    sys.stdin.read()
    closing.set()
    if not finished.wait(DRAIN_LIMIT_S):
        log.error("apex shipper: still draining after %.0f s; the rest stays in the outbox for the next start",
                  DRAIN_LIMIT_S)
        logging.shutdown()
        os._exit(1)


if __name__ == "__main__":
    from connectors import logs

    logs.setup(os.environ.get(logs.ENV, "json"))
    try:
        main(sys.argv[1], sys.argv[2:])
    except Exception as err:  # noqa: BLE001 - one line for the worker's log; the worker reports it
        log.error("apex shipper: %s: %s", type(err).__name__, err)
        logging.shutdown()
        os._exit(1)
    # Everything is written and closed: skip the interpreter's and embedded ClickHouse's
    # teardown, which the end of every run would wait for.
    sys.stderr.flush()
    os._exit(0)
