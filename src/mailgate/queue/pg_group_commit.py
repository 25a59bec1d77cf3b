"""Group commit on PostgreSQL: every write pending at one instant goes in ONE transaction.

Owns: `PgGroupWriter`, asyncio tasks each with its own connection (a few "lanes"). Callers hand it a `PgOperation`
(the statements of one commit, record or finish, and a function deciding its result from the rows
they return) and await the result. The task takes every operation pending at that moment and
sends BEGIN, all their statements and COMMIT in one pipeline (one network round trip), so a
group costs one WAL flush however many messages it holds; while one lane waits for its flush the
next gathers what arrived meanwhile; only after the COMMIT succeeded does a
caller hear of its operation (ARCHITECTURE.md step 7). If the group's transaction fails on one
operation (a statement, or a body's spill file), each operation is retried alone so the others
still commit and only the bad one fails; if the connection fails, every operation of the group fails (the callers
answer 451) and the next group opens a new connection, so the node reconnects by itself.
Must not: know the schema or the queue's records; pg_queries.py builds the operations.
Hand-written because psycopg's pool serves one transaction per caller, which costs one WAL flush
per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

log = logging.getLogger("mailgate.queue")

# A group is bounded so one transaction stays a reasonable size; the rest waits for the next.
MAX_GROUP = 500
# Connections committing groups side by side (see PgGroupWriter._run).
WRITER_CONNECTIONS = 3

Rows = list[tuple[Any, ...]]
Connect = Callable[[], Awaitable[psycopg.AsyncConnection]]


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: Any = None
    many: bool = False  # params is a list of parameter sets (executemany)
    returns: bool = False  # its rows are handed to the operation's `decide`


@dataclass(slots=True)
class PgOperation:
    statements: list[Statement]
    # The rows of each returning statement, in order -> the caller's result (may raise).
    decide: Callable[[list[Rows]], Any] = lambda rows: None


@dataclass(slots=True)
class GroupStats:
    commits: int = 0  # transactions committed
    operations: int = 0
    largest_group: int = 0
    failed_commits: int = 0  # transactions that did not commit
    failed_operations: int = 0  # operations whose caller got an error
    reconnects: int = 0


@dataclass(slots=True)
class _Pending:
    operation: PgOperation
    future: asyncio.Future[Any]
    rows: list[Rows] = field(default_factory=list)


class WriterClosedError(RuntimeError):
    """An operation was submitted after close()."""


class PgGroupWriter:
    def __init__(self, connect: Connect, connections: int = WRITER_CONNECTIONS) -> None:
        self.stats = GroupStats()
        self._inbox: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._lanes = [_Lane(connect, self.stats, self._lane_broken) for _ in range(connections)]
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        """Open the connections (raising what connecting raised) and start the tasks."""
        for lane in self._lanes:
            await lane.open()
        self._tasks = [asyncio.create_task(self._run(lane), name="mailgate-pg-writer") for lane in self._lanes]

    def _lane_broken(self) -> None:
        for lane in self._lanes:
            lane.stale = True

    async def run(self, operation: PgOperation) -> Any:
        """Queue one operation; its result once the group holding it has committed."""
        if self._closing or not self._tasks or all(task.done() for task in self._tasks):
            raise WriterClosedError("the queue writer is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Pending(operation, future))
        return await future

    async def close(self) -> None:
        """Finish every queued operation, then close the connections; safe to call twice."""
        if self._closing:
            return
        self._closing = True
        for _ in self._tasks:
            self._inbox.put_nowait(None)
        await asyncio.gather(*self._tasks)
        for lane in self._lanes:
            await lane.drop()

    async def _run(self, lane: _Lane) -> None:
        """One lane: take everything pending, commit it, again. While one lane waits for its
        COMMIT (the WAL flush), another gathers what arrived meanwhile: PostgreSQL flushes the
        WAL of concurrent commits together."""
        while True:
            first = await self._inbox.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP and not self._inbox.empty():
                item = self._inbox.get_nowait()
                if item is None:
                    self._inbox.put_nowait(None)  # for the next pass of this or another lane
                    break
                group.append(item)
            await lane.commit(group)


class _Lane:
    """One writer connection and the groups it commits, one at a time."""

    def __init__(self, connect: Connect, stats: GroupStats, on_broken: Callable[[], None]) -> None:
        self._connect = connect
        self.stats = stats
        self._on_broken = on_broken
        self._connection: psycopg.AsyncConnection | None = None
        self.stale = False  # another lane lost its connection: this one reconnects before use

    async def open(self) -> None:
        self._connection = await self._connect()

    async def commit(self, group: list[_Pending]) -> None:
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        self.stats.operations += len(group)
        try:
            await self._transaction(group)
        except psycopg.OperationalError as exc:  # the connection or the server: all fail
            self.stats.failed_commits += 1
            self.stats.failed_operations += len(group)
            await self.drop()
            self._on_broken()  # the server restarted, likely: the other lanes' sessions are gone too
            for pending in group:
                _settle(pending, error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - one operation's statement or its body file
            self.stats.failed_commits += 1
            await self._drop_connection_unless_idle()
            if len(group) == 1:  # the one to blame: the caller gets it
                self.stats.failed_operations += 1
                _settle(group[0], error=exc)
                return
            self.stats.operations -= len(group)  # each is counted again alone
            for pending in group:
                pending.rows = []
                await self.commit([pending])
            return
        self.stats.commits += 1
        for pending in group:
            try:
                result = pending.operation.decide(pending.rows)
            except Exception as exc:  # noqa: BLE001 - the caller gets it (a lost lease)
                _settle(pending, error=exc)
            else:
                _settle(pending, result=result)

    async def _transaction(self, group: list[_Pending]) -> None:
        connection = await self._ensure_connection()
        cursors: list[list[psycopg.AsyncCursor[Any]]] = []
        async with connection.pipeline():
            async with connection.transaction():
                for pending in group:
                    returning = []
                    for statement in pending.operation.statements:
                        cursor = connection.cursor()
                        if statement.many:
                            await cursor.executemany(statement.sql, statement.params)
                        else:
                            await cursor.execute(statement.sql, statement.params)
                        if statement.returns:
                            returning.append(cursor)
                    cursors.append(returning)
        for pending, returning in zip(group, cursors):
            pending.rows = [await cursor.fetchall() for cursor in returning]

    async def _ensure_connection(self) -> psycopg.AsyncConnection:
        if self.stale:
            self.stale = False
            await self.drop()
        if self._connection is None or self._connection.closed:
            await self.drop()
            self.stats.reconnects += 1
            self._connection = await self._connect()
        return self._connection

    async def _drop_connection_unless_idle(self) -> None:
        """After a failed transaction the connection is reused only if it is back at rest."""
        connection = self._connection
        if connection is not None and (
            connection.closed or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        ):
            await self.drop()

    async def drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except psycopg.Error:
                pass  # it is broken already



def _settle(pending: _Pending, *, result: Any = None, error: BaseException | None = None) -> None:
    if pending.future.done():
        return  # the caller was cancelled
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(result)
