"""The supervisor: runs mailgate as one process, or as several worker processes on all cores.

Owns: deciding the number of workers (`server.workers`, 0 = one per CPU core), recovering the
store once before any worker starts, forking the workers (each binds the listening ports with
SO_REUSEPORT so the kernel spreads connections, and runs its own delivery runner on the shared
SQLite queue), forwarding SIGTERM/SIGINT/SIGHUP to them, and stopping all of them when one dies
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

log = logging.getLogger("mailgate.supervisor")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_count(config: Config) -> int:
    return config.server.workers or max(1, os.cpu_count() or 1)


def run(config: Config, run_loop: Callable, start_worker: Callable[[int, int], "asyncio.Future"]) -> int:
    """Run `start_worker(index, count)` (a coroutine function) in each worker; return an exit code."""
    count = worker_count(config)
    if count == 1:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop installs the reload handler
        return run_loop(start_worker(0, 1))
    from mailgate.app import recover_offline

    run_loop(recover_offline(config))  # before any fork: no thread of ours is running
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            _stop_with_parent(os.getppid())
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
    log.info("supervisor %d started %d workers: %s", os.getpid(), count, " ".join(map(str, children)))
    return _supervise(children)


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
