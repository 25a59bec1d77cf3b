"""Fill a spool with N deferred messages, as a dead destination leaves them, in minutes not hours.

    python -m bench.backlog SPOOL_DIR --messages 1000000 [--size 4096]

Owns: writing realistic queue rows straight through the SQLite store's schema (the same
`message_row`/`recipient_row` a commit writes, then what a failed attempt records: one attempt,
a 451 reply, the next attempt hours away), in transactions of BATCH messages with the sync off
(a tool's fill, not a commit: the spool is checkpointed and fsynced once at the end).
Must NOT: be imported by mailgate, or be used on a live server's spool.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Envelope, Recipient
from mailgate.queue import records, sqlite_queries, sqlite_schema
from mailgate.queue.ids import new_queue_id
from mailgate.queue.sqlite_store import DATABASE_NAME, SqliteQueueStore
from mailgate.queue.store import MessageMeta

BATCH = 20_000
DEAD_DOMAIN = "dead.test"  # no route: nothing may ever reach it
BACKLOG_AGE = 2 * 86400.0  # created over the last two days
# Next attempts one to four days away: none may fall due during a benchmark that reuses the spool
# (--backlog-spool) hours later; a due one would be retried against the dead destination, bounced
# and answered with a DSN, changing both the spool and the figures.
RETRY_FROM, RETRY_TO = 86400.0, 4 * 86400.0
DEFERRAL = (451, "4.4.1", "connection refused by the next hop")


def fill(spool_dir: Path, messages: int, size: int, seed: int = 1) -> float:
    """Add `messages` deferred messages to the spool (made if missing); returns the seconds taken."""
    started = time.monotonic()
    _make_spool(spool_dir)
    generator = random.Random(seed)
    body = _body(size, generator)
    now = time.time()
    connection = sqlite_schema.connect(spool_dir / DATABASE_NAME, writer=True)
    connection.execute("PRAGMA synchronous = OFF")
    try:
        (first_id,) = connection.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchone()
        for start in range(0, messages, BATCH):
            count = min(BATCH, messages - start)
            _insert_batch(connection, first_id + start, count, body, now, generator)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL stays one batch long
    finally:
        connection.close()
    descriptor = os.open(spool_dir / DATABASE_NAME, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return time.monotonic() - started


def _make_spool(spool_dir: Path) -> None:
    """The directories and database a server makes on its first start (SqliteQueueStore.open)."""
    import asyncio

    async def make() -> None:
        store = SqliteQueueStore(spool_dir)
        await store.open()
        await store.close()

    asyncio.run(make())


def _body(size: int, generator: random.Random) -> bytes:
    header = (b"From: <sender@src.test>\r\nTo: <user@" + DEAD_DOMAIN.encode() + b">\r\n"
              b"Subject: backlog\r\n\r\n")
    line_count = max(0, size - len(header)) // 78 + 1
    lines = (bytes(generator.choices(range(0x41, 0x5B), k=76)) + b"\r\n" for _ in range(line_count))
    return (header + b"".join(lines))[:max(size, len(header))]


def _insert_batch(connection: sqlite3.Connection, first_id: int, count: int, body: bytes,
                  now: float, generator: random.Random) -> None:
    code, enhanced, text = DEFERRAL
    message_rows, recipient_rows, body_rows = [], [], []
    for message_id in range(first_id, first_id + count):
        created = now - generator.uniform(60.0, BACKLOG_AGE)
        recipient = Recipient(parse_mailbox(f"user{message_id}@{DEAD_DOMAIN}"))
        envelope = Envelope(parse_mailbox(f"sender{message_id % 997}@src.test"), [recipient])
        meta = MessageMeta(client_address="192.0.2.1", client_helo="client.src.test",
                           listener="mx", headers_end=70, crlf_clean=True)
        due = now + generator.uniform(RETRY_FROM, RETRY_TO)
        row = records.message_row(new_queue_id(created), envelope, meta, len(body), created)
        row.update(id=message_id, first_attempt=created + 1.0, next_due=due)
        message_rows.append(row)
        rcpt = records.recipient_row(message_id, 0, recipient, due)
        rcpt.update(attempts=1, reply_code=code, reply_enhanced=enhanced, reply_text=text)
        recipient_rows.append(rcpt)
        body_rows.append((message_id, body))
    connection.execute("BEGIN")
    for table, rows in (("messages", message_rows), ("recipients", recipient_rows)):
        connection.executemany(sqlite_queries.insert_sql(table, tuple(rows[0])), [tuple(row.values()) for row in rows])
    connection.executemany("INSERT INTO bodies (message_id, data) VALUES (?, ?)", body_rows)
    connection.execute("COMMIT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__.split("\n")[0])
    parser.add_argument("spool_dir", type=Path)
    parser.add_argument("--messages", "-n", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=4096, help="body bytes (default 4096: inline)")
    args = parser.parse_args(argv)
    seconds = fill(args.spool_dir, args.messages, args.size)
    print(f"added {args.messages} deferred messages to {args.spool_dir} in {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
