"""One outbound SMTP connection driven by asyncio, and the pool of idle ones kept for reuse.

Owns: the socket side of `smtp.client.ClientProtocol` (writing commands, reading replies with a
time-out, upgrading to TLS in place), closing politely (QUIT) or abruptly, and the idle pool keyed
by (address, port, policy) with its idle time-out. Must not: decide what to send in a transaction,
which candidate to try or what an outcome is (delivery/transport.py does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Hashable

from mailgate.core.read_deadline import ReadDeadline
from mailgate.smtp.client import (
    ClientProtocol,
    ClientUsageError,
    Ending,
    Extensions,
    PeerProtocolError,
    ReplyEvent,
    State,
    Verb,
)

READ_SIZE = 65536
# Waiting for the 221 to QUIT is a courtesy; a peer that does not answer is not waited for long.
QUIT_TIMEOUT = 5.0


class SmtpConnection:
    """A connected socket, its protocol state and what the server announced."""

    def __init__(self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.host = host
        self._reader = reader
        self._writer = writer
        self.protocol = ClientProtocol()
        self.extensions = Extensions()
        self.tls: str | None = None
        self.replies_received = 0
        self._events: deque[ReplyEvent] = deque()
        self._outgoing = bytearray()  # written in one piece by flush(): one send per round trip
        self._deadline = ReadDeadline()  # one timer for the connection's life, not one per reply

    def queue_command(self, verb: Verb, line: str, *, utf8: bool = False) -> None:
        """Buffer a command; several can go out in one write when the server pipelines."""
        self._outgoing += self.protocol.send(verb, line, utf8=utf8)

    def queue_bytes(self, data: bytes) -> None:
        self._outgoing += data

    async def flush(self, timeout: float) -> None:
        if self._outgoing:
            self._writer.write(bytes(self._outgoing))
            self._outgoing.clear()
        transport = self._writer.transport
        if transport.get_write_buffer_size() == 0 and not transport.is_closing():
            return  # all in the kernel already: wait_for would cost a task and a loop turn
        await asyncio.wait_for(self._writer.drain(), timeout)

    async def command(self, verb: Verb, line: str, timeout: float, *, utf8: bool = False) -> ReplyEvent:
        """Send one command and wait for its reply (no other command outstanding)."""
        self.queue_command(verb, line, utf8=utf8)
        await self.flush(timeout)
        return await self.next_reply(timeout)

    async def next_reply(self, timeout: float) -> ReplyEvent:
        """The reply to the oldest outstanding command, within `timeout` seconds however many
        reads it takes; EOF raises IncompleteReadError."""
        if not self._events:  # else already read with an earlier reply (pipelining)
            started = self._deadline.now()
            while not self._events:
                data = await self._deadline.read(self._reader, READ_SIZE, timeout, started)
                if not data:
                    raise asyncio.IncompleteReadError(b"", None)
                self._events.extend(self.protocol.receive(data))
        self.replies_received += 1
        return self._events.popleft()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None, timeout: float) -> None:
        """Wrap the socket after a 220 to STARTTLS; the protocol goes back to "need EHLO"."""
        await self._writer.start_tls(context, server_hostname=server_hostname, ssl_handshake_timeout=timeout)
        self.protocol.tls_established()
        ssl_object = self._writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            self.tls = f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()

    @property
    def usable(self) -> bool:
        """Ready for MAIL as the protocol state machine sees it (the only judge of that), and not
        closed by the peer as far as we can tell."""
        return (
            self.protocol.ending is Ending.REUSE
            and not self._events
            and not self._reader.at_eof()
            and not self._writer.is_closing()
        )

    def abort(self) -> None:
        self._deadline.close()
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()

    async def quit(self) -> None:
        """QUIT and close (RFC 5321 §4.1.1.10); any failure just closes."""
        try:
            if self.protocol.state in (State.READY, State.NEED_HELLO):
                await self.command(Verb.QUIT, "QUIT", QUIT_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, PeerProtocolError, ClientUsageError):
            pass  # closing anyway: nothing the peer says now changes an outcome
        finally:
            self.abort()


class ConnectionPool:
    """Idle connections by key; each is QUIT once unused for `idle_timeout` seconds (up to an
    eighth more). One timer serves the whole pool and is moved only when it fires: a timer made
    at every put and cancelled at every take cost more than the reuse saved, at hundreds of
    messages a second."""

    def __init__(self, idle_timeout: float, max_idle_per_key: int) -> None:
        self._idle_timeout = idle_timeout
        self._max_idle_per_key = max_idle_per_key
        # Per key, (connection, loop time it went idle), oldest first: take() uses the newest.
        self._idle: dict[Hashable, list[tuple[SmtpConnection, float]]] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: Hashable) -> SmtpConnection | None:
        """The most recently used idle connection for `key` that still looks alive."""
        entries = self._idle.get(key, [])
        while entries:
            connection, _ = entries.pop()
            if connection.usable:
                return connection
            connection.abort()
        self._idle.pop(key, None)
        return None

    def put(self, key: Hashable, connection: SmtpConnection) -> None:
        if not connection.usable:
            connection.abort()
            return
        entries = self._idle.setdefault(key, [])
        if len(entries) >= self._max_idle_per_key:
            self._quit_later(connection)
            return
        loop = asyncio.get_running_loop()
        entries.append((connection, loop.time()))
        if self._expiry is None:
            self._expiry = loop.call_at(loop.time() + self._idle_timeout, self._expire)

    def _expire(self) -> None:
        """QUIT what has been idle long enough; come back when the oldest of the rest is due,
        but not sooner than an eighth of the idle time (a sweep walks every key)."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest: float | None = None
        for key, entries in list(self._idle.items()):
            expired = 0
            while expired < len(entries) and entries[expired][1] <= now - self._idle_timeout:
                self._quit_later(entries[expired][0])
                expired += 1
            del entries[:expired]
            if not entries:
                del self._idle[key]
            elif oldest is None or entries[0][1] < oldest:
                oldest = entries[0][1]
        if oldest is not None:
            due = max(oldest + self._idle_timeout, now + self._idle_timeout / 8)
            self._expiry = loop.call_at(due, self._expire)

    def _quit_later(self, connection: SmtpConnection) -> None:
        task = asyncio.get_running_loop().create_task(connection.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """QUIT every idle connection and wait for the ones already closing."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for entries in self._idle.values():
            for connection, _ in entries:
                self._quit_later(connection)
        self._idle.clear()
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._closing, return_exceptions=True)
