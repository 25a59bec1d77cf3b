"""Room kept aside on the spool's file system so queue bookkeeping works when the disk is full.

Owns: `SpaceReserve`, the file `spool_dir/reserve` of a fixed size, allocated for real with
`posix_fallocate` (not a sparse file). When SQLite finds the disk full while recording a delivery
outcome or deleting a delivered message, the queue writer releases the reserve (unlinks it) and
runs that bookkeeping again: removing delivered messages is what frees space, so it must never be
the write that fails (issue 21 item 2: without it the relay stayed full, and the deliveries it
could not record were repeated after a restart). The reserve is allocated again, at most every
`RESTORE_INTERVAL` seconds, once the file system has room for it twice over.
Must not: run SQL or decide which writes may use the room (queue/group_commit.py does), or touch
any other file.

Why a file and not SQLite's own measures: `PRAGMA journal_size_limit` or a pre-grown WAL keep
space inside files SQLite may still need to grow elsewhere (the database file, -shm), while an
unlinked reserve gives blocks back to the file system for whichever of them needs them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("mailgate.queue")

RESERVE_NAME = "reserve"
RESTORE_INTERVAL = 5.0  # seconds between attempts to allocate a released reserve again


class SpaceReserve:
    def __init__(self, spool_dir: Path, size: int, *, clock=time.monotonic) -> None:
        self.path = Path(spool_dir) / RESERVE_NAME
        self.size = size
        self._clock = clock
        self._next_restore = 0.0
        self._held = False  # known to be allocated by this process (no system call to ask)
        self.releases = 0  # how often the room was handed back to the file system

    @property
    def held(self) -> bool:
        return self._held

    def _on_disk(self) -> bool:
        try:
            return os.stat(self.path).st_blocks * 512 >= self.size
        except FileNotFoundError:
            return False

    def release(self) -> bool:
        """Give the room back to the file system; True if there was any to give."""
        self._next_restore = self._clock() + RESTORE_INTERVAL
        self._held = False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        self.releases += 1
        log.warning("queue disk full: released the %d-byte space reserve for bookkeeping", self.size)
        return True

    def restore(self) -> bool:
        """Allocate the reserve if it is missing and the file system has room for it twice over;
        at most every RESTORE_INTERVAL seconds after a release. True if it is held afterwards."""
        if self.size <= 0:
            return False
        if self._held:
            return True
        now = self._clock()
        if now < self._next_restore:
            return False
        self._next_restore = now + RESTORE_INTERVAL
        if self._on_disk():  # allocated before (an earlier run, or another worker)
            self._held = True
            return True
        stats = os.statvfs(self.path.parent)
        if stats.f_bavail * stats.f_frsize < 2 * self.size:
            return False
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(descriptor, 0, self.size)
        except OSError as exc:  # the space went meanwhile: no half reserve is kept
            os.close(descriptor)
            os.unlink(self.path)
            log.warning("space reserve not allocated: %s", exc)
            return False
        os.close(descriptor)
        self._held = True
        log.info("space reserve of %d bytes allocated in %s", self.size, self.path.parent)
        return True
