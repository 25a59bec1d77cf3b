"""One server per spool: an exclusive lock held by the supervisor for as long as it runs.

Owns: `SpoolLock`, an exclusive `flock` on `<spool>/mailgate.lock` (the file records the holder's
pid for the error message), taken before the supervisor recovers leases or binds a port, and
inherited by its forked workers, so the lock lives until the last process of the server is gone
(issue 13 item 3: a second `mailgate serve` on a live spool recovered its leases, and messages in
delivery were sent twice). `spool_holder()` tells the queue commands whether a live server owns
the spool, without taking or creating anything.
Must not: create the spool when it would then belong to the wrong user (privileges.py reports
that), or wait for the lock: a second instance is refused at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "mailgate.lock"


class SpoolInUse(Exception):
    """Another mailgate holds the spool; the message names the spool and the holder's pid."""


class SpoolLock:
    def __init__(self, spool_dir: str | Path) -> None:
        self.path = Path(spool_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise SpoolInUse; OSError for a spool that cannot hold the file."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            # Left by a run as root: a read-only descriptor still takes an flock.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolInUse(_in_use(self.path)) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # read-only descriptor: the lock holds all the same, only the pid is not shown
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def spool_holder(spool_dir: str | Path) -> str | None:
    """A description of the live server holding the spool's lock, or None when none does."""
    path = Path(spool_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no server has run on this spool since it was made
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return _in_use(path)
        raise
    finally:
        os.close(fd)
    return None


def _in_use(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    holder = f"mailgate (pid {pid})" if pid.isdigit() else "another mailgate"
    return f"spool {path.parent} is in use by {holder}; one server per spool"
