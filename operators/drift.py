"""Reconciliation while running, and the clock check: how far off is too far, pure.

A difference between a book and its venue is valued in the account's currency (the
quantity apart, at the instrument's price) and set against the NAV of the books that
trade the venue: above ``alert_fraction`` it is said (log, audit event, ``apex status``),
above ``kill_fraction`` everything is closed. Differences that are not positions (an open
order the ledger does not know, a venue that could not be asked) are said, never valued:
the first may be an order placed a moment ago, the second is no news about the account.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from operators.reconcile import POSITION_MISMATCH, Difference

OK, ALERT, KILL = "ok", "alert", "kill"


@dataclass(frozen=True, slots=True)
class Drift:
    level: str  # ok | alert | kill
    gap_usd: float
    nav_usd: float
    unpriced: tuple[str, ...] = ()  # instruments apart whose price is not known

    @property
    def ratio(self) -> float:
        return self.gap_usd / self.nav_usd if self.nav_usd > 0 else 0.0

    def line(self, venue: str) -> str:
        told = (f"venue {venue} and the books differ by {self.gap_usd:,.2f} USD, {self.ratio:.4%} of NAV "
                f"{self.nav_usd:,.2f}")
        unpriced = f"; not priced: {', '.join(self.unpriced)}" if self.unpriced else ""
        if self.level == KILL:
            return f"reconciliation: {told}: above the kill threshold, closing everything{unpriced}"
        if self.level == ALERT:
            return f"reconciliation: {told}: above the alert threshold{unpriced}"
        return f"reconciliation: {told}{unpriced}"


def gap_usd(differences: Iterable[Difference], price: Callable[[str, str], float | None]
            ) -> tuple[float, tuple[str, ...]]:
    """The positions apart, valued: sum of |venue - book| x price; and those with no price."""
    total, unpriced = 0.0, []
    for d in differences:
        if d.reason != POSITION_MISMATCH:
            continue
        p = price(d.market, d.symbol)
        if p is None or p <= 0:
            unpriced.append(f"{d.market} {d.symbol}")
            continue
        total += abs(d.venue_qty - d.book_qty) * p
    return total, tuple(unpriced)


def judge(gap: float, nav: float, alert_fraction: float, kill_fraction: float,
          unpriced: tuple[str, ...] = ()) -> Drift:
    """A position apart with no price cannot be valued: it is at least an alert."""
    ratio = gap / nav if nav > 0 else (float("inf") if gap > 0 else 0.0)
    level = KILL if ratio > kill_fraction else ALERT if ratio > alert_fraction or unpriced else OK
    return Drift(level, gap, nav, unpriced)


@dataclass(frozen=True, slots=True)
class Clock:
    """The venue's clock against ours: ``offset_s`` is the venue's time less ours."""

    venue: str
    offset_s: float
    allowance_s: float

    @property
    def off(self) -> bool:
        return abs(self.offset_s) > self.allowance_s

    def line(self) -> str:
        ahead = "ahead of" if self.offset_s > 0 else "behind"
        said = f"clock: venue {self.venue}'s server time is {abs(self.offset_s):.3f} s {ahead} this machine's"
        if self.off:
            return f"{said}, beyond the allowance of {self.allowance_s:g} s: REDUCING (order timestamps would drift)"
        return said


def clock_offset(server_s: float, asked_at_s: float, answered_at_s: float) -> float:
    """The venue's time less ours, taking its answer as given half-way through the round trip."""
    return server_s - (asked_at_s + answered_at_s) / 2
