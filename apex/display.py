"""Text from producers (signal ids, symbols, reasons, details) made safe to show.

A signal's fields reach the terminal through ``apex audit`` and ``apex report``;
an escape sequence in a symbol would otherwise be obeyed by the terminal (clear
the screen, move the cursor, retitle the window) instead of shown. Control
characters (C0, DEL, C1) and the bidirectional overrides that reorder a line
become visible escapes, and the result is a rich ``Text``, never markup, so
brackets in the text stay text.
"""

from __future__ import annotations

from rich.text import Text

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI = [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {c: _NAMED.get(chr(c), f"\\x{c:02x}") for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _BIDI}


def printable(value: object) -> str:
    """``value`` as text with every control character written as its escape (ESC as ``\\x1b``)."""
    return str(value).translate(_ESCAPES)


def cell(value: object) -> Text:
    """A table cell: printable, and never read as rich markup."""
    return Text(printable(value))
