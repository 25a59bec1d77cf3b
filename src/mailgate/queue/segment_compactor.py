"""Segment compaction for the embedded queue: a few live bodies must not keep a whole file.

Owns: `SegmentCompactor`. A segment file is only removed once its last body is gone, so one
deferred message used to keep a whole segment (up to 64 MiB) on disk for days (issue 21 item 6).
At most every `interval` seconds (`maybe_start()`, called after deliveries and deletions), the
compactor looks for segments whose dead space is at least `min_waste` bytes and at least three
quarters of the file, and moves their live bodies to the current segment; the emptied segment is
then removed as any other. A current segment in that state is retired first (it takes no more
bodies) and compacted on the next pass.

Crash-safety, per body: (1) the body is copied to the end of the current segment and
fdatasynced, in a group-commit stage, checked against its recorded CRC-32; (2) only then a durable
transaction points the message at the copy (if it still points at the original: a message
deleted meanwhile leaves the copy unreferenced) and moves one `live` count over; (3) once the old
segment's `live` count is 0, `_reap` deletes its row durably and only then unlinks the file. A
crash before (2) leaves an unreferenced copy, after (2) an old segment that recover() removes: an
acknowledged body always has one synced, referenced copy.
Must not: write SQL of its own (sqlite_queries.py), append other than through the
`SegmentAppender` in the writer thread, or unlink anything (the store's `_reap` does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from mailgate.queue import segments
from mailgate.queue import sqlite_queries as queries
from mailgate.queue.group_commit import GroupCommitWriter
from mailgate.queue.segments import SegmentAppender, SegmentRange, StagedBody

log = logging.getLogger("mailgate.queue")

COMPACT_INTERVAL = 60.0  # seconds between looks at the segments' dead space
# A segment is compacted when this much of it is dead, and at least three quarters of it: moving
# a body costs one copy; a file a quarter alive is worth it, a few KiB of waste is not.
COMPACT_MIN_WASTE = 8 * 1024 * 1024
COMPACT_DEAD_SHARE = 0.75


class SegmentCompactor:
    def __init__(
        self,
        writer: GroupCommitWriter,
        appender: SegmentAppender,
        reap: Callable[[list[int]], Awaitable[None]],
        *,
        min_waste: int = COMPACT_MIN_WASTE,
        interval: float = COMPACT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writer = writer
        self._appender = appender
        self._directory: Path = appender.directory
        self._reap = reap
        self._min_waste = min_waste
        self._interval = interval
        self._clock = clock
        self._next = clock() + interval
        self._task: asyncio.Task[int] | None = None
        self.moved = 0  # bodies moved since start

    def maybe_start(self) -> None:
        """Start a compaction pass in the background if none ran for `interval` seconds."""
        if self._task is not None or self._clock() < self._next:
            return
        self._next = self._clock() + self._interval
        self._task = asyncio.create_task(self._run_quietly())

    async def stop(self) -> None:
        """Cancel a running pass (safe at any instant, see the module doc)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run_quietly(self) -> int:
        try:
            return await self.compact()
        except Exception as exc:  # a full disk, a damaged body: the next pass tries again
            log.warning("segment compaction stopped: %s", exc)
            return 0
        finally:
            self._task = None

    async def compact(self) -> int:
        """One pass: move the live bodies of every wasteful segment; returns how many moved."""
        plan, retired_current = await self._writer.run(self._plan, durable=False)
        if retired_current:  # it stopped taking bodies at the end of that group: plan again
            plan, _ = await self._writer.run(self._plan, durable=False)
        moved = 0
        for number in plan:
            bodies = await self._writer.run(partial(queries.segment_bodies, number=number), durable=False)
            for queue_id, offset, size, crc in bodies:
                moved += await self._move(queue_id, number, offset, size, crc)
            await self._reap([number, *self._appender.take_retired()])
        if moved:
            log.info("segment compaction moved %d bod%s out of segment(s) %s", moved, "y" if moved == 1 else "ies", plan)
        self.moved += moved
        return moved

    def _plan(self, connection: sqlite3.Connection) -> tuple[list[int], bool]:
        """In the writer thread: the finished segments worth compacting, and whether the current
        one was worth it too (it is then retired at the end of this group)."""
        current, wasteful, retire = self._appender.current, [], False
        for number, live_bytes in queries.segment_usage(connection):
            try:
                size = os.stat(segments.segment_path(self._directory, number)).st_size
            except FileNotFoundError:
                continue
            dead = size - live_bytes
            if dead < self._min_waste or dead < size * COMPACT_DEAD_SHARE:
                continue
            if number == current:
                self._appender.request_retire(number)
                retire = True
            elif segments.released(self._directory, number):  # no other worker appends to it
                wasteful.append(number)
        return wasteful, retire

    async def _move(self, queue_id: str, number: int, offset: int, size: int, crc: int) -> bool:
        staged = StagedBody(SegmentRange(number, offset, crc), size)
        try:  # (1) copied and synced before the call returns
            await self._writer.run(
                _nothing, stage=partial(self._appender.append, staged), undo=_nothing, durable=False, reserve=False
            )
        except (OSError, segments.BodyMismatchError) as exc:
            log.warning("body of %s not moved out of segment %d: %s", queue_id, number, exc)
            return False
        assert staged.segment is not None
        move = partial(queries.move_body, queue_id=queue_id, source=(number, offset), target=(staged.segment, staged.offset))
        try:  # (2) the row points at the synced copy, durably, before the old file can go
            return await self._writer.run(move)
        except (OSError, sqlite3.Error) as exc:  # the original stays referenced, the copy is debris
            log.warning("body of %s not moved out of segment %d: %s", queue_id, number, exc)
            return False


def _nothing(connection: sqlite3.Connection) -> None:
    """The row side of a copy-only stage: nothing to write, nothing to undo."""
