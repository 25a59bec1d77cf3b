"""Segment compaction (queue/segment_compactor.py, issue 21 item 6): a deferred message must not
keep a whole segment file, and a crash at any instant of a move loses no acknowledged body.

Real SQLite, real segment files and fsync in a temporary spool; small segments (1 MiB) and a
small waste threshold stand in for the 64 MiB files of production. Each check reads bodies back
through a store opened afresh, so they come from the disk (not the store's memory of recent
bodies) and their CRC-32 is checked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue import segments as segments_module
from mailgate.queue.segments import segment_numbers, segment_path
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import CorruptBodyError, QueueFilter, RecipientUpdate
from tests.integration.test_queue_segments import KIB, START, body, body_of, enqueue, placement, run

pytestmark = pytest.mark.timeout(90)

SEGMENT_LIMIT = 1024 * KIB
WASTE = 256 * KIB
DELIVERED = RecipientUpdate(0, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))


async def deliver(store: SqliteQueueStore, queue_ids: list[str]) -> None:
    await store.claim_due(START + 1, 1000)
    for queue_id in queue_ids:
        assert await store.finish(queue_id, updates=[DELIVERED])


async def four_of_five_delivered(store: SqliteQueueStore, spool: Path) -> tuple[list[str], int]:
    """Five 100 KiB bodies in one segment, the first four delivered: (their ids, that segment)."""
    ids = [await enqueue(store, body(100 * KIB, seed)) for seed in range(5)]
    number = placement(spool, ids[0])[0]
    await deliver(store, ids[:4])
    return ids, number


def segment_bytes(spool: Path) -> int:
    directory = spool / "segments"
    return sum(os.stat(segment_path(directory, number)).st_size for number in segment_numbers(directory))


def read_back(spool: Path, queue_id: str) -> bytes:
    """The body as a store opened afresh reads it from its segment (CRC-32 checked)."""
    async def read(store: SqliteQueueStore) -> None:
        found.append(await body_of(store, queue_id))

    found: list[bytes] = []
    run(spool, read, segment_limit=SEGMENT_LIMIT)
    return found[0]


def test_a_deferred_body_no_longer_keeps_its_segment(tmp_path: Path) -> None:
    """Eleven 100 KiB bodies fill the first segment; ten are delivered, one is deferred. The
    compaction that follows on its own (interval 0) moves the deferred body and removes the file."""
    spool, kept = tmp_path / "spool", []

    async def scenario(store: SqliteQueueStore) -> None:
        ids = [await enqueue(store, body(100 * KIB, seed)) for seed in range(12)]
        first = placement(spool, ids[0])[0]
        assert [placement(spool, queue_id)[0] for queue_id in ids[:11]] == [first] * 11
        assert placement(spool, ids[11])[0] != first  # the twelfth opened the next segment
        kept.extend([ids[5], first, segment_bytes(spool)])
        await deliver(store, [queue_id for queue_id in ids[:11] if queue_id != ids[5]])
        for _ in range(500):  # bounded: the compaction the last finish started runs in the background
            if first not in segment_numbers(store.segments_dir):
                break
            await asyncio.sleep(0.01)
        kept.append(segment_bytes(spool))

    run(spool, scenario, segment_limit=SEGMENT_LIMIT, compact_min_waste=WASTE, compact_interval=0.0)
    deferred, first, before, after = kept
    assert first not in segment_numbers(spool / "segments")
    assert placement(spool, deferred)[0] != first
    assert read_back(spool, deferred) == body(100 * KIB, 5)
    assert before >= 12 * 100 * KIB and after <= 3 * 100 * KIB  # 1.2 MiB held -> two bodies


def test_a_mostly_dead_current_segment_is_retired_then_compacted(tmp_path: Path) -> None:
    spool, kept = tmp_path / "spool", []

    async def scenario(store: SqliteQueueStore) -> None:
        ids, current = await four_of_five_delivered(store, spool)
        assert segment_numbers(store.segments_dir) == [current]  # 500 KiB for one live body
        assert await store.compact_segments() == 1
        kept.extend([ids[4], current, segment_numbers(store.segments_dir)])
        later = await enqueue(store, body(100 * KIB, 9))  # appended after the moved body
        kept.append(later)

    run(spool, scenario, segment_limit=SEGMENT_LIMIT, compact_min_waste=WASTE)
    deferred, old, numbers, later = kept
    assert old not in numbers and len(numbers) == 1
    assert placement(spool, deferred)[0] == placement(spool, later)[0] == numbers[0]
    assert segment_bytes(spool) == 2 * 100 * KIB
    assert read_back(spool, deferred) == body(100 * KIB, 4)
    assert read_back(spool, later) == body(100 * KIB, 9)


def test_a_damaged_body_is_not_moved_and_stays_detectable(tmp_path: Path) -> None:
    spool, kept = tmp_path / "spool", []

    async def scenario(store: SqliteQueueStore) -> None:
        ids, number = await four_of_five_delivered(store, spool)
        with open(segment_path(store.segments_dir, number), "r+b") as segment:
            segment.seek(4 * 100 * KIB + 10)  # inside the last (deferred) body
            segment.write(b"\x00\xff\x00")
        kept.extend([ids[4], number, await store.compact_segments()])

    run(spool, scenario, segment_limit=SEGMENT_LIMIT, compact_min_waste=WASTE)
    deferred, number, moved = kept
    assert moved == 0 and placement(spool, deferred)[0] == number
    with pytest.raises(CorruptBodyError):
        read_back(spool, deferred)


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from mailgate.queue import segment_compactor, segments, sqlite_queries
    from mailgate.queue.sqlite_store import SqliteQueueStore
    sys.path.insert(0, {root!r})
    from tests.integration.test_queue_segments import START, body, enqueue
    from tests.integration.test_segment_compaction import DELIVERED, SEGMENT_LIMIT, WASTE, deliver, KIB

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        store = SqliteQueueStore({spool!r}, segment_limit=SEGMENT_LIMIT, compact_min_waste=WASTE)
        await store.open()
        ids = [await enqueue(store, body(100 * KIB, seed)) for seed in range(12)]  # 11 in the first segment
        await deliver(store, [ids[n] for n in range(12) if n not in (1, 5, 11)])  # 1, 5 and 11 deferred
        print(" ".join(ids), flush=True)
        point = {point!r}
        if point == "copying":  # half a copy written, then the power goes
            original = segments._copy_range
            def torn(source_fd, source, size, fd, offset):
                os.pwrite(fd, os.pread(source_fd, size // 2, source.offset), offset)
                die()
            segments._copy_range = torn
        elif point == "copied":  # the copy synced, the row not moved yet
            segment_compactor.queries.move_body = die
        elif point == "moved":  # the row moved, the old file not unlinked yet
            store._compactor._reap = die
        await store.compact_segments()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("point", ["copying", "copied", "moved"])
def test_a_kill_in_the_middle_of_a_move_loses_no_acknowledged_body(tmp_path: Path, point: str) -> None:
    spool = tmp_path / "spool"
    root = str(Path(__file__).resolve().parents[2])
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=root, spool=str(spool), point=point)],
        capture_output=True, text=True, timeout=60, cwd=root,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    ids = child.stdout.split()
    deferred = {ids[1]: 1, ids[5]: 5, ids[11]: 11}
    kept: list = []

    async def after_restart(store: SqliteQueueStore) -> None:
        await store.recover()
        left = sorted(summary.queue_id for summary in await store.list(QueueFilter()))
        bodies = {queue_id: await body_of(store, queue_id) for queue_id in left}
        moved = await store.compact_segments()  # the interrupted compaction finishes
        kept.extend([left, bodies, moved, segment_numbers(store.segments_dir)])

    run(spool, after_restart, segment_limit=SEGMENT_LIMIT, compact_min_waste=WASTE)
    left, bodies, moved, numbers = kept
    assert left == sorted(deferred)
    assert bodies == {queue_id: body(100 * KIB, seed) for queue_id, seed in deferred.items()}
    for queue_id, seed in deferred.items():
        assert read_back(spool, queue_id) == body(100 * KIB, seed)
    assert segment_bytes(spool) <= 4 * 100 * KIB, (numbers, moved)  # the wasteful file is gone


def test_a_read_that_finds_its_segment_moved_away_reads_the_new_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery's read snapshot may name the old segment just as compaction unlinks it: the
    next snapshot knows the new place, and the message is not taken for deleted."""
    spool, kept = tmp_path / "spool", []

    async def scenario(store: SqliteQueueStore) -> None:
        kept.append(await enqueue(store, body(100 * KIB, 3)))

    run(spool, scenario, segment_limit=SEGMENT_LIMIT)
    real_read_range = segments_module.read_range
    calls: list[int] = []

    def moved_away_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError("segment unlinked by compaction")
        return real_read_range(*args, **kwargs)

    monkeypatch.setattr(segments_module, "read_range", moved_away_once)
    assert read_back(spool, kept[0]) == body(100 * KIB, 3)
    assert len(calls) >= 2
