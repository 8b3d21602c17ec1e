"""``apex kill``, ``apex reduce``, ``apex resume`` (dataflows/kill.py; docs/operating.md).

The options mirror ``apex reconcile``'s. Each prints what it found and did, per book and
per venue; exit 1 when something could not be done (a venue that could not be reached)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from apex.app import app, err, out

PIPELINE = typer.Option(Path("pipeline.yaml"), help="the pipeline whose books and venues to act on")
STATE_DIR = typer.Option(None, help="where the books' ledgers are (default: the pipeline's); for a cluster, its "
                                     "root: the running processes under it are found there")
BOOK = typer.Option(None, help="only this book (default: every book)")
REASON = typer.Option("", help="why, for the ledger and the audit trail")
CONFIRM = typer.Option(30.0, "--confirm-within", metavar="S", min=0, max=600,
                       help="how long a running worker is given to confirm before this command acts at the "
                            "venues itself (the watchdog, which knows the worker is silent, gives it little)")


def _say(line: str) -> None:
    out.print(line, soft_wrap=True, highlight=False, markup=False)


BY = typer.Option("cli", hidden=True, help="who asks: cli, watchdog or reconciliation (the audit trail says)")
STANDBY = typer.Option(False, "--standby", hidden=True,
                       help="load everything, then wait for one JSON line on stdin ({reason, confirm_within, by}) "
                            "and act on it; nothing at end of input (the watchdog keeps one ready)")

# what acting at the venues imports: loaded by a standby before it is told to act, since a
# frozen worker leaves the kill switch seconds, and loading these takes a few of them
_ACTING = ("dataflows.kill_venues", "dataflows.apex", "dataflows.gates", "dataflows.portfolio_step",
           "connectors.outbox", "connectors.venues.okx", "connectors.venues.ibkr")


def _standby() -> dict | None:
    """Loads what acting needs, then waits for the order: the JSON line read from stdin,
    or None at end of input (the watchdog let its standby go without acting)."""
    import importlib
    import json
    import sys

    for module in _ACTING:
        try:
            importlib.import_module(module)
        except ImportError:  # a venue's client not installed: acting says so as it would have
            pass
    line = sys.stdin.readline()
    if not line.strip():
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        err.print("apex kill --standby: stdin did not hold one JSON line", soft_wrap=True, markup=False)
        raise typer.Exit(2)
    return doc if isinstance(doc, dict) else {}


def _act(command: str, pipeline: Path, state_dir: Optional[Path], book: Optional[str], reason: str,
         confirm_s: float, by: str, standby: bool = False) -> None:
    from dataflows import kill as switch
    from dataflows.gates import Refused

    if standby:
        told = _standby()
        if told is None:
            return
        reason = str(told.get("reason", reason))
        confirm_s = min(max(float(told.get("confirm_within", confirm_s)), 0.0), 600.0)
        by = str(told.get("by", by))

    act = {"kill": switch.kill, "reduce": switch.reduce, "resume": switch.resume}[command]
    try:
        report = act(pipeline, state_dir.resolve() if state_dir else None, book=book, reason=reason, say=_say,
                     confirm_s=confirm_s, by=by if by in ("cli", "watchdog", "reconciliation") else "cli")
    except Refused as e:
        for line in e.lines:
            err.print(line, soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(1)
    except ValueError as e:  # a book that is not in the pipeline, a venue that cannot be set up
        err.print(f"apex {command}: {e}", soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(2)
    except OSError as e:  # a state dir that cannot be made or written
        err.print(f"apex {command}: {e.strerror or e}: {e.filename or ''}", soft_wrap=True, highlight=False,
                  markup=False)
        raise typer.Exit(1)
    for line in report.lines():
        _say(line)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def kill(pipeline: Path = PIPELINE, state_dir: Optional[Path] = STATE_DIR, book: Optional[str] = BOOK,
         reason: str = REASON, confirm_s: float = CONFIRM, by: str = BY,
         standby: bool = STANDBY) -> None:
    """HALTED, then every open Apex order cancelled and every position closed, on every venue.
    Through a running worker if there is one; running it twice does nothing more."""
    _act("kill", pipeline, state_dir, book, reason, confirm_s, by, standby)


@app.command()
def reduce(pipeline: Path = PIPELINE, state_dir: Optional[Path] = STATE_DIR, book: Optional[str] = BOOK,
           reason: str = REASON, confirm_s: float = CONFIRM, by: str = BY,
           standby: bool = STANDBY) -> None:
    """REDUCING: only orders that bring a position toward zero go out."""
    _act("reduce", pipeline, state_dir, book, reason, confirm_s, by, standby)


@app.command()
def resume(pipeline: Path = PIPELINE, state_dir: Optional[Path] = STATE_DIR, book: Optional[str] = BOOK,
           reason: str = REASON, confirm_s: float = CONFIRM, by: str = BY) -> None:
    """ACTIVE again, after saying what state each book was found in and why."""
    _act("resume", pipeline, state_dir, book, reason, confirm_s, by)
