"""Processes for ``apex bench``: a private redis-server, and children measured one by one.

Every system under test (an Apex worker, the floor consumer, a replay, a
lookup loop) runs as its own child process so that its CPU seconds and peak
RSS are its own: CPU from ``wait4``'s rusage (which includes the child's own
waited-for children, e.g. Apex's outbox shipper), memory from sampling
``/proc/PID/status`` (VmHWM, the kernel's high-water mark, per process of the
child's tree; a tree's peak is the sum of its processes' peaks).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = "/usr/bin/redis-server"
# settings a developer's shell may carry that would redirect a child away from the bench's own
SCRUB = ("APEX_SOURCE", "APEX_STATE_DIR", "APEX_CLICKHOUSE_DSN", "APEX_CONSUMER", "APEX_REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server on a free loopback port in ``directory``; no persistence (bench only)."""

    def __init__(self, directory: Path, binary: str = REDIS_SERVER):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--logfile", str(directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}; see {directory / 'redis.log'}")
            try:
                if self.client().ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def _cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of one process so far (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


_TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc/PID/task/TID/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        mod = argv[argv.index(b"-m") + 1].decode() if b"-m" in argv else Path(argv[0].decode()).name
        return mod
    except (OSError, ValueError, IndexError):
        return str(pid)


@dataclass
class Usage:
    """What one child cost: wall, CPU (user+sys, its waited-for children included), peak RSS."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_kb: int = 0  # sum over the tree's processes of each one's VmHWM
    peak_rss_by_process: dict[str, int] = field(default_factory=dict)
    cpu_s_by_process: dict[str, float] = field(default_factory=dict)  # last sample before exit (≤ 50 ms short)
    rss_samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (t, name -> VmRSS kB)
    returncode: int | None = None

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kb / 1024


class Child:
    """A measured child process. ``args`` after the interpreter: ``Child(["-m", "bench.floor", ...])``."""

    running: set["Child"] = set()  # for ``stop_all`` when a scenario fails half-way

    def __init__(self, args: list[str], log: Path, *, sample_every_s: float = 1.0, env: dict[str, str] | None = None):
        """``env``: settings added to the child's environment (a venue's address)."""
        env = {k: v for k, v in os.environ.items() if k not in SCRUB} | {"APEX_ENV": "paper"} | (env or {})
        self.log = log
        self._fh = log.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, *args], stdout=self._fh, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=env)
        self.pid = self.proc.pid
        Child.running.add(self)
        self.usage = Usage()
        self._hwm: dict[int, tuple[str, int]] = {}
        self._cpu: dict[int, tuple[str, float]] = {}
        self._sample_every = sample_every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        next_sample = 0.0
        while not self._done.is_set():
            now = time.monotonic()
            rss: dict[str, int] = {}
            for p in tree(self.pid):
                st = _status(p)
                if not st:
                    continue
                name = self._hwm.get(p, (None, 0))[0] or _name(p)
                self._hwm[p] = (name, max(self._hwm.get(p, ("", 0))[1], st.get("VmHWM", 0)))
                cpu = _cpu_s(p)
                if cpu is not None:
                    self._cpu[p] = (name, cpu)
                rss[name] = rss.get(name, 0) + st.get("VmRSS", 0)
            if now >= next_sample and rss:
                self.usage.rss_samples.append((now - self.started, rss))
                next_sample = now + self._sample_every
            self._done.wait(0.05)

    def alive(self) -> bool:
        return self.usage.returncode is None and self._poll()

    def _poll(self) -> bool:
        pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, ru)
        return False

    def _reaped(self, status: int, ru) -> None:
        Child.running.discard(self)
        self._done.set()
        self._thread.join()
        u = self.usage
        u.wall_s = time.monotonic() - self.started
        u.cpu_s = ru.ru_utime + ru.ru_stime
        u.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = u.returncode  # reaped here, not by Popen
        by: dict[str, int] = {}
        for name, kb in self._hwm.values():
            by[name] = by.get(name, 0) + kb
        # not wait4's ru_maxrss: it keeps the high-water mark from before exec, i.e. the bench's own
        # RSS at the fork, so a small child of a big parent would read as big
        u.peak_rss_kb = sum(by.values())
        u.peak_rss_by_process = by
        cpu: dict[str, float] = {}
        for name, secs in self._cpu.values():
            cpu[name] = round(cpu.get(name, 0.0) + secs, 2)
        u.cpu_s_by_process = cpu
        self._fh.close()

    def wait(self, timeout_s: float) -> Usage:
        deadline = time.monotonic() + timeout_s
        while self.usage.returncode is None:
            if not self._poll():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.log.name}: still running after {timeout_s:.0f} s; log:\n{self.tail()}")
            time.sleep(0.005)
        return self.usage

    def kill(self) -> list[int]:
        """SIGKILL the child itself (not its children, as a crash would); returns the orphans."""
        orphans = [p for p in tree(self.pid) if p != self.pid]
        os.kill(self.pid, signal.SIGKILL)
        _, status, ru = os.wait4(self.pid, 0)
        self._reaped(status, ru)
        return orphans

    def term(self) -> None:
        if self.usage.returncode is None:
            os.kill(self.pid, signal.SIGTERM)

    @classmethod
    def stop_all(cls) -> None:
        """Whatever a failed scenario left running: SIGTERM, then SIGKILL after 10 s."""
        for c in list(cls.running):
            c.term()
            try:
                c.wait(10)
            except TimeoutError:
                pass  # wait() has killed it

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def check(self, what: str) -> Usage:
        if self.usage.returncode not in (0, None):
            raise RuntimeError(f"{what} exited {self.usage.returncode}; log {self.log}:\n{self.tail()}")
        return self.usage


def wait_gone(pids: list[int], timeout_s: float = 60) -> None:
    """Orphans of a killed child (they are not ours to reap): wait until they have exited."""
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{p}").exists() and _status(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_until(cond, what: str, timeout_s: float, *children: Child, every_s: float = 0.005) -> float:
    """Poll ``cond`` until true; fail early if a child died. Returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return time.monotonic()
        for c in children:
            if not c.alive():
                raise RuntimeError(f"waiting for {what}: {c.log.name} exited {c.usage.returncode}:\n{c.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waiting for {what}: not after {timeout_s:.0f} s")
        time.sleep(every_s)


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p99/p999/max and mean (nearest rank), or None when there is nothing to measure."""
    if not values:
        return None
    s = sorted(values)

    def q(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]

    return {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": s[-1], "mean": sum(s) / len(s), "n": len(s)}


def machine() -> dict:
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        rv = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.split()
        redis_version = next((w.split("=", 1)[1] for w in rv if w.startswith("v=")), "")
    except OSError:
        redis_version = ""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"nproc": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0],
            "redis_server": redis_version, "loadavg_start": list(os.getloadavg()),
            "git_commit": git("rev-parse", "--short", "HEAD").strip(),
            "git_dirty": [ln[3:] for ln in git("status", "--porcelain").splitlines()]}
