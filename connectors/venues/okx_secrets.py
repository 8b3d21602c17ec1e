"""Keeping OKX's credentials out of every line written: ccxt logs each request's headers
(``OK-ACCESS-KEY`` and ``OK-ACCESS-PASSPHRASE`` among them) at DEBUG, and an answer or an
error may quote what was sent. Each venue hands its credentials here; the text of every
record ccxt logs, and every message a venue writes, is scrubbed of all of them. (A
"credential" shorter than ``SHORTEST`` is no real one, a stand-in for a simulator: blotting
out every "k" of every line would hide nothing and garble everything.)"""

from __future__ import annotations

import logging
import threading

# the loggers ccxt writes requests to (its REST clients, sync and asyncio)
CCXT_LOGGERS = ("ccxt.base.exchange", "ccxt.async_support.base.exchange", "ccxt.async_support.base.ws.client")
MASK = "***"
SHORTEST = 4


class Redactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.hidden: set[str] = set()

    def hide(self, *secrets: str) -> None:
        with self.lock:
            self.hidden.update(s for s in secrets if len(s) >= SHORTEST)

    def scrub(self, text: str) -> str:
        with self.lock:
            hidden = sorted(self.hidden, key=len, reverse=True)  # a longer one may contain a shorter
        for s in hidden:
            text = text.replace(s, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is written as it is
            return True
        scrubbed = self.scrub(text)
        if scrubbed != text:
            record.msg, record.args = scrubbed, ()
        return True


REDACTOR = Redactor()
for _name in CCXT_LOGGERS:
    logging.getLogger(_name).addFilter(REDACTOR)


def hide(*secrets: str) -> None:
    REDACTOR.hide(*secrets)


def scrub(text: str) -> str:
    return REDACTOR.scrub(text)
