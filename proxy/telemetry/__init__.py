"""What Sluice tells operators: one log line per request, Prometheus metrics, /stats and its history.

The pipeline fills a ``RequestRecord`` (``record.py``) as the request moves
along; the request middleware hands it to ``Telemetry.finish`` once the last
byte has gone out, and that single call writes the log line (``logs.py``) and
adds the request to its kind's ``Tally`` (``tally.py``), which feeds the
metrics (``metrics.py``) and /stats (``stats.py``, with ``history.py``) at
once, so they always agree. ``repeat.py`` does the same in bulk for the hit lane.
"""

from __future__ import annotations

import asyncio
import time

from proxy.config import Config
from proxy.telemetry.logs import AccessLog, log_fields
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import RequestRecord
from proxy.telemetry.repeat import Repeat
from proxy.telemetry.stats import Stats
from proxy.telemetry.tally import Kind, Tally, kind_of


class Telemetry:
    FLUSH_AFTER = 0.5
    """How stale the metrics and /stats may be between reads (requests wait in tallies until then)."""
    MAX_TALLIES = 1000
    """Kinds of request waiting at most: past this many, they are counted at once (models and keys are clients' strings)."""

    def __init__(self, log_format: str = "json", config: Config | None = None) -> None:
        """With ``config``, its providers are in /stats from the start and its aliases keep their own metric labels."""
        providers = [p.name for p in config.providers] if config else []
        models = [alias.name for alias in config.models] + [t.label for t in config.alias_targets()] if config else []
        self.metrics = Metrics(models)
        self.stats = Stats(providers)
        self.access_log = AccessLog(log_format)
        self._tallies: dict[Kind, Tally] = {}
        self._dirty: list[Repeat] = []
        self._flush_pending = False

    def finish(self, record: RequestRecord) -> None:
        """The request's last byte is out: its log line, and its kind's tally for the metrics and /stats."""
        latency = time.perf_counter() - record.started
        if record.tracked:
            kind = kind_of(record)
            tally = self._tallies.get(kind)
            if tally is None:
                if len(self._tallies) >= self.MAX_TALLIES:
                    self.flush()
                tally = self._tallies[kind] = Tally(record)
                self._schedule_flush()
            tally.add(record, latency)
        self.access_log.write(log_fields(record, record.request_id, latency))

    def repeat(self, record: RequestRecord) -> Repeat:
        """``finish`` prepared once for requests alike but for their id and latency (``proxy.hit_lane``)."""
        return Repeat(self, record)

    def count(self, tally: Tally) -> None:
        """Add ``tally``'s requests to /stats (and its history) and to the metrics."""
        self.stats.add(tally)
        self.metrics.observe(tally)

    def flush(self) -> None:
        """Bring the metrics and /stats up to date with every tally and ``Repeat``; write pending log lines."""
        self._flush_pending = False
        tallies, self._tallies = self._tallies, {}
        for tally in tallies.values():
            self.count(tally)
        repeats, self._dirty = self._dirty, []
        for repeat in repeats:
            repeat.flush()
        self.access_log.flush()

    def pending(self, repeat: Repeat) -> None:
        """``repeat`` has counts to add: flush them within ``FLUSH_AFTER``."""
        self._dirty.append(repeat)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a script's own Telemetry): counted when read
                return
            self._flush_pending = True
            loop.call_later(self.FLUSH_AFTER, self.flush)
