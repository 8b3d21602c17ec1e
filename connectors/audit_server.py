"""The shipper's answers to `apex audit` and `apex report` while a worker runs.

Embedded ClickHouse opens in one process only, and the shipper holds it for as long
as the worker runs; a second process opening it fails. So the shipper answers
read-only queries over a unix socket beside the store (mode 0600: its owner's alone),
one JSON request a connection: ``{"sql": ..., "parameters": ...}`` in, ``{"columns",
"types", "rows"}`` or ``{"error"}`` out. Only SELECT (or WITH) statements are taken,
and ClickHouse runs them with ``readonly=2`` (settings may change, data may not), so
nothing said here changes the trail.
"""

from __future__ import annotations

import logging
import os
import socketserver
import threading
from pathlib import Path

import orjson

from connectors.audit_query import address

log = logging.getLogger("apex.audit_server")

REQUEST_LIMIT = 1 << 20  # bytes of one request: a query and its parameters
POLL_S = 0.02  # how often the server's loop looks whether it is asked to stop


class SharedStore:
    """The shipper's one store, opened on first use, used by its loop and by queries in turn."""

    def __init__(self, dsn: str):
        self.dsn, self.store, self.lock = dsn, None, threading.Lock()

    def get(self):
        from connectors.clickhouse import AuditStore

        self.store = self.store or AuditStore(self.dsn)
        return self.store

    def drop(self) -> None:
        """After a failure: the next use opens it again."""
        self.store = None

    def answer(self, sql: str, parameters: dict | None) -> dict:
        words = sql.split(None, 1)
        if not words or words[0].upper() not in ("SELECT", "WITH"):
            return {"error": "only SELECT queries are answered"}
        try:
            with self.lock:
                res = self.get().client.query(sql, parameters=parameters, settings={"readonly": 2})
        except Exception as err:  # noqa: BLE001 - the asker gets the reason; the shipper goes on
            return {"error": f"{type(err).__name__}: {err}"}
        return {"columns": list(res.column_names), "types": [t.name for t in res.column_types],
                "rows": res.result_rows}

    def close(self) -> None:
        with self.lock:
            if self.store is not None:
                self.store.close()
            self.store = None


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        try:
            ask = orjson.loads(self.rfile.readline(REQUEST_LIMIT))
            reply = self.server.store.answer(str(ask["sql"]), ask.get("parameters"))  # type: ignore[attr-defined]
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            reply = {"error": f"malformed request: {err}"}
        self.wfile.write(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY, default=str))


class QueryServer:
    """Serves ``store`` on ``path`` in a thread of its own until ``close``."""

    def __init__(self, path: Path, store: SharedStore):
        self.path = path
        if path.is_socket():
            path.unlink()  # a killed shipper's; we hold the state dir's shipper lock
        with address(path) as addr:
            self.server = socketserver.UnixStreamServer(addr, _Handler)
        os.chmod(path, 0o600)
        self.server.store = store  # type: ignore[attr-defined]
        # shutdown() waits for the loop to look up: at the default half second, the end of
        # every run waited for it
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": POLL_S}, name="audit-server",
                         daemon=True).start()

    def close(self) -> None:
        """Stop answering: askers then open the store themselves once the shipper has let go."""
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)


def serve(path: Path, store: SharedStore) -> QueryServer | None:
    """The server, or None (logged) when the socket cannot be made: shipping matters more."""
    try:
        return QueryServer(path, store)
    except OSError as err:
        log.warning("no live queries on %s: %s", path, err)
        return None
