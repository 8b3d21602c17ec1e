"""The Prometheus metrics of one Apex process, and the HTTP endpoint that serves them with
the health checks (``/metrics``, ``/healthz``, ``/readyz``).

The metrics live in a registry of their own (not prometheus-client's global one), so a
test or a second pipeline in one process starts from zero. They are updated per batch,
never per call inside a hot loop: the paper path's speed is guarded (``apex bench``).
The endpoint runs in a thread of its own, never on the Bytewax worker's.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("apex.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

# latencies from tens of microseconds (a paper batch) to seconds (a venue under load)
_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

ENTRIES = Counter("apex_entries", "stream entries decided, by book and outcome", ["book", "outcome"],
                  registry=REGISTRY)
FILTER_DROPS = Counter("apex_filter_drops", "signals dropped, by book and the filter (drop reason) that dropped them",
                       ["book", "filter"], registry=REGISTRY)
STREAM_LAG = Gauge("apex_stream_lag_entries", "entries in the stream not yet delivered to the group",
                   ["stream"], registry=REGISTRY)
PENDING = Gauge("apex_pending_entries", "entries delivered to the group and not yet acknowledged",
                ["stream"], registry=REGISTRY)
STAGE_SECONDS = Histogram("apex_stage_seconds", "time spent per stage (see docs/service.md for what each stage times)",
                          ["stage"], buckets=_SECONDS, registry=REGISTRY)
ORDERS = Counter("apex_orders", "order status changes, by venue and the status reached", ["venue", "status"],
                 registry=REGISTRY)
VENUE_ROUND_TRIP = Histogram("apex_venue_round_trip_seconds", "one request to a venue and its answer",
                             ["venue"], buckets=_SECONDS, registry=REGISTRY)
VENUE_ERRORS = Counter("apex_venue_errors", "requests to a venue that failed, by kind", ["venue", "kind"],
                       registry=REGISTRY)
HEARTBEAT_AGE = Gauge("apex_heartbeat_age_seconds", "seconds since a stage's last heartbeat (apex:hb:<stage>)",
                      ["stage"], registry=REGISTRY)
TRADING_STATE = Gauge("apex_trading_state", "1 for the book's current trading state, 0 for the others",
                      ["book", "state"], registry=REGISTRY)
RECONCILIATION = Gauge("apex_reconciliation_difference_ratio",
                       "the valued difference between a venue and the books, as a share of the books' NAV "
                       "(book: all, reconciliation compares a venue with every book together)",
                       ["book", "venue"], registry=REGISTRY)
ALL_BOOKS = "all"  # the book label of what is measured over every book at once
NAV = Gauge("apex_nav", "the book's net asset value (USD)", ["book"], registry=REGISTRY)
DRAWDOWN = Gauge("apex_drawdown_ratio", "the book's drawdown from its peak NAV", ["book"], registry=REGISTRY)

TRADING_STATES = ("ACTIVE", "REDUCING", "HALTED")


def set_trading_state(book: str, state: str) -> None:
    for s in TRADING_STATES:
        TRADING_STATE.labels(book=book, state=s).set(1 if s == state else 0)


def exposition() -> bytes:
    return generate_latest(REGISTRY)


Checks = Callable[[], dict[str, str]]  # check name -> "ok" or why not


class Endpoint:
    """``/metrics`` (Prometheus text), ``/healthz`` (200 while the process serves) and ``/readyz``
    (200 when every check says ``ok``, else 503; both answer JSON naming each check)."""

    def __init__(self, port: int, checks: Checks, host: str = "127.0.0.1"):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif path == "/readyz":
                    try:
                        found = endpoint.checks()
                    except Exception as err:  # noqa: BLE001 - a failing check is not-ready, not a crash
                        found = {"checks": f"{type(err).__name__}: {err}"}
                    ready = all(v == "ok" for v in found.values())
                    self._json(200 if ready else 503, {"status": "ready" if ready else "not ready", "checks": found})
                else:
                    self._send(404, b"not found: /metrics, /healthz or /readyz\n", "text/plain")

            def _json(self, code: int, body: dict) -> None:
                self._send(code, json.dumps(body).encode() + b"\n", "application/json")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:  # scrapes are not news
                log.debug("%s " + fmt, self.address_string(), *args)

        self.checks = checks
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="apex-metrics", daemon=True)

    def start(self) -> "Endpoint":
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
