"""The embedded durable queue: SQLite in WAL mode, one writer thread, group commit.

Owns: `SqliteQueueStore`, the single-node implementation of `QueueStore` (store.py) in
`spool_dir/queue.db`. Every write (commit, claim, record, finish and the admin operations) is a
function handed to the `GroupCommitWriter` thread, which commits all pending writes with one fsync
and only then resolves the callers' futures, so a 250 after `commit()` means "on stable storage".
Reads (get, list, counts, bodies) run on a small pool of reader threads with their own
connections, which WAL lets run beside the writer without blocking it or the event loop.
Bodies of `SEGMENT_THRESHOLD` bytes or more are appended to segment files (queue/segments.py) by
the commit's stage, synced once per group beside the transaction that points at them; smaller
ones stay inline in SQLite. When a segment no writer appends to any more has no live body left,
a durable operation deletes its row and then unlinks the file (`_reap`): durable, because the
deletions that emptied it may have been committed without an fsync, and a power loss must not
bring back a message whose body file is gone. The current segment, once the same kind of
durable operation finds it without a live body, is cut back to nothing and reused from its
start, so its space does not wait for it to fill up.
Must not: know SMTP, routing or DSN text. The statements live in sqlite_queries.py, the schema
and row mapping in sqlite_schema.py, the thread in group_commit.py, incoming bytes in
spool_writer.py, segment files in segments.py; this module only wires them to the `QueueStore`
interface.

Usage: `store = SqliteQueueStore(spool_dir); await store.open(); await store.recover(); ...
await store.close()` (or `async with SqliteQueueStore(spool_dir) as store:`, which opens and
closes but does not recover). An inline body is far below SQLite's maximum BLOB size.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sqlite3
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mailgate.core.clock import Clock, SystemClock
from mailgate.core.envelope import Envelope
from mailgate.queue import segments
from mailgate.queue import sqlite_queries as queries
from mailgate.queue import sqlite_schema as schema
from mailgate.queue.checkpointer import CHECKPOINT_INTERVAL, Checkpointer
from mailgate.queue.group_commit import GroupCommitWriter, WriterStats, disk_full
from mailgate.queue.hot_bodies import HOT_BODY_BYTES, HotBodies
from mailgate.queue.segment_compactor import COMPACT_INTERVAL, COMPACT_MIN_WASTE, SegmentCompactor
from mailgate.queue.segments import (
    SEGMENT_THRESHOLD,
    SEGMENTS_DIRECTORY,
    SegmentAppender,
    StagedBody,
)
from mailgate.queue.space_reserve import SpaceReserve
from mailgate.queue.spool_names import DATABASE_NAME
from mailgate.queue.spooled_store import SpooledQueueStore
from mailgate.queue.spool_writer import INCOMING_DIRECTORY, remove_quietly
from mailgate.queue.sqlite_queries import MessageNotFoundError
from mailgate.queue.store import (
    CorruptBodyError,
    MessageMeta,
    MessageState,
    MessageWriter,
    QueuedMessage,
    QueueFilter,
    QueueSummary,
    RecipientUpdate,
)
from mailgate.queue.wal_room import make_wal_room

__all__ = ["MessageNotFoundError", "SqliteQueueStore"]

log = logging.getLogger("mailgate.queue")

WRITER_LOCK_NAME = "queue.db.writer-lock"  # held by the process committing (group_commit.py)
DEFAULT_MEMORY_THRESHOLD = 256 * 1024
# A claim is a lease, not a lock for ever: if a worker vanishes without finish(), its messages
# become claimable again after this long. It must exceed one delivery attempt: the RFC 5321
# §4.5.3.2 time-outs of one transaction add up to well under an hour.
DEFAULT_LEASE_SECONDS = 3600.0
READER_THREADS = 2
# Zeros the WAL file holds before the first commit (queue/wal_room.py): at 100 msg/s of 4 KiB,
# a second of commits (new messages and their deliveries) writes about 3 MB of frames.
WAL_ROOM = 8 * 1024 * 1024

T = TypeVar("T")


class SqliteQueueStore(SpooledQueueStore):
    def __init__(
        self,
        spool_dir: str | Path,
        *,
        clock: Clock | None = None,
        memory_threshold: int = DEFAULT_MEMORY_THRESHOLD,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        segment_threshold: int = SEGMENT_THRESHOLD,
        segment_limit: int = segments.SEGMENT_LIMIT,
        reserve_bytes: int = 0,
        compact_min_waste: int = COMPACT_MIN_WASTE,
        compact_interval: float = COMPACT_INTERVAL,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.database_path = self.spool_dir / DATABASE_NAME
        self.incoming_dir = self.spool_dir / INCOMING_DIRECTORY
        self.segments_dir = self.spool_dir / SEGMENTS_DIRECTORY
        self._segment_threshold = segment_threshold
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._memory_threshold = memory_threshold
        self._lease_seconds = lease_seconds
        self._lease_owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._segments = SegmentAppender(self.segments_dir, queries.allocate_segment, segment_limit)
        # Room for bookkeeping on a full disk (queue/space_reserve.py); 0 allocates none, but a
        # reserve left by an earlier run is still released when needed.
        self.reserve = SpaceReserve(self.spool_dir, reserve_bytes)
        self._writer = GroupCommitWriter(
            self._connect_writer,
            staging=self._segments,
            lock_path=self.spool_dir / WRITER_LOCK_NAME,
            reserve=self.reserve,
        )
        self._readers: ThreadPoolExecutor | None = None
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_local = threading.local()
        self._reader_lock = threading.Lock()
        self._hot = HotBodies(HOT_BODY_BYTES)
        self._checkpoint_interval = checkpoint_interval
        self._checkpointer: Checkpointer | None = None
        self._compactor = SegmentCompactor(
            self._writer, self._segments, self._reap, min_waste=compact_min_waste, interval=compact_interval
        )

    def _connect_writer(self) -> sqlite3.Connection:
        """The writer thread's connection, with room made in the WAL before its first commit."""
        connection = schema.connect(self.database_path, writer=True)
        make_wal_room(connection, Path(f"{self.database_path}-wal"), WAL_ROOM)
        return connection

    @property
    def stats(self) -> WriterStats:
        """Writer counters; `stats.commits` is the number of transactions, `stats.stage_syncs`
        the number of segment syncs (one per group holding large bodies)."""
        return self._writer.stats

    # --- life cycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the spool directories and the database if needed and start the writer thread."""
        await asyncio.to_thread(self._prepare_directories)
        await asyncio.to_thread(self.reserve.restore)
        await self._writer.start()
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="mailgate-queue-read")
        self._checkpointer = Checkpointer(
            partial(schema.connect, self.database_path, writer=False),
            commits=lambda: self._writer.stats.commits,
            # The WAL starts over in the writer thread, not in a new message's commit.
            restart_wal=partial(self._writer.run_unawaited, schema.rewrite_header),
            interval=self._checkpoint_interval,
        )
        self._checkpointer.start()

    def _prepare_directories(self) -> None:
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        if not self.segments_dir.exists():
            self.segments_dir.mkdir()
            _fsync_directory(self.spool_dir)  # durable before a row points into it
        if not self.database_path.exists():
            # The new database file's directory entry (and the spool's) must be durable before
            # the first 250; SQLite syncs the directory of its WAL itself.
            self.database_path.touch()
            _fsync_directory(self.spool_dir)
            _fsync_directory(self.spool_dir.resolve().parent)

    async def close(self) -> None:
        """Finish every pending write, then stop the threads; safe to call twice."""
        await self._compactor.stop()
        await self._writer.close()
        self._segments.close()  # writer stopped; an empty last segment is left to recover()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
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
        """At start-up only: drop spill files, return every lease, remove segments without a
        live body (of every process: with several workers the supervisor runs this before
        forking); returns the leases returned. New segments get numbers above every old one."""
        await asyncio.to_thread(self._remove_spill_files)
        returned = await self._writer.run(queries.clear_leases)
        on_disk = await asyncio.to_thread(segments.segment_numbers, self.segments_dir)
        await self._reap(set(on_disk) | set(await self._read(queries.segment_numbers)))
        return returned

    def _remove_spill_files(self) -> None:
        for entry in self.incoming_dir.iterdir():
            remove_quietly(entry)

    # --- reception -------------------------------------------------------------------------------
    async def _commit(
        self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta, *, leased: bool
    ) -> tuple[str, float]:
        writer, body, row, created = self._sealed(writer, envelope, meta, leased=leased)
        if leased:
            row.update(lease_owner=self._lease_owner, lease_expires=created + self._lease_seconds)
        stored: bytes | Path | StagedBody = body
        stage = undo = None
        if writer.size >= self._segment_threshold:
            stored = StagedBody(body, writer.size)
            stage = partial(self._segments.append, stored)
            undo = partial(queries.remove_message, queue_id=writer.queue_id)
        insert = partial(
            queries.insert_message, row=row, envelope=envelope, body=stored, size=writer.size
        )
        remove_spill_file = [partial(remove_quietly, body)] if isinstance(body, Path) else []
        try:
            # Inline only for a body in memory: copying a spill file would hold up the loop.
            await self._writer.run(
                insert, remove_spill_file, stage=stage, undo=undo, reserve=False, inline=isinstance(body, bytes)
            )
        except sqlite3.Error as exc:
            if disk_full(exc):  # the caller answers 452 for lack of space, not 451
                raise OSError(errno.ENOSPC, f"queue database full: {exc}") from exc
            raise
        finally:
            retired = self._segments.take_retired()
            if retired:
                await self._reap(retired)
        writer.mark_committed()
        if isinstance(body, bytes):
            self._hot.put(writer.queue_id, body)
        return writer.queue_id, created

    # --- delivery --------------------------------------------------------------------------------
    async def claim_due(self, now: float, limit: int) -> list[QueuedMessage]:
        """A write (it sets the lease), so it goes through the writer thread."""
        until = now + self._lease_seconds
        claim = partial(
            queries.claim_due, now=now, limit=limit, owner=self._lease_owner, until=until
        )
        return await self._writer.run(claim, durable=False)  # a lost lease is returned by recover()

    async def next_due(self) -> float | None:
        return await self._read(queries.next_due, self._clock.now())

    async def _stored_chunks(self, queue_id: str, chunk_size: int) -> AsyncIterator[bytes]:
        """Reads about a megabyte per round trip to a reader thread, never the whole body.

        Raises MessageNotFoundError (a KeyError) for an unknown or deleted message, and
        CorruptBodyError after the last chunk of a segment body whose CRC-32 is not the one
        recorded with it (so a transport that sends chunk by chunk never sends the final dot).
        """
        offset = 0
        crc = 0
        while True:
            try:
                size, expected, chunks = await self._read(
                    queries.read_body, queue_id, offset, chunk_size, self.segments_dir
                )
            except queries.SegmentGoneError:  # moved meanwhile? A new snapshot knows where to
                size, expected, chunks = await self._read(
                    queries.read_body, queue_id, offset, chunk_size, self.segments_dir
                )
            for chunk in chunks:
                offset += len(chunk)
                if expected is not None:
                    crc = zlib.crc32(chunk, crc)
                    if offset >= size and crc != expected:
                        raise CorruptBodyError(f"the body of {queue_id} fails its CRC-32 check")
                yield chunk
            if offset >= size:
                return

    async def record(self, queue_id: str, updates: list[RecipientUpdate]) -> None:
        """A message deleted meanwhile (by an admin) is ignored: there is nothing to update."""
        now = self._clock.now()
        await self._writer.run(partial(queries.record, queue_id=queue_id, updates=updates, now=now), durable=False)

    async def finish(
        self, queue_id: str, *, delay_notified: bool = False, updates: list[RecipientUpdate] | None = None
    ) -> bool:
        """True also when the message was already gone (deleted by an admin meanwhile)."""
        now = self._clock.now()

        emptied: list[int] = []

        def record_and_finish(connection: sqlite3.Connection) -> bool:
            emptied.clear()  # only what the committed attempt emptied
            if updates:  # one operation, one group slot: the common all-delivered case
                queries.record(connection, queue_id=queue_id, updates=updates, now=now)
            return queries.finish(
                connection, queue_id=queue_id, delay_notified=delay_notified, emptied=emptied
            )

        gone = await self._writer.run(record_and_finish, durable=False)
        if gone:
            self._hot.pop(queue_id)
        if emptied:
            await self._reap(emptied)
        self._compactor.maybe_start()
        return gone

    # --- administration --------------------------------------------------------------------------
    async def get(self, queue_id: str) -> QueuedMessage | None:
        return await self._read(queries.get, queue_id)

    async def list(self, query: QueueFilter) -> list[QueueSummary]:
        return await self._read(queries.list_summaries, query, self._clock.now())

    async def hold(self, query: QueueFilter, reason: str) -> list[str]:
        """Holds the matching messages not already held and returns their ids."""
        return await self._admin(query, queries.hold, reason=reason)

    async def release(self, query: QueueFilter) -> list[str]:
        """Releases the matching held messages (due now) and returns their ids."""
        return await self._admin(query, queries.release)

    async def reschedule(self, query: QueueFilter, when: float) -> list[str]:
        """Returns the ids of the matching messages that had a queued recipient."""
        return await self._admin(query, queries.reschedule, when=when)

    async def delete(self, query: QueueFilter) -> list[str]:
        emptied: list[int] = []
        deleted = await self._admin(query, queries.delete, emptied=emptied)
        for queue_id in deleted:
            self._hot.pop(queue_id)
        if emptied:
            await self._reap(emptied)
        self._compactor.maybe_start()
        return deleted

    async def compact_segments(self) -> int:
        """Compact now rather than at the next interval (segment_compactor.py); bodies moved."""
        return await self._compactor.compact()

    async def _admin(
        self, query: QueueFilter, action: Callable[..., list[str]], **kwargs: Any
    ) -> list[str]:
        """Filter and act in the same transaction, so the ids returned are exactly those changed."""
        apply = partial(
            queries.apply_to_matching, query=query, now=self._clock.now(), action=action, **kwargs
        )
        return await self._writer.run(apply)

    async def _reap(self, numbers: set[int] | list[int]) -> None:
        """Unlink the segments among `numbers` that no writer appends to and that hold no live
        body, after a durable commit that deleted their rows (see the module doc). A failure
        is logged, not raised: the caller's own operation has succeeded; recover() retries."""
        candidates = sorted(numbers)
        removable: list[int] = []
        emptied_current: list[int] = []

        def drop_rows(connection: sqlite3.Connection) -> None:
            current = self._segments.current
            emptied = current in candidates and queries.segment_live(connection, current) == 0
            emptied_current[:] = [current] if emptied else []
            finished = [
                number
                for number in candidates
                if number != current and segments.released(self.segments_dir, number)
            ]
            removable[:] = queries.drop_unused_segments(connection, finished)

        def unlink_files() -> None:
            for number in removable:
                segments.unlink_segment(self.segments_dir, number)

        def rewind_current() -> None:  # after the durable commit: no deleted row comes back
            for number in emptied_current:
                self._segments.request_rewind(number)

        try:
            await self._writer.run(drop_rows, [unlink_files, rewind_current])
        except (OSError, sqlite3.Error) as exc:
            log.warning("segments %s not removed yet: %s", candidates, exc)
            return
        retired = self._segments.take_retired()  # a current segment whose rewind failed
        if retired:
            await self._reap(retired)

    async def count_by_state(self) -> dict[MessageState, int]:
        return await self._read(queries.count_by_state, self._clock.now())

    async def oldest_created(self) -> float | None:
        return await self._read(queries.oldest_created)

    # --- reader threads --------------------------------------------------------------------------
    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        if self._readers is None:
            raise RuntimeError("the queue store is not open")
        loop = asyncio.get_running_loop()
        call = partial(self._with_reader, function, *args)
        return await loop.run_in_executor(self._readers, call)

    def _with_reader(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function` on this reader thread's own connection, in one read transaction."""
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
