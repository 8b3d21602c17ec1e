"""SIGHUP: pipeline.yaml read again, checked, and what may change live swapped in at each
book's next batch boundary.

Live: every filter's parameters (thresholds, universes, limits of the built-in filters and
a custom filter's keyword arguments), the Kelly parameters but its tracker, and the exit
rules (``exits:``). Anything else shapes the running flow or what it is connected to
(stages added, removed or reordered, books, venues, streams, Redis, the state dir, the
audit store, the paper venue, the limits, the Kelly tracker's window): a file that changes
any of it is refused whole, each such change named, and the run goes on as it was. A file
with errors is refused with every error's YAML path; the run goes on.

The signal handler only hands the file to a thread that reads and checks it and leaves the
new settings waiting; the swaps happen on the worker's thread: the filters' parameters as
the next entry enters the flow, the Kelly parameters and exits at each book's next batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dataflows.config import ConfigError, Pipeline

log = logging.getLogger("apex.reload")

# settings that shape the flow or its connections: (what to call it, how to read it)
_FIXED: tuple[tuple[str, Callable[[Pipeline], Any]], ...] = (
    ("source", lambda p: p.source),
    ("state_dir", lambda p: str(p.state_dir)),
    ("clickhouse", lambda p: p.clickhouse_dsn),
    ("redis", lambda p: p.redis.model_dump()),
    ("prices", lambda p: p.prices.model_dump()),
    ("venues", lambda p: p.venues.model_dump()),
    ("limits", lambda p: p.limits.model_dump()),
    ("books", lambda p: [(b.book, b.takes.model_dump()) for b in p.books]),
    ("metrics_port", lambda p: p.metrics_port),
)
_BOOK_FIXED: tuple[tuple[str, Callable[[Pipeline], Any]], ...] = (
    ("stages", lambda p: p.stages),
    ("execute", lambda p: p.execute.model_dump()),
    ("size: kelly tracker", lambda p: p.kelly.tracker.model_dump()),
)


def _where(book: Pipeline) -> str:
    return f"books.{book.book}" if book.book else "pipeline"


def not_live(old: Pipeline, new: Pipeline) -> list[str]:
    """Each change that cannot be applied to a running flow, one sentence each."""
    out = [f"{name}: changed; it cannot change while the run goes on (restart to apply it)"
           for name, read in _FIXED if read(old) != read(new)]
    if out:
        return out
    for a, b in zip(old.each_book(), new.each_book()):
        fixed = [f"{_where(a)} {name}: changed; it cannot change while the run goes on (restart to apply it)"
                 for name, read in _BOOK_FIXED if read(a) != read(b)]
        out += fixed
        if a.stages != b.stages:
            continue  # filters added, removed or moved: said once, as the stages' change
        for fa, fb in zip(a.filters, b.filters):
            if fa.fn is not fb.fn and getattr(fa.fn, "__qualname__", "") != getattr(fb.fn, "__qualname__", ""):
                out.append(f"{_where(a)} filter {fa.name!r}: its function changed; restart to apply it")
    return out


def changes(old: Pipeline, new: Pipeline) -> list[str]:
    """What a reload would change, one line each (empty: the file says what runs now)."""
    out = []
    for a, b in zip(old.each_book(), new.each_book()):
        for fa, fb in zip(a.filters, b.filters):
            for key in sorted(set(fa.params) | set(fb.params)):
                if fa.params.get(key) != fb.params.get(key):
                    out.append(f"{_where(a)} filter {fa.name}.{key}: {_short(fa.params.get(key))} → "
                               f"{_short(fb.params.get(key))}")
        ka, kb = a.kelly.model_dump(exclude={"tracker"}), b.kelly.model_dump(exclude={"tracker"})
        out += [f"{_where(a)} size: kelly.{k}: {ka[k]} → {kb[k]}" for k in ka if ka[k] != kb[k]]
        ea, eb = a.exits.model_dump(), b.exits.model_dump()
        out += [f"{_where(a)} exits.{k}: {ea[k]} → {eb[k]}" for k in ea if ea[k] != eb[k]]
    return out


def _short(v: Any) -> str:
    text = repr(sorted(v) if isinstance(v, (set, frozenset)) else v)
    return text if len(text) <= 80 else text[:77] + "..."


class Reloader:
    """Holds the running pipeline and what a SIGHUP left waiting. ``request`` runs in a
    thread of its own; the swaps run on the worker's thread: the filters' parameters as
    the next entry enters the flow (``at_ingress``), so the filter steps before the books
    and those inside them change together, and the Kelly parameters and exit rules at each
    book's next batch (``at_batch``)."""

    def __init__(self, running: Pipeline, load_again: Callable[[], Pipeline]):
        self.running = running  # what the next reload is compared with
        self.live = running  # the pipeline the flow was built from: its objects are the ones swapped
        self.load_again = load_again
        self._lock = threading.Lock()
        self._filters: Pipeline | None = None  # new filter parameters, for the next entry
        self._books: dict[str, Pipeline] = {}  # book name -> its new Kelly and exits
        self.waiting = False  # read at every entry: a plain attribute, so the check costs nothing

    def request(self) -> bool:
        """Read and check the file again; True when new settings wait. Says (logs) what it
        found: refused with every reason, nothing to change, or what changes."""
        try:
            new = self.load_again()
        except ConfigError as e:
            log.error("reload refused: %s has errors; the run goes on with the settings it had:\n  %s",
                      self.running.path, "\n  ".join(e.errors))
            return False
        except Exception as err:  # noqa: BLE001 - a reload must never end the run
            log.error("reload refused: %s could not be read: %s: %s", self.running.path, type(err).__name__, err)
            return False
        fixed = not_live(self.running, new)
        if fixed:
            log.error("reload refused: %s changes what cannot change while running; the run goes on with "
                      "the settings it had:\n  %s", self.running.path, "\n  ".join(fixed))
            return False
        said = changes(self.running, new)
        if not said:
            log.info("reload: %s changes nothing that runs", self.running.path)
            return False
        with self._lock:
            self._filters = new
            self._books = {book.book: book for book in new.each_book()}
            self.running = _merged(self.running, new)
            self.waiting = True
        log.info("reload accepted (filters from the next entry, sizing and exits at each book's next "
                 "batch):\n  %s", "\n  ".join(said))
        return True

    def at_ingress(self) -> None:
        """On the worker's thread, before the next entry is judged: every book's filters take
        their new parameters (a filter is frozen; its parameters are replaced whole)."""
        with self._lock:
            new, self._filters = self._filters, None
            self.waiting = bool(self._books)
        if new is None:
            return
        for old_book, new_book in zip(self.live.each_book(), new.each_book()):
            for f, g in zip(old_book.filters, new_book.filters):
                if f.params != g.params:
                    object.__setattr__(f, "params", g.params)

    def at_batch(self, current: Pipeline) -> None:
        """At a batch boundary of ``current``'s book: its new Kelly parameters and exits."""
        if self._filters is not None:
            self.at_ingress()  # a book woken by a venue's answer before any entry came
        with self._lock:
            new = self._books.pop(current.book, None)
            self.waiting = bool(self._books) or self._filters is not None
        if new is None:
            return
        current.kelly = new.kelly
        current.exits = new.exits
        log.info("reload applied to %s", _where(current), extra={"book": current.book, "stage": "reload"})


def _merged(running: Pipeline, new: Pipeline) -> Pipeline:
    """The pipeline as it will run once every book applied ``new``'s live settings: what the
    next reload is compared with."""
    from dataclasses import replace

    books = [replace(a, filters=b.filters, kelly=b.kelly, exits=b.exits)
             for a, b in zip(running.books, new.books)]
    return replace(running, filters=new.filters, kelly=new.kelly, exits=new.exits, books=books)


RELOADER: Reloader | None = None  # the process's, when it reloads on SIGHUP


def at_ingress() -> None:
    """Called as each entry enters the flow (validation)."""
    r = RELOADER
    if r is not None and r.waiting:
        r.at_ingress()


def at_batch(current: Pipeline) -> None:
    """Called by each book's step at the start of a batch."""
    r = RELOADER
    if r is not None and r.waiting:
        r.at_batch(current)
