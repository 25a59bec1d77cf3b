"""Disk back-pressure on a real, small file system (a 4 MiB tmpfs) filled for real.

Needs root to mount; skipped elsewhere, failed in CI (MAILGATE_REQUIRE_E2E=1) so a green CI run
means the real file system was exercised. Checks the state transitions ok -> soft -> hard and back,
the hysteresis, inodes, the polling loop, and that a queue on a full disk keeps what it holds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Envelope, Recipient
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta, QueueFilter
from mailgate.server.diskguard import DiskGuard, DiskSample, DiskState
from tests.support.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
FS_INODES = 64



@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs with 64 inodes, unmounted afterwards whatever happened."""
    with mounted_tmpfs(tmp_path / "fs", f"size=4m,nr_inodes={FS_INODES},mode=0700") as mount_point:
        yield mount_point


def fill(path: Path, size: int | None) -> int:
    """Write `size` bytes (None: until the file system is full) and fsync; bytes written."""
    written = 0
    chunk = b"\xa5" * 65536
    with open(path, "wb") as handle:
        try:
            while size is None or written < size:
                piece = chunk if size is None else chunk[: size - written]
                handle.write(piece)
                handle.flush()
                written += len(piece)
            os.fsync(handle.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return written


def free_bytes(path: Path) -> int:
    result = os.statvfs(path)
    return result.f_bavail * result.f_frsize


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.event = asyncio.Event()

    async def __call__(self, old: DiskState, new: DiskState, sample: DiskSample) -> None:
        self.changes.append((old.label, new.label))
        self.event.set()


def test_space_soft_then_hard_then_back_by_itself(small_fs: Path) -> None:
    async def scenario() -> list[tuple[str, str]]:
        guard = DiskGuard(small_fs, 2 * MIB, 1 * MIB, 0, 0, interval=1)
        recorder = Recorder()
        guard.subscribe(recorder)
        assert await guard.poll() is DiskState.OK and guard.accepting_mail
        assert guard.room_for(2 * MIB) and not guard.room_for(3 * MIB + 512 * 1024)

        fill(small_fs / "big", int(2.5 * MIB))  # about 1.5 MiB left: soft
        assert await guard.poll() is DiskState.SOFT
        assert not guard.accepting_mail and not guard.room_for(1)

        fill(small_fs / "rest", None)  # until ENOSPC: hard
        assert free_bytes(small_fs) == 0
        assert await guard.poll() is DiskState.HARD

        (small_fs / "rest").unlink()  # about 1.5 MiB again: above hard, below soft
        assert await guard.poll() is DiskState.SOFT
        (small_fs / "big").unlink()
        assert await guard.poll() is DiskState.OK
        assert guard.last_sample is not None and guard.last_sample.free_bytes == free_bytes(small_fs)
        return recorder.changes

    changes = asyncio.run(scenario())
    assert changes == [("ok", "soft"), ("soft", "hard"), ("hard", "soft"), ("soft", "ok")]


def test_a_state_is_left_only_past_the_recovery_margin(small_fs: Path) -> None:
    async def scenario() -> None:
        soft = 2 * MIB
        guard = DiskGuard(small_fs, soft, 0, 0, 0, interval=1, recovery_margin=0.25)
        total = free_bytes(small_fs)
        fill(small_fs / "a", total - soft + 256 * 1024)  # 1.75 MiB free: soft
        assert await guard.poll() is DiskState.SOFT
        (small_fs / "a").unlink()
        fill(small_fs / "b", total - soft - 256 * 1024)  # 2.25 MiB free: above soft, below 2.5
        assert await guard.poll() is DiskState.SOFT  # not yet: no flapping at the threshold
        (small_fs / "b").unlink()
        fill(small_fs / "c", total - soft - 768 * 1024)  # 2.75 MiB: past the margin
        assert await guard.poll() is DiskState.OK
        # Entering is immediate, without margin: just above the threshold stays ok.
        (small_fs / "c").unlink()
        fill(small_fs / "d", total - soft - 64 * 1024)
        assert await guard.poll() is DiskState.OK

    asyncio.run(scenario())


def test_free_inodes_are_watched_too(small_fs: Path) -> None:
    async def scenario() -> list[tuple[str, str]]:
        guard = DiskGuard(small_fs, 0, 0, soft_free_inodes=30, hard_free_inodes=10, interval=1)
        recorder = Recorder()
        guard.subscribe(recorder)
        assert await guard.poll() is DiskState.OK
        files = []
        while (guard.last_sample.free_inodes or 0) >= 30:  # bounded: 64 inodes in all
            files.append(small_fs / f"f{len(files)}")
            files[-1].touch()
            await guard.poll()
            assert len(files) <= FS_INODES
        assert guard.state is DiskState.SOFT
        while guard.state is not DiskState.HARD:
            files.append(small_fs / f"f{len(files)}")
            files[-1].touch()
            await guard.poll()
            assert len(files) <= FS_INODES
        assert guard.last_sample.free_inodes < 10
        for path in files:
            path.unlink()
        assert await guard.poll() is DiskState.OK
        return recorder.changes

    assert asyncio.run(scenario()) == [("ok", "soft"), ("soft", "hard"), ("hard", "ok")]


def test_the_polling_loop_notices_filling_and_freeing_and_stops(small_fs: Path) -> None:
    async def scenario() -> list[tuple[str, str]]:
        guard = DiskGuard(small_fs, 2 * MIB, 1 * MIB, 0, 0, interval=0.05)
        recorder = Recorder()
        guard.subscribe(lambda old, new, sample: None)  # a plain function works as well
        guard.subscribe(recorder)
        task = asyncio.create_task(guard.run())
        fill(small_fs / "full", None)
        await asyncio.wait_for(recorder.event.wait(), 10)
        recorder.event.clear()
        (small_fs / "full").unlink()
        await asyncio.wait_for(recorder.event.wait(), 10)
        guard.stop()
        await asyncio.wait_for(task, 10)
        return recorder.changes

    assert asyncio.run(scenario()) == [("ok", "hard"), ("hard", "ok")]


def test_a_failing_subscriber_or_statvfs_does_not_stop_the_guard(small_fs: Path) -> None:
    def broken(old: DiskState, new: DiskState, sample: DiskSample) -> None:
        raise RuntimeError("subscriber bug")

    async def scenario() -> None:
        guard = DiskGuard(small_fs / "spool", 2 * MIB, 1 * MIB, 0, 0, interval=1)
        recorder = Recorder()
        guard.subscribe(broken)
        guard.subscribe(recorder)
        assert await guard.poll() is DiskState.OK  # the directory does not exist: state kept
        assert guard.last_sample is None
        (small_fs / "spool").mkdir()
        fill(small_fs / "spool" / "full", None)
        assert await guard.poll() is DiskState.HARD
        assert recorder.changes == [("ok", "hard")]  # called despite the broken one before it

    asyncio.run(scenario())


def test_a_queue_on_a_full_disk_keeps_every_message_it_holds(small_fs: Path) -> None:
    """Nothing already queued is harmed: the disk fills up under the store, a new commit fails
    (the session would answer 451/452, never 250), and the old message is intact before and
    after space returns."""
    spool = small_fs / "spool"
    body = b"Subject: kept\r\n\r\n" + b"line of the queued message\r\n" * 1000

    async def enqueue(store: SqliteQueueStore, data: bytes) -> str:
        writer = store.begin()
        writer.write(data)
        envelope = Envelope(parse_mailbox("a@external.test"), [Recipient(parse_mailbox("b@hosted.test"))])
        return await store.commit(writer, envelope, MessageMeta())

    async def body_of(store: SqliteQueueStore, queue_id: str) -> bytes:
        return b"".join([chunk async for chunk in store.body_chunks(queue_id)])

    async def scenario() -> None:
        guard = DiskGuard(spool, 2 * MIB, 1 * MIB, 0, 0, interval=1)
        store = SqliteQueueStore(spool)
        await store.open()
        try:
            kept = await enqueue(store, body)
            fill(small_fs / "filler", None)
            assert await guard.poll() is DiskState.HARD
            with pytest.raises((OSError, sqlite3.Error)):  # ENOSPC or SQLITE_FULL
                await enqueue(store, body * 4)
            assert await body_of(store, kept) == body
            (small_fs / "filler").unlink()
            assert await guard.poll() is DiskState.OK
            again = await enqueue(store, body)
            ids = {summary.queue_id for summary in await store.list(QueueFilter())}
            assert kept in ids and again in ids
        finally:
            await store.close()
        reopened = SqliteQueueStore(spool)  # and a restart finds it whole as well
        await reopened.open()
        try:
            await reopened.recover()
            assert await body_of(reopened, kept) == body
        finally:
            await reopened.close()

    asyncio.run(scenario())
