"""The SQLite schema of the embedded queue and the mapping between its rows and queue records.

Owns: the tables (messages, recipients, bodies, segments), the connection settings that make a
commit durable (WAL, `synchronous=FULL`), loading rows into queue records (whose column encoding
is queue/records.py, shared with the PostgreSQL store), the SQLite spelling of a `QueueFilter`
(`SQLITE_DIALECT`, for filters.py), and the derived `MessageState`.
Must not: decide when to write or run threads (`group_commit.py`, `sqlite_store.py` do that).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from mailgate.queue import filters, records
from mailgate.queue.store import QueuedMessage, QueueFilter

# 2: large bodies in segment files (queue/segments.py): messages.body_segment and body_offset,
# the segments table. 3: messages.body_crc, the CRC-32 of a segment body (NULL for inline bodies
# and bodies written by version 2). 4: messages.next_due, the earliest next attempt of a message's
# queued recipients, indexed for the claim (it replaces the recipients_due index), and the
# (created, queue_id) index that `queue list` pages through. Older spools are upgraded in place;
# a newer one is refused.
SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 10_000
# The WAL is truncated back to this size after a checkpoint, so one large message does not leave
# a large WAL file behind for ever.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Pages of a new spool's database (an existing one keeps its own: WAL mode cannot change it). A
# commit writes every page it touches to the WAL before its fsync, and storing one small message
# touches about ten (each table and index it lands in, the freelist, page 1): 1 KiB pages make that
# about 11 KiB per commit instead of 32 KiB, which measured a shorter tail of commit latency with
# no loss of throughput (docs/performance.md). Bodies of 16 KiB and more live in segment files.
PAGE_SIZE = 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a number always means one file
    live INTEGER NOT NULL DEFAULT 0 CHECK (live >= 0)  -- messages whose body is in it
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE,
    sender_local TEXT,                 -- NULL: the null reverse-path <>
    sender_domain TEXT,
    sender_literal INTEGER NOT NULL DEFAULT 0,
    sender_route INTEGER NOT NULL DEFAULT 0,
    sender_text TEXT NOT NULL,         -- '' for <>
    body_type TEXT NOT NULL,
    smtputf8 INTEGER NOT NULL,
    size_declared INTEGER,
    ret TEXT,
    envid TEXT,
    meta TEXT NOT NULL,                -- JSON of MessageMeta
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    hold_reason TEXT NOT NULL DEFAULT '',
    delay_notified INTEGER NOT NULL DEFAULT 0,
    first_attempt REAL,
    lease_owner TEXT,
    lease_expires REAL,
    body_segment INTEGER REFERENCES segments(id),  -- NULL: the body is inline in `bodies`
    body_offset INTEGER,
    body_crc INTEGER,                  -- CRC-32 of a segment body, checked when it is read
    next_due REAL                      -- the earliest next_attempt of its queued recipients
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    local TEXT NOT NULL,
    domain TEXT NOT NULL,
    literal INTEGER NOT NULL,
    had_source_route INTEGER NOT NULL,
    address_text TEXT NOT NULL,
    notify TEXT NOT NULL,              -- NOTIFY values in order, comma separated
    orcpt TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    reply_code INTEGER,
    reply_enhanced TEXT,
    reply_text TEXT,
    remote_mta TEXT,
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bodies (                -- bodies below segments.SEGMENT_THRESHOLD
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data BLOB NOT NULL
);
"""
UPGRADES = {  # from version N to N + 1
    1: (
        "ALTER TABLE messages ADD COLUMN body_segment INTEGER REFERENCES segments(id)",
        "ALTER TABLE messages ADD COLUMN body_offset INTEGER",
    ),
    2: ("ALTER TABLE messages ADD COLUMN body_crc INTEGER",),
    3: (
        # recipients_due goes first: with it, SQLite answers the UPDATE's subquery by scanning
        # every queued recipient (state = 'queued') for each message, quadratic in the backlog;
        # without it, by the primary key (message_id, idx).
        "DROP INDEX IF EXISTS recipients_due",
        "DROP INDEX IF EXISTS messages_created",
        "ALTER TABLE messages ADD COLUMN next_due REAL",
        "UPDATE messages SET next_due = (SELECT min(r.next_attempt) FROM recipients r"
        " WHERE r.message_id = messages.id AND r.state = 'queued')",
    ),
}
# Made after the upgrades, since they name columns an old spool gains only there. The claim and
# next_due() walk messages_due from the earliest due time and stop after `limit` rows, so a backlog
# of messages due later (a dead destination's) costs them nothing; a partial index on `held = 0`
# (queries must say exactly that for SQLite to use it) leaves held messages out. messages_age
# serves `queue list`'s order and its keyset pages (QueueFilter.after).
INDEXES = (
    "CREATE INDEX IF NOT EXISTS messages_due ON messages(next_due) WHERE held = 0",
    "CREATE INDEX IF NOT EXISTS messages_age ON messages(created, queue_id)",
)

MESSAGE_COLUMNS = f"id, {records.MESSAGE_COLUMNS}"
RECIPIENT_COLUMNS = records.RECIPIENT_COLUMNS

# The state shown by `queue list` (store.MessageState), derived from the columns; `:now` bound.
STATE_SQL = """CASE
    WHEN m.held THEN 'held'
    WHEN m.lease_owner IS NOT NULL AND m.lease_expires > :now THEN 'active'
    WHEN m.first_attempt IS NOT NULL THEN 'deferred'
    ELSE 'queued' END"""
UNLEASED_SQL = "(m.lease_owner IS NULL OR m.lease_expires <= :now)"
AGE_ORDER = "m.created, m.queue_id"  # oldest first, as messages_age holds them (QueueFilter.after)


class SchemaVersionError(RuntimeError):
    """The queue database was made by a newer mailgate."""


def _icontains(haystack: str | None, needle: str | None) -> bool:
    """Case-insensitive substring; SQLite's lower() knows only ASCII, addresses may be UTF-8."""
    if haystack is None or needle is None:
        return False
    return needle.casefold() in haystack.casefold()


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the durable settings.
    Any thread may use it, one at a time: readers come from a pool, and the writer's is used by
    the writer thread or by a caller committing inline while it holds the writer's turn
    (queue/group_commit.py)."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # takes effect only on a new database
    connection.execute("PRAGMA journal_mode = WAL")
    # FULL: in WAL mode the WAL is fsynced at every commit, so a commit survives power loss.
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    connection.create_function("mg_icontains", 2, _icontains, deterministic=True)
    if writer:
        # Commits never checkpoint: queue/checkpointer.py does it in the background.
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        _create_schema(connection)
    return connection


def rewrite_header(connection: sqlite3.Connection) -> None:
    """The smallest write there is: page 1, `user_version` set to what it already is. Run first
    after a full checkpoint, it starts the WAL over and pays for the WAL header's fsync
    (queue/checkpointer.py); the rows are untouched."""
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _create_schema(connection: sqlite3.Connection) -> None:
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(f"queue schema {version} is newer than {SCHEMA_VERSION}")
    connection.execute("BEGIN IMMEDIATE")  # all tables or none, even if we crash half way
    # Again under the write lock: another process may have upgraded the spool meanwhile.
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    for statement in SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)
    if version:  # 0: a new database, made whole by SCHEMA above
        for step in range(version, SCHEMA_VERSION):
            for statement in UPGRADES[step]:
                connection.execute(statement)
    for statement in INDEXES:
        connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    connection.execute("COMMIT")


# --- rows to records -----------------------------------------------------------------------------
def load_messages(
    connection: sqlite3.Connection, where: str, params: dict[str, Any]
) -> list[QueuedMessage]:
    """Full records of the messages matching `where` (over alias m), oldest first."""
    rows = connection.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE {where} ORDER BY m.created, m.id", params
    ).fetchall()
    messages = []
    for message_id, *columns in rows:
        recipient_rows = connection.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? ORDER BY idx",
            (message_id,),
        ).fetchall()
        recipients = [records.recipient_from_row(item) for item in recipient_rows]
        messages.append(records.message_from_row(columns, recipients))
    return messages


# --- filters -------------------------------------------------------------------------------------
SQLITE_DIALECT = filters.Dialect(
    mark=lambda name: f":{name}",
    contains=lambda column, mark: f"mg_icontains({column}, {mark})",
    recipient_of_message="r.message_id = m.id",
    state_sql=STATE_SQL,
)


def matching_ids(
    connection: sqlite3.Connection, query: QueueFilter, now: float
) -> list[tuple[int, str]]:
    """(row id, queue id) of the matching messages, oldest first, at most `query.limit`."""
    where, params = filters.filter_sql(query, now, SQLITE_DIALECT)
    sql = f"SELECT m.id, m.queue_id FROM messages m WHERE {where} ORDER BY {AGE_ORDER}"
    if query.limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = query.limit
    return [(row[0], row[1]) for row in connection.execute(sql, params)]
