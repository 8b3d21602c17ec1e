"""The ``sector_exposure`` filter's symbol → sector file, read when pipeline.yaml is loaded.

Two forms, told apart by the file's suffix:

- ``.csv``: a header ``symbol,sector``, then one symbol a row;
- ``.yaml`` / ``.yml``: a mapping ``SYMBOL: sector``.

Every problem is reported with the filter's YAML path and, for a row, its line, so
``apex validate`` names it before anything trades.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

from operators.filters import Filter, symbol_universe
from operators.risk_filters import sector_exposure

HEADER = ["symbol", "sector"]


def read_sectors(value: str, base: Path, where: str, errors: list[str]) -> dict[str, str]:
    """The map the file at ``value`` (relative to ``base``, pipeline.yaml's folder) holds;
    on any problem the problems are added to ``errors`` and an empty map is returned."""
    p = Path(value) if Path(value).is_absolute() else base / value
    try:
        text = p.read_text()
    except OSError as err:
        errors.append(f"{where}: cannot read {p}: {err.strerror}")
        return {}
    before = len(errors)
    if p.suffix == ".csv":
        out = _csv(text, where, p, errors)
    elif p.suffix in (".yaml", ".yml"):
        out = _yaml(text, where, p, errors)
    else:
        errors.append(f"{where}: {p}: a sector file is .csv (symbol,sector) or .yaml (SYMBOL: sector)")
        return {}
    if len(errors) > before:
        return {}
    if not out:
        errors.append(f"{where}: {p} names no symbol")
    return out


def _csv(text: str, where: str, p: Path, errors: list[str]) -> dict[str, str]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if [h.strip().lower() for h in header or []] != HEADER:
        errors.append(f"{where}: {p} line 1: the header must be {','.join(HEADER)}, not {','.join(header or [])!r}")
        return {}
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for row in rows:
        line = rows.line_num
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != 2 or not all(cells):
            errors.append(f"{where}: {p} line {line}: a row is symbol,sector, not {','.join(row)!r}")
            continue
        symbol, sector = cells
        if symbol in first:
            errors.append(f"{where}: {p} line {line}: {symbol} is also on line {first[symbol]}")
            continue
        first[symbol] = line
        out[symbol] = sector
    return out


def _yaml(text: str, where: str, p: Path, errors: list[str]) -> dict[str, str]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        errors.append(f"{where}: {p}{at}: not YAML: {getattr(err, 'problem', None) or err}")
        return {}
    if not isinstance(doc, dict):
        errors.append(f"{where}: {p}: must be a mapping of SYMBOL: sector")
        return {}
    out: dict[str, str] = {}
    for symbol, sector in doc.items():
        if not isinstance(sector, str) or not sector.strip():
            errors.append(f"{where}: {p}: {symbol}: the sector must be a name, not {sector!r} "
                          "(the file maps each SYMBOL to its sector)")
            continue
        out[str(symbol)] = sector.strip()
    return out


def uncovered_symbols(filters: list[Filter], index: dict[str, int], prefix: str) -> list[str]:
    """A ``sector_exposure`` filter that drops unknown symbols beside a ``symbol_universe``
    listing symbols its file does not name would drop every signal of theirs, silently: one
    error per such pair, under the sector filter's path. ``index``: each filter's place in
    the stage list ``prefix``, by its name (a name is one filter's only)."""
    errors = []
    universes = [f for f in filters if f.fn is symbol_universe]
    for s in filters:
        if s.fn is not sector_exposure or s.params["unknown_symbol"] != "drop" or not s.params["sectors"]:
            continue
        for u in universes:
            listed = set().union(*u.params["universe"].values())
            missing = sorted(listed - set(s.params["sectors"]))
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                errors.append(f"{prefix}[{index[s.name]}].sectors: leaves out {', '.join(missing[:5])}{more}, which "
                              f"{prefix}[{index[u.name]}] ({u.name}) trades: every signal of theirs would be dropped "
                              f"as {s.name!r}; name their sector, or set unknown_symbol: pass")
    return errors
