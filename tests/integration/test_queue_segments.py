"""Large bodies in segment files: round trip, removal of empty segments, recover(), failures,
one fdatasync per group, and two writers (as with server.workers > 1) on one spool."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.clock import FakeClock
from mailgate.core.envelope import Envelope, Recipient
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue import sqlite_queries
from mailgate.queue.segments import (
    SEGMENT_THRESHOLD, SegmentAppender, StagedBody, segment_numbers, segment_path,
)
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import CorruptBodyError, MessageMeta, QueueFilter, RecipientUpdate

pytestmark = pytest.mark.timeout(60)

START = 1_800_000_000.0
KIB = 1024
MIB = 1024 * KIB
ENVELOPE = Envelope(parse_mailbox("s@example.com"), [Recipient(parse_mailbox("a@example.com"))])

StoreTest = Callable[[SqliteQueueStore], Awaitable[None]]


def run(spool: Path, test: StoreTest, **kwargs: Any) -> None:
    async def main() -> None:
        store = SqliteQueueStore(spool, clock=FakeClock(START), **kwargs)
        await store.open()
        try:
            await test(store)
        finally:
            await store.close()

    asyncio.run(main())


async def enqueue(store: SqliteQueueStore, body: bytes) -> str:
    writer = store.begin()
    for start in range(0, len(body), 8192):
        writer.write(body[start:start + 8192])
    return await store.commit(writer, ENVELOPE, MessageMeta())


async def body_of(store: SqliteQueueStore, queue_id: str, chunk_size: int = 65536) -> bytes:
    return b"".join([chunk async for chunk in store.body_chunks(queue_id, chunk_size)])


def placement(spool: Path, queue_id: str) -> tuple[int | None, bool]:
    """(segment number or None, whether an inline body row exists) of a message."""
    connection = sqlite3.connect(spool / "queue.db")
    try:
        message_id, segment = connection.execute(
            "SELECT id, body_segment FROM messages WHERE queue_id = ?", (queue_id,)
        ).fetchone()
        inline = connection.execute(
            "SELECT 1 FROM bodies WHERE message_id = ?", (message_id,)
        ).fetchone()
        return segment, inline is not None
    finally:
        connection.close()


def offset_of(spool: Path, queue_id: str) -> int:
    connection = sqlite3.connect(spool / "queue.db")
    try:
        return connection.execute("SELECT body_offset FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()[0]
    finally:
        connection.close()


def body(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_a_100_kib_body_goes_to_a_segment_and_comes_back_identical(tmp_path: Path) -> None:
    large, small = body(100 * KIB), body(SEGMENT_THRESHOLD - 1, seed=2)
    spilled = body(300 * KIB, seed=3)  # past memory_threshold: copied from its spill file
    ids: dict[str, str] = {}

    async def first(store: SqliteQueueStore) -> None:
        ids["large"] = await enqueue(store, large)
        ids["small"] = await enqueue(store, small)
        ids["spilled"] = await enqueue(store, spilled)
        assert os.listdir(store.incoming_dir) == []
        assert await body_of(store, ids["large"]) == large  # from the hot cache

    async def second(store: SqliteQueueStore) -> None:  # a new process: read from the files
        assert await body_of(store, ids["large"]) == large
        assert await body_of(store, ids["large"], chunk_size=1000) == large
        assert await body_of(store, ids["spilled"], chunk_size=7777) == spilled
        assert await body_of(store, ids["small"]) == small

    run(tmp_path, first, memory_threshold=256 * KIB)
    segment, inline = placement(tmp_path, ids["large"])
    assert segment is not None and not inline
    assert placement(tmp_path, ids["spilled"]) == (segment, False)  # same segment, appended
    assert placement(tmp_path, ids["small"]) == (None, True)  # below the threshold: inline
    segment_size = os.path.getsize(segment_path(tmp_path / "segments", segment))
    assert segment_size == len(large) + len(spilled)
    run(tmp_path, second)


def test_a_damaged_segment_body_fails_its_crc_before_its_last_chunk(tmp_path: Path) -> None:
    """Rows commit beside the segment's sync, so a power loss can leave a row whose bytes never
    reached the disk: the CRC-32 taken at append time catches that (and later damage)."""
    original = body(100 * KIB)
    ids: dict[str, str] = {}

    async def first(store: SqliteQueueStore) -> None:
        ids["large"] = await enqueue(store, original)

    async def second(store: SqliteQueueStore) -> None:  # a new process: no cached copy
        chunks = []
        with pytest.raises(CorruptBodyError):
            async for chunk in store.body_chunks(ids["large"], chunk_size=10 * KIB):
                chunks.append(chunk)
        assert sum(map(len, chunks)) < len(original)  # the end never came out

    run(tmp_path, first)
    segment, _ = placement(tmp_path, ids["large"])
    assert segment is not None
    with open(segment_path(tmp_path / "segments", segment), "r+b") as file:
        file.seek(50 * KIB)
        file.write(b"\0" * 4096)  # as a lost write would leave it
    run(tmp_path, second)


def test_the_segment_sync_runs_while_the_rows_commit_and_the_caller_waits_for_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdatasync = os.fdatasync
    seen: dict[str, object] = {}

    def committed_rows() -> int:
        with sqlite3.connect(tmp_path / "queue.db") as connection:
            return connection.execute("SELECT count(*) FROM messages").fetchone()[0]

    def watching(descriptor: int) -> None:
        seen["thread"] = threading.current_thread().name
        for _ in range(500):  # bounded: 5 s
            if committed_rows():
                seen["rows_before_sync_ended"] = committed_rows()
                break
            time.sleep(0.01)
        real_fdatasync(descriptor)

    async def test(store: SqliteQueueStore) -> None:
        monkeypatch.setattr(os, "fdatasync", watching)
        queue_id = await enqueue(store, body(100 * KIB))
        monkeypatch.undo()
        assert seen["rows_before_sync_ended"] == 1  # the transaction did not wait for the sync
        assert "-sync" in str(seen["thread"])  # the helper thread, not the writer
        assert await body_of(store, queue_id) == body(100 * KIB)

    run(tmp_path, test)


def test_deleting_the_last_live_body_of_a_closed_segment_unlinks_it(tmp_path: Path) -> None:
    async def test(store: SqliteQueueStore) -> None:
        first = await enqueue(store, body(100 * KIB, 1))
        second = await enqueue(store, body(100 * KIB, 2))  # still fits: 100 KiB < limit
        third = await enqueue(store, body(100 * KIB, 3))  # the first segment is full: a new one
        old, _ = placement(tmp_path, first)
        new, _ = placement(tmp_path, third)
        assert placement(tmp_path, second)[0] == old and new is not None and new > old
        assert segment_numbers(store.segments_dir) == [old, new]

        assert await store.delete(QueueFilter(queue_id=first)) == [first]
        assert segment_numbers(store.segments_dir) == [old, new]  # one body still lives in it
        await store.claim_due(START, 10)
        delivered = RecipientUpdate(0, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))
        assert await store.finish(second, updates=[delivered])
        assert segment_numbers(store.segments_dir) == [new]  # finish emptied it: gone

        assert await store.delete(QueueFilter(queue_id=third)) == [third]
        assert segment_numbers(store.segments_dir) == [new]  # the current one is cut back instead
        assert segment_path(store.segments_dir, new).stat().st_size == 0
        fourth = await enqueue(store, body(100 * KIB, 4))
        assert placement(tmp_path, fourth)[0] == new and offset_of(tmp_path, fourth) == 0
        assert await body_of(store, fourth) == body(100 * KIB, 4)

    run(tmp_path, test, segment_limit=150 * KIB)


def test_an_emptied_current_segment_is_cut_back_at_once_and_reused(tmp_path: Path) -> None:
    """Its space comes back when its last body goes, not when it fills up (issue 21 item 2), and
    the next body goes in at its start: no new file, number and directory fsync per message
    when mail comes one message at a time (issue 18, acceptance latency)."""
    async def test(store: SqliteQueueStore) -> None:
        gone = await enqueue(store, body(100 * KIB, 1))
        number, _ = placement(tmp_path, gone)
        await store.claim_due(START, 10)
        delivered = RecipientUpdate(0, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))
        assert await store.finish(gone, updates=[delivered])
        assert segment_numbers(store.segments_dir) == [number]
        assert segment_path(store.segments_dir, number).stat().st_size == 0
        kept = await enqueue(store, body(100 * KIB, 2))
        assert placement(tmp_path, kept)[0] == number and offset_of(tmp_path, kept) == 0
        assert await body_of(store, kept) == body(100 * KIB, 2)
        assert segment_path(store.segments_dir, number).stat().st_size == 100 * KIB

    run(tmp_path, test, segment_limit=150 * KIB)


def test_the_current_segment_is_not_cut_back_when_the_deletion_did_not_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewind waits for the durable commit that found the segment empty: had that commit
    failed, a crash could bring back a deleted row pointing into the segment's bytes."""
    async def test(store: SqliteQueueStore) -> None:
        gone = await enqueue(store, body(100 * KIB, 1))
        number, _ = placement(tmp_path, gone)

        def failing(*args: object, **kwargs: object) -> list[int]:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(sqlite_queries, "drop_unused_segments", failing)
        assert await store.delete(QueueFilter(queue_id=gone)) == [gone]
        assert segment_path(store.segments_dir, number).stat().st_size == 100 * KIB
        monkeypatch.undo()
        kept = await enqueue(store, body(100 * KIB, 2))  # appended after the old bytes
        assert placement(tmp_path, kept)[0] == number and offset_of(tmp_path, kept) == 100 * KIB
        assert await body_of(store, kept) == body(100 * KIB, 2)

    run(tmp_path, test)


def test_a_rewind_is_dropped_when_a_body_went_into_the_segment_in_the_same_group(tmp_path: Path) -> None:
    """The durable commit that found the segment empty may share its group with a new body's
    stage, which appended to the segment before the commit: that body must stay."""
    appender = SegmentAppender(tmp_path, allocate=lambda connection: 1, limit=MIB)
    connection = sqlite3.connect(":memory:")
    first = StagedBody(body(100 * KIB, 1), 100 * KIB)
    appender.append(first, connection)
    appender.sync()
    appender.end_group()
    second = StagedBody(body(100 * KIB, 2), 100 * KIB)
    appender.append(second, connection)  # a stage of the group
    appender.request_rewind(1)  # the commit of the same group found no live body (the first deleted)
    appender.sync()
    appender.end_group()
    assert second.offset == 100 * KIB
    assert segment_path(tmp_path, 1).read_bytes()[100 * KIB:] == body(100 * KIB, 2)
    appender.request_rewind(1)  # a later group, nothing appended: cut back
    appender.end_group()
    assert segment_path(tmp_path, 1).stat().st_size == 0
    third = StagedBody(body(KIB, 3), KIB)
    appender.append(third, connection)
    assert (third.segment, third.offset) == (1, 0)
    appender.close()


def test_a_failed_rewind_retires_the_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the cut fails the segment's length is unknown: nothing is appended to it again, and it
    is handed to the store for removal like any other finished segment."""
    numbers = iter([1, 2])
    appender = SegmentAppender(tmp_path, allocate=lambda connection: next(numbers), limit=MIB)
    connection = sqlite3.connect(":memory:")
    appender.append(StagedBody(body(KIB, 1), KIB), connection)
    appender.sync()
    appender.end_group()

    def failing(descriptor: int, length: int) -> None:
        raise OSError(errno.EIO, "ftruncate failed")

    monkeypatch.setattr(os, "ftruncate", failing)
    appender.request_rewind(1)
    appender.end_group()
    monkeypatch.undo()
    assert appender.current is None and appender.take_retired() == [1]
    later = StagedBody(body(KIB, 2), KIB)
    appender.append(later, connection)
    assert later.segment == 2
    appender.close()


def test_recover_removes_orphan_segments_and_numbers_new_ones_above(tmp_path: Path) -> None:
    ids: list[str] = []
    emptied: list[int] = []

    async def first(store: SqliteQueueStore) -> None:
        ids.append(await enqueue(store, body(50 * KIB, 1)))
        ids.append(await enqueue(store, body(50 * KIB, 2)))  # rotates: a second segment
        emptied.append(placement(tmp_path, ids[1])[0])
        await store.delete(QueueFilter(queue_id=ids[1]))  # the current segment emptied: cut back

    async def second(store: SqliteQueueStore) -> None:
        kept = placement(tmp_path, ids[0])[0]
        orphan = segment_path(store.segments_dir, emptied[0] + 5)  # debris without a row
        orphan.write_bytes(b"unreferenced bytes of a crashed group")
        (store.segments_dir / "notes.txt").write_text("not a segment")
        assert segment_numbers(store.segments_dir) == [kept, emptied[0], emptied[0] + 5]
        await store.recover()  # the emptied one's writer is gone: it goes too
        assert segment_numbers(store.segments_dir) == [kept]
        assert (store.segments_dir / "notes.txt").exists()
        new = await enqueue(store, body(50 * KIB, 3))
        number = placement(tmp_path, new)[0]
        assert number is not None and number > emptied[0]
        assert await body_of(store, ids[0]) == body(50 * KIB, 1)

    run(tmp_path, first, segment_limit=40 * KIB)
    run(tmp_path, second, segment_limit=40 * KIB)


@pytest.mark.parametrize("failing", ["pwrite", "fdatasync"])
def test_a_failing_segment_write_fails_only_its_groups_operations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def broken(*args: object) -> None:
        raise OSError(errno.EIO, f"{failing} failed")

    async def test(store: SqliteQueueStore) -> None:
        before = await enqueue(store, body(100 * KIB, 1))
        first_segment, _ = placement(tmp_path, before)
        small = [body(1000, seed) for seed in range(10, 13)]
        large = [body(100 * KIB, seed) for seed in range(20, 23)]
        monkeypatch.setattr(os, failing, broken)
        results = await asyncio.gather(
            *(enqueue(store, item) for item in small + large), return_exceptions=True
        )
        monkeypatch.undo()
        assert all(isinstance(result, str) for result in results[:3])  # inline: unaffected
        assert all(isinstance(result, OSError) for result in results[3:])
        assert store.stats.failed_operations == 3 and store.stats.failed_commits == 0

        after = await enqueue(store, body(100 * KIB, 30))  # a new segment, the failed one dropped
        second_segment, _ = placement(tmp_path, after)
        assert second_segment is not None and second_segment > first_segment
        # The abandoned segments are gone; the first one keeps its live body.
        assert segment_numbers(store.segments_dir) == [first_segment, second_segment]
        visible = sorted(summary.queue_id for summary in await store.list(QueueFilter()))
        assert visible == sorted([before, after, *results[:3]])
        for queue_id, expected in [(before, body(100 * KIB, 1)), (after, body(100 * KIB, 30))]:
            assert await body_of(store, queue_id) == expected

    run(tmp_path, test)


def test_a_group_shares_one_fdatasync_for_all_its_large_bodies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdatasync = os.fdatasync
    calls = 0

    def counting(descriptor: int) -> None:
        nonlocal calls
        calls += 1
        real_fdatasync(descriptor)

    async def test(store: SqliteQueueStore) -> None:
        monkeypatch.setattr(os, "fdatasync", counting)
        bodies = [body(100 * KIB, seed) for seed in range(100)]
        ids = await asyncio.gather(*(enqueue(store, item) for item in bodies))
        stats = store.stats
        assert calls == stats.stage_syncs  # one segment: one fdatasync per group
        assert stats.stage_syncs <= stats.commits
        assert stats.stage_syncs < 50, f"{stats.stage_syncs} syncs for 100 bodies: not grouping"
        assert stats.largest_group > 4
        for queue_id, expected in zip(ids, bodies):
            assert await body_of(store, queue_id) == expected

    run(tmp_path, test)


def test_two_writers_never_share_or_remove_each_others_current_segment(tmp_path: Path) -> None:
    """Two stores in one process hold separate flocks, exactly as two worker processes do."""

    async def test(first: SqliteQueueStore) -> None:
        second = SqliteQueueStore(tmp_path, clock=FakeClock(START))
        await second.open()
        try:
            mine = await enqueue(first, body(100 * KIB, 1))
            theirs = await enqueue(second, body(100 * KIB, 2))
            my_segment, their_segment = placement(tmp_path, mine)[0], placement(tmp_path, theirs)[0]
            assert my_segment != their_segment
            # The first store deletes the second's only body: its segment is still being
            # appended to by the second writer, so neither the delete nor recover() removes it.
            assert await first.delete(QueueFilter(queue_id=theirs)) == [theirs]
            await first.recover()
            assert segment_numbers(first.segments_dir) == sorted([my_segment, their_segment])
            again = await enqueue(second, body(100 * KIB, 3))
            assert placement(tmp_path, again)[0] == their_segment
            assert await body_of(first, again) == body(100 * KIB, 3)
        finally:
            await second.close()
        await first.delete(QueueFilter(queue_id=again))
        await first.recover()  # the second writer is gone: its empty segment can go
        assert segment_numbers(first.segments_dir) == [my_segment]

    run(tmp_path, test)


def test_a_body_acknowledged_beside_a_failed_append_was_fdatasynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 1: one append of a group fails (disk full); a body appended before it to
    the same segment in the same group still gets its 250, so it must have been fdatasynced."""
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync
    kept, failing = body(100 * KIB, 40), body(100 * KIB, 41)
    synced: list[int] = []  # inode numbers of the files fdatasynced

    def full_for_one_body(descriptor: int, data: Any, offset: int) -> int:
        if bytes(data[:64]) == failing[:64]:
            real_pwrite(descriptor, bytes(data[: len(data) // 2]), offset)  # a torn tail
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(descriptor, data, offset)

    def recording(descriptor: int) -> None:
        synced.append(os.fstat(descriptor).st_ino)
        real_fdatasync(descriptor)

    async def test(store: SqliteQueueStore) -> None:
        monkeypatch.setattr(os, "pwrite", full_for_one_body)
        monkeypatch.setattr(os, "fdatasync", recording)
        # Hold the writer's lock so that both commits wait and then share one group.
        lock = os.open(tmp_path / "queue.db.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        commits = [asyncio.ensure_future(enqueue(store, item)) for item in (kept, failing)]
        await asyncio.sleep(0.2)  # both operations reach the writer's inbox (not a timed assert)
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        acknowledged, refused = await asyncio.gather(*commits, return_exceptions=True)
        monkeypatch.undo()
        assert isinstance(refused, OSError) and refused.errno == errno.ENOSPC
        assert isinstance(acknowledged, str)
        assert store.stats.largest_group == 2  # the case of the issue: one group for both
        segment, _ = placement(tmp_path, acknowledged)
        assert segment is not None
        inode = os.stat(segment_path(store.segments_dir, segment)).st_ino
        assert inode in synced, "a body got its 250 without an fdatasync of its segment"
        assert await body_of(store, acknowledged) == kept

    run(tmp_path, test)
