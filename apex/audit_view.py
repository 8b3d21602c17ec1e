"""How ``apex audit`` shows decision chains: a table sized to the terminal, or JSON lines.

Every field a producer controls goes through ``apex.display`` first. Below
``WIDE`` columns (80 when piped) the six columns would leave nothing for "why",
the column a reader came for, so each event takes two lines there: time over
stream id, stage over outcome and size, and "why" gets the rest of the width.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from apex.display import cell, printable

WIDE = 130


def print_jsonl(rows: list[dict]) -> None:
    """``json.dumps`` writes control characters as ``\\u001b`` escapes: safe as it is."""
    for r in rows:
        r["ts"] = r["ts"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        r["details"] = json.loads(r["details"])
        sys.stdout.write(json.dumps(r, default=str) + "\n")


def print_table(rows: list[dict], signal_id: str | None, out: Console) -> None:
    first = rows[0] if rows else {}
    book = f" in book {first['book']}" if first.get("book") else ""
    title = Text(printable(f"decision chain of {signal_id}: {first['venue']} {first['symbol']} from "
                           f"{first['source']}{book}") if signal_id else f"{len(rows)} audit events")
    wide = out.width >= WIDE
    t = Table(title=title)
    if wide:
        for c in ("time (UTC)", "stream id", "stage", "outcome", "size usd"):
            t.add_column(c, no_wrap=True)
    else:
        t.add_column("time (UTC)\nstream id", no_wrap=True)
        t.add_column("stage\noutcome  size usd", no_wrap=True)
    t.add_column("why", min_width=20, overflow="fold")
    for r in rows:
        ts = r["ts"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        size = "" if r["size_usd"] is None else f"{r['size_usd']:,.2f}"
        why = cell(" ".join(x for x in (r["reason"], brief(json.loads(r["details"]))) if x))
        if wide:
            t.add_row(ts, cell(r["stream_id"]), cell(r["stage"]), cell(r["outcome"]), size, why)
        else:
            t.add_row(Text(ts + "\n") + cell(r["stream_id"]),
                      cell(r["stage"]) + Text("\n") + cell(r["outcome"]) + Text(f"  {size}" if size else ""), why)
    out.print(t)


def brief(details: dict) -> str:
    """One line of key=value with numbers at readable precision."""
    parts = []
    for k, v in details.items():
        if k == "checked":
            v = " ".join(f"{name}{'✓' if ok else '✗'}" for name, ok in v)
            parts.append(v)
            continue
        if isinstance(v, float):
            v = f"{v:.6g}"
        elif isinstance(v, list):
            if not v:
                continue
            v = ",".join(map(str, v))
        parts.append(f"{k}={v}")
    return " ".join(parts)
