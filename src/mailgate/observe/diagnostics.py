"""The diagnostic log (stderr, or the journal under systemd): set-up and keeping it off the loop.

Owns: the format and level of mailgate's own log lines, and moving their writing to a thread
inside each worker, so that a slow log file or terminal never stalls the event loop that is
answering SMTP clients (a write of a log line in the loop showed up in the acceptance-latency
tail). Must not: carry transaction records (translog.py does).

Why not logging.handlers.QueueHandler/QueueListener: they wake the writing thread for every
record, and each wake-up makes that thread fight the event loop for the GIL at the moment the loop
is answering a client; the QueueHandler also formats every record in the caller. Here the loop
only appends the record to a deque; the thread wakes every `FLUSH_INTERVAL` (at once for a
warning or worse, or when `FLUSH_RECORDS` are waiting) and formats and writes them in a batch. So a
line can appear up to `FLUSH_INTERVAL` late, and arguments are formatted then: callers pass
values, not objects they go on changing.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"  # a pid per line: workers
FLUSH_INTERVAL = 0.1  # seconds a line may wait
FLUSH_RECORDS = 1000  # or this many waiting lines wake the thread early
SESSION_LOGGER = "mailgate.smtp"  # the lines about one SMTP connection


def setup(level: str) -> None:
    """Direct logging to stderr (the supervisor, and a worker until `off_the_loop`)."""
    # FORMAT names no thread, no multiprocessing process and no source line: records need not
    # look them up (the logging HOWTO's "Optimization"; _srcfile = None skips the caller's frame).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr)


class _DeferredHandler(logging.Handler):
    """Keeps records for `_Writer`; `emit` never does I/O."""

    def __init__(self, pending: collections.deque[logging.LogRecord], wake: threading.Event) -> None:
        super().__init__()
        self._pending = pending
        self._wake = wake

    def emit(self, record: logging.LogRecord) -> None:
        self._pending.append(record)
        if record.levelno >= logging.WARNING or len(self._pending) >= FLUSH_RECORDS:
            self._wake.set()


class _Writer:
    """The thread that hands the kept records to the real handlers."""

    def __init__(self, handlers: list[logging.Handler]) -> None:
        self.pending: collections.deque[logging.LogRecord] = collections.deque()
        self.wake = threading.Event()
        self._handlers = handlers
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mailgate-diagnostic-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping:
            self.wake.wait(FLUSH_INTERVAL)
            self.wake.clear()
            self._write_pending()
        self._write_pending()

    def _write_pending(self) -> None:
        while self.pending:
            record = self.pending.popleft()
            for handler in self._handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)


class _QuietClients(logging.Filter):
    """Drops the per-connection lines (logger `mailgate.smtp`) that name one of `addresses`."""

    def __init__(self, addresses: frozenset[str]) -> None:
        super().__init__()
        self._addresses = addresses

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(SESSION_LOGGER) or not isinstance(record.args, tuple):
            return True
        return not any(str(arg).removeprefix("::ffff:") in self._addresses for arg in record.args)


def quiet_clients(addresses: frozenset[str]) -> Callable[[], None]:
    """Leave out the session lines about connections from `addresses` (the self-audit's, which
    logs one summary per listener instead) until the returned function is called."""
    quiet = _QuietClients(addresses)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)

    def end() -> None:
        for handler in handlers:
            handler.removeFilter(quiet)

    return end


def off_the_loop() -> Callable[[], None]:
    """In a worker (after fork: threads do not survive it): the root logger's handlers move
    behind a thread. Returns the function that writes what is left and stops it."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    writer = _Writer(handlers)
    for handler in handlers:
        root.removeHandler(handler)
    deferred = _DeferredHandler(writer.pending, writer.wake)
    root.addHandler(deferred)
    writer.start()

    def stop() -> None:
        for handler in handlers:  # first, so that no line logged meanwhile goes nowhere
            root.addHandler(handler)
        root.removeHandler(deferred)
        writer.stop()

    return stop
