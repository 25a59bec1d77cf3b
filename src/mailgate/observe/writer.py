"""Background log writing: the event loop only enqueues; one thread writes, rotates and prunes.

Owns: a bounded queue in front of one writer thread (a full queue drops the record and counts
it, the caller never waits; the thread is not woken per record but every `WAKE_INTERVAL`, or at
once for a control action such as `flush`, so it does not fight the event loop for the GIL once
per record: records reach their files up to `WAKE_INTERVAL` late, in batches), daily files, retention by days, and the disk guard's switch
(`suspended`: records are counted and not written). The counters `written`, `dropped`,
`suppressed` and `failed` are read by metrics.py.
Must not: format records (w3c.py, jsonlog.py) or decide what is logged (translog.py).

Files are per day and never renamed (IIS: `exYYMMDD.log`; JSON: `NAME-YYYYMMDD.jsonl`), and
every batch of whole lines goes out in one `write(2)` on an O_APPEND descriptor. So several
worker processes (server.workers) can append to the same files without a lock, a rename race or
a torn line (on local file systems a single append write is not interleaved with another).
Rotation happens at midnight UTC, chosen by each record's own timestamp: a fake clock drives it
in tests, and W3C times, which are UTC, never straddle two files. IIS rolls at UTC midnight by
default too.

Why hand-written: logging's TimedRotatingFileHandler rotates by renaming (unsafe with several
processes) on the wall clock in the caller's thread, and cannot write W3C directives into each
new file; its QueueHandler has no bounded drop-and-count mode.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from mailgate.core.clock import Clock
from mailgate.observe import stamps

log = logging.getLogger("mailgate.observe")

DEFAULT_MAX_PENDING = 20_000  # records; about 10 MB at worst, seconds of a busy relay's logging
WAKE_INTERVAL = 0.1  # seconds a record may wait for the writer thread (diagnostics.py does the same)
BATCH_BYTES = 64 * 1024  # lines gathered into one write(2)


def utc_day(when: float) -> date:
    return stamps.texts(when).day


@dataclass(frozen=True)
class DatedNaming:
    """One file per day in `directory`: prefix + the day in `day_format` + suffix (IIS:
    `ex` + `%y%m%d` + `.log`)."""

    directory: Path
    prefix: str
    day_format: str
    suffix: str

    def path(self, day: date) -> Path:
        return self.directory / f"{self.prefix}{day.strftime(self.day_format)}{self.suffix}"

    def days_on_disk(self) -> list[tuple[date, Path]]:
        """Our files with the day each holds, oldest first (other files are ignored)."""
        found = []
        for candidate in self.directory.glob(f"{self.prefix}*{self.suffix}"):
            stamp = candidate.name[len(self.prefix): len(candidate.name) - len(self.suffix)]
            try:
                day = datetime.strptime(stamp, self.day_format).date()
            except ValueError:
                continue  # not one of ours
            if day.strftime(self.day_format) == stamp:  # strptime also takes unpadded digits
                found.append((day, candidate))
        return sorted(found)


@dataclass(eq=False)
class LogStream:
    """One log: how files are named, how a record becomes text, what opens each file."""

    name: str
    naming: DatedNaming
    render: Callable[[Mapping[str, Any]], str]  # one record -> its line(s), newline included
    header: Callable[[float], str] | None = None  # directives written whenever a file is opened
    _fd: int | None = field(default=None, repr=False)
    _day: date | None = field(default=None, repr=False)
    _batch: list[bytes] = field(default_factory=list, repr=False)
    _batch_bytes: int = field(default=0, repr=False)
    _batch_records: int = field(default=0, repr=False)


_STOP = object()


class LogWriter:
    """The writer thread. Thread-safe: `emit` from the event loop, the rest from anywhere."""

    def __init__(
        self,
        streams: list[LogStream],
        clock: Clock,
        *,
        retention_days: int = 30,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.streams = streams
        self._clock = clock
        self.retention_days = retention_days  # 0 keeps files for ever
        self._max_pending = max_pending
        self._pending: collections.deque[Any] = collections.deque()  # records and control actions
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.suspended = False
        self.written = 0
        self.dropped = 0  # queue full
        self.suppressed = 0  # not written while suspended by the disk guard
        self.failed = 0  # lost to write errors (disk full, permissions), counted per record

    # --- event-loop side ---------------------------------------------------------------------
    def emit(self, stream: LogStream, when: float, record: Mapping[str, Any]) -> None:
        """Queue one record; never blocks. Dropped (and counted) when suspended or full."""
        if self.suspended:
            self.suppressed += 1
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append((stream, when, record))  # the thread takes it within WAKE_INTERVAL

    # --- control -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mailgate-log-writer", daemon=True)
            self._thread.start()
            self.prune()

    def prune(self) -> None:
        """Delete files older than the retention (done in the writer thread)."""
        self._control(lambda: self._prune(utc_day(self._clock.now())))

    def on_disk_state(self, state: str) -> None:
        """The disk guard's state (server/diskguard.py DiskState.label): `soft` prunes to the
        retention and keeps writing, `hard` prunes and suspends writing, `ok` resumes."""
        if state in ("soft", "hard"):
            self.prune()
        self.suspended = state == "hard"

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record queued so far is written to the files."""
        done = threading.Event()
        self._control(done.set)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._pending.append(_STOP)
        self._wake.set()
        thread.join(timeout)

    def _control(self, action: Callable[[], None]) -> None:
        if self._thread is None:
            self._write_batches()
            action()
            return
        self._pending.append(action)  # after every record emitted so far
        self._wake.set()

    # --- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            self._wake.wait(WAKE_INTERVAL)
            self._wake.clear()
            while self._pending:
                item = self._pending.popleft()
                if item is _STOP:
                    stopping = True
                    break
                try:
                    if callable(item):
                        self._write_batches()
                        item()
                    else:
                        self._add(*item)
                except Exception:  # the thread must outlive any bad record or file system error
                    self.failed += 1
                    log.exception("log writer: unexpected error")
            try:
                self._write_batches()
            except Exception:
                self.failed += 1
                log.exception("log writer: unexpected error")
        self._write_batches()
        for stream in self.streams:
            self._close(stream)

    def _add(self, stream: LogStream, when: float, record: Mapping[str, Any]) -> None:
        day = utc_day(when)
        if stream._day is not None and day < stream._day:
            day = stream._day  # a record stamped before midnight but queued after it
        if stream._day != day:
            self._write_batch(stream)
            self._close(stream)
            rotated = stream._day is not None
            stream._day = day
            if rotated:
                self._prune(day)
            if stream.header is not None:
                self._append(stream, stream.header(when), counts=False)
        self._append(stream, stream.render(record), counts=True)
        if stream._batch_bytes >= BATCH_BYTES:
            self._write_batch(stream)

    def _append(self, stream: LogStream, text: str, *, counts: bool) -> None:
        data = text.encode("utf-8", "replace")
        stream._batch.append(data)
        stream._batch_bytes += len(data)
        stream._batch_records += counts

    def _write_batches(self) -> None:
        for stream in self.streams:
            self._write_batch(stream)

    def _write_batch(self, stream: LogStream) -> None:
        if not stream._batch or stream._day is None:
            return
        data = b"".join(stream._batch)
        records = stream._batch_records
        stream._batch.clear()
        stream._batch_bytes = stream._batch_records = 0
        try:
            if stream._fd is None:
                path = stream.naming.path(stream._day)
                path.parent.mkdir(parents=True, exist_ok=True)
                stream._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            view = memoryview(data)
            while view:  # one write normally; a short write (disk filling) continues
                view = view[os.write(stream._fd, view):]
            self.written += records
        except OSError as exc:
            self.failed += records
            if self.failed == records or self.failed // 1000 != (self.failed - records) // 1000:
                log.warning("%s log: write failed (%d record(s) lost so far): %s", stream.name, self.failed, exc)
            self._close(stream)

    def _close(self, stream: LogStream) -> None:
        fd, stream._fd = stream._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("%s log: close failed: %s", stream.name, exc)

    def _prune(self, today: date) -> None:
        if self.retention_days <= 0:
            return
        oldest_kept = today - timedelta(days=self.retention_days - 1)
        for stream in self.streams:
            for day, path in stream.naming.days_on_disk():
                if day < oldest_kept and day != stream._day:  # never the file being written
                    try:
                        path.unlink()
                        log.info("%s log: removed %s (retention %d days)", stream.name, path, self.retention_days)
                    except FileNotFoundError:
                        pass  # another worker process removed it first
                    except OSError as exc:
                        log.warning("%s log: cannot remove %s: %s", stream.name, path, exc)
