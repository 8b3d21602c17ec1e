"""The instruments each venue trades, cached to files under the state dir and refreshed
once a day: ``<market>.txt`` (one symbol a line, the form ``symbol_universe`` reads) and
``<market>.json`` (each symbol's lot size, tick size and minimum size, and when they were
fetched).

Files are replaced whole (a temporary file, then a rename), so a reader never sees half a
list, and a venue that cannot be asked leaves yesterday's files in place: a list a day old
is far better than none. A venue that lists no universe (IBKR answers per symbol) is asked
about the symbols it is handed instead, and lists those it knows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from connectors.venues import Instrument, Venue, VenueDown

log = logging.getLogger(__name__)
DAY_S = 86_400.0


def list_path(directory: Path, market: str) -> Path:
    return Path(directory) / f"{market}.txt"


def rules_path(directory: Path, market: str) -> Path:
    return Path(directory) / f"{market}.json"


def fetched_at(directory: Path, market: str) -> float | None:
    """When the market's files were written (epoch seconds); None if either is missing or unreadable."""
    if not list_path(directory, market).is_file():
        return None
    try:
        return float(json.loads(rules_path(directory, market).read_text())["fetched_at_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_rules(directory: Path, market: str) -> dict[str, Instrument]:
    """The cached lot, tick and minimum size by symbol ({} when there is no cache)."""
    try:
        doc = json.loads(rules_path(directory, market).read_text())
    except (OSError, ValueError):
        return {}
    return {s: Instrument(market, s, r["lot_size"], r["tick_size"], r["min_size"])
            for s, r in doc.get("instruments", {}).items()}


def read_symbols(directory: Path, market: str) -> list[str]:
    """The cached list's symbols ([] when there is none)."""
    try:
        lines = list_path(directory, market).read_text().splitlines()
    except OSError:
        return []
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


def refresh(venues_by_market: Mapping[str, Venue], directory: str | Path, now: float, max_age_s: float = DAY_S,
            *, asked: Mapping[str, Iterable[str]] | None = None,
            say: Callable[[str], None] | None = None) -> list[str]:
    """Rewrites the files of each market whose cache is missing or ``max_age_s`` old at
    ``now`` (epoch seconds); returns the markets refreshed. A market on the paper venue is
    skipped (it lists only its bundled universe). ``asked``: by market, the symbols to ask a
    venue that lists no universe of its own. ``say``: where the one line goes that tells a
    venue could not be asked and the old files were kept (default: the log)."""
    say = say or log.warning
    directory = Path(directory)
    done = []
    for market, venue in venues_by_market.items():
        if venue.name == "paper":
            continue
        at = fetched_at(directory, market)
        if at is not None and now - at < max_age_s:
            continue
        try:
            found = _ask(venue, market, (asked or {}).get(market, ()))
        except VenueDown as e:
            kept = f"keeping the list of {_stamp(at)}" if at is not None else "no list cached yet"
            say(f"instruments of {market}: {e}; {kept}")
            continue
        _write(directory, market, found, _where(venue), now)
        done.append(market)
    return done


def _ask(venue: Venue, market: str, symbols: Iterable[str]) -> list[Instrument]:
    if getattr(venue, "lists_instruments", True):
        found = [i for i in venue.instruments() if i.venue == market]
    else:  # it knows only what it is asked about: each symbol asked, kept if it knows it
        found = [i for i in (venue.instrument(market, s) for s in dict.fromkeys(symbols)) if i is not None]
    return sorted(found, key=lambda i: i.symbol)


def _write(directory: Path, market: str, found: list[Instrument], where: str, now: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    header = f"# {market} instruments from {where}, fetched {_stamp(now)} ({len(found)} symbols)\n"
    _replace(list_path(directory, market), header + "".join(f"{i.symbol}\n" for i in found))
    doc = {"market": market, "source": where, "fetched_at": _stamp(now), "fetched_at_s": now,
           "instruments": {i.symbol: {k: v for k, v in asdict(i).items() if k not in ("venue", "symbol")}
                           for i in found}}
    _replace(rules_path(directory, market), json.dumps(doc, indent=1) + "\n")


def _replace(path: Path, text: str) -> None:
    """Written beside its target, then renamed over it: readers see the old file or the new."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _where(venue: Venue) -> str:
    """The venue as its repr names it, less any user and password a URL may carry."""
    text = repr(venue)
    if text.startswith("<"):  # no repr of its own: the name says enough
        return venue.name
    return re.sub(r"//[^/@\s]*@", "//", text)


def _stamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
