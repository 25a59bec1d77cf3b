"""Inline commits (queue/group_commit.py): a lone commit runs in the caller's thread when the
writer is idle, and never when that would make the caller's event loop wait for someone else:
a group running in the thread, a group that just ended, another process holding the flock."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.queue import group_commit
from mailgate.queue.group_commit import GroupCommitWriter
from tests.support.loop_ticks import ticking_while

pytestmark = pytest.mark.timeout(30)

WriterTest = Callable[[GroupCommitWriter, Path], Awaitable[None]]


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS rows (value TEXT)")
    return connection


def run(tmp_path: Path, test: WriterTest, connect_to: Callable[[Path], sqlite3.Connection] = connect) -> None:
    database, lock = tmp_path / "queue.db", tmp_path / "writer.lock"

    async def main() -> None:
        writer = GroupCommitWriter(lambda: connect_to(database), lock_path=lock)
        await writer.start()
        try:
            await test(writer, lock)
        finally:
            await writer.close()

    asyncio.run(main())


def committed(tmp_path: Path) -> list[str]:
    """What another connection sees: only what was committed."""
    connection = sqlite3.connect(tmp_path / "queue.db")
    try:
        return [value for (value,) in connection.execute("SELECT value FROM rows ORDER BY rowid")]
    finally:
        connection.close()


def insert(value: str, threads: list[str]) -> Callable[[sqlite3.Connection], str]:
    def write(connection: sqlite3.Connection) -> str:
        threads.append(threading.current_thread().name)
        connection.execute("INSERT INTO rows VALUES (?)", (value,))
        return value
    return write


def test_a_lone_commit_runs_inline_and_is_committed_when_it_returns(tmp_path: Path) -> None:
    threads: list[str] = []

    async def test(writer: GroupCommitWriter, lock: Path) -> None:
        assert await writer.run(insert("one", threads), inline=True) == "one"
        assert threads == [threading.current_thread().name]  # the caller's thread
        assert committed(tmp_path) == ["one"] and writer.stats.commits == writer.stats.inline_commits == 1
        # Without inline=True the writer thread commits, as before.
        assert await writer.run(insert("two", threads)) == "two"
        assert threads[1] == "mailgate-queue-writer" and writer.stats.inline_commits == 1

    run(tmp_path, test)


def test_an_inline_commit_does_not_wait_for_a_running_group_it_joins_the_queue(tmp_path: Path) -> None:
    threads: list[str] = []
    started, release = threading.Event(), threading.Event()

    def slow(connection: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)
        connection.execute("INSERT INTO rows VALUES ('slow')")

    async def test(writer: GroupCommitWriter, lock: Path) -> None:
        first = asyncio.ensure_future(writer.run(slow))
        await asyncio.to_thread(started.wait, 10)
        second = asyncio.ensure_future(writer.run(insert("queued", threads), inline=True))
        await asyncio.sleep(0.1)  # the loop runs: the inline request did not block on the turn
        assert not second.done()
        release.set()
        await asyncio.gather(first, second)
        assert threads == ["mailgate-queue-writer"]
        assert committed(tmp_path) == ["slow", "queued"]

    run(tmp_path, test)


def test_right_after_a_group_a_commit_goes_to_the_thread_to_group_with_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    async def test(writer: GroupCommitWriter, lock: Path) -> None:
        monkeypatch.setattr(group_commit, "INLINE_IDLE_SECONDS", 3600.0)
        await writer.run(insert("first", threads))  # a group in the thread: it just ended
        await writer.run(insert("second", threads), inline=True)
        assert threads == ["mailgate-queue-writer", "mailgate-queue-writer"]
        monkeypatch.setattr(group_commit, "INLINE_IDLE_SECONDS", 0.0)
        await writer.run(insert("third", threads), inline=True)
        assert threads[2] == threading.current_thread().name
        assert committed(tmp_path) == ["first", "second", "third"]

    run(tmp_path, test)


def test_an_inline_commit_never_blocks_the_loop_on_another_process_flock(tmp_path: Path) -> None:
    threads: list[str] = []

    async def test(writer: GroupCommitWriter, lock: Path) -> None:
        other = os.open(lock, os.O_RDWR)  # its own open file: a lock of its own, as another process
        try:
            fcntl.flock(other, fcntl.LOCK_EX)
            pending = asyncio.ensure_future(writer.run(insert("waited", threads), inline=True))
            (_, ticks) = await ticking_while(asyncio.sleep(0.3), interval=0.01)
            assert ticks >= 10 and not pending.done()  # queued for the thread, the loop runs on
            assert committed(tmp_path) == []
            fcntl.flock(other, fcntl.LOCK_UN)
            assert await asyncio.wait_for(pending, 10) == "waited"
        finally:
            os.close(other)
        assert threads == ["mailgate-queue-writer"] and committed(tmp_path) == ["waited"]

    run(tmp_path, test)


def test_a_failing_inline_commit_raises_leaves_nothing_and_the_next_one_works(tmp_path: Path) -> None:
    threads: list[str] = []

    def half_then_fail(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO rows VALUES ('half')")
        raise ValueError("the operation failed after writing")

    async def test(writer: GroupCommitWriter, lock: Path) -> None:
        with pytest.raises(ValueError):
            await writer.run(half_then_fail, inline=True)
        assert committed(tmp_path) == []
        assert writer.stats.failed_operations == 1
        assert await writer.run(insert("after", threads), inline=True) == "after"
        assert committed(tmp_path) == ["after"]

    run(tmp_path, test)


def test_after_a_slow_inline_commit_commits_wait_in_the_thread_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that stalls holds up the caller's loop once: then the thread waits for it."""
    threads: list[str] = []

    async def test(writer: GroupCommitWriter, lock: Path) -> None:
        monkeypatch.setattr(group_commit, "INLINE_IDLE_SECONDS", 0.0)
        monkeypatch.setattr(group_commit, "INLINE_SLOW_SECONDS", 0.0)  # every commit counts as slow
        await writer.run(insert("slow", threads), inline=True)
        await writer.run(insert("paused", threads), inline=True)
        assert threads == [threading.current_thread().name, "mailgate-queue-writer"]
        monkeypatch.setattr(writer, "_inline_paused_until", 0.0)  # the pause is over
        await writer.run(insert("resumed", threads), inline=True)
        assert threads[2] == threading.current_thread().name
        assert committed(tmp_path) == ["slow", "paused", "resumed"]

    run(tmp_path, test)


def test_after_a_non_durable_group_the_idle_writer_restores_full_sync_before_the_next_commit(tmp_path: Path) -> None:
    """A delivery's deletions commit with synchronous=NORMAL; the writer switches back to FULL
    as soon as it is idle, in its own thread, so the next message's inline commit (its client
    waiting for the 250) does not run the PRAGMA itself."""
    statements: list[tuple[str, str]] = []

    def traced(database: Path) -> sqlite3.Connection:
        connection = connect(database)
        connection.set_trace_callback(lambda sql: statements.append((threading.current_thread().name, sql)))
        return connection

    async def test(writer: GroupCommitWriter, lock: Path) -> None:
        await writer.run(insert("deleted later", []), durable=False)
        for _ in range(200):  # bounded: the writer restores FULL once idle
            if writer._synchronous == "FULL":
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(group_commit.INLINE_IDLE_SECONDS * 2)
        caller = threading.current_thread().name
        statements.clear()
        assert await writer.run(insert("new message", []), inline=True) == "new message"
        assert writer.stats.inline_commits == 1
        inline = [sql for thread, sql in statements if thread == caller]
        assert inline and not any(sql.upper().startswith("PRAGMA SYNCHRONOUS") for sql in inline), inline

    run(tmp_path, test, connect_to=traced)
    assert committed(tmp_path) == ["deleted later", "new message"]
