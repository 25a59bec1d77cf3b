"""The diagnostic log (stderr, or the journal under systemd): set-up and keeping it off the loop.

Owns: the format and level of mailgate's own log lines, and moving their writing to a thread
(logging.handlers.QueueHandler/QueueListener) inside each worker, so that a slow log file or
terminal never stalls the event loop that is answering SMTP clients (a write of a log line in
the loop showed up in the acceptance-latency tail). Must not: carry transaction records
(translog.py does).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str) -> None:
    """Direct logging to stderr (the supervisor, and a worker until `off_the_loop`)."""
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr)


def off_the_loop() -> Callable[[], None]:
    """In a worker (after fork: threads do not survive it): the root logger's handlers move
    behind a queue served by a thread. Returns the function that flushes and stops it."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    for handler in handlers:
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    listener.start()

    def stop() -> None:
        listener.stop()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)

    return stop
