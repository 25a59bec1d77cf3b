"""The listening sockets of one server, bound once by the supervisor and inherited by its workers.

Owns: binding every listener address, the metrics address and the web console's address (worker
0's only: console/server.py says why it runs once) before any worker is forked (and
before privileges are dropped), so that an address another process already holds stops the start
with one line naming the configured key and address (issue 20 item 1: a second instance with the
same addresses started and took half the connections). With several workers each gets its own
SO_REUSEPORT socket so the kernel spreads connections; before joining that group the supervisor
binds the address once WITHOUT SO_REUSEPORT, which fails if any other process listens there, so
ports are shared only between this server's own workers. Only worker 0's socket listens at once;
the others are bound but listen only when their worker serves (after worker 0's self-audit,
start_gate.py), since the kernel hands connections to every listening socket of the group. Each
worker then takes its sockets from `inherited()`, which `adopt()` fills in the worker.
Must not: accept connections (listener.py, observe/http.py) or read the configuration file.

A narrow race remains: two servers started in the same millisecond on the same address could
both pass the check; the spool lock (queue/spool_lock.py) rules that out for one spool.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from mailgate.server.connection_counts import SharedCounts
from mailgate.server.privileges import bind_listener_socket

# The Linux default of net.core.somaxconn caps what listen() gets anyway.
BACKLOG = 4096


class ListenError(Exception):
    """An address cannot be bound; the message is one line naming the key and the address."""


@dataclass
class WorkerSockets:
    """One worker's sockets: by (host, port) as configured."""
    listeners: dict[tuple[str, int], socket.socket] = field(default_factory=dict)
    metrics: socket.socket | None = None
    console: socket.socket | None = None  # worker 0 only
    # Connection counts shared by every worker, per listener address (connection_counts.py).
    counts: dict[tuple[str, int], SharedCounts] = field(default_factory=dict)

    def take_listener(self, host: str, port: int) -> socket.socket | None:
        return self.listeners.pop((host, port), None)

    def close(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()
        for sock in (self.metrics, self.console):
            if sock is not None:
                sock.close()
        self.metrics = self.console = None


_inherited = WorkerSockets()


def inherited() -> WorkerSockets:
    """The sockets the supervisor bound for this process (empty when it bound none)."""
    return _inherited


def adopt(sockets: WorkerSockets) -> None:
    """In a worker: these are its sockets (the composition root takes them from `inherited()`)."""
    global _inherited
    _inherited = sockets


def bind_all(
    listeners: list[tuple[str, str, int]], metrics: tuple[str, int] | None, workers: int,
    console: tuple[str, int] | None = None,
) -> list[WorkerSockets]:
    """Per worker, a socket for each (key, host, port) listener and for metrics (port + worker
    index, docs/operations.md), and worker 0's console socket. Raises ListenError naming the
    first address that fails."""
    bound = [WorkerSockets() for _ in range(workers)]
    try:
        for key, host, port in listeners:
            for index, sock in enumerate(_bind_shared(key, host, port, workers)):
                bound[index].listeners[(host, port)] = sock
        if metrics is not None:
            host, port = metrics
            for index in range(workers):
                where = f"metrics.address {host}:{port}" + (f" (worker {index} serves port {port + index})" if index else "")
                bound[index].metrics = bind_address(where, host, port + index if port else 0)
        if console is not None:
            host, port = console
            bound[0].console = bind_address(f"console.address {host}:{port}", host, port)
    except BaseException:
        for sockets in bound:
            sockets.close()
        raise
    return bound


def _bind_shared(key: str, host: str, port: int, workers: int) -> list[socket.socket]:
    where = f"{key} {host}:{port}"
    if workers == 1:
        return [bind_address(where, host, port)]
    if port:
        # Fails when anyone else listens here, with or without SO_REUSEPORT; released at once.
        bind_address(where, host, port).close()
    first = bind_address(where, host, port, reuse_port=True)
    sockets = [first]
    try:
        for _ in range(workers - 1):
            # The listener (acceptor.py) calls listen() when this worker starts serving.
            sockets.append(bind_address(where, host, first.getsockname()[1], reuse_port=True, listen=False))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_address(
    where: str, host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A bound (listening) socket, or ListenError("<where>: address already in use ...")."""
    try:
        return bind_listener_socket(host, port, BACKLOG, reuse_port=reuse_port, listen=listen)
    except OSError as exc:
        raise ListenError(f"{where}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens there)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available (no interface of this host has it)"
    return exc.strerror or str(exc)
