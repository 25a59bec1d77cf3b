"""The embedded durable queue: SQLite in WAL mode, one writer thread, group commit.

Owns: `SqliteQueueStore`, the single-node implementation of `QueueStore` (store.py) in
`spool_dir/queue.db`. Every write (commit, claim, record, finish and the admin operations) is a
function handed to the `GroupCommitWriter` thread, which commits all pending writes with one fsync
and only then resolves the callers' futures, so a 250 after `commit()` means "on stable storage".
Reads (get, list, counts, bodies) run on a small pool of reader threads with their own
connections, which WAL lets run beside the writer without blocking it or the event loop.
Must not: know SMTP, routing or DSN text; the schema and row mapping live in sqlite_schema.py,
the incoming-message buffering in spool_writer.py.

Usage: `store = SqliteQueueStore(spool_dir); await store.open(); await store.recover(); ...
await store.close()` (or `async with SqliteQueueStore(spool_dir) as store:`, which opens and
closes but does not recover). A body is limited by SQLite's maximum BLOB size (1 GB by default),
far above any SIZE limit an SMTP listener would announce.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mailgate.core.clock import Clock, SystemClock
from mailgate.core.envelope import Envelope
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue import sqlite_schema as schema
from mailgate.queue.group_commit import GroupCommitWriter, WriterStats
from mailgate.queue.ids import new_queue_id
from mailgate.queue.spool_writer import INCOMING_DIRECTORY, SpoolWriter, remove_quietly
from mailgate.queue.store import (
    MessageMeta,
    MessageState,
    MessageWriter,
    QueuedMessage,
    QueueFilter,
    QueueStore,
    QueueSummary,
    RecipientUpdate,
)

DATABASE_NAME = "queue.db"
DEFAULT_MEMORY_THRESHOLD = 256 * 1024
# A claim is a lease, not a lock for ever: if a worker vanishes without finish(), its messages
# become claimable again after this long. It must exceed one delivery attempt: RFC 5321 §4.5.3.2
# time-outs add up to well under an hour for one transaction.
DEFAULT_LEASE_SECONDS = 3600.0
BLOB_COPY_CHUNK = 1024 * 1024
BODY_READ_BATCH = 1024 * 1024  # bytes read from the database per reader round trip
READER_THREADS = 2

T = TypeVar("T")


class MessageNotFoundError(KeyError):
    """No message with that queue id (never queued, or delivered and deleted)."""


class SqliteQueueStore(QueueStore):
    def __init__(
        self,
        spool_dir: str | Path,
        *,
        clock: Clock | None = None,
        memory_threshold: int = DEFAULT_MEMORY_THRESHOLD,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.database_path = self.spool_dir / DATABASE_NAME
        self.incoming_dir = self.spool_dir / INCOMING_DIRECTORY
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._memory_threshold = memory_threshold
        self._lease_seconds = lease_seconds
        self._lease_owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._writer = GroupCommitWriter(partial(schema.connect, self.database_path, writer=True))
        self._readers: ThreadPoolExecutor | None = None
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_local = threading.local()
        self._reader_lock = threading.Lock()

    @property
    def stats(self) -> WriterStats:
        """Writer counters; `stats.commits` is the number of fsynced transactions."""
        return self._writer.stats

    # --- life cycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the spool directories and the database if needed and start the writer thread."""
        await asyncio.to_thread(self._prepare_directories)
        await self._writer.start()
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="mailgate-queue-read")

    def _prepare_directories(self) -> None:
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        created = not self.database_path.exists()
        if created:
            # The database file's directory entry must itself be durable before the first 250.
            self.database_path.touch()
            _fsync_directory(self.spool_dir)

    async def close(self) -> None:
        await self._writer.close()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        with self._reader_lock:
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()

    async def __aenter__(self) -> SqliteQueueStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def recover(self) -> int:
        """Drop spill files of messages never committed and return every lease; returns leases."""
        await asyncio.to_thread(self._remove_spill_files)
        return await self._writer.run(_clear_leases)

    def _remove_spill_files(self) -> None:
        for entry in self.incoming_dir.iterdir():
            remove_quietly(entry)

    # --- reception -------------------------------------------------------------------------------
    def begin(self) -> MessageWriter:
        return SpoolWriter(new_queue_id(self._clock.now()), self.incoming_dir, self._memory_threshold)

    async def commit(self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta) -> str:
        if not isinstance(writer, SpoolWriter):
            raise TypeError("commit() takes a writer made by this store's begin()")
        if not envelope.recipients:
            raise ValueError("a message needs at least one recipient")
        body = writer.seal()
        now = self._clock.now()
        row = schema.message_row(writer.queue_id, envelope, meta, writer.size, now)
        insert = partial(_insert_message, row=row, envelope=envelope, body=body, size=writer.size)
        after = [partial(remove_quietly, body)] if isinstance(body, Path) else []
        await self._writer.run(insert, after)
        writer.mark_committed()
        return writer.queue_id

    # --- delivery --------------------------------------------------------------------------------
    async def claim_due(self, now: float, limit: int) -> list[QueuedMessage]:
        claim = partial(
            _claim_due, now=now, limit=limit, owner=self._lease_owner, until=now + self._lease_seconds
        )
        return await self._writer.run(claim)

    async def next_due(self) -> float | None:
        sql = (
            "SELECT min(r.next_attempt) FROM recipients r JOIN messages m ON m.id = r.message_id"
            f" WHERE r.state = 'queued' AND NOT m.held AND {schema.UNLEASED_SQL}"
        )
        rows = await self._read(_fetch_all, sql, {"now": self._clock.now()})
        return rows[0][0]

    async def body_chunks(self, queue_id: str, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """Reads about a megabyte per round trip to a reader thread, never the whole body."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        offset = 0
        while True:
            size, chunks = await self._read(_read_body, queue_id, offset, chunk_size)
            for chunk in chunks:
                offset += len(chunk)
                yield chunk
            if offset >= size:
                return

    async def record(self, queue_id: str, updates: list[RecipientUpdate]) -> None:
        """A message deleted meanwhile (by an admin) is ignored: there is nothing left to update."""
        await self._writer.run(partial(_record, queue_id=queue_id, updates=updates, now=self._clock.now()))

    async def finish(self, queue_id: str, *, delay_notified: bool = False) -> bool:
        return await self._writer.run(partial(_finish, queue_id=queue_id, delay_notified=delay_notified))

    # --- administration --------------------------------------------------------------------------
    async def get(self, queue_id: str) -> QueuedMessage | None:
        messages = await self._read(_load_snapshot, "m.queue_id = :queue_id", {"queue_id": queue_id})
        return messages[0] if messages else None

    async def list(self, query: QueueFilter) -> list[QueueSummary]:
        return await self._read(_list_summaries, query, self._clock.now())

    async def hold(self, query: QueueFilter, reason: str) -> list[str]:
        """Holds the matching messages not already held and returns their ids."""
        return await self._admin(query, _hold, reason=reason)

    async def release(self, query: QueueFilter) -> list[str]:
        """Releases the matching held messages (due now) and returns their ids."""
        return await self._admin(query, _release)

    async def reschedule(self, query: QueueFilter, when: float) -> list[str]:
        """Returns the ids of matching messages that had a queued recipient."""
        return await self._admin(query, _reschedule, when=when)

    async def delete(self, query: QueueFilter) -> list[str]:
        return await self._admin(query, _delete_matching)

    async def _admin(self, query: QueueFilter, action: Callable[..., list[str]], **kwargs: Any) -> list[str]:
        now = self._clock.now()
        return await self._writer.run(partial(_apply_to_matching, query=query, now=now, action=action, **kwargs))

    async def count_by_state(self) -> dict[MessageState, int]:
        sql = f"SELECT {schema.STATE_SQL} AS state, count(*) FROM messages m GROUP BY state"
        rows = await self._read(_fetch_all, sql, {"now": self._clock.now()})
        counts = {state: 0 for state in MessageState}
        for state, count in rows:
            counts[MessageState(state)] = count
        return counts

    async def oldest_created(self) -> float | None:
        rows = await self._read(_fetch_all, "SELECT min(created) FROM messages", {})
        return rows[0][0]

    # --- reader threads --------------------------------------------------------------------------
    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        if self._readers is None:
            raise RuntimeError("the queue store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, partial(self._with_reader, function, *args))

    def _with_reader(self, function: Callable[..., T], *args: Any) -> T:
        connection = getattr(self._reader_local, "connection", None)
        if connection is None:
            connection = schema.connect(self.database_path, writer=False)
            self._reader_local.connection = connection
            with self._reader_lock:
                self._reader_connections.append(connection)
        connection.execute("BEGIN")  # one snapshot for the whole read
        try:
            return function(connection, *args)
        finally:
            connection.execute("COMMIT")


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- operations run in the writer thread (inside a savepoint of a group transaction) -------------
def _insert_message(
    connection: sqlite3.Connection, row: dict[str, Any], envelope: Envelope, body: bytes | Path, size: int
) -> None:
    columns = ", ".join(row)
    placeholders = ", ".join(f":{name}" for name in row)
    cursor = connection.execute(f"INSERT INTO messages ({columns}) VALUES ({placeholders})", row)
    message_id = cursor.lastrowid
    assert message_id is not None
    for index, recipient in enumerate(envelope.recipients):
        recipient_row = schema.recipient_row(message_id, index, recipient, row["created"])
        names = ", ".join(recipient_row)
        values = ", ".join(f":{name}" for name in recipient_row)
        connection.execute(f"INSERT INTO recipients ({names}) VALUES ({values})", recipient_row)
    if isinstance(body, bytes):
        connection.execute("INSERT INTO bodies (message_id, data) VALUES (?, ?)", (message_id, body))
        return
    _copy_spill_file(connection, message_id, body, size)


def _copy_spill_file(connection: sqlite3.Connection, message_id: int, path: Path, size: int) -> None:
    """Stream the spill file into a zeroblob of its size, a megabyte at a time."""
    with open(path, "rb") as source:
        if os.fstat(source.fileno()).st_size != size:
            raise OSError(f"spill file {path} does not hold the {size} bytes written")
        connection.execute(
            "INSERT INTO bodies (message_id, data) VALUES (?, zeroblob(?))", (message_id, size)
        )
        with connection.blobopen("bodies", "data", message_id) as blob:
            while chunk := source.read(BLOB_COPY_CHUNK):
                blob.write(chunk)


def _claim_due(
    connection: sqlite3.Connection, now: float, limit: int, owner: str, until: float
) -> list[QueuedMessage]:
    rows = connection.execute(
        "SELECT r.message_id, m.queue_id, min(r.next_attempt) AS due FROM recipients r"
        " JOIN messages m ON m.id = r.message_id"
        " WHERE r.state = 'queued' AND r.next_attempt <= :now AND NOT m.held"
        f" AND {schema.UNLEASED_SQL}"
        " GROUP BY r.message_id ORDER BY due, r.message_id LIMIT :limit",
        {"now": now, "limit": limit},
    ).fetchall()
    if not rows:
        return []
    ids = {f"id{position}": row[0] for position, row in enumerate(rows)}
    marks = ", ".join(f":{name}" for name in ids)
    connection.execute(
        f"UPDATE messages SET lease_owner = :owner, lease_expires = :until WHERE id IN ({marks})",
        {"owner": owner, "until": until, **ids},
    )
    claimed = schema.load_messages(connection, f"m.id IN ({marks})", ids)
    due_order = {row[1]: position for position, row in enumerate(rows)}
    return sorted(claimed, key=lambda message: due_order[message.queue_id])


def _record(connection: sqlite3.Connection, queue_id: str, updates: list[RecipientUpdate], now: float) -> None:
    found = connection.execute("SELECT id FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
    if found is None:
        return
    message_id = found[0]
    for update in updates:
        connection.execute(
            "UPDATE recipients SET state = ?, attempts = attempts + 1, next_attempt = ?,"
            " reply_code = ?, reply_enhanced = ?, reply_text = ?, remote_mta = ?"
            " WHERE message_id = ? AND idx = ?",
            (
                update.state.value,
                update.next_attempt if update.state is RecipientState.QUEUED else 0.0,
                update.reply.code,
                update.reply.enhanced,
                update.reply.text,
                update.remote_mta,
                message_id,
                update.index,
            ),
        )
    connection.execute(
        "UPDATE messages SET first_attempt = coalesce(first_attempt, ?) WHERE id = ?", (now, message_id)
    )


def _finish(connection: sqlite3.Connection, queue_id: str, delay_notified: bool) -> bool:
    found = connection.execute("SELECT id FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
    if found is None:
        return True
    message_id = found[0]
    connection.execute(
        "UPDATE messages SET lease_owner = NULL, lease_expires = NULL,"
        " delay_notified = delay_notified OR ? WHERE id = ?",
        (int(delay_notified), message_id),
    )
    pending = connection.execute(
        "SELECT 1 FROM recipients WHERE message_id = ? AND state = 'queued' LIMIT 1", (message_id,)
    ).fetchone()
    if pending is not None:
        return False
    _delete_rows(connection, [message_id])
    return True


def _delete_rows(connection: sqlite3.Connection, message_ids: list[int]) -> None:
    for table, column in (("bodies", "message_id"), ("recipients", "message_id"), ("messages", "id")):
        connection.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in message_ids])


def _clear_leases(connection: sqlite3.Connection) -> int:
    return connection.execute(
        "UPDATE messages SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner IS NOT NULL"
    ).rowcount


def _apply_to_matching(
    connection: sqlite3.Connection, query: QueueFilter, now: float, action: Callable[..., list[str]], **kwargs: Any
) -> list[str]:
    matches = schema.matching_ids(connection, query, now)
    if not matches:
        return []
    return action(connection, matches, now=now, **kwargs)


def _hold(connection: sqlite3.Connection, matches: list[tuple[int, str]], now: float, reason: str) -> list[str]:
    held = []
    for message_id, queue_id in matches:
        cursor = connection.execute(
            "UPDATE messages SET held = 1, hold_reason = ? WHERE id = ? AND NOT held", (reason, message_id)
        )
        if cursor.rowcount:
            held.append(queue_id)
    return held


def _release(connection: sqlite3.Connection, matches: list[tuple[int, str]], now: float) -> list[str]:
    released = []
    for message_id, queue_id in matches:
        cursor = connection.execute(
            "UPDATE messages SET held = 0, hold_reason = '' WHERE id = ? AND held", (message_id,)
        )
        if cursor.rowcount:
            connection.execute(
                "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND state = 'queued'",
                (now, message_id),
            )
            released.append(queue_id)
    return released


def _reschedule(
    connection: sqlite3.Connection, matches: list[tuple[int, str]], now: float, when: float
) -> list[str]:
    changed = []
    for message_id, queue_id in matches:
        cursor = connection.execute(
            "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND state = 'queued'",
            (when, message_id),
        )
        if cursor.rowcount:
            changed.append(queue_id)
    return changed


def _delete_matching(connection: sqlite3.Connection, matches: list[tuple[int, str]], now: float) -> list[str]:
    _delete_rows(connection, [message_id for message_id, _ in matches])
    return [queue_id for _, queue_id in matches]


# --- operations run in a reader thread (inside one read transaction) -----------------------------
def _fetch_all(connection: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return connection.execute(sql, params).fetchall()


def _load_snapshot(connection: sqlite3.Connection, where: str, params: dict[str, Any]) -> list[QueuedMessage]:
    return schema.load_messages(connection, where, params)


def _read_body(
    connection: sqlite3.Connection, queue_id: str, offset: int, chunk_size: int
) -> tuple[int, list[bytes]]:
    """(body size, chunks from `offset` totalling at most about BODY_READ_BATCH bytes)."""
    found = connection.execute(
        "SELECT b.message_id, length(b.data) FROM bodies b JOIN messages m ON m.id = b.message_id"
        " WHERE m.queue_id = ?",
        (queue_id,),
    ).fetchone()
    if found is None:
        raise MessageNotFoundError(queue_id)
    message_id, size = found
    chunks: list[bytes] = []
    if offset >= size:
        return size, chunks
    with connection.blobopen("bodies", "data", message_id, readonly=True) as blob:
        blob.seek(offset)
        budget = max(BODY_READ_BATCH, chunk_size)
        while budget >= chunk_size and (chunk := blob.read(chunk_size)):
            chunks.append(chunk)
            budget -= len(chunk)
    return size, chunks


def _list_summaries(connection: sqlite3.Connection, query: QueueFilter, now: float) -> list[QueueSummary]:
    where, params = schema.filter_sql(query, now)
    sql = (
        f"SELECT m.id, m.queue_id, m.sender_text, m.size, m.created, {schema.STATE_SQL}, m.hold_reason"
        f" FROM messages m WHERE {where} ORDER BY m.created, m.id"
    )
    if query.limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = query.limit
    summaries = []
    rows = connection.execute(sql, params).fetchall()
    for message_id, queue_id, sender, size, created, state, hold_reason in rows:
        recipients = connection.execute(
            "SELECT address_text, state, next_attempt, reply_code, reply_enhanced, reply_text"
            " FROM recipients WHERE message_id = ? ORDER BY idx",
            (message_id,),
        ).fetchall()
        pending = [row[2] for row in recipients if row[1] == RecipientState.QUEUED.value]
        summaries.append(
            QueueSummary(
                queue_id=queue_id,
                sender=sender,
                recipients=[
                    (address, RecipientState(r_state), _reply_text(code, enhanced, text))
                    for address, r_state, _, code, enhanced, text in recipients
                ],
                size=size,
                created=created,
                state=MessageState(state),
                hold_reason=hold_reason,
                next_attempt=min(pending) if pending else None,
            )
        )
    return summaries


def _reply_text(code: int | None, enhanced: str | None, text: str | None) -> str:
    """The last reply as `queue list` shows it, '' before the first attempt."""
    return "" if code is None else str(Reply(code, enhanced or "", text or ""))
