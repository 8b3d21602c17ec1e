"""What IB answered to an order just placed, read from ib_async's ``Trade``: whether it
has it (a status of its own), refused it (an error), or said something that leaves the
outcome unknown (error 103, duplicate order id: an order under that id may exist).
Also which placed orders never left the client: ib_async paces its messages (45 a
second) and drops the ones still queued when the socket drops."""

from __future__ import annotations

from typing import Any

from connectors.venues.ibkr_book import MAYBE_PLACED

TAKEN, REFUSED, MAYBE = "taken", "refused", "maybe"
# statuses ib_async gives a trade itself before IB's first word on it (ValidationError:
# a warning, the order still live at IB and its status to come)
UNANSWERED = frozenset({"PendingSubmit", "ApiPending", "ValidationError", ""})
PLACE_ORDER = "3\0"  # the first field of a placeOrder message


def answer(trade: Any) -> tuple[str, str] | None:
    """(TAKEN | REFUSED | MAYBE, reason), or None while IB has not answered: the first
    word in the trade's log that is IB's (later entries, such as a fill found by asking
    after a 103, do not change what the answer was). ib_async marks a trade Cancelled
    itself on an error to a new order: that error is IB's answer."""
    for entry in trade.log:
        if entry.status == "Cancelled" and entry.errorCode:
            if entry.errorCode == MAYBE_PLACED:
                return MAYBE, f"IB answered error {MAYBE_PLACED} (duplicate order id): the outcome is asked"
            # ib_async's line is "Error 201, reqId 7: <IB's text>": IB's code and text are the reason
            return REFUSED, f"IB error {entry.errorCode}: {entry.message.split(': ', 1)[-1]}"
        if entry.status not in UNANSWERED:
            return TAKEN, ""
    return None


def queued_order_ids(client: Any) -> set[int]:
    """The order ids of the placeOrder messages ib_async still holds back for its pacing:
    they have not left. Read from the client's queue (ib_async 2.1's ``_msgQ``, which it
    empties when the socket drops, so it is read as the drop is announced); a client
    without it says nothing, and every order is then taken to have left."""
    out = set()
    for msg in getattr(client, "_msgQ", ()):
        if isinstance(msg, str) and msg.startswith(PLACE_ORDER):
            try:
                out.add(int(msg.split("\0", 2)[1]))
            except (IndexError, ValueError):
                pass
    return out
