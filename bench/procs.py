"""Child processes for the benchmarks: pinned to a core, never left behind.

Each process runs in its own session (so its whole process group can be
signalled, whatever it forks), logs to a file under bench/out/ (a pipe
nobody reads would fill up and stall it), and is a context manager whose exit
always stops it: SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"


class StartError(Exception):
    """A process exited or did not become ready; the message says why and shows its log."""


class Process:
    """One pinned child process, ready once `ready()` returns True."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        core: int,
        ready: Callable[[], bool],
        timeout: float = 15.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = ["taskset", "-c", str(core), *argv]
        self.ready = ready
        self.timeout = timeout
        self.env = {**os.environ, **env} if env else None  # added to the environment this process inherits
        self.log_path = OUT / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The program's own pid: taskset execs it, so no wrapper sits in between."""
        assert self.popen is not None
        return self.popen.pid

    def __enter__(self) -> Process:
        OUT.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.ready():
            if self.popen.poll() is not None:
                raise StartError(
                    f"{self.name} exited with status {self.popen.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} was not ready within {self.timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def log_tail(self, lines: int = 12) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join("    " + line for line in text[-lines:]) or "    (no output)"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, and not handed out before by this process."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise StartError("no free loopback port found")


def tcp_open(port: int) -> Callable[[], bool]:
    """Readiness by accepted connection, for servers that bind only once started."""

    def check() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    return check


def http_ok(url: str) -> Callable[[], bool]:
    """Readiness by a 200 answer to GET `url`."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except (OSError, http.client.HTTPException):
            return False

    return check
