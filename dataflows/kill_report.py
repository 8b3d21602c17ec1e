"""What ``apex kill`` / ``reduce`` / ``resume`` found and did, by book and by venue, and the
lines it prints."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from connectors.trading_state_store import TradingState


@dataclass
class VenueReport:
    """What a kill did at one venue."""

    cancelled: list[str] = field(default_factory=list)  # client order ids
    closed: list[str] = field(default_factory=list)  # "SYMBOL side qty", one a close
    dust: list[str] = field(default_factory=list)  # "SYMBOL qty": below the venue's minimum, left
    errors: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        if not (self.cancelled or self.closed or self.errors):
            tail = f" (dust left: {', '.join(self.dust)})" if self.dust else ""
            return f"{name}: nothing to cancel or close{tail}"
        parts = []
        if self.cancelled:
            parts.append(f"cancelled {len(self.cancelled)} order(s)")
        if self.closed:
            parts.append(f"closed {len(self.closed)} position(s) ({summed(self.closed)})")
        if self.dust:
            parts.append(f"dust left: {summed(self.dust)}")
        parts += [f"error: {e}" for e in self.errors]
        return f"{name}: " + ", ".join(parts)

    def as_dict(self) -> dict:
        return {"cancelled": self.cancelled, "closed": self.closed, "dust": self.dust, "errors": self.errors}

    def add(self, other: Mapping) -> None:
        for key in ("cancelled", "closed", "dust", "errors"):
            getattr(self, key).extend(x for x in other.get(key, ()) if x not in getattr(self, key))


def summed(items: list[str]) -> str:
    """"SYMBOL [side] qty" items added up by symbol and side, for one line a venue."""
    total: dict[tuple[str, ...], float] = {}
    for item in items:
        *key, qty = item.split()
        total[tuple(key)] = total.get(tuple(key), 0.0) + float(qty)
    return ", ".join(f"{' '.join(k)} {q:g}" for k, q in sorted(total.items()))


@dataclass
class KillReport:
    """What a command found and did: by book, the state before and after; by venue, what
    was cancelled and closed; ``via``: ``worker``, ``here``, or ``here: the worker did not
    confirm`` (a frozen worker)."""

    command: str
    command_id: str
    via: str = "here"
    before: dict[str, TradingState] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)
    venues: dict[str, VenueReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def venue(self, name: str) -> VenueReport:
        return self.venues.setdefault(name, VenueReport())

    @property
    def ok(self) -> bool:
        return not any(v.errors for v in self.venues.values())

    def lines(self) -> list[str]:
        out = list(self.notes)
        for book, before in self.before.items():
            name = f"book {book}" if book else "book"
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(before.ts_ms / 1000)) if before.ts_ms else ""
            found = before.state + (f" since {since}" if since else "") + (f" by {before.by}" if before.by else "") \
                + (f" ({before.reason})" if before.reason else "")
            out.append(f"{name}: was {found}; now {self.after.get(book, before.state)}")
        out += [v.line(name) for name, v in sorted(self.venues.items())]
        return out
