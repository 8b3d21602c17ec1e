"""Logs through the standard ``logging`` module: one JSON object a line for a machine
(the default when stderr is not a terminal), or one readable line for a person.

A record's ``book``, ``signal_id`` and ``stage`` (given with ``extra=``) become fields of
their own. The third-party clients' loggers (ccxt, ib_async, aiohttp, bytewax, and what
they use) go through the same handler, and only from WARNING up: their chatter is theirs,
their warnings are the operator's business.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

FORMATS = ("json", "human")
ENV = "APEX_LOG_FORMAT"  # how a parent's choice reaches its children
CONTEXT = ("book", "signal_id", "stage")  # fields a record may carry with ``extra=``
THIRD_PARTY = ("ccxt", "ib_async", "aiohttp", "bytewax", "asyncio", "urllib3", "clickhouse_connect", "chdb",
               "redis", "websockets")


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _iso(record.created), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for key in CONTEXT:
            value = getattr(record, key, None)
            if value not in (None, ""):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT if getattr(record, k, None) not in (None, ""))
        line = (f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} "
                f"{record.name}: {record.getMessage()}" + (f" [{context}]" if context else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def chosen(fmt: str | None, stream: TextIO) -> str:
    """``fmt`` as given, else human in a terminal and JSON otherwise."""
    if fmt is None:
        return "human" if stream.isatty() else "json"
    if fmt not in FORMATS:
        raise ValueError(f"--log-format must be json or human, not {fmt!r}")
    return fmt


def setup(fmt: str | None = None, level: int = logging.INFO, stream: TextIO | None = None) -> str:
    """Every logger of the process to ``stream`` (stderr) in one format; which one it chose."""
    stream = stream or sys.stderr
    fmt = chosen(fmt, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # a library's warnings.warn: a log line too, not raw stderr
    os.environ[ENV] = fmt  # the audit shipper, a child process, logs in the same format
    return fmt
