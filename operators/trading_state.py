"""A book's trading state, and which orders it lets out.

- ``ACTIVE``: every order.
- ``REDUCING``: only orders that bring a position toward zero; an order that would open
  from flat, add to a position or cross through zero is refused (``reducing``).
- ``HALTED``: no order at all (``halted``), but the kill switch's own closes (reason
  ``kill``): the switch must be able to flatten a book it has just halted. Cancels are not
  orders and are never refused.

Pure: the state and the position come in, a drop reason (or None) goes out. The egress
(``connectors/execution.py`` ``Executor.prepare``) asks it of every new order, so an open,
an exit's close and a close after a restart all pass the same check.
"""

from __future__ import annotations

from operators.orders import Order

ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"
STATES = (ACTIVE, REDUCING, HALTED)
TRADING_STATE = "TRADING_STATE"  # the audit stage of a state change and of the kill switch's own actions
KILL = "kill"  # the reason of the kill switch's closes: the one kind of order HALTED lets out

# control commands and the state each sets
COMMANDS = {"kill": HALTED, "reduce": REDUCING, "resume": ACTIVE}
DROP_REASON = {HALTED: "halted", REDUCING: "reducing"}


RANK = {ACTIVE: 0, REDUCING: 1, HALTED: 2}  # how few orders each lets out


def stricter(a: str, b: str) -> str:
    """The state that lets out fewer orders."""
    return a if RANK[a] >= RANK[b] else b


def reduces(side: str, quantity: float, held: float) -> bool:
    """Whether an order of ``quantity`` on ``side`` brings ``held`` toward zero without
    crossing it (a position of 0 is flat: nothing brings it toward zero)."""
    signed = quantity if side == "buy" else -quantity
    return held != 0 and signed * held < 0 and abs(signed) <= abs(held) * (1 + 1e-9)


def refusal(state: str, order: Order, held: float, reason: str = "") -> str | None:
    """Why ``state`` refuses a new ``order`` (``halted`` or ``reducing``), or None to let it
    out. ``held``: the book's position in the order's instrument; ``reason``: the order's
    own (an exit's or the kill switch's)."""
    if state == ACTIVE:
        return None
    if state == HALTED:
        return None if order.kind == "close" and reason == KILL else DROP_REASON[HALTED]
    if state == REDUCING:
        if order.kind == "close" or reduces(order.side, order.quantity, held):
            return None
        return DROP_REASON[REDUCING]
    raise ValueError(f"unknown trading state {state!r}")
