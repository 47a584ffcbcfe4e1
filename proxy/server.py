"""Running the app under uvicorn: one process, or several workers.

SIGTERM stops accepting connections, lets in-flight requests (streams
included) finish for up to ``server.drain_seconds``, and exits 0. uvicorn on
its own re-raises the signal after draining, which exits with 143.
"""

from __future__ import annotations

import os
import signal
import tempfile
from types import FrameType

import uvicorn

from proxy.app import create_app
from proxy.config import Config
from proxy.protocol import SluiceProtocol, lane_enabled


class _DrainingServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def _uvicorn_options(config: Config) -> dict:
    return dict(
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        http=SluiceProtocol if lane_enabled(config) else "httptools",  # the lane's protocol only when it is on
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=config.server.drain_seconds,
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,  # Sluice reads neither the client's address nor the scheme: skip the rewrite per request
    )


def serve(config: Config, config_path: str, workers: int = 1, log_format: str = "json") -> None:
    if workers <= 1:
        app = create_app(config, log_format)
        server = _DrainingServer(uvicorn.Config(app, lifespan="on", **_uvicorn_options(config)))
        server.run()
        return
    # Each worker process builds its own app from the same file; metrics are
    # aggregated across them through prometheus-client's multiprocess mode.
    os.environ["SLUICE_CONFIG"] = os.path.abspath(config_path)
    os.environ["SLUICE_LOG_FORMAT"] = log_format
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sluice-metrics-"))
    uvicorn.run(
        "proxy.app:app_from_environment",
        factory=True,
        workers=workers,
        lifespan="on",
        **_uvicorn_options(config),
    )
