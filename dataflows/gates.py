"""The gates every run passes before its first decision, whichever way it is started
(`apex run`, or ``python -m bytewax.run "dataflows.apex:build(...)"``), in this order:

1. paper or live (``operators/trading_mode.py``): the venues agree with ``APEX_ENV``, and
   live also has ``APEX_LIVE_CONFIRM=yes``. First, and before anything is made on disk or
   opened on the network, so a refused live run leaves no trace.
2. the state dir (``connectors/state_lock.py``): no other worker runs on it.
3. start-up reconciliation (``dataflows/startup.py``): the venues agree with the books;
   what it set aside (the fee coin, ignored instruments, dust) or found adopted is said,
   one line each.
4. the real venues' instrument lists refreshed, and every ``venue`` universe readable.

They live here, not in the command line, because a gate that one way of starting skips
is no gate: ``bytewax.run`` was seen trading under ``APEX_ENV=live`` without the
confirmation, and on a ledger the venue contradicted.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from connectors import state_lock
from connectors.venues import Venue
from dataflows.config import ConfigError, Pipeline, load, read_venue_lists
from operators.trading_mode import mode_refusals, refusals


class Refused(Exception):
    """Why the run may not start: ``lines``, each a sentence for the operator; ``code``: the
    exit code (1 a refused configuration or state, 2 a venue that cannot be set up as given)."""

    def __init__(self, lines: list[str], code: int = 1):
        super().__init__("; ".join(lines))
        self.lines, self.code = list(lines), code


@dataclass
class Admission:
    """A run let in: it holds its state dir until ``release`` (or until the process ends).
    ``venues``: the real venues reconciliation opened and checked, by market, for the
    dataflow to trade on (``wire``'s ``shared_venues``)."""

    lock: state_lock.StateLock
    venues: dict[str, Venue] = field(default_factory=dict)

    def release(self) -> None:
        self.lock.release()
        _HOLDING.pop(id(self), None)


# Every admission not yet released, kept alive here: `bytewax.run` keeps nothing ``build``
# returns but the flow, and a lock left to the garbage collector would be dropped while
# the flow still runs, letting a second worker in. It ends with the process.
_HOLDING: dict[int, Admission] = {}


def load_pipeline(path: str | Path, state_dir: str | Path | None = None, source: str | None = None) -> Pipeline:
    """The pipeline at ``path`` (``state_dir``, relative to the current folder, in place of its
    own; ``source`` in place of its own before the file is checked), or ``Refused`` with every
    error in it, each with the file's name, as `apex run` says them."""
    try:
        pipeline = load(path, source=source)
    except ConfigError as e:  # with what APEX_ENV refuses in its venues: every mistake at once
        raise Refused([f"error {path}: {line}" for line in e.errors + mode_refusals(e.venues)]) from None
    if state_dir:
        set_state_dir(pipeline, state_dir)
    return pipeline


def set_state_dir(pipeline: Pipeline, state_dir: str | Path) -> None:
    """``state_dir`` (relative to the current folder) in place of the file's, for the pipeline and
    each of its books: a book keeps its ledger under the state dir the run was given."""
    pipeline.state_dir = Path(state_dir).resolve()
    for book in pipeline.books:
        book.state_dir = pipeline.state_dir


def admit(pipeline: Pipeline, say: Callable[[str], None], now: Callable[[], float] = time.time) -> Admission:
    """Pass every gate (the module's docstring) or raise ``Refused``, having released
    whatever was taken. ``say``: where reconciliation says what it set aside or found
    adopted, and the instrument refresh what it fetched."""
    reasons = refusals(os.environ, pipeline.venues)
    if reasons:
        raise Refused(reasons)
    try:
        lock = state_lock.acquire(pipeline.state_dir)
    except state_lock.StateDirInUse as e:
        raise Refused([str(e)]) from None
    except OSError as e:
        raise Refused([f"state dir {pipeline.state_dir}: {e.strerror or e}"]) from None
    shared: dict[str, Venue] = {}
    try:
        # imported here: startup imports the venues (and through them ib_async), which a
        # run refused at the first gate never needs
        from dataflows.startup import reconcile_at_start, refresh_instruments

        try:
            problems, notes = reconcile_at_start(pipeline, shared)
        except ValueError as e:  # a venue that cannot be set up as configured (VenueSetupError)
            raise Refused([str(e)], code=2) from None
        if problems:
            raise Refused(notes + problems)
        for line in notes:  # what it left alone or adopted, one line each
            say(line)
        # the real venues' instrument lists, a day old at most, before a `venue` universe reads them
        refresh_instruments(pipeline, shared, now(), say)
        unread = read_venue_lists(pipeline)
        if unread:
            raise Refused([f"error {pipeline.path}: {line}" for line in unread])
    except BaseException:
        close_venues(shared)
        lock.release()
        raise
    admission = Admission(lock, shared)
    _HOLDING[id(admission)] = admission
    return admission


def close_venues(venues: dict[str, Venue]) -> None:
    """The connections reconciliation opened, closed once each (several markets may share one)."""
    for venue in {id(v): v for v in venues.values()}.values():
        close = getattr(venue, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - refusing already; a failing close changes nothing
                pass


def refuse(lines: list[str], code: int) -> NoReturn:
    """One line a reason on stderr, then exit ``code``: a user's mistake is never a traceback."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    raise SystemExit(code)


@contextmanager
def refused_in_lines() -> Iterator[None]:
    """For ``build``: a pipeline that cannot be read, a gate that refuses (``Refused``), or a
    source that cannot be set up ends ``bytewax.run`` with its lines and a non-zero exit
    (``bytewax.run`` lets a SystemExit through, and would print anything else as a traceback)."""
    try:
        yield
    except Refused as e:
        refuse(e.lines, e.code)
    except ValueError as e:  # wire's: a recording that does not exist, a source it cannot read
        refuse([str(e)], 2)


def say_on_stderr(prefix: str) -> Callable[[str], None]:
    return lambda line: print(f"{prefix}{line}", file=sys.stderr, flush=True)
