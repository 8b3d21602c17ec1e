

# --- Redis fixtures (issue 3: the live transport tests) -----------------------------------------
# Each test gets its own redis-server on a free loopback port in its own tmp dir, never the
# machine's 6379, so the tests can kill, restart and flush it without touching anyone else.
import shutil as _redis_shutil
import signal as _redis_signal
import socket as _redis_socket
import subprocess as _redis_subprocess
import time as _redis_time

import pytest as _redis_pytest

REDIS_SERVER_BIN = _redis_shutil.which("redis-server") or "/usr/bin/redis-server"


def _redis_free_port() -> int:
    with _redis_socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server. ``appendonly=True`` (fsync on every write) makes
    a kill and a restart on the same port and dir lose nothing, as in production."""

    def __init__(self, directory, *, appendonly: bool = False):
        self.dir, self.appendonly = directory, appendonly
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _redis_free_port()
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.proc = _redis_subprocess.Popen(args, stdout=_redis_subprocess.DEVNULL,
                                            stderr=_redis_subprocess.DEVNULL)
        deadline = _redis_time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}; see {self.dir / 'redis.log'}")
            try:
                if self.client().ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet (refused, or still loading its AOF)
                if _redis_time.monotonic() > deadline:
                    raise
            _redis_time.sleep(0.01)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=1)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (with appendfsync always nothing acknowledged is lost)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(_redis_signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except _redis_subprocess.TimeoutExpired:
                self.kill()


@_redis_pytest.fixture
def redis_server_factory(tmp_path):
    """Make one or more private servers: ``redis_server_factory(appendonly=True)``."""
    if not _redis_shutil.which(REDIS_SERVER_BIN):
        _redis_pytest.fail("redis-server not found: install Debian's redis-server (make redis)")
    servers = []

    def make(*, appendonly: bool = False) -> RedisServer:
        servers.append(RedisServer(tmp_path / f"redis-{len(servers)}", appendonly=appendonly))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


@_redis_pytest.fixture
def redis_server(redis_server_factory) -> RedisServer:
    return redis_server_factory()
