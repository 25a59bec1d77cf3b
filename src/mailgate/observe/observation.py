"""Everything a running server observes itself with, as one object app.py starts and stops.

Owns: the metrics, the transaction log and the delivery observer, the /metrics and health
endpoint, the background loops that sample (the gauges, and any watcher the caller adds, such as
the scanners' health probe), the record of a spool disk state change, and keeping the
self-audit's own connections out of the logs while it runs (one summary line per listener).
Must not: decide anything (readiness is asked through the callable it is given), build the
components it observes, or translate configuration (app_config.build_observation does).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mailgate.core.clock import Clock
from mailgate.observe import diagnostics
from mailgate.observe.delivery_log import DeliveryObserver
from mailgate.observe.gauges import update_gauges
from mailgate.observe.http import ObserveServer
from mailgate.observe.metrics import Metrics
from mailgate.observe.translog import open_transaction_log
from mailgate.observe.writer import DEFAULT_MAX_PENDING

log = logging.getLogger("mailgate")


@dataclass(frozen=True)
class ObservationSettings:
    hostname: str
    w3c_dir: str = ""  # empty: no W3C log
    json_file: str = ""  # empty: no JSON log
    retention_days: int = 30
    max_pending: int = DEFAULT_MAX_PENDING  # records the log writer holds before it drops
    endpoint: tuple[str, int] | None = None  # /metrics, /healthz, /readyz; None: not served
    node: str = ""  # the cluster node name the metrics carry


class Observation:
    def __init__(self, settings: ObservationSettings, clock: Clock, readiness: Callable[[], list[str]],
                 endpoint_socket: socket.socket | None = None) -> None:
        """Opens the transaction log (its writer thread starts); `endpoint_socket`: bound by the
        supervisor, or None to bind here."""
        self.clock = clock
        self.metrics = Metrics(settings.node)
        self.log = open_transaction_log(
            clock, settings.hostname, w3c_dir=settings.w3c_dir, json_file=settings.json_file,
            retention_days=settings.retention_days, metrics=self.metrics, max_pending=settings.max_pending,
        )
        self.deliveries = DeliveryObserver(self.log, clock)
        self.endpoint = None
        if settings.endpoint is not None:
            host, port = settings.endpoint
            self.endpoint = ObserveServer(host, port, self.metrics, readiness, sock=endpoint_socket)
        self._tasks: list[asyncio.Task] = []

    async def start(self, store: Any, spool_dir: str, *watchers: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Serve the endpoint, then sample the gauges of `store` and `spool_dir` and run each
        watcher (a function making the loop) until stop()."""
        if self.endpoint is not None:
            await self.endpoint.start()
        self._tasks.append(asyncio.create_task(update_gauges(store, self.metrics, spool_dir, self.clock)))
        for watcher in watchers:
            self._tasks.append(asyncio.create_task(watcher()))

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def close(self) -> None:
        """Last of all: the transaction log writes what it still holds."""
        self.log.close()

    def disk_state_changed(self, old: Any, new: Any, sample: Any) -> None:
        """`old`, `new`: server.diskguard.DiskState; `sample`: its free bytes and inodes."""
        log.warning("spool disk %s -> %s (%s bytes, %s inodes free)", old.label, new.label,
                    sample.free_bytes, sample.free_inodes)
        if self.log.writer is not None:
            self.log.writer.on_disk_state(new.label)

    @contextmanager
    def auditing(self, sources: frozenset[str]) -> Iterator[None]:
        """While the self-audit runs from `sources`, its connections are left out of both logs;
        it reports through audit_summary() instead."""
        self.log.audit_from(sources)
        end_quiet = diagnostics.quiet_clients(sources)
        try:
            yield
        finally:
            self.log.audit_from(frozenset())
            end_quiet()

    def audit_summary(self, summary: Any) -> None:
        """One line per listener audited (`summary`: tools/audit.AuditSummary)."""
        self.log.self_audit(summary.listener, summary.verdict, summary.forms, summary.source, summary.detail)
