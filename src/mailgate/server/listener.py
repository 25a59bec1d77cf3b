"""Listeners: bound sockets, connection limits, and one session task per connection.

Owns: binding each configured address (IPv4 or IPv6) before privileges are dropped, implicit TLS
for `smtps`, the PROXY protocol header from configured load balancers (the client address it
carries replaces the peer's for limits, policy and logs), counting connections in all and per
client address, an IPv6 one by its /64 (421 4.7.0 beyond either, RFC 5321 §4.2.3), pausing and
resuming under disk back-pressure, holding outside clients (421 4.3.2) while the start-up
self-audit runs, and draining: stop accepting, cut sessions between transactions at once and
the others after a grace time (server/drain.py; each session says 421 4.3.2).
Must not: speak SMTP beyond the one refusal line, or decide policy.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailgate.auth.lockout import client_key
from mailgate.core.reply import TOO_MANY_CONNECTIONS, Reply
from mailgate.server.connection_counts import LocalCounts, SharedCounts
from mailgate.server.drain import Drain
from mailgate.server.listen_sockets import bind_address
from mailgate.server.proxy_protocol import ProxyProtocolError, proxy_peer_allowed, read_proxy_header

log = logging.getLogger("mailgate.listener")

# RFC 3463 §3.4 4.3.1 "Mail system full": hard disk back-pressure, try again later.
SPOOL_FULL = Reply(421, "4.3.1", "Insufficient system storage, try again later")

# RFC 3463 §3.5 4.3.2 "System not accepting network messages": the start-up self-audit has not
# said CLOSED yet (issue 13 item 9); RFC 5321 §3.1 allows 421 as the greeting.
NOT_READY = Reply(421, "4.3.2", "Service not ready yet, try again later")

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
    proxy_from: tuple | None = None  # load balancer networks when the PROXY protocol is on
    proxy_timeout: float = 10.0
    handshake_timeout: float = 20.0  # implicit TLS: time allowed for the whole handshake


SessionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Listener", str], Awaitable[None]]


class Listener:
    def __init__(
        self, settings: ListenerSettings, handler: SessionHandler,
        on_refused: Callable[[str, int, str, Reply | None], None] = lambda client, port, reason, reply: None,
        sock: socket.socket | None = None,
        counts: LocalCounts | SharedCounts | None = None,
    ) -> None:
        self.settings = settings
        self._handler = handler
        self._on_refused = on_refused
        # Bound by the supervisor (listen_sockets.py) when it runs us; else bound by bind().
        self._socket: socket.socket | None = sock
        self._server: asyncio.base_events.Server | None = None
        # Shared by all workers when the supervisor made them (connection_counts.py).
        self._counts = counts or LocalCounts(settings.max_connections, settings.max_connections_per_client)
        self._sessions: set[asyncio.Task] = set()
        self.drain_signal = Drain()  # handed to each session (the handler passes it on)
        self.bound_port: int = sock.getsockname()[1] if sock is not None else settings.port
        self.paused = False
        self._held_for: frozenset[str] | None = None  # while held: the audit's source addresses

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def bind(self) -> None:
        """Bind the port (before privileges are dropped); serving starts with `start()`."""
        if self._socket is not None:
            return
        settings = self.settings
        self._socket = bind_address(f"listener {settings.name}", settings.host, settings.port)
        self.bound_port = self._socket.getsockname()[1]

    async def start(self) -> None:
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        settings = self.settings
        # With PROXY the header comes before any TLS: the handshake starts after it (_accept).
        # A handshake that stalls is cut after `handshake_timeout` (asyncio's default is 60 s).
        # It is not counted against the limits until it completes: doing the handshake in
        # _accept (StreamWriter.start_tls) loses a ClientHello that arrived first under uvloop.
        tls = settings.implicit_tls if settings.proxy_from is None else None
        self._server = await asyncio.start_server(
            self._accept,
            sock=self._socket.dup(),  # a copy: pause() closes the server, never our bound socket
            ssl=tls,
            ssl_handshake_timeout=settings.handshake_timeout if tls else None,
            limit=READ_LIMIT,
            backlog=4096,
        )
        log.info("listener %s on %s:%d", settings.name, settings.host, self.bound_port)

    async def pause(self) -> None:
        """Hard disk back-pressure: new connections get 421 4.3.1 and are closed at once (the
        socket stays bound: after dropping privileges port 25 could not be bound again)."""
        if not self.paused:
            self.paused = True
            log.warning("listener %s paused: disk back-pressure", self.settings.name)

    def hold(self, audit_sources: frozenset[str]) -> None:
        """Until `release()`: only the self-audit's own connections (from `audit_sources`, on a
        listener without PROXY) are served; every other client gets 421 4.3.2 and is closed."""
        self._held_for = audit_sources

    def release(self) -> None:
        self._held_for = None

    async def resume(self) -> None:
        if self.paused:
            self.paused = False
            log.warning("listener %s resumed", self.settings.name)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        client = str(peer[0])
        if self.paused:
            await self._refuse(writer, client, int(peer[1]), "disk", SPOOL_FULL)
            return
        held_for = self._held_for
        if held_for is not None and (self.settings.proxy_from is not None or client not in held_for):
            await self._refuse(writer, client, int(peer[1]), "starting", NOT_READY)
            return
        if self.settings.proxy_from is not None:
            proxied = await self._proxy_client(reader, writer, client)
            if proxied is None:
                self._on_refused(client, int(peer[1]), "proxy", None)  # dropped without a reply
                writer.close()
                return
            client = proxied
        # An IPv6 client is counted by its /64 (one host usually holds the whole prefix).
        key = client_key(client)
        if not self._counts.try_add(key):
            await self._refuse(writer, client, int(peer[1]), "limit", TOO_MANY_CONNECTIONS)
            return
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._handler(reader, writer, self, client)
        except asyncio.CancelledError:
            # drain() cut the session (it said 421 4.3.2). The connection task ends normally:
            # Python 3.11's start_server callback logs a traceback for a cancelled one.
            pass
        finally:
            self._sessions.discard(task)
            self._counts.remove(key)
            if not writer.is_closing():
                writer.close()

    async def _refuse(self, writer, client: str, port: int, reason: str, reply: Reply) -> None:
        self._on_refused(client, port, reason, reply)
        writer.write(reply.encode())
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _proxy_client(self, reader, writer, peer: str) -> str | None:
        """The client address a PROXY header carries (v1 or v2), or None to drop the connection."""
        settings = self.settings
        if not proxy_peer_allowed(peer, settings.proxy_from or ()):
            log.warning("listener %s: PROXY header from %s, not a configured load balancer", settings.name, peer)
            return None
        try:
            header = await read_proxy_header(reader, settings.proxy_timeout)
            if settings.implicit_tls is not None:
                await writer.start_tls(settings.implicit_tls, ssl_handshake_timeout=settings.handshake_timeout)
        except (ProxyProtocolError, TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            log.info("listener %s: bad PROXY header from %s: %s", settings.name, peer, exc)
            return None
        return str(header.source[0]) if header.source else peer

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._socket is not None:
            self._socket.close()  # nothing may queue in the kernel's backlog any more

    async def drain(self, grace: float) -> None:
        """Cut sessions between transactions at once; let transactions in progress finish for
        up to `grace` seconds, then cut them too (each session says 421 4.3.2, drain.py)."""
        self.drain_signal.stop()
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=grace)
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:  # let the cut sessions say 421 and close before the loop ends
            await asyncio.wait(set(self._sessions), timeout=1.0)
