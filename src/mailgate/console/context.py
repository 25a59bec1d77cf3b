"""What every console page shares: the server's parts it reads and acts on, and HTML rendering.

Owns: `ConsoleServices` (the
running server's store, queue administration, users, transaction log, disk guard, clock and
current configuration, handed over by app.py), and `Console`: those plus the sessions and the
Jinja2 environment (autoescaping on: every value from the queue or the log is hostile text).
Must not: define routes (the page modules do) or build any service itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jinja2
from aiohttp import web

from mailgate.auth.store import FileUserStore
from mailgate.config.loader import Config
from mailgate.console.sessions import Session, Sessions
from mailgate.console.settings import ConsoleSettings
from mailgate.core.clock import Clock
from mailgate.delivery.admin import QueueAdmin
from mailgate.observe.translog import TransactionLog
from mailgate.queue.store import MessageState, QueueStore
from mailgate.server.diskguard import DiskGuard

SESSION_KEY = web.RequestKey("console.session", Session)
# Counting messages by state reads every row: about half a second at 100,000 queued messages
# (measured, SQLite). A count is kept DEPTH_REUSE times as long as it took, so refreshing pages
# spend at most about 1/DEPTH_REUSE of the store's reading time on it, and a small queue is exact.
DEPTH_REUSE = 20


@dataclass
class ConsoleServices:
    config: Callable[[], Config]
    store: QueueStore
    admin: QueueAdmin
    users: FileUserStore
    log: TransactionLog
    clock: Clock
    disk: DiskGuard | None = None


def utc(when: float | None) -> str:
    if not when:
        return "-"
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float) -> str:
    """`3d 4h`, `2h 5m`, `7m 12s` or `40s`: two units are enough to read a queue."""
    value = max(0, int(seconds))
    if value >= 86400:
        return f"{value // 86400}d {value % 86400 // 3600}h"
    if value >= 3600:
        return f"{value // 3600}h {value % 3600 // 60}m"
    if value >= 60:
        return f"{value // 60}m {value % 60}s"
    return f"{value}s"


class Console:
    def __init__(self, settings: ConsoleSettings, services: ConsoleServices) -> None:
        self.settings = settings
        self.services = services
        self.sessions = Sessions(services.clock, settings.session_lifetime)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("mailgate.console", "templates"),
            autoescape=True, trim_blocks=True, lstrip_blocks=True,
        )
        self.templates.filters["utc"] = utc
        self.templates.filters["age"] = age
        self._depth: dict[MessageState, int] | None = None
        self._depth_until = 0.0

    async def queue_depth(self) -> dict[MessageState, int]:
        """Messages by state, reused for DEPTH_REUSE times what counting took (an action forgets it)."""
        started = time.monotonic()
        if self._depth is None or started >= self._depth_until:
            self._depth = await self.services.store.count_by_state()
            finished = time.monotonic()
            self._depth_until = finished + DEPTH_REUSE * (finished - started)
        return self._depth

    def forget_queue_depth(self) -> None:
        self._depth = None

    @property
    def https(self) -> bool:
        return self.settings.tls_context is not None

    def render(self, request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
        session: Session | None = request.get(SESSION_KEY)
        page = self.templates.get_template(template).render(
            session=session, csrf=session.csrf if session else "", path=request.path,
            hostname=self.services.config().server.hostname, **values,
        )
        return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")

    def fragment(self, template: str, **values: Any) -> str:
        return self.templates.get_template(template).render(**values)
