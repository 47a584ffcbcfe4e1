"""A real forward proxy for the tests: Debian's ``tinyproxy`` on a loopback port.

``requests()`` reads its log: one line per request it handled, ``CONNECT
host:port`` for a tunnel, ``GET http://…`` for plain HTTP in absolute form.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.server import free_port

TINYPROXY = shutil.which("tinyproxy")


class Tinyproxy:
    def __init__(self, workdir: Path, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials  # when set, clients must send them (Proxy-Authorization: Basic)
        self.port = free_port()
        self.log = workdir / "tinyproxy.log"
        self.config = workdir / "tinyproxy.conf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        assert TINYPROXY is not None, "tinyproxy is not installed (tests/install-system-deps.sh)"
        # No ConnectPort line: CONNECT to any port (the fakes listen on random ones).
        self.config.write_text(
            f'Port {self.port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nLogLevel Info\nLogFile "{self.log}"\n'
            "DisableViaHeader No\n" + (f"BasicAuth {self.credentials[0]} {self.credentials[1]}\n" if self.credentials else "")
        )
        self.log.touch()
        self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("tinyproxy did not start")

    def requests(self) -> list[str]:
        """The request lines it handled so far, e.g. ``CONNECT 127.0.0.1:8443 HTTP/1.1``."""
        return re.findall(r"Request \(file descriptor \d+\): (.+)", self.log.read_text(errors="replace"))

    def clear(self) -> None:
        self.log.write_text("")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)


@pytest.fixture(scope="module")
def tinyproxy_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    proxy = Tinyproxy(tmp_path_factory.mktemp("tinyproxy-auth"), credentials=("sluice", "s3cret")).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    proxy = Tinyproxy(tmp_path_factory.mktemp("tinyproxy")).start()
    yield proxy
    proxy.stop()
