"""rspamd over its HTTP protocol: one POST to /checkv2 per message, with a time-out.

Owns: `RspamdClient.check` (the envelope as request headers, the spooled message streamed as the
body, the JSON answer parsed into a `SpamResult`) and the minimal HTTP/1.1 client it needs
(`Connection: close`, Content-Length or chunked or read-to-close answers).
Must not: map rspamd's action to a reply (the screener does).

Hand-written HTTP: the stdlib's `http.client` blocks, and aiohttp or httpx would add a
dependency tree to the relay for a single request shape on loopback or a trusted network; this
is one request line, a few headers and a body whose length we know (rspamd "Protocol" docs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

CHUNK_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 1024 * 1024
# rspamd's actions (rspamd "Protocol", /checkv2 `action`).
REJECT = "reject"
SOFT_REJECT = "soft reject"
REWRITE_SUBJECT = "rewrite subject"
ADD_HEADER = "add header"
GREYLIST = "greylist"
NO_ACTION = "no action"


class RspamdError(Exception):
    """rspamd could not be reached, timed out, or answered something that is not a result."""


@dataclass(frozen=True)
class SpamResult:
    action: str
    score: float
    required_score: float
    symbols: tuple[str, ...] = ()
    subject: str | None = None  # for "rewrite subject": the new subject
    message: str | None = None  # messages.smtp_message: rspamd's text for the SMTP reply
    milter_headers: tuple[tuple[str, str], ...] = field(default=())  # milter.add_headers


def parse_result(data: bytes) -> SpamResult:
    try:
        answer = json.loads(data)
        action = str(answer["action"])
        score = float(answer.get("score", 0.0))
        required = float(answer.get("required_score", 0.0))
    except (ValueError, KeyError, TypeError) as exc:
        raise RspamdError(f"rspamd answer is not a check result: {data[:200]!r}") from exc
    messages = answer.get("messages") or {}
    headers: list[tuple[str, str]] = []
    milter = answer.get("milter") or {}
    for name, value in (milter.get("add_headers") or {}).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            text = item.get("value") if isinstance(item, dict) else item
            if isinstance(text, str):
                headers.append((str(name), text))
    return SpamResult(
        action=action,
        score=score,
        required_score=required,
        symbols=tuple(sorted(answer.get("symbols") or {})),
        subject=answer.get("subject"),
        message=messages.get("smtp_message") if isinstance(messages, dict) else None,
        milter_headers=tuple(headers),
    )


def _header_safe(value: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in value)


class RspamdClient:
    def __init__(self, url: str, *, timeout: float, password: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"rspamd url {url!r} is not http://host[:port]")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._path = (parts.path.rstrip("/") or "") + "/checkv2"
        # A password written into the URL (http://:secret@host) is sent as rspamd's Password
        # header and never shown: errors, logs and /readyz name the URL without its userinfo.
        self._password = password or parts.password
        self.url = urlunsplit(("http", parts.netloc.rpartition("@")[2], parts.path, "", ""))
        self.timeout = timeout

    def _request_head(self, size: int, envelope: dict[str, list[str]]) -> bytes:
        host = f"[{self._host}]" if ":" in self._host else self._host
        lines = [f"POST {self._path} HTTP/1.1", f"Host: {host}:{self._port}",
                 f"Content-Length: {size}", "Connection: close"]
        if self._password:
            lines.append(f"Password: {self._password}")
        for name, values in envelope.items():
            lines.extend(f"{name}: {_header_safe(value)}" for value in values if value)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    async def check(
        self, open_message: Callable[[], BinaryIO], size: int, *, sender: str, recipients: list[str],
        client_address: str, helo: str, user: str | None = None, queue_id: str | None = None,
    ) -> SpamResult:
        """Ask rspamd about the message of `size` bytes; RspamdError when it cannot say."""
        envelope = {"From": [sender], "Rcpt": list(recipients), "IP": [client_address],
                    "Helo": [helo], "User": [user or ""], "Queue-Id": [queue_id or ""]}
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self._host, self._port)
                try:
                    writer.write(self._request_head(size, envelope))
                    with open_message() as file:
                        # Local spool reads are short: done inline rather than in a thread.
                        while chunk := file.read(CHUNK_BYTES):
                            writer.write(chunk)
                            await writer.drain()
                    status, body = await _read_response(reader)
                finally:
                    writer.close()
        except TimeoutError as exc:
            raise RspamdError(f"rspamd at {self.url} timed out after {self.timeout}s") from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise RspamdError(f"rspamd at {self.url} failed: {exc}") from exc
        if status != 200:
            raise RspamdError(f"rspamd answered HTTP {status}: {body[:200]!r}")
        return parse_result(body)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (RFC 9112 §4, §6.3), bounded in size."""
    status_line = await reader.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad HTTP status line {status_line[:100]!r}")
    headers: dict[bytes, bytes] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while (length := int((await reader.readline()).split(b";")[0].strip(), 16)) > 0:
            if len(body) + length > MAX_RESPONSE_BYTES:
                raise ValueError("rspamd response too large")
            body += await reader.readexactly(length)
            await reader.readline()
        return int(parts[1]), bytes(body)
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        if length > MAX_RESPONSE_BYTES:
            raise ValueError("rspamd response too large")
        return int(parts[1]), await reader.readexactly(length)
    return int(parts[1]), await reader.read(MAX_RESPONSE_BYTES)
