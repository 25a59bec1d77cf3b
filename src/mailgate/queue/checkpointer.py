"""Background WAL checkpoints for the embedded queue.

Owns: a thread that copies committed WAL frames into the database file every `interval`
seconds (PASSIVE: it never blocks the writer), so that commits never pay for a checkpoint
themselves. With SQLite's automatic checkpoint the commit that crosses 1000 WAL pages copies
them all and fsyncs the database before its callers get their 250: with 100 KiB messages that
showed as a p99 acceptance latency several times the median. Must not: write rows.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("mailgate.queue")

# Seconds between checkpoints. Each one fsyncs the database file, and a commit that has to wait
# for that fsync shows in the latency tail: rare checkpoints keep the tail short, at the price of
# a larger WAL (bounded by the write rate times the interval).
CHECKPOINT_INTERVAL = 1.0


class Checkpointer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], interval: float = CHECKPOINT_INTERVAL) -> None:
        self._connect = connect
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailgate-queue-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        connection = self._connect()
        try:
            while not self._stop.wait(self._interval):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.OperationalError as exc:  # busy: another process checkpoints
                    log.debug("checkpoint skipped: %s", exc)
        finally:
            connection.close()
