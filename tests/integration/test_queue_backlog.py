"""A queue with a backlog: the claim walks the due-time index, old spools gain it in place, and
`queue list` pages through every message once, in order, without loading them all."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench import backlog
from mailgate.core.address import parse_mailbox
from mailgate.core.clock import FakeClock
from mailgate.core.envelope import Envelope, Recipient
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue import sqlite_queries, sqlite_schema
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta, QueueFilter, RecipientUpdate
from tests.integration.test_sqlite_store import START, run

pytestmark = pytest.mark.timeout(120)

LATER = Reply(451, "4.4.1", "try later")


async def enqueue(store, *recipients: str, hold: str = "") -> str:
    writer = store.begin()
    writer.write(b"Subject: t\r\n\r\nhi\r\n")
    envelope = Envelope(parse_mailbox("a@sender.test"), [Recipient(parse_mailbox(r)) for r in recipients])
    return await store.commit(writer, envelope, MessageMeta(hold_reason=hold))


async def defer(store, clock: FakeClock, queue_id: str, *retry_in: float) -> None:
    """One failed attempt for the claimed message: recipient i retries in retry_in[i] seconds."""
    updates = [RecipientUpdate(index, RecipientState.QUEUED, LATER, clock.now() + seconds)
               for index, seconds in enumerate(retry_in)]
    assert await store.finish(queue_id, updates=updates) is False


async def claimed_ids(store, now: float) -> list[str]:
    return [message.queue_id for message in await store.claim_due(now, 100)]


def test_the_due_time_follows_every_change_of_a_recipient(tmp_path: Path) -> None:
    async def scenario(store: SqliteQueueStore, clock: FakeClock) -> None:
        first = await enqueue(store, "b@one.test", "c@two.test")
        second = await enqueue(store, "d@one.test")
        assert await claimed_ids(store, clock.now()) == [first, second]
        await defer(store, clock, first, 600, 300)  # the earlier of the two recipients counts
        await defer(store, clock, second, 450)
        assert await store.next_due() == START + 300
        assert await claimed_ids(store, START + 299) == []
        assert await claimed_ids(store, START + 300) == [first]
        # c@two.test delivered, b@one.test still queued: the message is due when b is.
        done = [RecipientUpdate(1, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))]
        assert await store.finish(first, updates=done) is False
        assert await store.next_due() == START + 450
        assert await claimed_ids(store, START + 450) == [second]
        assert await claimed_ids(store, START + 599) == []
        assert await claimed_ids(store, START + 600) == [first]
        await store.recover()  # both leases back
        assert await store.reschedule(QueueFilter(queue_id=first), START + 5000) == [first]
        assert await store.next_due() == START + 450
        assert await store.hold(QueueFilter(queue_id=second), "look") == [second]
        assert await store.next_due() == START + 5000  # a held message is never due
        assert await claimed_ids(store, START + 4999) == []
        clock.advance(10)
        assert await store.release(QueueFilter(queue_id=second)) == [second]  # due now
        assert await claimed_ids(store, clock.now()) == [second]

    run(tmp_path, scenario)


def test_the_claim_and_next_due_walk_the_due_index_not_every_recipient(tmp_path: Path) -> None:
    backlog.fill(tmp_path, 300, 512)
    with sqlite3.connect(tmp_path / "queue.db") as connection:
        connection.create_function("mg_icontains", 2, lambda *_: 0)
        for sql in _claim_statements(connection):
            plan = " ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                                  {"now": START, "limit": 10}))
            assert "USING INDEX messages_due" in plan and "TEMP B-TREE" not in plan, plan


def _claim_statements(connection: sqlite3.Connection) -> list[str]:
    """The SELECTs the claim and next_due() run, captured from the real functions."""
    seen: list[str] = []
    connection.set_trace_callback(seen.append)
    connection.isolation_level = None
    connection.execute("BEGIN")
    sqlite_queries.claim_due(connection, START, 10, "test", START + 60)
    sqlite_queries.next_due(connection, START)
    connection.execute("ROLLBACK")
    connection.set_trace_callback(None)
    return [sql for sql in seen if sql.lstrip().upper().startswith("SELECT") and "next_due" in sql]


def _downgrade_to_version_3(database: Path) -> None:
    """The schema as mailgate made it before version 4 (no next_due, the old indexes)."""
    with sqlite3.connect(database) as connection:
        connection.execute("DROP INDEX messages_due")
        connection.execute("DROP INDEX messages_age")
        # ALTER TABLE DROP COLUMN stumbles on the comments in the table's SQL: rebuild it.
        (create,) = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()
        lines = [line for line in create.splitlines() if "next_due" not in line]
        old = "\n".join(lines).replace("body_crc INTEGER,", "body_crc INTEGER").replace("messages", "old", 1)
        columns = ", ".join(row[1] for row in connection.execute("PRAGMA table_info(messages)")
                            if row[1] != "next_due")
        connection.execute(old)
        connection.execute(f"INSERT INTO old ({columns}) SELECT {columns} FROM messages")
        connection.execute("DROP TABLE messages")
        connection.execute("ALTER TABLE old RENAME TO messages")
        connection.execute("CREATE INDEX messages_created ON messages(created)")
        connection.execute("CREATE INDEX recipients_due ON recipients(state, next_attempt)")
        connection.execute("PRAGMA user_version = 3")


def test_a_version_3_spool_gains_the_due_index_and_keeps_every_due_time(tmp_path: Path) -> None:
    ids: dict[str, str] = {}

    async def before(store: SqliteQueueStore, clock: FakeClock) -> None:
        ids["deferred"] = await enqueue(store, "b@one.test", "c@two.test")
        clock.advance(1)
        ids["new"] = await enqueue(store, "d@one.test")
        clock.advance(1)
        ids["held"] = await enqueue(store, "e@one.test", hold="quarantine")
        (claimed,) = await store.claim_due(clock.now(), 1)  # "deferred", due first
        await defer(store, clock, claimed.queue_id, 900, 600)
        clock.advance(5)
        ids["done"] = await enqueue(store, "f@one.test")

    run(tmp_path, before)
    _downgrade_to_version_3(tmp_path / "queue.db")

    async def after(store: SqliteQueueStore, clock: FakeClock) -> None:
        assert await store.next_due() == START + 1  # "new", never tried
        assert await claimed_ids(store, START + 601) == [ids["new"], ids["done"]]
        assert await claimed_ids(store, START + 602) == [ids["deferred"]]
        assert await store.release(QueueFilter(queue_id=ids["held"])) == [ids["held"]]
        assert await claimed_ids(store, clock.now()) == [ids["held"]]
        listed = [row.queue_id for row in await store.list(QueueFilter())]
        assert listed == [ids["deferred"], ids["new"], ids["held"], ids["done"]]

    run(tmp_path, after)
    with sqlite3.connect(tmp_path / "queue.db") as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION == 4
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(messages)")}
        indexes |= {row[1] for row in connection.execute("PRAGMA index_list(recipients)")}
        assert {"messages_due", "messages_age"} <= indexes
        assert not {"messages_created", "recipients_due"} & indexes


CONFIG = ('[server]\nspool_dir = "{spool}"\n[[listener]]\nname = "mx"\naddress = "127.0.0.1:2799"\n'
          'tls = "none"\n')


def queue_list(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mailgate.toml"
    config.write_text(CONFIG.format(spool=tmp_path / "spool"))
    return subprocess.run([sys.executable, "-m", "mailgate", "queue", "list", "--config", str(config), *options],
                          capture_output=True, text=True, timeout=100, cwd=tmp_path)


def test_queue_list_pages_through_a_backlog_larger_than_a_page(tmp_path: Path) -> None:
    from mailgate.cli.queue_cmd import LIST_PAGE

    count = 2 * LIST_PAGE + 7
    backlog.fill(tmp_path / "spool", count, 256)
    as_json = queue_list(tmp_path, "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)["messages"]
    assert len({row["queue_id"] for row in rows}) == len(rows) == count
    assert [(row["created"], row["queue_id"]) for row in rows] == sorted(
        (row["created"], row["queue_id"]) for row in rows)
    assert {row["state"] for row in rows} == {"deferred"}
    as_text = queue_list(tmp_path, "--recipient", "user1")  # user1, user10..19, user100..199, ...
    assert as_text.returncode == 0, as_text.stderr
    expected = sum(1 for number in range(1, count + 1) if str(number).startswith("1"))
    assert as_text.stdout.splitlines()[-1] == f"-- {expected} message(s)"
    assert as_text.stdout.count("@dead.test [queued]") == expected


def test_queue_list_of_an_empty_queue(tmp_path: Path) -> None:
    backlog.fill(tmp_path / "spool", 0, 256)
    assert queue_list(tmp_path).stdout == "Mail queue is empty\n"
    assert json.loads(queue_list(tmp_path, "--json").stdout) == {"messages": []}


def test_the_upgrade_finds_each_message_s_recipients_by_key_not_by_scanning_them_all(tmp_path: Path) -> None:
    """With the old recipients_due index still there, SQLite answered the upgrade's per-message
    subquery by scanning every queued recipient: quadratic, hours for a million-message backlog."""
    backlog.fill(tmp_path, 50, 256)
    database = tmp_path / "queue.db"
    _downgrade_to_version_3(database)
    with sqlite3.connect(database) as connection:
        for statement in sqlite_schema.UPGRADES[3]:
            if statement.startswith("UPDATE"):
                plan = " ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}"))
                assert "recipients_due" not in plan and "PRIMARY KEY" in plan, plan
            connection.execute(statement)
