"""Reconciliation while running, and the clock check: a thread of its own in the worker's
process, off the decision path.

Every ``reconcile.every_s`` each venue connection's positions and open orders are compared
with the books (start-up's comparison, ``connectors/reconcile.py``), the books read through
read-only connections to their ledgers (``connectors/ledger_view.py``). Orders in flight
explain what they can, as at start. The ledgers are read before the venues are asked, and
the order ids once more after: an order placed in between is in the ledger by then (its
intent is committed before it leaves), so it is never taken for someone else's.

What differs is valued and judged (``operators/drift.py``): an alert is a log line, an
entry on the ``apex:alerts`` stream, the venue's line in ``apex status``
(``apex:reconciliation``) and an audit event in each book's trail (handed to the books'
steps, the only writers of their ledgers, through the gateway's events queue); above the
kill fraction the kill switch runs as ``apex kill``
does: the running worker halts, cancels and closes its trades (the control stream), and
what no book holds is sold at the venue. The clock: at start and every
``clock.every_s``, each venue's server time against this machine's; beyond the allowance
the books are asked to go REDUCING the same way.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from connectors import metrics
from connectors.ledger_view import LedgerView
from connectors.reconcile import reconcile
from connectors.venues import Venue, VenueDown
from operators.drift import ALERT, KILL, OK, Clock, Drift, clock_offset, gap_usd, judge
from operators.reconciliation_alert import ReconciliationAlert
from operators.reconcile import UNKNOWN_OPEN_ORDER, VENUE_UNREACHABLE, Difference, Report
from operators.signal import VENUES

log = logging.getLogger("apex.reconcile")

CONTROL_STREAM = "apex:control"
STATUS_KEY = "apex:reconciliation"  # hash: venue (with its process's tag) -> the last comparison, for `apex status`
ALERTS_STREAM = "apex:alerts"
ALERTS_KEPT = 10_000
BY = "reconciliation"
APEX = str(Path(sys.executable).with_name("apex"))
KILL_TIMEOUT_S = 300.0  # the kill's own bounds (a worker's confirmation, its closes) are well inside


@dataclass
class Books:
    positions: dict[tuple[str, str], float]
    known: set[str]
    in_flight: list
    nav: float
    marks: dict[str, float]  # symbol -> the books' last mark (else the last fill's price)


def read_books(ledgers: Mapping[str, tuple], ) -> Books:
    """``ledgers``: by book, (ledger path, initial NAV). A ledger not written yet holds nothing."""
    positions: dict[tuple[str, str], float] = defaultdict(float)
    known, in_flight, marks, nav = set(), [], {}, 0.0
    held_by_book = []
    for path, initial in ledgers.values():
        nav += initial
        if not path.exists():
            continue
        with LedgerView(path) as ledger:
            mine: dict[tuple[str, str], float] = defaultdict(float)
            for fill in ledger.fills():
                mine[(fill.venue, fill.symbol)] += fill.signed_qty
                nav -= fill.signed_qty * fill.price + fill.fee_usd
                marks[fill.symbol] = fill.price
            known |= ledger.client_order_ids()
            in_flight += [order for kind in ("open", "close") for order, _, _ in ledger.dangling(kind)]
            state = ledger.book() or {}
            marks.update({s: float(p) for s, p in (state.get("marks") or {}).items()})
        held_by_book.append(mine)
    for mine in held_by_book:
        for key, qty in mine.items():
            positions[key] += qty
            nav += qty * marks.get(key[1], 0.0)
    return Books(dict(positions), known, in_flight, nav, marks)


def known_ids(ledgers: Mapping[str, tuple]) -> set[str]:
    out: set[str] = set()
    for path, _ in ledgers.values():
        if path.exists():
            with LedgerView(path) as ledger:
                out |= ledger.client_order_ids()
    return out


def ask(client: redis.Redis, stream: str, command: str, reason: str, book: str = "") -> str:
    """One command on the control stream, for the running worker to carry out."""
    entry = str(uuid.uuid4())
    client.xadd(stream, {"id": entry, "command": command, "book": book, "reason": reason, "by": BY})
    return entry


class LiveReconciler:
    """``venues``: the pipeline's venues by market (the connections the books trade on)."""

    def __init__(self, pipeline, venues: Callable[[], Mapping[str, Venue]], redis_url: str, *,
                 control_stream: str = CONTROL_STREAM, say: Callable[[str], None] | None = None,
                 kill: Callable[[str], None] | None = None,
                 alerts: Callable[[ReconciliationAlert], None] | None = None, tag: str = ""):
        """``alerts``: where each alert goes for every book to record it in its audit trail
        (the gateway's events queue, which the books' steps read; None: nowhere). ``tag``: added
        to each venue's name in the status hash (``dataflows.cluster.process_tag``), so each
        process of several compares its own books and `apex status` shows every one of them."""
        self.p = pipeline
        self.venues = venues
        self.ledgers = {b.book: (b.ledger_path, b.execute.initial_nav_usd) for b in pipeline.each_book()}
        self.ignored = {market: pipeline.venues.ignored(market) for market in VENUES}
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)
        self.control_stream = control_stream
        self.tag = tag
        self.kill = kill or self._kill  # `apex kill`, unless a test watches the ask itself
        self.alerts = alerts
        self.say = say or (lambda line: log.warning("%s", line))
        self.levels: dict[str, str] = {}  # venue -> the last level said (each change said once)
        self.clock_off: dict[str, bool] = {}
        self.killed: set[str] = set()  # venues whose difference has asked for the kill switch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apex-reconcile", daemon=True)

    # ----- one look -----

    def once(self) -> dict[str, Drift]:
        """Compare every venue with the books now, and do what the differences call for."""
        books = read_books(self.ledgers)
        venues = dict(self.venues())
        report = reconcile(venues, books.positions, books.known, books.in_flight, self.ignored)
        report = self._placed_meanwhile(report)
        by_venue: dict[str, list[Difference]] = defaultdict(list)
        for d in report.differences:
            by_venue[d.venue].append(d)
        priced = _pricer(books.marks, venues)
        out = {}
        for venue in sorted({getattr(v, "name", "") for v in venues.values()} | set(by_venue)):
            diffs = by_venue.get(venue, [])
            away = [d for d in diffs if d.reason == VENUE_UNREACHABLE]
            if away:
                line = (f"reconciliation: venue {venue} could not be asked ({away[0].detail}); "
                        f"compared again in {self.p.reconcile.every_s:g} s")
                self._status(venue, {"level": "unreachable", "line": line})
                self._said(venue, "unreachable", line)
                continue
            gap, unpriced = gap_usd(diffs, priced)
            cfg = self.p.reconcile
            drift = judge(gap, books.nav, cfg.alert_fraction, cfg.kill_fraction, unpriced)
            unknown = [d for d in diffs if d.reason == UNKNOWN_OPEN_ORDER]
            if unknown and drift.level == OK:
                drift = Drift(ALERT, drift.gap_usd, drift.nav_usd, drift.unpriced)
            out[venue] = drift
            self._record(venue, drift, diffs)
        return out

    def _placed_meanwhile(self, report: Report) -> Report:
        """An open order unknown to the ledger read before the venues were asked, known to it now."""
        unknown = [d for d in report.differences if d.reason == UNKNOWN_OPEN_ORDER]
        if not unknown:
            return report
        known = known_ids(self.ledgers)
        kept = tuple(d for d in report.differences if d.reason != UNKNOWN_OPEN_ORDER or d.client_order_id not in known)
        return Report(kept, report.foreign_orders, report.aside)

    def _record(self, venue: str, drift: Drift, diffs: list[Difference]) -> None:
        line = drift.line(venue)
        doc = {"ts": round(time.time(), 3), "venue": venue, "level": drift.level, "ratio": drift.ratio,
               "gap_usd": round(drift.gap_usd, 2), "nav_usd": round(drift.nav_usd, 2), "line": line,
               "differences": len(diffs)}
        self._status(venue, doc)
        metrics.RECONCILIATION.labels(book=metrics.ALL_BOOKS, venue=venue).set(drift.ratio)
        try:
            if drift.level != OK:
                self.client.xadd(ALERTS_STREAM, {k: str(v) for k, v in doc.items()}, maxlen=ALERTS_KEPT,
                                 approximate=True)
        except redis.RedisError as e:
            log.warning("reconciliation: could not record in Redis: %s", e)
        if drift.level != OK and self.alerts is not None:
            look = uuid.uuid4().hex
            for book in self.ledgers:
                self.alerts(ReconciliationAlert(book, look, venue, drift.level, line, drift.ratio, drift.gap_usd,
                                                drift.nav_usd, len(diffs), int(doc["ts"] * 1000)))
        self._said(venue, drift.level, line if drift.level != OK else f"reconciliation: venue {venue} agrees "
                                                                          "with the books again")
        # once per episode: the kill switch is idempotent, but one ask is one act in the trail
        if drift.level == KILL and venue not in self.killed:
            self.killed.add(venue)
            self.kill(line)
        elif drift.level != KILL:
            self.killed.discard(venue)

    def _status(self, venue: str, doc: dict) -> None:
        """The venue's last look, for `apex status`."""
        try:
            self.client.hset(STATUS_KEY, venue + self.tag, json.dumps({"ts": round(time.time(), 3), **doc}))
        except redis.RedisError as e:
            log.warning("reconciliation: could not record in Redis: %s", e)

    def _said(self, venue: str, level: str, line: str) -> None:
        """Each venue's change of level said once, and every alert and kill each time."""
        before = self.levels.get(venue, OK)
        self.levels[venue] = level
        if level in (ALERT, KILL) or level != before:
            self.say(line)

    def _kill(self, reason: str) -> None:
        """The kill switch as `apex kill` runs it: the worker (this process) halts, cancels and
        closes its trades through the control stream, then what no book holds (the holding
        that set reconciliation off) is sold at the venue. A process of its own, on a thread of
        its own: the comparison goes on meanwhile, and nothing here waits on it."""
        argv = [APEX, "kill", "--pipeline", str(self.p.path), "--state-dir", str(self.p.state_dir),
                "--reason", reason, "--by", BY]

        def run() -> None:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=KILL_TIMEOUT_S)
                said = (done.stdout + done.stderr).strip()
                self.say(f"reconciliation: apex kill exited {done.returncode}" + (f": {said}" if said else ""))
            except (OSError, subprocess.TimeoutExpired) as e:
                self.say(f"reconciliation: apex kill could not run: {type(e).__name__}: {e}")

        threading.Thread(target=run, name="apex-reconcile-kill", daemon=True).start()

    def _ask(self, command: str, reason: str) -> None:
        try:
            ask(self.client, self.control_stream, command, reason)
        except redis.RedisError as e:
            self.say(f"reconciliation: could not ask for {command} on {self.control_stream}: {e}")

    # ----- the clock -----

    def clocks(self) -> list[Clock]:
        out, seen = [], set()
        for venue in self.venues().values():
            if id(venue) in seen or not hasattr(venue, "server_time"):
                continue
            seen.add(id(venue))
            name = getattr(venue, "name", type(venue).__name__)
            try:
                asked = time.time()
                server = venue.server_time()
                answered = time.time()
            except VenueDown as e:
                self.say(f"clock: venue {name}'s time could not be asked ({e}); asked again at the next check")
                continue
            clock = Clock(name, clock_offset(server, asked, answered), self.p.clock.allowance_s)
            out.append(clock)
            was_off = self.clock_off.get(name, False)
            self.clock_off[name] = clock.off
            if clock.off and not was_off:
                self.say(clock.line())
                self._ask("reduce", clock.line())
            elif was_off and not clock.off:
                self.say(clock.line() + "; back within the allowance (resuming is the operator's: apex resume)")
        return out

    # ----- the thread -----

    def start(self) -> LiveReconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        next_clock = 0.0
        next_look = time.monotonic() + self.p.reconcile.every_s  # start-up has just compared them
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_clock:
                    next_clock = now + self.p.clock.every_s
                    self.clocks()
                if now >= next_look:
                    next_look = now + self.p.reconcile.every_s
                    self.once()
            except Exception as e:  # noqa: BLE001 - a failed look is said and tried again; it never stops trading
                if self._stop.is_set():
                    return
                log.warning("reconciliation while running could not look: %s: %s", type(e).__name__, e)
            self._stop.wait(max(0.05, min(next_clock, next_look) - time.monotonic()))


def _pricer(marks: Mapping[str, float], venues: Mapping[str, Venue]) -> Callable[[str, str], float | None]:
    """An instrument's price: the books' mark, else the venue's own last price."""
    def price(market: str, symbol: str) -> float | None:
        if marks.get(symbol):
            return marks[symbol]
        venue = venues.get(market)
        try:
            return venue.price(market, symbol) if venue is not None and hasattr(venue, "price") else None
        except VenueDown:
            return None
    return price
