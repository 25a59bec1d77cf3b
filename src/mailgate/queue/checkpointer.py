"""Background WAL checkpoints for the embedded queue.

Owns: a thread that copies committed WAL frames into the database file every `interval`
seconds (PASSIVE: it never blocks the writer), so that commits never pay for a checkpoint
themselves. With SQLite's automatic checkpoint the commit that crosses 1000 WAL pages copies
them all and fsyncs the database before its callers get their 250: with 100 KiB messages that
showed as a p99 acceptance latency several times the median.
After a checkpoint that copied every frame it calls `restart_wal`: the next write transaction
starts the WAL over from its beginning, and SQLite fsyncs the new WAL header in that transaction
before it writes its frames (a second fsync). The store hands that write to its writer thread at
once (queue/sqlite_store.py), so that a new message's commit does not pay for it: without that,
about one acceptance in 60 at 100 msg/s did (WAL header salts read around each commit). A
checkpoint runs only when this process committed something since the last one, apart from that
restart: otherwise the checkpoint would copy the restart's own frame, and the next commit would
start the WAL over again (and an idle server would write once a second for nothing).
Must not: write rows.
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
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        commits: Callable[[], int],
        restart_wal: Callable[[], None],
        interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self._connect = connect
        self._commits = commits  # this process's commits so far (they only grow)
        self._restart_wal = restart_wal
        self._interval = interval
        self._checked = 0  # `commits()` at the last checkpoint, the restart it caused included
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
                commits = self._commits()
                if commits <= self._checked:
                    continue  # nothing new from this process (another one checkpoints its own)
                try:
                    busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.OperationalError as exc:  # busy: another process checkpoints
                    log.debug("checkpoint skipped: %s", exc)
                    continue
                if busy == 0 and frames > 0 and copied == frames:
                    self._restart_wal()
                    commits += 1  # the restart's own commit calls for no checkpoint
                self._checked = commits
        finally:
            connection.close()
