"""One worker per state dir.

Two workers on one state dir trade on one ledger with two books in memory, each blind to
the other's orders: every decision either makes is made on a book that is wrong. So a run
holds an exclusive ``flock`` on ``run.lock`` in its state dir for as long as it lives, and
a second one is refused at once, told which process holds it.

``flock`` rather than a pid file: the kernel drops the lock with the last descriptor of
the process that took it, however it ends (a SIGKILL, an OOM kill, a power cut on a local
disk), so a dead holder never leaves a stale lock to clean up by hand, and there is no
window between "is that pid alive?" and "take it" for a second run to slip through. The
file itself is never removed: unlinking it while another process waits to open it would
give the two of them different files to lock.

The file holds the holder's pid, host and command line as one JSON line, written once the
lock is taken, so the refusal can name who to stop.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = "run.lock"
# How long a refused run waits for a holder that has only just taken the lock to write its
# name. It only bounds a failure (the holder writes right after taking the lock); past it,
# the refusal says "another process".
NAME_WAIT_S = 2.0


class StateDirInUse(Exception):
    """The state dir is held by a live process; the message is one line for the operator."""

    def __init__(self, state_dir: Path, holder: dict | None):
        self.state_dir, self.holder = state_dir, holder
        super().__init__(f"state dir {state_dir} is in use by {describe(holder)}; one run per state dir: "
                         "stop that one first, or give this run a state dir of its own")


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not said which)"
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    return f"pid {holder.get('pid')}{where} ({holder.get('command') or 'command line unknown'})"


def command_line() -> str:
    """This process's command line as it was typed (``sys.orig_argv``: the interpreter and
    any ``-m`` included, so a ``bytewax.run`` reads as one)."""
    argv = getattr(sys, "orig_argv", None) or sys.argv
    return shlex.join(argv)


class StateLock:
    """A held lock on a state dir; ``release`` (or this process ending) gives it up."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # the name goes first, so a run refused in the instant before the close is not
        # told about a process that has already let go
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(state_dir: Path) -> StateLock:
    """Hold ``state_dir`` (made if missing) for this run, or raise ``StateDirInUse`` at once
    naming the process that holds it. A folder that cannot be made or written raises OSError."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    # O_CLOEXEC: a child this process starts (the audit shipper) must not inherit the lock,
    # or it would outlive a killed worker and keep its successor out while it drains
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise StateDirInUse(state_dir, holder) from None
    except BaseException:
        os.close(fd)
        raise
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return StateLock(path, fd)


def holder(state_dir: Path) -> dict | None:
    """Who holds ``state_dir`` now, as its lock file names it; None when no one does."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)  # free: whatever the file says is a past holder's
        return None
    finally:
        os.close(fd)


def _holder(fd: int) -> dict | None:
    """The holder's name from the lock file: it writes it right after taking the lock, so an
    empty or half-written file is read again until it is whole (bounded)."""
    deadline = time.monotonic() + NAME_WAIT_S
    while True:
        try:
            doc = json.loads(os.pread(fd, 65536, 0))
            if isinstance(doc, dict) and "pid" in doc:
                return doc
        except ValueError:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
