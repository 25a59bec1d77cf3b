"""The control socket: `mailgate queue ...` against a live server.

Owns: a Unix socket (mode 0600, only the server's user and root) speaking one JSON object per
line in each direction: `{"op": "list", "filter": {...}, "reason": ""}` in, the operation's
result or `{"error": "..."}` out. Must not: implement any queue operation (delivery/admin.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `mailgate queue` imports this module for request() alone
    from mailgate.delivery.admin import QueueAdmin

log = logging.getLogger("mailgate.control")

MAX_REQUEST = 64 * 1024


class ControlServer:
    def __init__(self, path: str | Path, admin: QueueAdmin) -> None:
        self._path = Path(path)
        self.admin = admin
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists():
            self._path.unlink()  # a stale socket from a crash
        self._server = await asyncio.start_unix_server(self._handle, path=str(self._path), limit=MAX_REQUEST)
        os.chmod(self._path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line)
            result = await self.admin.run(request["op"], request.get("filter") or {}, request.get("reason", ""))
        except (ValueError, KeyError, TypeError) as exc:
            result = {"error": str(exc)}
        except Exception as exc:  # report, never crash the server
            log.exception("control request failed")
            result = {"error": f"internal error: {exc}"}
        writer.write(json.dumps(result).encode() + b"\n")
        try:
            await writer.drain()
        finally:
            writer.close()


async def request(path: str | Path, op: str, query: dict, reason: str = "", timeout: float = 30.0) -> dict:
    """Client side: one request to a live server; raises OSError when nothing listens."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=64 * 1024 * 1024)
    try:
        writer.write(json.dumps({"op": op, "filter": query, "reason": reason}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    return json.loads(line)
