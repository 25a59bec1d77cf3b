"""The cluster queue: a `QueueStore` in PostgreSQL, shared by every mailgate node of a cluster.

Owns: `PostgresQueueStore`, wiring pg_schema.py (tables, migrations, the checks at connect),
pg_queries.py (statements) and pg_group_commit.py (one transaction per group of commits) to the
`QueueStore` interface (store.py), the claims' fencing tokens, and the node's heartbeat, which
keeps its leases alive: a node that stops heartbeating has its leases expire after
`lease_seconds`, and another node then claims those messages (docs/cluster.md).
Must not: know SMTP, routing or DSN text.

Driver: psycopg 3 in its asyncio form, with psycopg_pool. Every store method is a coroutine
called on the event loop (sessions commit, the runner claims and finishes), so an asyncio driver
serves them with no thread hop at all, unlike the SQLite store, whose blocking library needs a
writer thread. psycopg rather than asyncpg because its pipeline mode sends a whole group's
BEGIN, statements and COMMIT in one round trip (the group commit's whole cost is one network
exchange and one WAL flush), it reads the libpq DSN and password conventions operators already
use, and the same library has a blocking API for tools; asyncpg has no pipelining across
statements of different shapes.

Durability: a 250 goes out only after the COMMIT of the group holding the message returned, with
`synchronous_commit` checked not to be off on every connection (pg_schema.check_durability).
Bodies are bytea rows of at most BODY_ROW_BYTES (pg_schema.py; measured against large objects in
docs/cluster.md): streamed in from the spill file and out to the transport a piece at a time.
Spill files of incoming messages stay on the node's local disk (`spool_dir/incoming`) until the
commit copies them into the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from mailgate.core.clock import Clock, SystemClock
from mailgate.core.envelope import Envelope
from mailgate.queue import pg_queries as queries
from mailgate.queue import pg_schema as schema
from mailgate.queue.hot_bodies import HOT_BODY_BYTES, HotBodies
from mailgate.queue.pg_group_commit import PgGroupWriter
from mailgate.queue.spooled_store import SpooledQueueStore
from mailgate.queue.spool_writer import INCOMING_DIRECTORY, remove_quietly
from mailgate.queue.store import (
    LeaseLostError,
    MessageMeta,
    MessageNotFoundError,
    MessageState,
    MessageWriter,
    NodeNameInUseError,
    QueuedMessage,
    QueueFilter,
    QueueSummary,
    QueueUnavailableError,
    RecipientUpdate,
)

__all__ = ["LeaseLostError", "MessageNotFoundError", "PostgresQueueStore", "QueueUnavailableError"]

log = logging.getLogger("mailgate.queue")

DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_MEMORY_THRESHOLD = 256 * 1024
CONNECT_TIMEOUT_S = 5  # a database that does not answer: 451 soon, not after a TCP time-out
POOL_SIZE = 4  # claims, reads, admin operations and heartbeats (commits have their own)
POOL_WAIT_S = 10.0
HEARTBEATS_PER_LEASE = 4  # a lease is renewed this many times before it could lapse
# How often a node looks for work it was not told about: mail another node accepted and could
# not deliver (it died), or leases that lapsed. Each look is one indexed query.
WATCH_INTERVAL_S = 1.0

T = TypeVar("T")

_process_instance = ""


def node_instance() -> str:
    """This serving process's id in the `nodes` table, random per start. Made once per process
    and inherited by forked workers (the supervisor opens the store before it forks), so every
    worker of one node heartbeats as one instance and a second node under the same name is not
    taken for one of them."""
    global _process_instance
    if not _process_instance:
        _process_instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
    return _process_instance


class PostgresQueueStore(SpooledQueueStore):
    def __init__(
        self,
        dsn: str,
        spool_dir: str | Path,
        *,
        password: str | None = None,
        node: str = "",
        clock: Clock | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        memory_threshold: int = DEFAULT_MEMORY_THRESHOLD,
        create_schema: bool = True,
        register: bool = True,
        instance: str | None = None,
    ) -> None:
        self.node = node or socket.gethostname()
        self.incoming_dir = Path(spool_dir) / INCOMING_DIRECTORY
        self._dsn = dsn
        # autocommit: transactions are explicit (BEGIN ... COMMIT), also on pooled connections
        self._connect_options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True}
        if password is not None:
            self._connect_options["password"] = password
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lease_seconds = lease_seconds
        self._memory_threshold = memory_threshold
        self._create_schema = create_schema
        # A serving node holds its name (`nodes` table) and heartbeats; the admin commands don't.
        self._register = register
        self._instance = instance or node_instance()
        self._name_lost = False
        self._owner = f"{self.node}:{os.getpid()}:{id(self):x}"
        self._started = time.time()
        self._writer = PgGroupWriter(self._connect)
        self._pool: AsyncConnectionPool | None = None
        self._tokens: dict[str, int] = {}  # fencing token of each claim this store made
        self._given_up: set[str] = set()  # claims whose attempt failed: kept for fencing, not renewed
        self._hot = HotBodies(HOT_BODY_BYTES)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat_failing = False
        self._watch_task: asyncio.Task[None] | None = None
        self._on_claimable: Callable[[], None] | None = None

    @property
    def stats(self):  # noqa: ANN201 - pg_group_commit.GroupStats
        """Writer counters; `stats.commits` is the number of group transactions."""
        return self._writer.stats

    # --- life cycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, check durability and the schema (creating it in an empty database), start the
        writer, the pool and the heartbeat. QueueUnavailableError (one line) if the database
        cannot be used: a bad DSN or password, unreachable, unsafe, another schema version.
        NodeNameInUseError if another live node serves under this node's name."""
        await asyncio.to_thread(self.incoming_dir.mkdir, parents=True, exist_ok=True)
        try:
            async with await self._connect() as connection:
                await schema.check_schema(connection, create=self._create_schema)
        except (psycopg.Error, schema.SchemaError, schema.UnsafeDatabaseError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise QueueUnavailableError(f"PostgreSQL: {reason}") from None
        await self._writer.start()
        self._pool = AsyncConnectionPool(
            self._dsn, kwargs=self._connect_options, min_size=1, max_size=POOL_SIZE,
            configure=schema.check_durability, timeout=POOL_WAIT_S, open=False,
            name="mailgate-queue",
        )
        await self._pool.open(wait=True, timeout=POOL_WAIT_S)
        if not self._register:
            return
        holder = await self._beat()
        if holder is not None:
            await self.close()
            instance, heartbeat = holder
            raise NodeNameInUseError(
                f"node {self.node!r} is alive (last heartbeat {max(0.0, self._clock.now() - heartbeat):.1f}s ago"
                f", instance {instance}); queue.node_name must be unique per node"
            )
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="mailgate-queue-heartbeat")
        self._watch_task = asyncio.create_task(self._watch_loop(), name="mailgate-queue-watch")

    async def close(self) -> None:
        """Finish every pending write, then stop the heartbeat and close the connections."""
        for task in (self._heartbeat_task, self._watch_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._heartbeat_task = self._watch_task = None
        await self._writer.close()
        if self._pool is not None:
            if self._register:
                try:
                    await self._transaction(queries.unregister_node, self.node, self._instance)
                except (psycopg.Error, OSError):
                    pass  # the heartbeat goes stale by itself after lease_seconds
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> PostgresQueueStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        connection = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_options)
        try:
            await schema.check_durability(connection)
        except BaseException:
            await connection.close()
            raise
        return connection

    async def recover(self) -> int:
        """At start-up: drop this node's spill files and return the leases its name holds (a
        crash left them); other nodes' leases are theirs."""
        await asyncio.to_thread(self._remove_spill_files)
        self._tokens.clear()
        self._given_up.clear()
        return await self._transaction(queries.clear_leases, self.node)

    def _remove_spill_files(self) -> None:
        for entry in self.incoming_dir.iterdir():
            remove_quietly(entry)

    # --- heartbeat -------------------------------------------------------------------------------
    async def _beat(self) -> tuple[str, float] | None:
        """Hold this node's name and renew the leases of the claims it works on, in one
        transaction. (instance, heartbeat) of another live process holding the name, else None."""
        now = self._clock.now()
        working = [token for queue_id, token in self._tokens.items() if queue_id not in self._given_up]

        async def beat(connection: queries.Connection) -> tuple[str, float] | None:
            holder = await queries.register_node(
                connection, self.node, self._instance, self._started, now, now - self._lease_seconds
            )
            if holder is None:
                await queries.renew_leases(connection, working, now + self._lease_seconds)
            return holder

        return await self._transaction(beat)

    async def _heartbeat_loop(self) -> None:
        interval = max(0.05, self._lease_seconds / HEARTBEATS_PER_LEASE)
        while True:
            await asyncio.sleep(interval)
            try:
                holder = await self._beat()
                if holder is not None and not self._name_lost:
                    # Only after this node was cut off for longer than lease_seconds: its leases
                    # lapsed and another process took the name; its outcomes are fenced.
                    log.error("queue.node_name %r is now held by another process (%s): queue.node_name "
                              "must be unique per node; stop one of them", self.node, holder[0])
                self._name_lost = holder is not None
            except (psycopg.Error, OSError) as exc:
                if not self._heartbeat_failing:
                    log.warning("queue heartbeat failed (leases lapse after %.0f s): %s", self._lease_seconds, exc)
                self._heartbeat_failing = True
            else:
                if self._heartbeat_failing:
                    log.warning("queue heartbeat works again")
                self._heartbeat_failing = False

    def watch(self, on_claimable: Callable[[], None]) -> None:
        """Call `on_claimable` (the runner's wake-up) when a message is due that this node did
        not commit or schedule itself: accepted by another node, or left by one that died."""
        self._on_claimable = on_claimable

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._on_claimable is None:
                continue
            try:
                due = await self.next_due()
            except (psycopg.Error, OSError, asyncio.TimeoutError):
                continue  # the heartbeat reports an outage; the runner retries its claims
            if due is not None and due <= self._clock.now():
                self._on_claimable()

    # --- reception -------------------------------------------------------------------------------
    async def _commit(
        self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta, *, leased: bool
    ) -> tuple[str, float]:
        writer, body, row, created = self._sealed(writer, envelope, meta, leased=leased)
        row["accepted_by"] = self.node
        lease = None
        if leased:
            lease = {"lease_node": self.node, "lease_owner": self._owner, "lease_expires": created + self._lease_seconds}
        operation = queries.insert_message(row, envelope, queries.BodyRows(writer.queue_id, body, writer.size), lease)
        token = await self._writer.run(operation)
        if isinstance(body, Path):
            await asyncio.to_thread(remove_quietly, body)
        writer.mark_committed()
        if token is not None:
            self._tokens[writer.queue_id] = token
        if isinstance(body, bytes):
            self._hot.put(writer.queue_id, body)
        return writer.queue_id, created

    # --- delivery --------------------------------------------------------------------------------
    async def claim_due(self, now: float, limit: int) -> list[QueuedMessage]:
        claimed = await self._transaction(
            queries.claim_due, now, limit, self.node, self._owner, now + self._lease_seconds
        )
        for message, token in claimed:
            self._tokens[message.queue_id] = token
            self._given_up.discard(message.queue_id)
        return [message for message, _ in claimed]

    async def next_due(self) -> float | None:
        return await self._transaction(queries.next_due, self._clock.now())

    async def _stored_chunks(self, queue_id: str, chunk_size: int) -> AsyncIterator[bytes]:
        """About a megabyte per round trip, never the whole body. Raises MessageNotFoundError
        (a KeyError) for an unknown or deleted message."""
        seq = offset = 0
        carry = b""  # the tail of a row, joined to the next so every chunk but the last is full
        while True:
            size, rows = await self._transaction(queries.read_body, queue_id, seq)
            for row in rows:
                seq += 1
                offset += len(row)
                data = carry + row if carry else row
                whole = len(data) - len(data) % chunk_size
                for start in range(0, whole, chunk_size):
                    yield data[start : start + chunk_size]
                carry = data[whole:]
            if offset >= size:
                if carry:
                    yield carry
                return
            if not rows:  # deleted meanwhile
                raise MessageNotFoundError(queue_id)

    async def record(self, queue_id: str, updates: list[RecipientUpdate]) -> None:
        """Raises LeaseLostError if another claim replaced ours; a message deleted meanwhile (by
        an admin) is ignored."""
        token = self._tokens.get(queue_id)
        try:
            await self._writer.run(queries.record(queue_id, token, updates, self._clock.now()))
        except Exception:  # the attempt ends here: the lease is left to lapse, not renewed
            self._given_up.add(queue_id)
            raise

    async def finish(
        self, queue_id: str, *, delay_notified: bool = False, updates: list[RecipientUpdate] | None = None
    ) -> bool:
        """True also when the message was already gone. Raises LeaseLostError, recording
        nothing, if another claim replaced ours. After any failure the claim is given up: its
        lease is no longer renewed and lapses, and the message is tried again (by any node)."""
        token = self._tokens.get(queue_id)
        try:
            gone = await self._writer.run(
                queries.finish(queue_id, token, updates or [], delay_notified, self._clock.now())
            )
        except Exception:  # a lost lease, or the database: the lease is left to lapse
            self._given_up.add(queue_id)
            raise
        self._tokens.pop(queue_id, None)
        self._given_up.discard(queue_id)
        if gone:
            self._hot.pop(queue_id)
        return gone

    def _forget(self, queue_id: str) -> None:
        self._tokens.pop(queue_id, None)
        self._given_up.discard(queue_id)
        self._hot.pop(queue_id)

    # --- administration --------------------------------------------------------------------------
    async def get(self, queue_id: str) -> QueuedMessage | None:
        return await self._transaction(queries.get, queue_id)

    async def list(self, query: QueueFilter) -> list[QueueSummary]:
        return await self._transaction(queries.list_summaries, query, self._clock.now())

    async def hold(self, query: QueueFilter, reason: str) -> list[str]:
        return await self._admin(query, queries.hold, reason)

    async def release(self, query: QueueFilter) -> list[str]:
        return await self._admin(query, queries.release)

    async def reschedule(self, query: QueueFilter, when: float) -> list[str]:
        return await self._admin(query, queries.reschedule, when)

    async def delete(self, query: QueueFilter) -> list[str]:
        deleted = await self._admin(query, queries.delete)
        for queue_id in deleted:
            self._forget(queue_id)
        return deleted

    async def _admin(self, query: QueueFilter, action: Callable[..., Awaitable[list[str]]], *args: Any) -> list[str]:
        """Filter and act in one transaction, so the ids returned are exactly those changed."""
        now = self._clock.now()

        async def apply(connection: psycopg.AsyncConnection[Any]) -> list[str]:
            matches = await queries.matching_ids(connection, query, now)
            return await action(connection, matches, now, *args) if matches else []

        return await self._transaction(apply)

    async def count_by_state(self) -> dict[MessageState, int]:
        return await self._transaction(queries.count_by_state, self._clock.now())

    async def oldest_created(self) -> float | None:
        return await self._transaction(queries.oldest_created)

    async def nodes(self) -> list[tuple[str, float, float]]:
        """(name, started, last heartbeat) of every node sharing this queue."""
        return await self._transaction(queries.nodes)

    async def leases_by_node(self) -> dict[str, int]:
        return await self._transaction(queries.leases_by_node, self._clock.now())

    # --- pooled transactions ---------------------------------------------------------------------
    async def _transaction(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `function(connection, *args)` in one transaction on a pooled connection."""
        if self._pool is None:
            raise RuntimeError("the queue store is not open")
        async with self._pool.connection() as connection:
            async with connection.transaction():
                return await function(connection, *args)


async def migrate_database(dsn: str, password: str | None) -> tuple[int, int]:
    """`mailgate queue migrate`: bring the schema to this version; (from, to) versions.
    QueueUnavailableError (one line) if the database cannot be reached or is newer."""
    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True}
    if password is not None:
        options["password"] = password
    try:
        async with await psycopg.AsyncConnection.connect(dsn, **options) as connection:
            return await schema.migrate(connection)
    except (psycopg.Error, schema.SchemaError) as exc:
        raise QueueUnavailableError(f"PostgreSQL: {' '.join(str(exc).split())}") from None
