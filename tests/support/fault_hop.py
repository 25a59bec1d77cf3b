"""A scriptable next hop for fault injection: a strict, Postfix-like SMTP server on loopback that
fails once at a chosen step, in a chosen way.

Owns: keeping the session state as a strict server does (a refused DATA keeps the MAIL, so a
second MAIL gets `503 5.5.1 nested MAIL`, as Postfix 3.7 answers; RCPT without MAIL and DATA
without an accepted RCPT are refused), offering PIPELINING, CHUNKING and STARTTLS on request,
the armed faults (a reply code, a dropped connection, a stall past any time-out, or a reply
dripped an octet at a time and never finished, at the n-th time a step is reached after arming) and recording every message it accepted with its sender,
recipients and un-stuffed body. Must not: be used outside tests; it never relays anything.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from mailgate.core.reply import Reply

STEPS = ("GREETING", "EHLO", "STARTTLS", "MAIL", "RCPT", "DATA", "END_OF_DATA", "RSET", "QUIT")
DROP = "drop"  # close the connection without a reply
STALL = "stall"  # never answer (until the client gives up and closes)
DRIP = "drip"  # start a reply and send one more octet of it every DRIP_INTERVAL, never ending it
DRIP_INTERVAL = 0.05
# One fault reply per code: enhanced codes as RFC 3463 gives them for each meaning.
FAULT_REPLIES = {
    421: Reply(421, "4.3.2", "Service shutting down"),
    451: Reply(451, "4.3.0", "Local error in processing"),
    452: Reply(452, "4.5.3", "Insufficient system storage"),
    550: Reply(550, "5.1.1", "Mailbox unavailable"),
    552: Reply(552, "5.3.4", "Exceeded storage allocation"),
    554: Reply(554, "5.7.1", "Transaction failed"),
}


@dataclass(frozen=True)
class Fault:
    step: str  # one of STEPS
    action: int | str  # a code of FAULT_REPLIES, DROP, STALL or DRIP
    occurrence: int = 1  # the n-th time the step is reached after arming (RCPT #2: 2)


@dataclass(frozen=True)
class Accepted:
    """A message the hop answered 250 to at the final dot: it counts as delivered."""

    sender: str
    recipients: tuple[str, ...]
    body: bytes


class _Closed(Exception):
    pass


class FaultHop:
    """`async with FaultHop(...) as hop:`; `hop.arm(fault, ...)`; `hop.accepted` lists messages."""

    def __init__(self, *, pipelining: bool, chunking: bool, tls_context: ssl.SSLContext | None = None) -> None:
        self.keywords = ["8BITMIME", "SIZE 10000000", "DSN", "ENHANCEDSTATUSCODES"]
        self.keywords += ["PIPELINING"] * pipelining + ["CHUNKING"] * chunking
        self.tls_context = tls_context
        self.port = 0
        self.connections = 0
        self.accepted: list[Accepted] = []
        self.verbs: list[str] = []  # every command verb received, across connections
        self._faults: list[Fault] = []
        self._seen: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def arm(self, *faults: Fault) -> None:
        """Each fault fires once; steps are counted from now."""
        self._faults = list(faults)
        self._seen = {}

    async def __aenter__(self) -> FaultHop:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        (self.port,) = {sock.getsockname()[1] for sock in self._server.sockets}
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()
            sessions = list(self._tasks)  # stalled ones sleep until cancelled here
            for session in sessions:
                session.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)
            await self._server.wait_closed()

    def _fault_at(self, step: str) -> Fault | None:
        self._seen[step] = self._seen.get(step, 0) + 1
        for fault in self._faults:
            if fault.step == step and fault.occurrence == self._seen[step]:
                self._faults.remove(fault)
                return fault
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await _Session(self, reader, writer).run()
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


class _Session:
    def __init__(self, hop: FaultHop, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hop = hop
        self.reader = reader
        self.writer = writer
        self.tls = False
        self.sender: str | None = None  # the open transaction's reverse path
        self.recipients: list[str] = []

    async def answer(self, step: str, normal: Reply) -> Reply:
        """Send `normal`, or the armed fault for this step; returns what was sent."""
        fault = self.hop._fault_at(step)
        reply = normal if fault is None else FAULT_REPLIES.get(fault.action)  # type: ignore[arg-type]
        if fault is not None and fault.action == STALL:
            await asyncio.sleep(3600)  # cancelled when the client closes or the hop stops
        if fault is not None and fault.action == DRIP:
            await self.drip()
        if reply is None:
            raise _Closed  # DROP
        self.writer.write(reply.encode())
        await self.writer.drain()
        if reply.code == 421:  # RFC 5321 §3.8
            raise _Closed
        return reply

    async def drip(self) -> None:
        """Each read of a client finds something new, but the reply never ends: only a time-out
        for the whole reply ends the wait (until the hop stops)."""
        self.writer.write(b"250-")
        while not self.writer.is_closing():
            await asyncio.sleep(DRIP_INTERVAL)
            self.writer.write(b"x")
        raise _Closed

    async def line(self) -> str:
        raw = await self.reader.readuntil(b"\r\n")
        return raw[:-2].decode("utf-8", "replace")

    async def run(self) -> None:
        await self.answer("GREETING", Reply(220, "", "hop.test ESMTP"))
        while True:
            command = await self.line()
            verb, _, argument = command.partition(" ")
            self.hop.verbs.append(verb.upper())
            await self.dispatch(verb.upper(), argument)

    async def dispatch(self, verb: str, argument: str) -> None:
        handlers = {
            "EHLO": self.hello, "HELO": self.hello, "STARTTLS": self.starttls, "MAIL": self.mail,
            "RCPT": self.rcpt, "DATA": self.data, "RSET": self.rset, "NOOP": self.noop, "QUIT": self.quit,
        }
        await handlers.get(verb, self.not_implemented)(verb, argument)

    async def hello(self, verb: str, _: str) -> None:
        self.reset()  # RFC 5321 §4.1.4: EHLO clears the transaction
        keywords = self.hop.keywords + (["STARTTLS"] if self.hop.tls_context and not self.tls else [])
        text = "\n".join(["hop.test", *keywords]) if verb == "EHLO" else "hop.test"
        await self.answer("EHLO", Reply(250, "", text))

    async def starttls(self, verb: str, argument: str) -> None:
        if self.hop.tls_context is None or self.tls:
            return await self.not_implemented(verb, argument)
        if (await self.answer("STARTTLS", Reply(220, "2.0.0", "Ready to start TLS"))).code == 220:
            await self.writer.start_tls(self.hop.tls_context)
            self.tls = True
            self.reset()

    async def rset(self, *_: str) -> None:
        if (await self.answer("RSET", Reply(250, "2.0.0", "Ok"))).is_positive:
            self.reset()

    async def noop(self, *_: str) -> None:
        self.writer.write(Reply(250, "2.0.0", "Ok").encode())

    async def quit(self, *_: str) -> None:
        await self.answer("QUIT", Reply(221, "2.0.0", "Bye"))
        raise _Closed

    async def not_implemented(self, *_: str) -> None:
        # BDAT included: mailgate's client must not send what it does not implement.
        self.writer.write(Reply(502, "5.5.1", "Command not implemented").encode())

    def reset(self) -> None:
        self.sender, self.recipients = None, []

    async def mail(self, _: str, argument: str) -> None:
        if self.sender is not None:
            self.writer.write(Reply(503, "5.5.1", "Error: nested MAIL command").encode())
            return
        if (await self.answer("MAIL", Reply(250, "2.1.0", "Ok"))).is_positive:
            self.sender = _path(argument)

    async def rcpt(self, _: str, argument: str) -> None:
        if self.sender is None:
            self.writer.write(Reply(503, "5.5.1", "Error: need MAIL command").encode())
            return
        if (await self.answer("RCPT", Reply(250, "2.1.5", "Ok"))).is_positive:
            self.recipients.append(_path(argument))

    async def data(self, *_: str) -> None:
        if self.sender is None:
            self.writer.write(Reply(503, "5.5.1", "Error: need RCPT command").encode())
            return
        if not self.recipients:  # Postfix keeps the MAIL after this reply
            self.writer.write(Reply(554, "5.5.1", "Error: no valid recipients").encode())
            return
        if (await self.answer("DATA", Reply(354, "", "End data with <CR><LF>.<CR><LF>"))).code != 354:
            return  # the transaction stays open, as in Postfix
        lines = []
        while (line := await self.reader.readuntil(b"\r\n")) != b".\r\n":
            lines.append(line[1:] if line.startswith(b".") else line)  # RFC 5321 §4.5.2
        sender, recipients = self.sender, tuple(self.recipients)
        self.reset()  # RFC 5321 §4.1.1.4: the final dot ends the transaction whatever the reply
        if (await self.answer("END_OF_DATA", Reply(250, "2.0.0", "Ok: queued"))).is_positive:
            self.hop.accepted.append(Accepted(sender, recipients, b"".join(lines)))


def _path(argument: str) -> str:
    return argument.partition("<")[2].partition(">")[0]
