"""The observation endpoint: a tiny HTTP/1.1 server for /metrics, /healthz and /readyz.

Owns: the socket on the configured metrics address, reading one bounded request per
connection, and three answers: /metrics (Prometheus text format from metrics.Metrics),
/healthz (200 while the event loop answers at all) and /readyz (200 when the readiness callback
reports no problem, else 503 listing the problems, one per line).
Must not: decide readiness itself (the caller's callback knows the listeners, the spool and
back-pressure; `spool_problem` is a helper for it), or serve anything else.

Why hand-written: prometheus_client's start_http_server runs its own thread and serves only
metrics; this one runs on the event loop, so /healthz proves the loop is alive, and it is
~100 lines. Each connection carries one request and is closed after the reply (RFC 9112 §9.6
`Connection: close`), which every scraper and probe handles.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from mailgate.observe.metrics import Metrics

log = logging.getLogger("mailgate.observe")

# Our own bounds (RFC 9110 sets none): a request head is a line and a few headers.
MAX_REQUEST_HEAD = 8 * 1024
REQUEST_TIMEOUT = 10.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}

Readiness = Callable[[], list[str]]  # problems; empty means ready


def spool_problem(spool_dir: str) -> str | None:
    """A readiness problem if the spool directory is missing or not writable (read-only mount)."""
    if not os.path.isdir(spool_dir):
        return f"spool directory {spool_dir} is missing"
    if not os.access(spool_dir, os.W_OK | os.X_OK):
        return f"spool directory {spool_dir} is not writable"
    return None


class ObserveServer:
    def __init__(
        self, host: str, port: int, metrics: Metrics, readiness: Readiness = lambda: [],
        sock: socket.socket | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._sock = sock  # bound by the supervisor (server/listen_sockets.py), or None: bind here
        self._metrics = metrics
        self.readiness = readiness  # replaceable on reload
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()
        self.bound_port = port

    async def start(self) -> None:
        if self._sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=self._sock, limit=MAX_REQUEST_HEAD)
        else:
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            self._server = await asyncio.start_server(
                self._serve, host=self._host, port=self._port, family=family, limit=MAX_REQUEST_HEAD,
                reuse_address=True,
            )
        self.bound_port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d/metrics", self._host, self.bound_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            status, headers, body, head_only = await self._answer(reader)
            writer.write(_response(status, headers, body, head_only))
            await writer.drain()
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            self._clients.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            return 408, {}, b"request timeout\n", False
        except asyncio.LimitOverrunError:
            return 431, {}, b"request head too large\n", False
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("client closed before a full request") from None
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, {}, b"bad request line\n", False
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return 405, {"Allow": "GET, HEAD"}, b"only GET and HEAD\n", False
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return 200, {"Content-Type": CONTENT_TYPE_LATEST}, self._metrics.render(), head_only
        if path == "/healthz":
            return 200, {}, b"ok\n", head_only
        if path == "/readyz":
            try:
                problems = list(self.readiness())
            except Exception as exc:  # a failing check means "not ready", never a crash
                problems = [f"readiness check failed: {exc}"]
            if problems:
                return 503, {}, ("\n".join(problems) + "\n").encode(), head_only
            return 200, {}, b"ready\n", head_only
        return 404, {}, b"not found: try /metrics, /healthz or /readyz\n", head_only


def _response(status: int, headers: dict[str, str], body: bytes, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS[status]}"]
    fields = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
    fields.update(headers)
    fields["Content-Length"] = str(len(body))  # HEAD: the length GET would send (RFC 9110 §9.3.2)
    fields["Connection"] = "close"
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
