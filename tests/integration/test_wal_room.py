"""Room made in the WAL before the first commit (queue/wal_room.py): commits overwrite zeros
instead of growing the file, frames already in a WAL survive it, and a crash image of a WAL with
room in it recovers every committed row. Real SQLite files."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Envelope, Recipient
from mailgate.queue import wal_room
from mailgate.queue.sqlite_store import WAL_ROOM, SqliteQueueStore
from mailgate.queue.store import MessageMeta
from mailgate.queue.wal_room import make_wal_room

pytestmark = pytest.mark.timeout(60)

ROOM = 256 * 1024


def connect(database: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA wal_autocheckpoint = 0")  # the frames stay in the WAL
    connection.execute("CREATE TABLE IF NOT EXISTS rows (value TEXT)")
    return connection


def wal_of(database: Path) -> Path:
    return Path(f"{database}-wal")


def crash_image(database: Path, into: Path) -> Path:
    """The files as a power cut would leave them while a connection is still open."""
    into.mkdir()
    for path in (database, wal_of(database)):
        shutil.copyfile(path, into / path.name)
    return into / database.name


def rows(database: Path) -> list[str]:
    connection = sqlite3.connect(database)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [value for (value,) in connection.execute("SELECT value FROM rows ORDER BY rowid")]
    finally:
        connection.close()


def test_a_new_stores_commits_overwrite_the_room_instead_of_growing_the_wal(tmp_path: Path) -> None:
    async def main() -> list[int]:
        store = SqliteQueueStore(tmp_path, checkpoint_interval=3600)  # no checkpoint: the WAL only fills
        await store.open()
        sizes = [wal_of(store.database_path).stat().st_size]
        try:
            for number in range(50):
                writer = store.begin()
                writer.write(f"Subject: {number}\r\n\r\n".encode() + b"x" * 4000 + b"\r\n")
                envelope = Envelope(parse_mailbox("a@example.org"), [Recipient(parse_mailbox("b@example.net"))])
                await store.commit(writer, envelope, MessageMeta())
                sizes.append(wal_of(store.database_path).stat().st_size)
        finally:
            await store.close()
        return sizes

    sizes = asyncio.run(main())
    assert set(sizes) == {WAL_ROOM}  # made at open; no commit moved the end of the file


def test_frames_already_in_the_wal_survive_the_room_and_recover_after_a_crash(tmp_path: Path) -> None:
    database = tmp_path / "rows.db"
    writer = connect(database)
    try:
        writer.executemany("INSERT INTO rows VALUES (?)", [("before",)] * 3)
        assert wal_of(database).stat().st_size < ROOM
        make_wal_room(writer, wal_of(database), ROOM)
        assert wal_of(database).stat().st_size == ROOM
        writer.execute("INSERT INTO rows VALUES ('after')")
        image = crash_image(database, tmp_path / "image")
    finally:
        writer.close()
    # Recovery reads the frames up to the last commit and takes the zeros for the WAL's end.
    assert rows(image) == ["before"] * 3 + ["after"]
    assert rows(database) == ["before"] * 3 + ["after"]


def test_a_wal_that_starts_over_writes_over_the_room_and_keeps_it(tmp_path: Path) -> None:
    database = tmp_path / "rows.db"
    writer = connect(database)
    try:
        make_wal_room(writer, wal_of(database), ROOM)
        for round_number in range(5):
            writer.executemany("INSERT INTO rows VALUES (?)", [(f"r{round_number}",)] * 20)
            assert writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
        assert wal_of(database).stat().st_size == ROOM
        image = crash_image(database, tmp_path / "image")
    finally:
        writer.close()
    assert rows(image) == [f"r{n}" for n in range(5) for _ in range(20)]


def test_no_room_on_a_file_system_short_of_space_or_past_the_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "rows.db"
    writer = connect(database)
    try:
        writer.execute("INSERT INTO rows VALUES ('one')")
        size = wal_of(database).stat().st_size
        monkeypatch.setattr(wal_room, "FREE_SPACE_FACTOR", 10**15)  # no disk has that much free
        make_wal_room(writer, wal_of(database), ROOM)
        assert wal_of(database).stat().st_size == size
        monkeypatch.undo()
        make_wal_room(writer, wal_of(database), size // 2)  # already larger: left alone
        assert wal_of(database).stat().st_size == size
        assert not writer.in_transaction  # the write lock is given back either way
        writer.execute("INSERT INTO rows VALUES ('two')")
    finally:
        writer.close()
    assert rows(database) == ["one", "two"]
