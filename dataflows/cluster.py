"""Apex as one process of a Bytewax cluster: which books this process runs, where they keep
their state, and the checks that keep a book from trading anywhere it was not admitted.

Placement is Bytewax's own key routing, asked rather than imitated: a book is the key of
the portfolio step, and Bytewax sends a key to the worker its hash picks among all the
cluster's workers. That hash has no per-run seed, so with the same Bytewax (pinned in
pyproject.toml) and the same worker count, a book lands on the same worker on every
restart. ``owners`` runs a tiny dataflow with the same keys over the same number of workers
and reads off where each key landed, so the gates can lock exactly the books this process
will run before its first decision; ``guarded`` checks again when a book's step is first
looked up, and refuses a book the gates did not admit.

State: ``STATE_DIR/process-I`` is process I's own state dir (its ``run.lock``, control target,
instrument lists), so processes on one machine never share a lock; a book's ledger stays
at ``STATE_DIR/books/NAME``, the same path as a one-process run, locked by the process
that owns the book.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from connectors import state_lock

PROCESS_PLACEHOLDER = "{process}"


@dataclass(frozen=True)
class Shape:
    """The cluster this process is part of: ``processes`` processes of ``workers`` workers each."""

    process: int = 0
    processes: int = 1
    workers: int = 1
    addresses: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.processes * self.workers

    @property
    def clustered(self) -> bool:
        return self.processes > 1


def shape_of(workers: int | None, process: int | None, addresses: str | None) -> Shape:
    """From ``-w``, ``-i`` and ``-a`` as ``bytewax.run`` takes them (``addresses``: separated by
    ``;``). Raises ValueError with a line for the operator."""
    workers = 1 if workers is None else workers
    if workers < 1:
        raise ValueError(f"-w {workers}: a process needs at least one worker")
    if process is None and addresses is None:
        return Shape(workers=workers)
    if process is None or addresses is None:
        raise ValueError("-i and -a go together: this process's index and every process's address")
    addrs = tuple(a.strip() for a in addresses.split(";") if a.strip())
    if not 0 <= process < len(addrs):
        raise ValueError(f"-i {process}: the addresses name {len(addrs)} processes (0 to {len(addrs) - 1})")
    return Shape(process, len(addrs), workers, addrs)


def addresses_file(path: Path) -> str:
    """The addresses file (one host:port a line, as ``BYTEWAX_HOSTFILE_PATH``), as ``-a`` takes them."""
    return ";".join(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def addresses_arg(value: str | None) -> str | None:
    """``-a``: host:port;host:port, or the path of an addresses file."""
    if value is not None and ";" not in value and Path(value).is_file():
        return addresses_file(Path(value))
    return value


def under_bytewax_run() -> bool:
    """Whether this process is ``python -m bytewax.run``."""
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", "").replace(os.sep, "/").endswith("bytewax/run.py")


def bytewax_shape() -> Shape:
    """The shape ``python -m bytewax.run`` was started with (its own parser, on its own command
    line and environment); one process of one worker when started some other way."""
    if not under_bytewax_run():
        return Shape()
    from bytewax.run import _parse_args

    args = _parse_args()
    return shape_of(args.workers_per_process, args.process_id, args.addresses)


def owners(books: list[str], total_workers: int) -> dict[str, int]:
    """The worker (0 to ``total_workers`` - 1, across the cluster) Bytewax routes each book's key
    to, by routing the same keys over as many workers in a dataflow of its own."""
    if total_workers == 1:
        return {b: 0 for b in books}
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, cluster_main

    seen: dict[str, int] = {}
    lock = threading.Lock()

    class _Where(StatelessSinkPartition):
        def __init__(self, worker: int):
            self.worker = worker

        def write_batch(self, items: list) -> None:
            with lock:
                seen.update((key, self.worker) for key, _ in items)

    class _Sink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Where:
            return _Where(worker_index)

    flow = Dataflow("apex_placement")
    keyed = op.key_on("key", op.input("books", flow, TestingSource(books)), lambda b: b)
    landed = op.stateful_map("landed", keyed, lambda state, b: (state, b))
    op.output("where", landed, _Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=total_workers)
    return seen


_PLACED: dict[str, frozenset[str]] = {}  # book step's name → books this process admitted; {} outside a cluster
_TAG: dict[str, str] = {}  # "process" → this process's tag in a cluster; {} outside one


def audit_refusal(clickhouse: str | None, shape: Shape) -> str | None:
    """Why this pipeline's audit store cannot serve a cluster, or None. Embedded chDB opens in one
    process only, so several processes need a server; an explicit ``chdb://`` DSN with
    ``{process}`` in it (one store per process, the trail split over them) is let through."""
    if not shape.clustered:
        return None
    if clickhouse and clickhouse.startswith(("http://", "https://")):
        return None
    if clickhouse and clickhouse.startswith("chdb://") and PROCESS_PLACEHOLDER in clickhouse:
        return None
    return (f"clickhouse: a cluster of {shape.processes} processes writes one audit trail to a ClickHouse "
            "server (clickhouse: http://USER:PASS@HOST:8123/DB); embedded chDB opens in one process only")


def place(pipeline, shape: Shape) -> frozenset[str]:
    """Refuse (``gates.Refused``) an audit store or a source a cluster cannot share; give this
    process its own state dir, audit store and IBKR client id when it is one of several (see
    the module's docstring), and return the books it runs. The books' own state dirs are left
    at the pipeline's, so a book's ledger is where a one-process run keeps it."""
    from dataflows import gates

    why = audit_refusal(pipeline.clickhouse, shape)
    if why:
        raise gates.Refused([why])
    if shape.clustered and not pipeline.source.startswith(("redis://", "rediss://", "unix://")):
        # a recording is one partition, read in one process: the others would never learn
        # that it ended, nor wait for their orders' fates before stopping
        raise gates.Refused([f"source {pipeline.source}: a cluster reads a Redis stream; replay a recording "
                             "in one process (apex run -w N spreads its books over that process's workers)"])
    names = [b.book for b in pipeline.each_book()]
    if not shape.clustered:  # every worker in this process: every book is this process's
        return frozenset(names)
    where = owners([b or "portfolio" for b in names], shape.total)
    mine = frozenset(b for b in names if where[b or "portfolio"] // shape.workers == shape.process)
    localize(pipeline, shape)
    _PLACED["books"] = mine
    _TAG["process"] = f"@process-{shape.process}"
    return mine


def process_tag(pipeline) -> str:
    """What this process adds to the names it writes in the shared Redis (its heartbeats'
    stages, its reconciliation status's venues), so no process writes over another's and the
    watchdog sees each one fall silent: ``@process-I`` in a cluster; outside one, a process
    reading a Redis stream under a consumer name other than the default (the scale-out: several
    `apex run --consumer NAME`) carries ``@NAME``; else nothing (one process keeps the plain names)."""
    if "process" in _TAG:
        return _TAG["process"]
    from connectors.redis_config import RedisConfig

    consumer = pipeline.redis.consumer
    return "" if consumer == RedisConfig.model_fields["consumer"].default else f"@{consumer}"


def localize(pipeline, shape: Shape) -> None:
    """Makes ``pipeline`` process I's own (nothing outside a cluster): its state dir
    ``STATE_DIR/process-I``, its audit store (``{process}`` in the DSN), and, since an IB
    gateway takes one connection per client id, ``client_id + I``. The file read again on
    SIGHUP goes through it too, so a reload compares like with like."""
    if not shape.clustered:
        return
    pipeline.state_dir = process_dir(Path(pipeline.state_dir), shape.process)
    moved: dict[int, object] = {}
    for b in (pipeline, *pipeline.books):
        ib = b.venues.ibkr
        if ib is not None and ib.kind == "ibkr":
            if id(b.venues) not in moved:  # books sharing one settings object keep sharing one
                moved[id(b.venues)] = b.venues.model_copy(
                    update={"ibkr": ib.model_copy(update={"client_id": ib.client_id + shape.process})})
            b.venues = moved[id(b.venues)]
    if pipeline.clickhouse and PROCESS_PLACEHOLDER in pipeline.clickhouse:
        pipeline.clickhouse = pipeline.clickhouse.replace(PROCESS_PLACEHOLDER, str(shape.process))


def process_dir(root: Path, process: int) -> Path:
    return root / f"process-{process}"


def cluster_root(state_dir: Path) -> Path:
    """The state dir a command is given, as the pipeline's: a cluster process's own dir
    (``STATE_DIR/process-I``) names its cluster's root, where the books' ledgers are."""
    state_dir = Path(state_dir)
    return state_dir.parent if re.fullmatch(r"process-\d+", state_dir.name) else state_dir


def running(root: Path) -> list[tuple[Path, dict]]:
    """The cluster processes under ``root`` that run now: each one's dir and its lock's holder."""
    return [(d, h) for d in processes(root) if (h := state_lock.holder(d)) is not None]


def client_ids(root: Path) -> int:
    """How many IB client ids, from the pipeline's on, the cluster under ``root`` may hold:
    process I connects as client_id + I (``localize``)."""
    return 1 + max((int(d.name.split("-")[1]) for d in processes(root)), default=0)


def processes(root: Path) -> list[Path]:
    """The state dirs of the cluster processes under ``root`` (any ever started), by index."""
    found = [d for d in Path(root).glob("process-*") if d.is_dir() and re.fullmatch(r"process-\d+", d.name)]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


def lock_books(pipeline, books: frozenset[str]) -> list[state_lock.StateLock]:
    """One lock per book this process runs (``books/NAME/run.lock``): two processes that disagree
    about placement (another worker count, another cluster) never run one book twice."""
    held: list[state_lock.StateLock] = []
    try:
        for b in pipeline.each_book():
            if b.book in books and pipeline.books:
                held.append(state_lock.acquire(Path(b.ledger_path).parent))
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return held


def here(book: str) -> bool:
    """Whether ``book`` runs in this process (always, outside a cluster)."""
    placed = _PLACED.get("books")
    return placed is None or book in placed


class _Guarded(dict):
    """The books' steps, each handed out only to the process whose gates admitted its book."""

    def __getitem__(self, book: str):
        placed = _PLACED.get("books")
        if placed is not None and book not in placed:
            raise RuntimeError(f"book {book!r} reached process {os.getpid()}, whose gates did not admit it "
                               f"(admitted: {sorted(placed)}); it does not trade here")
        return super().__getitem__(book)


def guarded(steps: dict) -> dict:
    """``steps`` (by book) as the portfolio step looks them up: in a cluster, a book the gates
    of this process did not admit raises instead of trading (Bytewax routed it elsewhere than
    ``owners`` said); outside a cluster, ``steps`` itself."""
    return steps if _PLACED.get("books") is None else _Guarded(steps)


def admitter(shape: Shape, books: frozenset[str]):
    """``gates.admit`` for one process of ``shape`` running ``books`` (``place``'s): the audit
    store checked first, then every gate (reconciliation compares the venues with every book's
    ledger, this process's or not: they share the venues' accounts), then a lock on each of its
    books. The admission also carries the shipper of its books' ledgers alone, so each book's
    rows reach the audit store from one process."""
    from dataflows import gates

    def admit(pipeline, say):
        if shape.clustered and not books:
            raise gates.Refused([f"process {shape.process} of {shape.processes} runs no book: Bytewax routes "
                                 f"all {len(pipeline.each_book())} to other workers (run fewer processes)"])
        admission = gates.admit(pipeline, say)
        if not shape.clustered:
            return admission
        try:
            locks = lock_books(pipeline, books)
        except state_lock.StateDirInUse as e:
            admission.release()
            raise gates.Refused([f"book {e.state_dir.name}: {e}"]) from None
        except BaseException:
            admission.release()
            raise
        from connectors.outbox import Shipper

        own = {b.book: b.ledger_path for b in pipeline.each_book() if b.book in books}
        return ClusterAdmission(admission, locks, Shipper(own, pipeline.clickhouse_dsn))

    return admit


class ClusterAdmission:
    """A process's admission into a cluster: the gates' (venues, state dir lock) and its books' locks."""

    def __init__(self, admission, locks: list[state_lock.StateLock], shipper):
        self.admission, self.locks, self.shipper = admission, locks, shipper
        self.venues = admission.venues

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.admission.release()
