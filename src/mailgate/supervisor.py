"""The supervisor: runs mailgate as one process, or as several worker processes on all cores.

Owns: deciding the number of workers (`server.workers`, 0 = one per CPU core), taking the spool
lock for the life of the server (queue/spool_lock.py: one server per spool), binding every
listening socket once (server/listen_sockets.py: an address another process holds stops the start
with exit 1), making each listener's connection counts shared by all workers
(server/connection_counts.py), recovering the store once before any worker starts, forking the
workers (each inherits its own sockets, and runs its own delivery runner on the shared SQLite
queue), forwarding SIGTERM/SIGINT/SIGHUP to them, and stopping all of them when one dies
unexpectedly so that a service manager restarts a clean set (a restart recovers every lease).
Must not: build components (app.py) or parse the command line (cli/serve_cmd.py).

Python runs one thread of bytecode at a time per process; worker processes are how mailgate
uses more than one core (issue "Benchmark": "both cores used if that is what it takes").
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

from mailgate.config.loader import Config
from mailgate.config.types import parse_host_port
from mailgate.queue.spool_lock import SpoolInUse, SpoolLock
from mailgate.server import listen_sockets
from mailgate.server.connection_counts import SharedCounts
from mailgate.server.listen_sockets import ListenError

log = logging.getLogger("mailgate.supervisor")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_count(config: Config) -> int:
    return config.server.workers or max(1, os.cpu_count() or 1)


def run(config: Config, run_loop: Callable, start_worker: Callable[[int, int], "asyncio.Future"]) -> int:
    """Run `start_worker(index, count)` (a coroutine function) in each worker; return an exit code."""
    count = worker_count(config)
    lock = SpoolLock(config.server.spool_dir)
    try:
        _lock_spool(config, lock)
        bound = listen_sockets.bind_all(*_addresses(config), count, console=_console_address(config))
    except (SpoolInUse, ListenError) as exc:
        # Exit 1, not 2: the other process may go away, so a service manager should retry.
        print(f"mailgate: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the spool is a file, or not ours: an operator mistake
        print(f"mailgate: cannot start: server.spool_dir: {config.server.spool_dir}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    if count > 1:  # the connection limits hold for the whole server, not per worker
        try:
            for listener in config.listener:
                shared = SharedCounts(listener.max_connections, listener.max_connections_per_client)
                for sockets in bound:
                    sockets.counts[tuple(listener.address)] = shared
        except OSError as exc:  # POSIX shared memory (/dev/shm) missing or not writable
            print(f"mailgate: cannot start: the workers' shared counters need a writable /dev/shm "
                  f"({exc.strerror or exc}); or set server.workers = 1", file=sys.stderr)
            return 1
    if count == 1:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop installs the reload handler
        listen_sockets.adopt(bound[0])
        return run_loop(start_worker(0, 1))
    from mailgate.offline_queue import recover_offline

    from mailgate.startup_errors import StartupConflict, StartupError

    try:
        run_loop(recover_offline(config))  # before any fork: no thread of ours is running
    except StartupError as exc:  # the queue's database cannot be used (one line naming the key)
        print(f"mailgate: cannot start: {exc}", file=sys.stderr)
        return 2
    except StartupConflict as exc:  # another live node has this node's name: it may go away
        print(f"mailgate: cannot start: {exc}", file=sys.stderr)
        return 1
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            _stop_with_parent(os.getppid())
            for other, sockets in enumerate(bound):
                if other != index:
                    sockets.close()
            listen_sockets.adopt(bound[index])
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            # A reload before the worker is ready must not kill it; its loop takes SIGHUP later.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            code = 1
            try:
                code = run_loop(start_worker(index, count))
            finally:
                logging.shutdown()
                os._exit(code if isinstance(code, int) else 1)
        children[pid] = index
    for sockets in bound:
        sockets.close()  # the workers hold them; the spool lock stays with the supervisor
    log.info("supervisor %d started %d workers: %s", os.getpid(), count, " ".join(map(str, children)))
    return _supervise(children)


def _lock_spool(config: Config, lock: SpoolLock) -> None:
    """Take the spool lock (creating the spool if needed), except for a root start whose spool
    is missing: that spool must be made for the service user, and the worker says so."""
    spool = config.server.spool_dir
    if not os.path.isdir(spool) and not os.path.lexists(spool):
        if os.geteuid() == 0 and config.server.user:
            return
        os.makedirs(spool, exist_ok=True)
    lock.acquire()


def _addresses(config: Config) -> tuple[list[tuple[str, str, int]], tuple[str, int] | None]:
    """(key, host, port) of each listener, and the metrics address (None when off)."""
    listeners = [(f"listener[{i}].address", *listener.address) for i, listener in enumerate(config.listener)]
    metrics = parse_host_port(config.metrics.address) if config.metrics.address else None
    return listeners, metrics


def _console_address(config: Config) -> tuple[str, int] | None:
    """The web console's address when it is on: served by worker 0 alone (console/server.py)."""
    return parse_host_port(config.console.address) if config.console.enabled else None


def _stop_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the supervisor dies (even by SIGKILL), so no worker is
    left serving on its own; elsewhere the service manager's process group does it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _supervise(children: dict[int, int]) -> int:
    stopping = False

    def forward(signum: int, _frame) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, code if code > 0 else (1 if code < 0 else 0))
        if not stopping:
            # A worker died on its own: stop the others so the whole service restarts cleanly.
            print(f"mailgate: worker {index} (pid {pid}) exited with {code}; stopping", file=sys.stderr)
            stopping = True
            forward(signal.SIGTERM, None)
    return worst
