"""Standard output that a reader closing its end (``apex report --html f | head``)
cannot break: the rest of the output goes nowhere and the command finishes its
work (the HTML page, the ledger) and exits as it would have, without a traceback."""

from __future__ import annotations

import os
from typing import Any, TextIO


class PipeSafe:
    def __init__(self, stream: TextIO):
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        # the descriptor now points at /dev/null, so what is still buffered (and the
        # interpreter's own flush at exit) is discarded instead of failing again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)
