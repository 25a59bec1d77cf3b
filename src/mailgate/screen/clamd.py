"""ClamAV's clamd over its INSTREAM protocol, on a unix socket or TCP, with a time-out.

Owns: `ClamdClient.scan` (stream a spooled message in length-prefixed chunks and read the
verdict: clean, infected with a signature name, or an error) and `ping`, and the address syntax
`unix:/path` | `tcp:host:port` (`tcp:[::1]:3310` for IPv6).
Must not: decide what a virus means for the message (the screener maps it to a verdict).

Hand-written: the protocol is a dozen lines (clamd(8), "INSTREAM": `zINSTREAM\\0`, then chunks
each prefixed by a 4-byte big-endian length, a zero length to end, a NUL-terminated reply), and
the PyPI clients (clamd, pyclamd) are blocking and unmaintained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

CHUNK_BYTES = 64 * 1024
MAX_REPLY_BYTES = 4096


class ClamdError(Exception):
    """clamd could not be reached, timed out, or answered with an error."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    infected: bool
    signature: str | None = None


def parse_address(address: str) -> tuple[str, str, int]:
    """`unix:/path` -> ("unix", path, 0); `tcp:host:port` -> ("tcp", host, port)."""
    scheme, _, rest = address.partition(":")
    if scheme == "unix" and rest.startswith("/"):
        return "unix", rest, 0
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", host, int(port)
    raise ValueError(f"clamd address {address!r} is not unix:/path or tcp:host:port")


def parse_reply(reply: bytes) -> ScanResult:
    """`stream: OK`, `stream: <signature> FOUND`, or an error (clamd(8), "INSTREAM")."""
    text = reply.rstrip(b"\0\r\n").decode("utf-8", "replace")
    _, _, verdict = text.partition(": ")
    if verdict == "OK":
        return ScanResult(False)
    if verdict.endswith(" FOUND"):
        return ScanResult(True, verdict[: -len(" FOUND")])
    raise ClamdError(f"clamd answered {text!r}")


class ClamdClient:
    def __init__(
        self, address: str, *, timeout: float, max_bytes: int,
    ) -> None:
        self.address = address
        self._kind, self._host, self._port = parse_address(address)
        self.timeout = timeout
        self.max_bytes = max_bytes

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._kind == "unix":
            return await asyncio.open_unix_connection(self._host)
        return await asyncio.open_connection(self._host, self._port)

    async def _exchange(self, command: bytes, chunks: Callable[[], bytes] | None) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect()
                try:
                    writer.write(command)
                    if chunks is not None:
                        while chunk := chunks():
                            writer.write(len(chunk).to_bytes(4, "big") + chunk)
                            await writer.drain()
                        writer.write(b"\0\0\0\0")
                    await writer.drain()
                    return await reader.readuntil(b"\0")
                finally:
                    writer.close()
        except TimeoutError as exc:
            raise ClamdError(f"clamd at {self.address} timed out after {self.timeout}s") from exc
        except asyncio.LimitOverrunError as exc:
            raise ClamdError("clamd reply too long") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ClamdError(f"clamd at {self.address} unreachable: {exc}") from exc

    async def ping(self) -> bool:
        try:
            return await self._exchange(b"zPING\0", None) == b"PONG\0"
        except ClamdError:
            return False

    async def scan(self, open_message: Callable[[], BinaryIO]) -> ScanResult:
        """Scan the message `open_message()` reads; ClamdError when clamd cannot say."""
        with open_message() as file:
            # Reads from the local spool (memory or a just-written file) are short: done inline.
            reply = await self._exchange(b"zINSTREAM\0", lambda: file.read(CHUNK_BYTES))
        return parse_reply(reply[:MAX_REPLY_BYTES])
