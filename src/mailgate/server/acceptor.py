"""Accepting connections from one listening socket, before any protocol or TLS touches them.

Owns: the accept loop (`Acceptor`): each accepted socket goes to the listener's callback at
once, so it is counted against the connection limits before a single byte is read (issue 21
item 4: implicit-TLS connections used to be counted only after their handshake, and one address
held 2,000 sockets). When the process runs out of file descriptors (EMFILE, ENFILE) or kernel
memory, accepting pauses for `RETRY_DELAY` and the waiting connections stay in the kernel's
backlog; a WARNING naming RLIMIT_NOFILE is logged at most once per `WARN_EVERY` seconds.
Before, the event loop (libuv under uvloop) accepted and closed such connections with nothing
logged.
Must not: count, refuse or speak to connections (listener.py), or bind sockets (listen_sockets.py).

Why a loop of our own rather than `asyncio.start_server`: the server's protocol starts reading
(or the TLS handshake) before our code runs, and `StreamWriter.start_tls` afterwards loses a
ClientHello that arrived first under uvloop; `loop.connect_accepted_socket` after counting
gives the socket to the protocol, TLS included, before anything is read, on uvloop and on
asyncio's own loop alike.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Callable

log = logging.getLogger("mailgate.listener")

RETRY_DELAY = 1.0  # seconds without accepting after running out of descriptors (as asyncio)
WARN_EVERY = 60.0  # at most one warning a minute per listener
BATCH = 64  # connections accepted per wake-up before other work gets a turn
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    def __init__(self, name: str, sock: socket.socket, on_connection: Callable[[socket.socket, tuple], None]) -> None:
        self._name = name
        self._socket = sock
        self._on_connection = on_connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._last_warning = -WARN_EVERY
        self._watching = False
        self.accepting = False  # from start() until stop(), pauses for lack of descriptors included

    def start(self, backlog: int) -> None:
        self._socket.listen(backlog)  # the supervisor may have bound it without listening (start gate)
        self._socket.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self.accepting = True
        self._watch()

    def stop(self) -> None:
        self.accepting = False
        self._unwatch()

    def _watch(self) -> None:
        self._retry = None
        if self.accepting and self._loop is not None and not self._watching:
            self._loop.add_reader(self._socket.fileno(), self._accept_ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._watching and self._loop is not None:
            self._loop.remove_reader(self._socket.fileno())
        self._watching = False

    def _accept_ready(self) -> None:
        for _ in range(BATCH):
            try:
                conn, peer = self._socket.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._out_of_resources(exc)
                    return
                raise
            conn.setblocking(False)
            self._on_connection(conn, peer)

    def _out_of_resources(self, exc: OSError) -> None:
        """Stop accepting for a moment (connections wait in the backlog) and say why."""
        assert self._loop is not None
        self._unwatch()
        self._retry = self._loop.call_later(RETRY_DELAY, self._watch)
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning(
                "listener %s cannot accept: %s (file descriptors: RLIMIT_NOFILE is %d); new connections "
                "wait in the backlog; raise LimitNOFILE in the service unit or lower the connection limits",
                self._name, exc.strerror or exc, soft,
            )
