"""The day's loss: how far the book's NAV has fallen below its opening NAV since the UTC day began.

Pure arithmetic on the stream clock, so a replay breaches at the same entry as the live
run did. The book (``Portfolio``) feeds every NAV it sees to ``DayLoss.observe``; the
``daily_loss`` filter and whoever sets the book's trading state read ``breach``.

The loss is measured at the lowest NAV seen since the day opened, not the current one:
once the day's loss has passed its limit the breach holds until the next UTC day (or a
``resume``), even if prices come back, so a book halted for a loss is not reopened by a
bounce nobody looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DAY_MS = 86_400_000

OnBreach = Literal["halt", "reduce"]  # the trading state a breach puts the book in: HALTED, REDUCING


class DayLoss:
    """The UTC day the book is in, its opening NAV and the lowest NAV seen since."""

    __slots__ = ("day", "open_nav", "low_nav", "last_nav")

    def __init__(self, nav: float):
        self.day: int | None = None  # days since the epoch, UTC; None until a first clock is seen
        self.open_nav = nav
        self.low_nav = nav
        self.last_nav = nav  # the NAV the book last showed: the next day opens at it

    def observe(self, clock_ms: int, nav: float) -> None:
        """The book's NAV at ``clock_ms``. The first NAV of a new UTC day opens it at the NAV
        the book held over midnight (the last one seen before), not at this one, which a
        price or fill of the new day has already moved."""
        day = clock_ms // DAY_MS
        if self.day is None or day > self.day:
            self.day = day
            self.open_nav = self.low_nav = self.last_nav
        self.low_nav = min(self.low_nav, nav)
        self.last_nav = nav

    def resume(self, nav: float) -> None:
        """``apex resume`` after a breach: the day's budget starts again from ``nav``, as if
        the day had opened there (else the very next NAV would breach again)."""
        self.open_nav = self.low_nav = self.last_nav = nav

    @property
    def loss_usd(self) -> float:
        return max(0.0, self.open_nav - self.low_nav)

    @property
    def loss(self) -> float:
        """The day's loss as a share of its opening NAV (0 when the book has nothing)."""
        return self.loss_usd / self.open_nav if self.open_nav > 0 else 0.0

    def breached(self, max_loss: float) -> bool:
        """The day's loss has passed ``max_loss`` of the opening NAV: a loss of exactly
        ``max_loss`` has not (compared in dollars, where 3% of a round NAV is exact)."""
        return self.loss_usd > max_loss * self.open_nav

    def state(self) -> dict:
        return {"day": self.day, "open": self.open_nav, "low": self.low_nav, "last": self.last_nav}

    def restore(self, state: dict) -> None:
        self.day, self.open_nav, self.low_nav, self.last_nav = (
            state["day"], state["open"], state["low"], state["last"])


@dataclass(frozen=True, slots=True)
class Breach:
    """A book past its day's loss limit, and what its configuration says to do about it."""

    loss: float  # share of the opening NAV
    max_loss: float
    open_nav: float
    low_nav: float
    on_breach: OnBreach

    @property
    def state(self) -> str:
        """The trading state (``ACTIVE`` | ``REDUCING`` | ``HALTED``) the book goes to."""
        return "HALTED" if self.on_breach == "halt" else "REDUCING"

    def reason(self) -> str:
        return (f"daily_loss: the day's loss {self.loss:.2%} passed {self.max_loss:.2%} of its opening NAV "
                f"{self.open_nav:,.2f} (lowest NAV {self.low_nav:,.2f})")


def breach(day: DayLoss, max_loss: float, on_breach: OnBreach) -> Breach | None:
    """The breach, if the day's loss has passed ``max_loss``; None while it has not."""
    if not day.breached(max_loss):
        return None
    return Breach(day.loss, max_loss, day.open_nav, day.low_nav, on_breach)
