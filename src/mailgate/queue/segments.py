"""Append-only segment files for large message bodies of the embedded queue.

Owns: the files `spool/segments/<number>.seg`, appending bodies to the current one from the
writer thread (`SegmentAppender`), the one fdatasync per group commit that makes them durable,
reading a byte range back with `os.pread` (reader threads), and the test "may this segment be
removed" (`released`). A body of `SEGMENT_THRESHOLD` bytes or more lives in a segment; smaller
ones stay inline in SQLite, where they cost one page and no second sync.
Must not: run SQL of its own (the caller hands in `allocate`), decide when a segment is empty
(the `segments(id, live)` table does, in the same transactions as the rows), or unlink anything
a writer may still append to.

Crash-safety rule: a body's bytes are appended and fdatasynced BEFORE the transaction that
records (segment, offset) commits, so a crash in between leaves unreferenced bytes in a segment,
never a row pointing at missing bytes. A new segment's directory entry is fsynced before its
first byte is referenced. The current segment is cut back and written from its start again only
after a durable transaction recorded that no row points into it.

Several processes (server.workers > 1) share the directory: every segment number comes from
SQLite (AUTOINCREMENT, never reused, so a number always means one file), each process appends
only to segments it created, and it holds an exclusive flock on such a segment from creation
until the group commit after it stopped appending to it. A segment whose flock can be taken is
therefore finished: its `live` count can only go down, and it may be unlinked once that is 0.
Hand-written: no library offers a group-synced append log that cooperates with SQLite's commits.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SEGMENTS_DIRECTORY = "segments"
SEGMENT_SUFFIX = ".seg"
# Bodies from this size on go to a segment: below it one SQLite page or two hold the body and a
# second sync per group would cost small messages latency for nothing.
SEGMENT_THRESHOLD = 16 * 1024
# A segment stops taking bodies past this size; it is unlinked once its last body is deleted (the
# current one is cut back to nothing instead, `request_rewind`).
SEGMENT_LIMIT = 64 * 1024 * 1024
COPY_CHUNK = 1024 * 1024  # spill files are copied in chunks, never whole into memory
ALLOCATE_ATTEMPTS = 8  # numbers whose file already exists (debris of a power loss) are skipped


class SegmentError(OSError):
    """A segment file is missing, shorter than a row says, or could not be created."""


class BodyMismatchError(ValueError):
    """A body to be moved does not match its recorded CRC-32: it stays where it is."""


@dataclass(frozen=True, slots=True)
class SegmentRange:
    """A body already in a segment, to be copied into the current one (compaction)."""

    segment: int
    offset: int
    crc: int  # the CRC-32 recorded for it: a copy that does not match is refused


@dataclass(slots=True)
class StagedBody:
    """A large body on its way into a segment; `segment` and `offset` are set once appended."""

    source: bytes | Path | SegmentRange  # the bytes, the sealed spill file, or another segment
    size: int
    segment: int | None = None
    offset: int = 0
    crc: int = 0  # zlib.crc32 of the body, for the row (read_range's caller checks it)


@dataclass(slots=True)
class _OpenSegment:
    number: int
    descriptor: int  # holds the flock
    size: int
    dirty: bool = False


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number}{SEGMENT_SUFFIX}"


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segment files present (anything else in the directory is ignored)."""
    numbers = []
    for entry in os.listdir(directory):
        stem, dot, suffix = entry.partition(".")
        if dot and "." + suffix == SEGMENT_SUFFIX and stem.isdigit():
            numbers.append(int(stem))
    return sorted(numbers)


def released(directory: Path, number: int) -> bool:
    """True if no writer holds the segment (its flock is free) or its file is gone."""
    try:
        descriptor = os.open(segment_path(directory, number), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)  # closing drops the probe's own lock
    return True


def unlink_segment(directory: Path, number: int) -> None:
    try:
        os.unlink(segment_path(directory, number))
    except FileNotFoundError:
        pass


def read_range(
    directory: Path, number: int, start: int, end: int, chunk_size: int, budget: int
) -> list[bytes]:
    """Chunks of `chunk_size` from [start, end) of a segment, about `budget` bytes at most.

    Raises FileNotFoundError when the segment is gone (its message was deleted meanwhile) and
    SegmentError when it is shorter than the row says.
    """
    chunks: list[bytes] = []
    descriptor = os.open(segment_path(directory, number), os.O_RDONLY | os.O_CLOEXEC)
    try:
        position = start
        while position < end and budget >= chunk_size:
            chunk = os.pread(descriptor, min(chunk_size, end - position), position)
            if not chunk:
                raise SegmentError(f"segment {number} ends at {position}, before {end}")
            chunks.append(chunk)
            position += len(chunk)
            budget -= len(chunk)
    finally:
        os.close(descriptor)
    return chunks


class SegmentAppender:
    """Appends bodies for ONE writer at a time (the writer thread, or a caller committing inline
    while it holds the writer's turn, queue/group_commit.py): `append` per body, `sync` once per
    group, then `end_group`. Segments it stops appending to are listed by `take_retired()` for the store
    to remove once empty. Only `take_retired` may be called from another thread."""

    def __init__(
        self,
        directory: Path,
        allocate: Callable[[sqlite3.Connection], int],
        limit: int = SEGMENT_LIMIT,
    ) -> None:
        self.directory = directory
        self._allocate = allocate
        self._limit = limit
        self._current: _OpenSegment | None = None
        self._retiring: list[_OpenSegment] = []  # no more appends; closed after the commit
        self._retired: deque[int] = deque()  # thread-safe hand-over to the event loop
        self._retire_requested: int | None = None  # the current segment, mostly dead space
        self._rewind_requested: int | None = None  # the current segment, durably without a live body
        self._appended_in_group = False
        self.syncs = 0  # fdatasync calls made

    @property
    def current(self) -> int | None:
        """The segment this process appends to now (never to be unlinked)."""
        return None if self._current is None else self._current.number

    def append(self, staged: StagedBody, connection: sqlite3.Connection) -> None:
        """Write the body at the end of the current segment (rotating first if it is full).

        `connection` (the writer's, outside any transaction) allocates a new segment's number.
        """
        spill = staged.source if isinstance(staged.source, Path) else None
        source = None if spill is None else open(spill, "rb")  # noqa: SIM115 - closed below
        moved = staged.source if isinstance(staged.source, SegmentRange) else None
        try:
            # Opened before anything is written: a missing segment leaves the current one whole.
            from_segment = -1 if moved is None else os.open(
                segment_path(self.directory, moved.segment), os.O_RDONLY | os.O_CLOEXEC
            )
        except BaseException:
            if source is not None:
                source.close()
            raise
        try:
            if source is not None and os.fstat(source.fileno()).st_size != staged.size:
                raise OSError(f"spill file {spill} does not hold the {staged.size} bytes written")
            if self._current is None or self._current.size >= self._limit:
                self._rotate(connection)
            segment = self._current
            assert segment is not None
            try:
                if moved is not None:
                    crc = _copy_range(from_segment, moved, staged.size, segment.descriptor, segment.size)
                elif source is not None:
                    crc = _copy_file(segment.descriptor, source, segment.size)
                else:
                    assert isinstance(staged.source, bytes)
                    _write_all(segment.descriptor, staged.source, segment.size)
                    crc = zlib.crc32(staged.source)
            except OSError:
                self._abandon()  # the file's tail is unknown now: never append to it again
                raise
        finally:
            if source is not None:
                source.close()
            if from_segment >= 0:
                os.close(from_segment)
        staged.segment, staged.offset, staged.crc = segment.number, segment.size, crc
        segment.size += staged.size
        segment.dirty = True
        self._appended_in_group = True

    def sync(self) -> None:
        """fdatasync every segment written since the last sync: once per group and file."""
        for segment in [*self._retiring, *([self._current] if self._current else [])]:
            if not segment.dirty:
                continue
            try:
                os.fdatasync(segment.descriptor)
            except OSError:
                # After a failed sync the page cache may have dropped the bytes (fsyncgate):
                # nothing in this segment can be trusted to be written any more.
                if segment is self._current:
                    self._abandon()
                raise
            segment.dirty = False
            self.syncs += 1

    def request_retire(self, number: int) -> None:
        """Stop appending to the current segment `number` at the end of this group, unless a
        body went into it during the group: it holds mostly dead space, which compaction can
        only give back once no writer appends to it."""
        if self._current is not None and self._current.number == number:
            self._retire_requested = number

    def request_rewind(self, number: int) -> None:
        """The current segment `number` holds no live body, as a transaction just made durable
        says (call this from that transaction's after-commit action, never sooner: a row of a
        deleted message that a crash could bring back must not point into rewritten bytes). At
        the end of this group, unless a body went into it during the group, it is cut to
        nothing and the next body goes in at its start: its space comes back at once, and mail
        arriving one message at a time does not pay for a new file, its number and a directory
        fsync per message (acceptance latency at 100 KiB, docs/performance.md)."""
        if self._current is not None and self._current.number == number:
            self._rewind_requested = number

    def end_group(self) -> None:
        """After each group's commit (or failure): retire or rewind the current segment as
        requested, then release the segments retired during the group."""
        current = self._current
        untouched = current is not None and not self._appended_in_group and not current.dirty
        if untouched and current.number == self._retire_requested:
            self._retiring.append(current)
            self._current = None
        elif untouched and current.number == self._rewind_requested:
            try:
                os.ftruncate(current.descriptor, 0)
                current.size = 0
            except OSError:
                self._abandon()  # its length is unknown now: never append to it again
        self._retire_requested = self._rewind_requested = None
        self._appended_in_group = False
        while self._retiring:
            segment = self._retiring.pop()
            os.close(segment.descriptor)  # drops the flock: the segment is finished
            self._retired.append(segment.number)

    def take_retired(self) -> list[int]:
        numbers = []
        while self._retired:
            numbers.append(self._retired.popleft())
        return numbers

    def close(self) -> None:
        """Stop appending (the writer thread is stopped); the last segment is left to recover()."""
        if self._current is not None:
            self._retiring.append(self._current)
            self._current = None
        self.end_group()

    def _rotate(self, connection: sqlite3.Connection) -> None:
        if self._current is not None:
            self._retiring.append(self._current)
            self._current = None
        for _ in range(ALLOCATE_ATTEMPTS):
            number = self._allocate(connection)
            try:
                descriptor = os.open(
                    segment_path(self.directory, number),
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
            except FileExistsError:
                continue
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: never busy
            self._current = _OpenSegment(number, descriptor, 0)
            _fsync_directory(self.directory)  # the entry is durable before a row points at it
            return
        raise SegmentError(f"no free segment number after {ALLOCATE_ATTEMPTS} attempts")

    def _abandon(self) -> None:
        """Stop appending to the current segment. It keeps its `dirty` mark: bodies appended to
        it earlier in this group are still committed, so this group's sync must cover them."""
        if self._current is not None:
            self._retiring.append(self._current)
            self._current = None


def _copy_file(descriptor: int, source: BinaryIO, offset: int) -> int:
    """Copies `source` to `offset` on; returns its CRC-32."""
    crc = 0
    while chunk := source.read(COPY_CHUNK):
        _write_all(descriptor, chunk, offset)
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    return crc


def _copy_range(source_descriptor: int, source: SegmentRange, size: int, descriptor: int, offset: int) -> int:
    """Copy a body from another segment to `offset` on; returns its CRC-32. BodyMismatchError
    if that is not the one recorded (the bytes written stay unreferenced: the segment's size does
    not move, so the next body overwrites them)."""
    crc, position, end = 0, source.offset, source.offset + size
    while position < end:
        chunk = os.pread(source_descriptor, min(COPY_CHUNK, end - position), position)
        if not chunk:
            raise BodyMismatchError(f"segment {source.segment} ends at {position}, before {end}")
        _write_all(descriptor, chunk, offset)
        crc = zlib.crc32(chunk, crc)
        position += len(chunk)
        offset += len(chunk)
    if crc != source.crc:
        raise BodyMismatchError(f"the body at {source.offset} of segment {source.segment} fails its CRC-32")
    return crc


def _write_all(descriptor: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        view = view[written:]
        offset += written


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
