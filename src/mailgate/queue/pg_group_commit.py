"""Group commit on PostgreSQL: every write pending at one instant goes in ONE transaction.

Owns: `PgGroupWriter`, an asyncio task with its own connection. Callers hand it a `PgOperation`
(the statements of one commit, record or finish, and a function deciding its result from the rows
they return) and await the result. The task takes every operation pending at that moment and
sends BEGIN, all their statements and COMMIT in one pipeline (one network round trip), so a
group costs one WAL flush however many messages it holds; only after the COMMIT succeeded does a
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
    def __init__(self, connect: Connect) -> None:
        self.stats = GroupStats()
        self._connect = connect
        self._inbox: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._connection: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Open the connection (raising what connecting raised) and start the task."""
        self._connection = await self._connect()
        self._task = asyncio.create_task(self._run(), name="mailgate-pg-writer")

    async def run(self, operation: PgOperation) -> Any:
        """Queue one operation; its result once the group holding it has committed."""
        if self._closing or self._task is None or self._task.done():
            raise WriterClosedError("the queue writer is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Pending(operation, future))
        return await future

    async def close(self) -> None:
        """Finish every queued operation, then close the connection; safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._inbox.put_nowait(None)
            await self._task
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _run(self) -> None:
        while True:
            first = await self._inbox.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP and not self._inbox.empty():
                item = self._inbox.get_nowait()
                if item is None:
                    stop = True
                    break
                group.append(item)
            await self._commit(group)
            if stop:
                return

    async def _commit(self, group: list[_Pending]) -> None:
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        self.stats.operations += len(group)
        try:
            await self._transaction(group)
        except psycopg.OperationalError as exc:  # the connection or the server: all fail
            self.stats.failed_commits += 1
            self.stats.failed_operations += len(group)
            await self._drop_connection()
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
                await self._commit([pending])
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
        if self._connection is None or self._connection.closed:
            await self._drop_connection()
            self.stats.reconnects += 1
            self._connection = await self._connect()
        return self._connection

    async def _drop_connection_unless_idle(self) -> None:
        """After a failed transaction the connection is reused only if it is back at rest."""
        connection = self._connection
        if connection is not None and (
            connection.closed or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        ):
            await self._drop_connection()

    async def _drop_connection(self) -> None:
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
