"""The SQLite schema of the embedded queue and the mapping between its rows and queue records.

Owns: the tables (messages, recipients, bodies, segments), the connection settings that make a
commit durable (WAL, `synchronous=FULL`), the encoding of envelopes, replies and metadata into
columns and back, the SQL form of a `QueueFilter`, and the derived `MessageState`.
Must not: decide when to write or run threads (`group_commit.py`, `sqlite_store.py` do that).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

from mailgate.core.address import Address, AddressError, normalise_domain
from mailgate.core.envelope import BodyType, Envelope, Notify, Recipient, Ret
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue.store import MessageMeta, QueuedMessage, QueuedRecipient, QueueFilter

# 2: large bodies in segment files (queue/segments.py): messages.body_segment and body_offset,
# the segments table. 3: messages.body_crc, the CRC-32 of a segment body (NULL for inline bodies
# and bodies written by version 2). Older spools are upgraded in place; a newer one is refused.
SCHEMA_VERSION = 3
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
    body_crc INTEGER                   -- CRC-32 of a segment body, checked when it is read
);
CREATE INDEX IF NOT EXISTS messages_created ON messages(created);
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
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt);
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
}

MESSAGE_COLUMNS = (
    "id, queue_id, sender_local, sender_domain, sender_literal, sender_route, body_type, smtputf8,"
    " size_declared, ret, envid, meta, size, created, held, hold_reason, delay_notified,"
    " first_attempt"
)
RECIPIENT_COLUMNS = (
    "message_id, idx, local, domain, literal, had_source_route, notify, orcpt, state, attempts,"
    " next_attempt, reply_code, reply_enhanced, reply_text, remote_mta"
)

# The state shown by `queue list` (store.MessageState), derived from the columns; `:now` bound.
STATE_SQL = """CASE
    WHEN m.held THEN 'held'
    WHEN m.lease_owner IS NOT NULL AND m.lease_expires > :now THEN 'active'
    WHEN m.first_attempt IS NOT NULL THEN 'deferred'
    ELSE 'queued' END"""
UNLEASED_SQL = "(m.lease_owner IS NULL OR m.lease_expires <= :now)"


class SchemaVersionError(RuntimeError):
    """The queue database was made by a newer mailgate."""


def _icontains(haystack: str | None, needle: str | None) -> bool:
    """Case-insensitive substring; SQLite's lower() knows only ASCII, addresses may be UTF-8."""
    if haystack is None or needle is None:
        return False
    return needle.casefold() in haystack.casefold()


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the durable settings."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=writer)
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
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    connection.execute("COMMIT")


# --- records to rows -----------------------------------------------------------------------------
# MessageMeta holds only scalars; dataclasses.asdict() would deep-copy each one on the commit path.
META_FIELDS = tuple(item.name for item in dataclasses.fields(MessageMeta))


def message_row(
    queue_id: str, envelope: Envelope, meta: MessageMeta, size: int, created: float
) -> dict[str, Any]:
    sender = envelope.sender
    return {
        "queue_id": queue_id,
        "sender_local": None if sender is None else sender.local,
        "sender_domain": None if sender is None else sender.domain,
        "sender_literal": int(sender is not None and sender.literal),
        "sender_route": int(sender is not None and sender.had_source_route),
        "sender_text": envelope.sender_text,
        "body_type": envelope.body.value,
        "smtputf8": int(envelope.smtputf8),
        "size_declared": envelope.size_declared,
        "ret": None if envelope.ret is None else envelope.ret.value,
        "envid": envelope.envid,
        "meta": json.dumps({name: getattr(meta, name) for name in META_FIELDS}),
        "size": size,
        "created": created,
        "held": int(bool(meta.hold_reason)),
        "hold_reason": meta.hold_reason,
    }


def recipient_row(message_id: int, index: int, recipient: Recipient, due: float) -> dict[str, Any]:
    address = recipient.address
    return {
        "message_id": message_id,
        "idx": index,
        "local": address.local,
        "domain": address.domain,
        "literal": int(address.literal),
        "had_source_route": int(address.had_source_route),
        "address_text": str(address),
        "notify": ",".join(value.value for value in recipient.notify),
        "orcpt": recipient.orcpt,
        "state": RecipientState.QUEUED.value,
        "next_attempt": due,
    }


# --- rows to records -----------------------------------------------------------------------------
def _meta_from_json(text: str, hold_reason: str) -> MessageMeta:
    values = {key: value for key, value in json.loads(text).items() if key in META_FIELDS}
    meta = MessageMeta(**values)
    meta.hold_reason = hold_reason  # the current reason: an admin hold or release changes it
    return meta


def _recipient_from_row(row: sqlite3.Row | tuple[Any, ...]) -> QueuedRecipient:
    (_, index, local, domain, literal, route, notify, orcpt, state, attempts, next_attempt,
     code, enhanced, text, remote_mta) = row  # fmt: skip
    address = Address(local, domain, bool(literal), bool(route))
    notify_values = tuple(Notify(value) for value in notify.split(",") if value)
    return QueuedRecipient(
        index=index,
        recipient=Recipient(address, notify_values, orcpt),
        state=RecipientState(state),
        attempts=attempts,
        next_attempt=next_attempt,
        last_reply=None if code is None else Reply(code, enhanced, text),
        remote_mta=remote_mta,
    )


def load_messages(
    connection: sqlite3.Connection, where: str, params: dict[str, Any]
) -> list[QueuedMessage]:
    """Full records of the messages matching `where` (over alias m), oldest first."""
    rows = connection.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE {where} ORDER BY m.created, m.id", params
    ).fetchall()
    messages = []
    for row in rows:
        (message_id, queue_id, s_local, s_domain, s_literal, s_route, body_type, smtputf8,
         size_declared, ret, envid, meta, size, created, held, hold_reason, delay_notified,
         first_attempt) = row  # fmt: skip
        recipient_rows = connection.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? ORDER BY idx",
            (message_id,),
        ).fetchall()
        recipients = [_recipient_from_row(item) for item in recipient_rows]
        sender = (
            None if s_local is None else Address(s_local, s_domain, bool(s_literal), bool(s_route))
        )
        envelope = Envelope(
            sender=sender,
            recipients=[item.recipient for item in recipients],
            body=BodyType(body_type),
            smtputf8=bool(smtputf8),
            size_declared=size_declared,
            ret=None if ret is None else Ret(ret),
            envid=envid,
        )
        messages.append(
            QueuedMessage(
                queue_id=queue_id,
                envelope=envelope,
                recipients=recipients,
                meta=_meta_from_json(meta, hold_reason),
                size=size,
                created=created,
                held=bool(held),
                delay_notified=bool(delay_notified),
                first_attempt=first_attempt,
            )
        )
    return messages


# --- filters -------------------------------------------------------------------------------------
def _normalised_domain(text: str) -> str:
    try:
        return normalise_domain(text)
    except AddressError:
        return text  # an address literal or a typo: compared as given, case-insensitively


def filter_sql(query: QueueFilter, now: float) -> tuple[str, dict[str, Any]]:
    """A WHERE clause over `messages m` matching every given field (callers apply `limit`)."""
    clauses = ["1"]
    params: dict[str, Any] = {"now": now}
    if query.queue_id is not None:
        clauses.append("m.queue_id = :queue_id")
        params["queue_id"] = query.queue_id
    if query.sender is not None:
        clauses.append("mg_icontains(m.sender_text, :sender)")
        params["sender"] = query.sender
    if query.recipient is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
            " AND mg_icontains(r.address_text, :recipient))"
        )
        params["recipient"] = query.recipient
    if query.domain is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'queued'"
            " AND lower(r.domain) = lower(:domain))"
        )
        params["domain"] = _normalised_domain(query.domain)
    if query.state is not None:
        clauses.append(f"({STATE_SQL}) = :state")
        params["state"] = query.state.value
    if query.older_than is not None:
        clauses.append("m.created <= :now - :older_than")
        params["older_than"] = query.older_than
    if query.younger_than is not None:
        clauses.append("m.created > :now - :younger_than")
        params["younger_than"] = query.younger_than
    where = " AND ".join(clauses)
    return where, params


def matching_ids(
    connection: sqlite3.Connection, query: QueueFilter, now: float
) -> list[tuple[int, str]]:
    """(row id, queue id) of the matching messages, oldest first, at most `query.limit`."""
    where, params = filter_sql(query, now)
    sql = f"SELECT m.id, m.queue_id FROM messages m WHERE {where} ORDER BY m.created, m.id"
    if query.limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = query.limit
    return [(row[0], row[1]) for row in connection.execute(sql, params)]
