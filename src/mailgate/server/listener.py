"""Listeners: bound sockets, connection limits, and one session task per connection.

Owns: binding each configured address (IPv4 or IPv6; implicit TLS wraps the socket for `smtps`),
counting connections in all and per client address (421 4.7.0 beyond either, RFC 5321 §4.2.3),
and draining: stop accepting, let sessions finish within a limit. Must not: speak SMTP beyond
the one refusal line, or decide policy.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailgate.core.reply import TOO_MANY_CONNECTIONS, Reply

log = logging.getLogger("mailgate.listener")

# Large reads: bodies are consumed in big chunks, never line by line (issue "Benchmark").
READ_LIMIT = 256 * 1024


@dataclass
class ListenerSettings:
    name: str
    host: str
    port: int
    implicit_tls: ssl.SSLContext | None
    max_connections: int
    max_connections_per_client: int
    reuse_port: bool = False  # several worker processes accept on the same port (SO_REUSEPORT)


SessionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Listener"], Awaitable[None]]


class Listener:
    def __init__(
        self, settings: ListenerSettings, handler: SessionHandler,
        on_refused: Callable[[str, int, Reply], None] = lambda client, port, reply: None,
    ) -> None:
        self.settings = settings
        self._handler = handler
        self._on_refused = on_refused
        self._server: asyncio.base_events.Server | None = None
        self._per_client: Counter[str] = Counter()
        self._sessions: set[asyncio.Task] = set()
        self.bound_port: int = settings.port

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def open_connections(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        settings = self.settings
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self._server = await asyncio.start_server(
            self._accept,
            host=settings.host,
            port=settings.port,
            family=family,
            ssl=settings.implicit_tls,
            ssl_handshake_timeout=30 if settings.implicit_tls else None,
            limit=READ_LIMIT,
            backlog=4096,
            reuse_address=True,
            reuse_port=settings.reuse_port or None,
        )
        self.bound_port = self._server.sockets[0].getsockname()[1]
        log.info("listener %s on %s:%d", settings.name, settings.host, self.bound_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        client = str(peer[0])
        if (
            len(self._sessions) >= self.settings.max_connections
            or self._per_client[client] >= self.settings.max_connections_per_client
        ):
            self._on_refused(client, int(peer[1]), TOO_MANY_CONNECTIONS)
            writer.write(TOO_MANY_CONNECTIONS.encode())
            try:
                await writer.drain()
            finally:
                writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self._per_client[client] += 1
        try:
            await self._handler(reader, writer, self)
        finally:
            self._sessions.discard(task)
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            if not writer.is_closing():
                writer.close()

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, grace: float) -> None:
        """Let sessions in progress finish for up to `grace` seconds, then cut them."""
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=grace)
        for task in list(self._sessions):
            task.cancel()
