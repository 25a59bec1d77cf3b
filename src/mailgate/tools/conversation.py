"""A scripted SMTP client conversation with a transcript, for the admin tools.

Owns: connecting (optional source address, connect and reply time-outs, implicit TLS), reading
whole replies with the shared sans-IO `smtp.client.ReplyParser`, sending exact command lines (also
the malformed paths of the relay tricks), STARTTLS on the stream, and a transcript of every line
in both directions ("C: " sent, "S: " received, "* " a note).
Must not: decide anything from the replies (the tools do), deliver queued mail (delivery/ does,
with pooling and TLS policy), or pipeline. Hand-written rather than smtplib: smtplib rewrites the
paths it is given (relay tricks must go out byte for byte), blocks the event loop, and keeps no
transcript; `smtp.client.ClientProtocol` refuses out-of-order commands that a tester must send.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from mailgate.core.reply import Reply
from mailgate.smtp.client import ClientUsageError, PeerProtocolError, ReplyParser, encode_command

READ_SIZE = 65536
# RFC 5321 §4.5.3.2: the client time-outs are minutes long (5 for most commands); an admin tool
# waits less by default and lets the admin raise it.
DEFAULT_TIMEOUT = 30.0
QUIT_TIMEOUT = 5.0


class ConversationError(Exception):
    """The conversation could not go on: refused or lost connection, time-out, not SMTP, TLS."""


def insecure_client_context() -> ssl.SSLContext:
    """A client context that completes the handshake whatever the certificate (tools report on the
    certificate themselves; verification would hide what they are asked to show). No CA store is
    loaded: it would be unused, and loading it costs more than the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Conversation:
    """One connection: `await Conversation.open(...)`, then `reply()`, `command()`, `close()`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.timeout = timeout
        self._parser = ReplyParser()
        self._replies: deque[Reply] = deque()
        self._partial = b""
        self.transcript: list[str] = []

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        source_address: str | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> "Conversation":
        local = (source_address, 0) if source_address else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, local_addr=local, ssl=implicit_tls,
                    server_hostname=(server_hostname or host) if implicit_tls else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise ConversationError(f"connect to {host}:{port}: timed out after {timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConversationError(f"connect to {host}:{port}: {exc.strerror or exc}") from None
        conversation = cls(reader, writer, timeout)
        peer = conversation.peer_address
        via = f" from {source_address}" if source_address else ""
        conversation.note(f"connected to {peer}:{port}{via}" + (" (implicit TLS)" if implicit_tls else ""))
        return conversation

    @property
    def peer_address(self) -> str:
        peer = self._writer.get_extra_info("peername") or ("", 0)
        return str(peer[0]).split("%")[0]

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._writer.get_extra_info("ssl_object")

    def note(self, text: str) -> None:
        self.transcript.append(f"* {text}")

    async def reply(self) -> Reply:
        """The next complete reply (the greeting first)."""
        while not self._replies:
            try:
                data = await asyncio.wait_for(self._reader.read(READ_SIZE), self.timeout)
            except asyncio.TimeoutError:
                raise ConversationError(f"no reply within {self.timeout:g}s") from None
            except (OSError, ssl.SSLError) as exc:
                raise ConversationError(f"connection lost: {exc}") from None
            if not data:
                raise ConversationError("connection closed by the server")
            self._record_received(data)
            try:
                self._replies.extend(self._parser.feed(data))
            except PeerProtocolError as exc:
                raise ConversationError(f"not an SMTP reply: {exc}") from None
        return self._replies.popleft()

    async def command(self, line: str, *, shown: str | None = None) -> Reply:
        """Send one line (UTF-8 when it is not ASCII) and wait for its reply. `shown` replaces the
        line in the transcript (AUTH secrets)."""
        try:
            data = encode_command(line, utf8=not line.isascii())
        except ClientUsageError as exc:
            raise ConversationError(str(exc)) from None
        self.transcript.append(f"C: {line if shown is None else shown}")
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.timeout)
        except asyncio.TimeoutError:
            raise ConversationError(f"sending timed out after {self.timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConversationError(f"connection lost: {exc}") from None
        return await self.reply()

    async def send_raw(self, data: bytes, shown: str) -> None:
        """Bytes that are not a command (a message body); `shown` goes into the transcript."""
        self.transcript.append(f"C: {shown}")
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.timeout)
        except (asyncio.TimeoutError, OSError, ssl.SSLError) as exc:
            raise ConversationError(f"sending failed: {exc or 'timed out'}") from None

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Wrap the stream after a 220 to STARTTLS (RFC 3207 §4); refuses if the server sent
        anything behind its 220 (a response injection, RFC 3207 §6 spirit)."""
        if self._parser.has_pending_input or self._replies:
            raise ConversationError("data received behind the STARTTLS reply (injection)")
        try:
            await self._writer.start_tls(
                context, server_hostname=server_hostname, ssl_handshake_timeout=self.timeout
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            raise ConversationError(f"TLS handshake failed: {exc}") from None
        ssl_object = self.ssl_object
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            self.note(f"TLS established: {ssl_object.version()} {cipher[0] if cipher else ''}".rstrip())

    async def quit(self) -> None:
        """QUIT politely (a short wait for the 221), then close; never raises."""
        try:
            self.transcript.append("C: QUIT")
            self._writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self._writer.drain(), QUIT_TIMEOUT)
            self.timeout = QUIT_TIMEOUT
            await self.reply()
        except (ConversationError, OSError, ssl.SSLError, asyncio.TimeoutError):
            pass
        await self.close()

    async def close(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), QUIT_TIMEOUT)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            pass

    def _record_received(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            self.transcript.append("S: " + line.removesuffix(b"\r").decode("utf-8", "replace"))
