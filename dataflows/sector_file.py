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
            errors.append(f"{where}: {p}: {symbol}: the sector must be a name, not {sector!r}")
            continue
        out[str(symbol)] = sector.strip()
    return out
