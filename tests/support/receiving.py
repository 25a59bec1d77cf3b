"""Helpers for the receiving-side integration tests: a mailgate config, a raw SMTP client, the queue.

Owns: the TOML text of a test mailgate (mx, submission and smtps listeners on free loopback ports,
one hosted domain whose next hop and the smart host are ports nobody listens on, so accepted mail
stays queued), `RawSmtp` (an asyncio client that sends exact bytes and reads whole replies, for
what smtplib cannot send: bare LF, smuggling, pipelining, BDAT, non-ASCII paths), and readers of
the queue of an `InProcessMailgate`.
Must NOT: assert anything about mailgate's behaviour; the tests do.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

from mailgate.queue.store import QueueFilter, QueueSummary
from tests.conftest import free_port
from tests.support.mailgate_server import InProcessMailgate

HOSTNAME = "mx.test"
HOSTED = "hosted.test"
EXTERNAL = "external.test"
UNTRUSTED_SOURCE = "127.0.0.2"  # trusted_networks holds 127.0.0.1/32 only
REPLY_TIMEOUT = 15.0


def config_text(
    tmp_path: Path,
    tls_files: dict[str, str] | None = None,
    *,
    server_extra: str = "",
    relay_extra: str = "",
    mx_extra: str = "",
) -> str:
    """A mailgate with an `mx` listener (STARTTLS when `tls_files`, else clear text) and, with
    `tls_files`, `submission` (STARTTLS + AUTH required) and `smtps` (implicit TLS + AUTH)."""
    dead_port = free_port()  # nobody listens: deliveries fail temporarily, messages stay queued
    tls = (
        f'cert_file = "{tls_files["cert"]}"\nkey_file = "{tls_files["key"]}"\n'
        if tls_files else 'tls = "none"\n'
    )
    listeners = f"""
[[listener]]
name = "mx"
address = "127.0.0.1:{free_port()}"
profile = "mx"
{tls}{mx_extra}
"""
    if tls_files:
        for name in ("submission", "smtps"):
            listeners += f"""
[[listener]]
name = "{name}"
address = "127.0.0.1:{free_port()}"
profile = "{name}"
{tls}"""
    return f"""
[server]
hostname = "{HOSTNAME}"
spool_dir = "{tmp_path / 'spool'}"
users_file = "{tmp_path / 'users'}"
{server_extra}
{listeners}
[relay]
trusted_networks = ["127.0.0.1/32"]
{relay_extra}

[[domain]]
name = "{HOSTED}"
next_hop = ["127.0.0.1:{dead_port}"]

[delivery]
smart_host = "127.0.0.1:{dead_port}"
"""


def queued(mg: InProcessMailgate) -> list[QueueSummary]:
    assert mg.app is not None
    return mg.call(mg.app.store.list(QueueFilter()))


async def _body(mg: InProcessMailgate, queue_id: str) -> bytes:
    assert mg.app is not None
    return b"".join([chunk async for chunk in mg.app.store.body_chunks(queue_id)])


def stored_message(mg: InProcessMailgate, queue_id: str) -> bytes:
    return mg.call(_body(mg, queue_id))


def only_message(mg: InProcessMailgate) -> tuple[QueueSummary, bytes]:
    """The one queued message and its stored bytes (fails when there are none or several)."""
    summaries = queued(mg)
    assert len(summaries) == 1, summaries
    return summaries[0], stored_message(mg, summaries[0].queue_id)


def split_received(stored: bytes) -> tuple[bytes, bytes]:
    """(our Received header with its folded lines, everything after it)."""
    assert stored.startswith(b"Received: "), stored[:200]
    end = 0
    while True:
        end = stored.index(b"\r\n", end) + 2
        if stored[end:end + 1] not in (b"\t", b" "):
            return stored[:end], stored[end:]


@dataclass(frozen=True)
class SmtpReply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RawSmtp:
    """An SMTP client that writes exactly the bytes it is given; each reply read whole."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, *, source: str | None = None, tls: ssl.SSLContext | None = None
    ) -> "RawSmtp":
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None,
                local_addr=(source, 0) if source else None,
            ),
            REPLY_TIMEOUT,
        )
        return cls(reader, writer)

    async def reply(self) -> SmtpReply:
        lines = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            if not raw:
                raise ConnectionError(f"connection closed after {lines!r}")
            assert raw.endswith(b"\r\n"), raw
            line = raw[:-2].decode("utf-8")
            lines.append(line[4:])
            if line[3:4] != "-":
                return SmtpReply(int(line[:3]), lines)

    async def replies(self, count: int) -> list[SmtpReply]:
        return [await self.reply() for _ in range(count)]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> SmtpReply:
        await self.send(line.encode("utf-8") + b"\r\n")
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext) -> None:
        await self.writer.start_tls(context, server_hostname="localhost")

    async def at_eof(self) -> bool:
        """True when the server closed the connection (reads nothing more)."""
        return await asyncio.wait_for(self.reader.read(), REPLY_TIMEOUT) == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def client_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


async def rcpt_replies(port: int, recipients: list[str], sender: str = "sender@external.test") -> list[str]:
    """One session from the untrusted address: EHLO, MAIL, then each RCPT's reply as text."""
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    try:
        await client.reply()
        await client.command("EHLO client.example")
        mail = await client.command(f"MAIL FROM:<{sender}>")
        assert mail.code == 250, mail
        return [str(await client.command(f"RCPT TO:<{address}>")) for address in recipients]
    finally:
        await client.close()
