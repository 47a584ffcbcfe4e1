"""A real ``redis-server`` for the tests: loopback port, no persistence, a password, stop and restart.

Import the fixture into a test module with
``from tests.redis_server import redis_server  # noqa: F401``.
The server always requires a password, as a production one would, so tests
can check that the password never reaches a log line.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.fakes.server import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """One ``redis-server`` process; ``stop()`` then ``start()`` brings it back empty on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.password = "redis-test-" + secrets.token_hex(8)
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain synchronous client, for tests to look at or plant keys directly."""
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def start(self, timeout: float = 5.0) -> RedisServer:
        assert REDIS_SERVER is not None
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--requirepass", self.password,
            "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with redis.Redis(port=self.port, password=self.password, socket_timeout=0.2) as probe:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self._log()}")
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"redis-server not ready in {timeout}s:\n{self._log()}")

    def stop(self) -> None:
        """Kill it, as a crash would: the data is gone (nothing is persisted)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def pause(self) -> None:
        """Freeze it: connections are still accepted by the kernel but nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def _log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh, empty Redis per test; skipped only when ``redis-server`` is not installed."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (`make test` installs it via tests/install-system-deps.sh)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
