"""A small asyncio SMTP server for tests: records every transaction and answers as told.

Owns: accepting SMTP on a loopback port, recording what each client sent (commands, the groups of
commands that arrived in one read, envelope, raw and un-stuffed DATA) and answering with replies
the test picks (per recipient, MAIL, DATA), offering or omitting extensions (PIPELINING, STARTTLS
with a given SSL context, SMTPUTF8, 8BITMIME, SIZE, DSN, AUTH), dropping the connection or
delaying at a chosen step. Must not: be used outside tests; it checks little and queues nothing.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass, field

from mailgate.core.reply import Reply

DEFAULT_EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "DSN")
STEPS = ("GREETING", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "END_OF_DATA", "RSET", "QUIT")


@dataclass
class Transaction:
    connection: int  # 1 for the first connection the server accepted
    tls: bool
    mail_from: str  # the path inside <>
    mail_params: list[str]
    rcpt_to: list[str] = field(default_factory=list)  # every RCPT, accepted or not
    rcpt_params: dict[str, list[str]] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    wire_data: bytes = b""  # between the 354 and the final ".", as sent (dot-stuffed)
    data: bytes | None = None  # un-stuffed content; None if DATA never completed

    @property
    def has_bare_line_endings(self) -> bool:
        without_crlf = self.wire_data.replace(b"\r\n", b"")
        return b"\r" in without_crlf or b"\n" in without_crlf


class _Dropped(Exception):
    pass


class CaptureServer:
    """Use as `async with CaptureServer(...) as server:`; `server.port` is the bound port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
        size_limit: int = 0,
        tls_context: ssl.SSLContext | None = None,
        greeting: Reply = Reply(220, "", "mx.test ESMTP capture"),
        ehlo_reply: Reply | None = None,  # e.g. 502 to force the HELO fallback
        mail_reply: Reply = Reply(250, "2.1.0", "Sender OK"),
        mail_replies: list[Reply] | None = None,  # used first, one per MAIL, then `mail_reply`
        rcpt_replies: dict[str, Reply] | None = None,  # address -> reply; others get 250
        data_reply: Reply = Reply(250, "2.0.0", "OK queued"),
        auth_users: dict[str, str] | None = None,  # offers AUTH PLAIN LOGIN after STARTTLS
        drop_at: str | None = None,  # close without a reply on reaching this step
        delays: dict[str, float] | None = None,  # step -> seconds to wait before replying
        close_after_transaction: bool = False,  # close silently after the reply to the final "."
    ) -> None:
        for step in [drop_at, *(delays or {})]:
            if step is not None and step not in STEPS:
                raise ValueError(f"unknown step {step!r}")
        self.host = host
        self.extensions = extensions
        self.size_limit = size_limit
        self.tls_context = tls_context
        self.greeting = greeting
        self.ehlo_reply = ehlo_reply
        self.mail_reply = mail_reply
        self.mail_replies = list(mail_replies or [])
        self.rcpt_replies = {key.lower(): value for key, value in (rcpt_replies or {}).items()}
        self.data_reply = data_reply
        self.auth_users = auth_users
        self.drop_at = drop_at
        self.delays = delays or {}
        self.close_after_transaction = close_after_transaction
        self.port = 0
        self.connections = 0
        self.peers: list[str] = []  # the client address of each connection, in order
        self.active = 0  # connections open now
        self.max_active = 0  # the most ever open at once
        self.commands: list[str] = []  # every command line, in order, across connections
        self.batches: list[list[str]] = []  # verbs of the commands that arrived in one read
        self.transactions: list[Transaction] = []
        self.authenticated: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> "CaptureServer":
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def completed(self) -> list[Transaction]:
        return [transaction for transaction in self.transactions if transaction.data is not None]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.peers.append(writer.get_extra_info("peername")[0])
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        session = _Session(self, self.connections, reader, writer)
        try:
            await session.run()
        except (_Dropped, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.active -= 1
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)


class _Session:
    """One client connection: a loop over read chunks, commands answered in order."""

    def __init__(self, server: CaptureServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.number = number
        self.reader = reader
        self.writer = writer
        self.tls = False
        self.buffer = b""
        self.transaction: Transaction | None = None
        self.closed = False

    async def reply(self, step: str, reply: Reply) -> None:
        if self.server.drop_at == step:
            raise _Dropped
        if step in self.server.delays:
            await asyncio.sleep(self.server.delays[step])
        self.writer.write(reply.encode())
        if reply.code == 421:  # RFC 5321 §3.8: the server closes after 421
            await self.writer.drain()
            raise _Dropped

    async def read_line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise _Dropped
            self.buffer += chunk
            self.server.batches.append([line.split(b" ")[0].decode("ascii", "replace").upper()
                                        for line in chunk.split(b"\r\n") if line])
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        await self.writer.drain()
        return line.decode("utf-8", "replace")

    async def run(self) -> None:
        await self.reply("GREETING", self.server.greeting)
        while not self.closed:
            line = await self.read_line()
            self.server.commands.append(line)
            verb, _, argument = line.partition(" ")
            await self.dispatch(verb.upper(), argument)
            await self.writer.drain()

    def ehlo_lines(self) -> str:
        keywords = list(self.server.extensions)
        if "SIZE" in keywords and self.server.size_limit:
            keywords[keywords.index("SIZE")] = f"SIZE {self.server.size_limit}"
        if self.server.tls_context is not None and not self.tls:
            keywords.append("STARTTLS")
        if self.server.auth_users is not None and self.tls:
            keywords.append("AUTH PLAIN LOGIN")
        return "\n".join(["mx.test greets you", *keywords])

    async def dispatch(self, verb: str, argument: str) -> None:
        if verb == "EHLO":
            await self.reply("EHLO", self.server.ehlo_reply or Reply(250, "", self.ehlo_lines()))
        elif verb == "HELO":
            await self.reply("HELO", Reply(250, "", "mx.test"))
        elif verb == "STARTTLS" and self.server.tls_context is not None and not self.tls:
            await self.reply("STARTTLS", Reply(220, "2.0.0", "Ready to start TLS"))
            await self.writer.drain()
            await self.writer.start_tls(self.server.tls_context)
            self.tls = True
        elif verb == "AUTH" and self.server.auth_users is not None:
            await self.auth(argument)
        elif verb == "MAIL":
            await self.mail(argument)
        elif verb == "RCPT":
            await self.rcpt(argument)
        elif verb == "DATA":
            await self.data()
        elif verb == "RSET":
            self.transaction = None
            await self.reply("RSET", Reply(250, "2.0.0", "Reset OK"))
        elif verb == "NOOP":
            self.writer.write(Reply(250, "2.0.0", "OK").encode())
        elif verb == "QUIT":
            await self.reply("QUIT", Reply(221, "2.0.0", "Bye"))
            self.closed = True
        else:
            self.writer.write(Reply(502, "5.5.1", "Command not implemented").encode())

    async def auth(self, argument: str) -> None:
        mechanism, _, initial = argument.partition(" ")
        if mechanism.upper() == "PLAIN":
            _, user, password = base64.b64decode(initial).decode().split("\0")
        else:
            self.writer.write(Reply(334, "", "VXNlcm5hbWU6").encode())
            user = base64.b64decode(await self.read_line()).decode()
            self.writer.write(Reply(334, "", "UGFzc3dvcmQ6").encode())
            password = base64.b64decode(await self.read_line()).decode()
        if self.server.auth_users.get(user) == password:  # type: ignore[union-attr]
            self.server.authenticated.append(user)
            await self.reply("AUTH", Reply(235, "2.7.0", "Authentication successful"))
        else:
            await self.reply("AUTH", Reply(535, "5.7.8", "Authentication credentials invalid"))

    async def mail(self, argument: str) -> None:
        path, params = _path_and_params(argument, "FROM:")
        sizes = [int(param[5:]) for param in params if param.upper().startswith("SIZE=")]
        if self.server.size_limit and sizes and sizes[0] > self.server.size_limit:
            await self.reply("MAIL", Reply(552, "5.3.4", "Message too big"))
            return
        reply = self.server.mail_replies.pop(0) if self.server.mail_replies else self.server.mail_reply
        if reply.is_positive:
            self.transaction = Transaction(self.number, self.tls, path, params)
            self.server.transactions.append(self.transaction)
        await self.reply("MAIL", reply)

    async def rcpt(self, argument: str) -> None:
        if self.transaction is None:
            await self.reply("RCPT", Reply(503, "5.5.1", "Need MAIL command first"))
            return
        path, params = _path_and_params(argument, "TO:")
        self.transaction.rcpt_to.append(path)
        self.transaction.rcpt_params[path] = params
        reply = self.server.rcpt_replies.get(path.lower(), Reply(250, "2.1.5", "Recipient OK"))
        if reply.is_positive:
            self.transaction.accepted.append(path)
        await self.reply("RCPT", reply)

    async def data(self) -> None:
        transaction = self.transaction
        if transaction is None or not transaction.accepted:
            await self.reply("DATA", Reply(554, "5.5.1", "No valid recipients"))
            return
        await self.reply("DATA", Reply(354, "", "End data with <CR><LF>.<CR><LF>"))
        await self.writer.drain()
        while not (self.buffer.startswith(b".\r\n") or b"\r\n.\r\n" in self.buffer):
            chunk = await self.reader.read(65536)
            if not chunk:
                raise _Dropped
            self.buffer += chunk
        if self.buffer.startswith(b".\r\n"):
            wire, self.buffer = b"", self.buffer[3:]
        else:
            body, _, self.buffer = self.buffer.partition(b"\r\n.\r\n")
            wire = body + b"\r\n"
        transaction.wire_data = wire
        # RFC 5321 §4.5.2: a line starting with "." loses that first ".".
        unstuffed = wire[1:] if wire.startswith(b".") else wire
        transaction.data = unstuffed.replace(b"\r\n.", b"\r\n")
        self.transaction = None
        await self.reply("END_OF_DATA", self.server.data_reply)
        if self.server.close_after_transaction:
            await self.writer.drain()
            raise _Dropped


def _path_and_params(argument: str, prefix: str) -> tuple[str, list[str]]:
    rest = argument[len(prefix):] if argument.upper().startswith(prefix) else argument
    path, _, params = rest.strip().partition(">")
    return path.lstrip("<"), params.split()
