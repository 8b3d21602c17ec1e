"""The closes a kill sent beside a frozen worker, handed to that worker when it wakes.

``apex kill`` beside a frozen worker closes each open trade of a book at its venue under
the trade's own close id. The worker's ledger is not the kill's to write (the worker may
hold its write lock mid-batch), so the kill says what it sent in a small file beside the
ledger, one per command (``kill-closes/<command id>.json``), written before the first close
leaves. The worker reads it when it carries out the same command (``dataflows/control_step.py``)
and adopts each close as an order only the venue knows the fate of, rather than sending
its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from operators.orders import Order

DIR = "kill-closes"


def path(ledger_path: Path, command_id: str) -> Path:
    return Path(ledger_path).parent / DIR / f"{command_id}.json"


def write(ledger_path: Path, command_id: str, closes: list[Order]) -> None:
    """Whole or not at all (a rename): a worker that wakes while it is written reads either none or all."""
    target = path(ledger_path, command_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"command_id": command_id, "closes": [asdict(o) for o in closes]}))
    os.replace(tmp, target)


def read(ledger_path: Path, command_id: str) -> list[Order]:
    """The closes the kill ``command_id`` sent for this book; none when it sent none here."""
    try:
        doc = json.loads(path(ledger_path, command_id).read_text())
    except (OSError, ValueError):
        return []
    return [Order(**o) for o in doc.get("closes", [])]
