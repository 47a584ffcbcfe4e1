"""The hit lane's telemetry: many requests alike but for their id and latency, told in bulk."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from proxy.telemetry.logs import log_fields, utc_now
from proxy.telemetry.record import RequestRecord
from proxy.telemetry.tally import Tally

if TYPE_CHECKING:
    from proxy.telemetry import Telemetry

_PER_REQUEST_FIELDS = ("request_id", "latency_ms", "overhead_ms", "timestamp")


class Repeat:
    """``Telemetry.finish`` for many requests that differ only in id and latency.

    The log line's other fields are serialized once; each request adds its
    own id, latency and timestamp to those bytes. Its metrics and /stats
    counts are gathered here and added in one go at most
    ``Telemetry.FLUSH_AFTER`` later, or as soon as /metrics or /stats is
    read. The record must have no upstream time (its latency is all
    overhead), as a cache hit has none.
    """

    __slots__ = ("_telemetry", "_record", "_line_head", "_latencies")

    def __init__(self, telemetry: Telemetry, record: RequestRecord) -> None:
        self._telemetry = telemetry
        self._record = record
        fields = log_fields(record, "", 0.0)
        for name in _PER_REQUEST_FIELDS:
            del fields[name]
        self._line_head = orjson.dumps(fields)[:-1] + b","
        self._latencies: list[float] = []

    @property
    def record(self) -> RequestRecord:
        """The record every request it tells of shares (the hit lane's spans are written from it)."""
        return self._record

    def report(self, request_id: str, latency: float) -> None:
        telemetry = self._telemetry
        record = self._record
        if record.tracked:
            if not self._latencies:
                telemetry.pending(self)
            self._latencies.append(latency)
        log = telemetry.access_log
        if log.console:
            log.write(log_fields(record, request_id, latency))
            return
        ms = round(latency * 1000, 3)
        log.add(b'%b"request_id":%b,"latency_ms":%r,"overhead_ms":%r,"timestamp":"%b"}\n' % (
            self._line_head, orjson.dumps(request_id), ms, ms, utc_now().encode()
        ))

    def flush(self) -> None:
        latencies, self._latencies = self._latencies, []
        if latencies:
            self._telemetry.count(Tally.of(self._record, latencies))
