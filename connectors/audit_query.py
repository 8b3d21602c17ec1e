"""Reading the audit trail, whoever holds it: `apex audit` and `apex report` go through here.

Embedded ClickHouse (chDB) opens in one process only, and while a worker runs its
shipper holds the store. So for a ``chdb://`` DSN the reader first asks the shipper,
over a unix socket beside the store (``connectors.audit_server``), and only when
nothing answers there opens the store itself. A worker that stops between the two
leaves the store to the reader a moment later: the reader waits for that, within
a bound. A server DSN (``http://``) is read directly, as any SQL client would.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlsplit

import orjson

ANSWER_TIMEOUT_S = 300.0  # a report's queries over a long trail, behind a shipping round
WAIT_S = 15.0  # for a worker that is starting or stopping to open or let go of the store


class TrailUnavailable(Exception):
    """The audit trail cannot be read now; the message says why, in a line."""


class NoAnswer(Exception):
    """Nothing answers on the socket: no live shipper (or one that just stopped)."""


def store_path(dsn: str) -> Path:
    return Path(dsn.removeprefix("chdb://"))


def absolute(dsn: str) -> str:
    """An embedded store's DSN with its path made absolute against the current folder, so
    that a process started elsewhere (the shipper) opens the same store."""
    return f"chdb://{store_path(dsn).resolve()}" if dsn.startswith("chdb://") else dsn


def socket_path(dsn: str) -> Path:
    """Beside the store it answers for: ``STATE_DIR/clickhouse.sock`` by default."""
    p = store_path(dsn)
    return p.with_name(p.name + ".sock")


@contextmanager
def address(path: Path) -> Iterator[str]:
    """A unix socket address for ``path``: such addresses hold ~107 bytes, so a longer path
    is reached through a descriptor of its folder (Linux)."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def ask(path: Path, sql: str, parameters: dict | None) -> tuple[list[str], list[tuple]]:
    """One query to the live shipper: column names and rows, as the store would give them."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, address(path) as addr:
        s.settimeout(ANSWER_TIMEOUT_S)
        try:
            s.connect(addr)
            s.sendall(orjson.dumps({"sql": sql, "parameters": parameters}) + b"\n")
            s.shutdown(socket.SHUT_WR)
            reply = b"".join(iter(lambda: s.recv(1 << 16), b""))
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
            raise NoAnswer from None
        except TimeoutError:
            raise TrailUnavailable(f"the running worker's shipper did not answer within {ANSWER_TIMEOUT_S:.0f} s") \
                from None
    if not reply:  # the shipper stopped with our query in hand
        raise NoAnswer
    answer = orjson.loads(reply)
    if "error" in answer:
        raise TrailUnavailable(f"the running worker's shipper refused the query: {answer['error']}")
    return answer["columns"], decode(answer["types"], answer["rows"])


def decode(types: list[str], rows: list[list]) -> list[tuple]:
    """JSON carries dates and times as ISO text: back to the objects the store gives."""
    parse = [datetime.fromisoformat if "DateTime" in t else date.fromisoformat if t.startswith(("Date", "Nullable(Date"))
             else None for t in types]
    if not any(parse):
        return [tuple(r) for r in rows]
    return [tuple(v if f is None or v is None else f(v) for f, v in zip(parse, r)) for r in rows]


def held(path: Path) -> bool:
    """Whether some process has the embedded store open: ClickHouse flocks its status file."""
    try:
        fd = os.open(path / "status", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the probe's lock


class TrailReader:
    """``AuditStore``'s reading methods over an embedded store, wherever it is open."""

    def __init__(self, dsn: str, wait_s: float = WAIT_S):
        self.dsn, self.wait_s = dsn, wait_s
        self.direct = None

    def result(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        from clickhouse_connect.driver.exceptions import Error

        from connectors.clickhouse import AuditStore

        path, deadline = store_path(self.dsn), time.monotonic() + self.wait_s
        while True:
            if self.direct is not None:
                res = self.direct.client.query(sql, parameters=parameters)
                return list(res.column_names), res.result_rows
            try:
                return ask(socket_path(self.dsn), sql, parameters)
            except NoAnswer:
                pass
            why = "it is open in another process that does not answer queries (a worker still starting?)"
            if not held(path):
                try:
                    self.direct = AuditStore(self.dsn)
                    continue
                except Error as err:  # taken between the look and the open, or unreadable
                    why = str(err).splitlines()[0]
            if time.monotonic() > deadline:
                raise TrailUnavailable(f"cannot read the audit store {path}: {why}; try again")
            time.sleep(0.05)  # a worker starting or stopping: look again shortly

    def query(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self.result(sql, parameters)[1]

    def query_dicts(self, sql: str, parameters: dict | None = None) -> Iterable[dict]:
        names, rows = self.result(sql, parameters)
        return (dict(zip(names, r)) for r in rows)

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()


def open_store(dsn: str):
    """What `apex audit` and `apex report` read: the right reader for the DSN."""
    if dsn.startswith("chdb://"):
        return TrailReader(dsn)
    from clickhouse_connect.driver.exceptions import Error

    from connectors.clickhouse import AuditStore

    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)  # the error below says it once
    try:
        return AuditStore(dsn)
    except Error as err:  # a wrong DSN, or the server down: the user's to fix, in a line
        where = urlsplit(dsn)
        raise TrailUnavailable(f"cannot read ClickHouse at {where.hostname}:{where.port}: "
                               f"{str(err).splitlines()[0]}") from None
