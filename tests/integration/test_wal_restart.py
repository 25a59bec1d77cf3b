"""The WAL starts over in the writer thread after a checkpoint, never in a new message's commit
(queue/checkpointer.py): starting over costs a second fsync (SQLite syncs the new WAL header), and
a client waiting for its 250 must not pay for it. Real SQLite files; a WAL that starts over gets
new salts in its header (https://sqlite.org/fileformat2.html#walformat), which is what is read."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Envelope, Recipient
from mailgate.queue.group_commit import GroupCommitWriter
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta

pytestmark = pytest.mark.timeout(60)

CHECKPOINT_INTERVAL = 0.05
WAIT_LIMIT = 10.0  # seconds; every wait is bounded


def wal_salts(spool: Path) -> bytes:
    """Salt-1 and salt-2 of the WAL header: new ones each time the WAL starts over."""
    with open(spool / "queue.db-wal", "rb") as wal:
        return wal.read(24)[16:24]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_LIMIT} s: {what}")
        await asyncio.sleep(CHECKPOINT_INTERVAL / 2)


async def accept(store: SqliteQueueStore) -> str:
    writer = store.begin()
    writer.write(b"Subject: t\r\n\r\n" + b"x" * 3000 + b"\r\n")
    envelope = Envelope(sender=parse_mailbox("a@example.org"), recipients=[Recipient(parse_mailbox("b@example.net"))])
    return await store.commit(writer, envelope, MessageMeta())


def run(spool: Path, test: Callable[[SqliteQueueStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with SqliteQueueStore(spool, checkpoint_interval=CHECKPOINT_INTERVAL) as store:
            await test(store)

    asyncio.run(main())


def test_after_a_checkpoint_the_writer_starts_the_wal_over_so_the_next_message_does_not(tmp_path: Path) -> None:
    async def test(store: SqliteQueueStore) -> None:
        checked = 0
        for _ in range(10):
            await asyncio.sleep(3 * CHECKPOINT_INTERVAL)  # checkpoints ran: the WAL is all copied
            commits, before = store.stats.commits, wal_salts(tmp_path)
            await accept(store)
            if wal_salts(tmp_path) == before:
                checked += 1  # the message's commit did not start the WAL over
            # The checkpoint copies the message; the writer thread then starts the WAL over by
            # itself, in one commit of its own, with no message waiting on it. (When that came
            # before the salts were read, it is the one that changed them; if the message's
            # commit had, no second commit would follow.)
            await wait_until(lambda: store.stats.commits == commits + 2, "the restart's commit")
            assert wal_salts(tmp_path) != before
            await asyncio.sleep(10 * CHECKPOINT_INTERVAL)
            assert store.stats.commits == commits + 2  # later checkpoints changed nothing
            if checked == 3:
                return
        raise AssertionError("the restart always came before the salts could be read")

    run(tmp_path, test)


def test_an_idle_store_stops_writing_and_checkpointing_once_the_wal_has_started_over(tmp_path: Path) -> None:
    async def test(store: SqliteQueueStore) -> None:
        before = wal_salts(tmp_path)
        await accept(store)
        # The message's commit, then the restart's (its salts are written before it commits).
        await wait_until(lambda: store.stats.commits == 2, "the restart's commit")
        commits, salts = store.stats.commits, wal_salts(tmp_path)
        assert salts != before
        await asyncio.sleep(25 * CHECKPOINT_INTERVAL)
        # Checkpointing the restart's own frame would make the next commit start the WAL over
        # again, and restarting after it would write once per interval for ever.
        assert (store.stats.commits, wal_salts(tmp_path)) == (commits, salts)

    run(tmp_path, test)


def test_the_restart_of_a_second_store_on_the_same_spool_does_not_disturb_the_first(tmp_path: Path) -> None:
    """Two worker processes share one spool: each checkpoints and starts the WAL over after its
    own commits, taking its turn on the writers' flock; every message stays readable."""

    async def test(first: SqliteQueueStore) -> None:
        second = SqliteQueueStore(tmp_path, checkpoint_interval=CHECKPOINT_INTERVAL)
        await second.open()
        try:
            ids = []
            for index in range(20):
                ids.append(await accept(first if index % 2 else second))
                await asyncio.sleep(CHECKPOINT_INTERVAL / 3)
            for store in (first, second):
                messages = [await store.get(queue_id) for queue_id in ids]
                assert all(message is not None for message in messages)
        finally:
            await second.close()
        connection = sqlite3.connect(tmp_path / "queue.db")
        try:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            connection.close()

    run(tmp_path, test)


def test_an_unawaited_write_runs_in_the_writer_thread_and_its_failure_reaches_nobody(tmp_path: Path) -> None:
    database = tmp_path / "rows.db"

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("CREATE TABLE IF NOT EXISTS rows (value TEXT)")
        return connection

    threads: list[str] = []

    def write(connection: sqlite3.Connection) -> None:
        threads.append(threading.current_thread().name)
        connection.execute("INSERT INTO rows VALUES ('background')")

    def fail(connection: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async def main() -> None:
        writer = GroupCommitWriter(connect)
        await writer.start()
        writer.run_unawaited(fail)
        writer.run_unawaited(write)
        await writer.run(lambda connection: connection.execute("INSERT INTO rows VALUES ('awaited')"))
        await wait_until(lambda: writer.stats.operations == 3, "all three writes ran")
        assert writer.stats.failed_operations == 1
        await writer.close()
        writer.run_unawaited(write)  # after close: ignored, not an error

    asyncio.run(main())
    assert threads == ["mailgate-queue-writer"]
    connection = sqlite3.connect(database)
    try:
        assert sorted(value for (value,) in connection.execute("SELECT value FROM rows")) == ["awaited", "background"]
    finally:
        connection.close()
