"""Listeners: bound sockets, connection limits, and one session task per connection.

Owns: binding each configured address (IPv4 or IPv6) before privileges are dropped, implicit TLS
for `smtps`, the PROXY protocol header from configured load balancers (the client address it
carries replaces the peer's for limits, policy and logs), counting connections in all and per
client address, an IPv6 one by its /64 (421 4.7.0 beyond either, RFC 5321 §4.2.3), counted as
they are accepted (acceptor.py), an implicit-TLS one before its handshake, which must end within
`handshake_timeout` (a refused implicit-TLS connection is closed: nothing can be said before
TLS; issue 21 item 4), pausing and
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
from mailgate.server.acceptor import Acceptor
from mailgate.server.connection_counts import LocalCounts, SharedCounts
from mailgate.server.drain import Drain
from mailgate.server.listen_sockets import BACKLOG, bind_address
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
        self._acceptor: Acceptor | None = None
        # Shared by all workers when the supervisor made them (connection_counts.py).
        self._counts = counts or LocalCounts(settings.max_connections, settings.max_connections_per_client)
        self._sessions: set[asyncio.Task] = set()
        self.drain_signal = Drain()  # handed to each session (the handler passes it on)
        self.bound_port: int = sock.getsockname()[1] if sock is not None else settings.port
        self.paused = False
        self._held_for: frozenset[str] | None = None  # while held: the audit's source addresses

    @property
    def listening(self) -> bool:
        return self._acceptor is not None and self._acceptor.accepting

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
        self._acceptor = Acceptor(self.settings.name, self._socket, self._accepted)
        self._acceptor.start(BACKLOG)
        log.info("listener %s on %s:%d", self.settings.name, self.settings.host, self.bound_port)

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

    def _accepted(self, conn: socket.socket, peer: tuple) -> None:
        """Each accepted socket, before anything is read from it (acceptor.py): refused at once,
        or counted and handed to a task. A connection with PROXY is counted once its header
        names the client; any other, implicit TLS included, is counted before its handshake."""
        client, port = str(peer[0]), int(peer[1])
        settings = self.settings
        if self.paused:
            self._refuse_at_once(conn, client, port, "disk", SPOOL_FULL)
            return
        held_for = self._held_for
        if held_for is not None and (settings.proxy_from is not None or client not in held_for):
            self._refuse_at_once(conn, client, port, "starting", NOT_READY)
            return
        key = None
        if settings.proxy_from is not None:
            if not proxy_peer_allowed(client, settings.proxy_from):
                log.warning("listener %s: PROXY header from %s, not a configured load balancer", settings.name, client)
                self._on_refused(client, port, "proxy", None)  # dropped without a reply
                conn.close()
                return
        else:
            # An IPv6 client is counted by its /64 (one host usually holds the whole prefix).
            key = client_key(client)
            if not self._counts.try_add(key):
                self._refuse_at_once(conn, client, port, "limit", TOO_MANY_CONNECTIONS)
                return
        task = asyncio.get_running_loop().create_task(self._connection(conn, client, port, key))
        self._sessions.add(task)

    def _refuse_at_once(self, conn: socket.socket, client: str, port: int, reason: str, reply: Reply) -> None:
        """The refusal line into the empty socket buffer (it never blocks), then close; on an
        implicit-TLS listener nothing can be said before a handshake, so it is closed at once."""
        spoken = self.settings.implicit_tls is None
        self._on_refused(client, port, reason, reply if spoken else None)
        if spoken:
            try:
                conn.send(reply.encode())
            except OSError:
                pass
        conn.close()

    async def _connection(self, conn: socket.socket, client: str, port: int, key: str | None) -> None:
        """One connection: the PROXY header where configured (read from the socket itself, never
        past it), then the streams (the TLS handshake of implicit TLS within
        `handshake_timeout`), then the session. `key`: the counted client key, None until a
        PROXY header names the client."""
        task = asyncio.current_task()
        assert task is not None
        writer = None
        handed_over = False  # the socket belongs to a transport, which closes it
        try:
            self.drain_signal.quiet(task)  # no session yet: a stop closes it at once
            try:
                if key is None:
                    proxied = await self._proxy_client(conn, client)
                    if proxied is None:
                        self._on_refused(client, port, "proxy", None)  # dropped without a reply
                        return
                    client = proxied
                    if not self._counts.try_add(client_key(client)):
                        handed_over = True  # closed by the refusal
                        self._refuse_at_once(conn, client, port, "limit", TOO_MANY_CONNECTIONS)
                        return
                    key = client_key(client)
                handed_over = True
                reader, writer = await self._streams(conn, self.settings.implicit_tls)
            except OSError as exc:  # handshake failed or timed out (ssl.SSLError is an OSError)
                log.debug("listener %s: connection from %s ended before the session: %s", self.settings.name, client, exc)
                return
            finally:
                self.drain_signal.busy(task)
            await self._handler(reader, writer, self, client)
        except asyncio.CancelledError:
            # drain() cut the connection (a session says 421 4.3.2 first). The task ends
            # normally: nothing else waits for it, and a cancelled one only makes noise.
            pass
        finally:
            self._sessions.discard(task)
            if key is not None:
                self._counts.remove(key)
            if not handed_over:
                conn.close()
            if writer is not None and not writer.is_closing():
                writer.close()

    async def _streams(self, conn: socket.socket, tls: ssl.SSLContext | None):
        """Reader and writer on the accepted socket; with `tls`, once the handshake is done."""
        loop = asyncio.get_running_loop()
        made: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
        reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
        # A connected callback marks the protocol server-side (StreamWriter.start_tls for STARTTLS).
        protocol = asyncio.StreamReaderProtocol(reader, lambda _reader, writer: made.set_result(writer), loop=loop)
        await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=tls, ssl_handshake_timeout=self.settings.handshake_timeout if tls else None,
        )
        return reader, await made

    async def _proxy_client(self, conn: socket.socket, peer: str) -> str | None:
        """The client address a PROXY header carries (v1 or v2), or None to drop the connection.
        Read with `sock_recv`, never past the header: with implicit TLS the ClientHello that
        follows stays in the socket for the TLS protocol (a stream reader would swallow it)."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        try:
            header = await read_proxy_header(lambda size: loop.sock_recv(conn, size), settings.proxy_timeout)
        except (ProxyProtocolError, TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            log.info("listener %s: bad PROXY header from %s: %s", settings.name, peer, exc)
            return None
        return str(header.source[0]) if header.source else peer

    async def stop_accepting(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
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
