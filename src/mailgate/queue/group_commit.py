"""Group commit: one thread owns the SQLite write connection and commits many writes per fsync.

Owns: `GroupCommitWriter`. Callers submit a write operation (a function of the connection) from
the event loop and await its result. The thread takes every operation pending at that moment, runs
them all in ONE transaction (each inside its own SAVEPOINT, so one failing operation does not undo
the others), commits once (with `synchronous=FULL` that is one WAL fsync for the whole group), runs
the operations' after-commit actions, and only then resolves the callers' futures (one
`loop.call_soon_threadsafe` per event loop and group). Under load many messages share one fsync
(ARCHITECTURE.md step 7).
An operation submitted with `durable=False` (delivery bookkeeping: leases, attempt outcomes,
deletions) does not need an fsync of its own: a group made only of such operations commits with
`synchronous=NORMAL` (atomic, survives a process crash, written to disk by the next durable
commit or checkpoint); a group holding any durable operation commits with `synchronous=FULL`.
`run_unawaited` queues such a write from any thread with nobody waiting for it (the store's
restart of the WAL after a checkpoint, queue/checkpointer.py).
An operation may also carry a `stage` function: data kept outside SQLite (large bodies in segment
files, queue/segments.py) is written by the stages of the whole group BEFORE its transaction; then
`Staging.sync()` (one fdatasync per group) runs in a helper thread WHILE the transaction commits,
so a large message waits for one fsync's time rather than two in a row. No caller hears of its
operation before both are done. If the sync fails, the rows just committed point at bytes that may
never reach the disk: each such operation's `undo` (required with a stage) runs in one durable
transaction and the operations fail. A power loss between the two leaves a row whose bytes may be
missing, for a message that was never acknowledged: the CRC-32 recorded with each segment body
finds that when it is read (CorruptBodyError). An operation whose stage failed fails alone and is
not run in the transaction. `Staging.end_group()` follows every group, committed or not.
A writer made with a `reserve` (queue/space_reserve.py) keeps room for bookkeeping: when an
operation fails because the disk is full (SQLITE_FULL, ENOSPC), the reserve is released (once it
is gone: the WAL is checkpointed, so that the next transaction writes over the WAL's old frames
instead of growing it) and the operations that may use it (every one but a new message's commit, submitted with
`reserve=False`: new mail gets 452, while recording outcomes and deleting delivered messages,
which frees space, must go on) run once more, in a transaction of their own. After later commits
the reserve is allocated again once there is room (`SpaceReserve.restore`).
A commit that would be a group of one runs inline instead (`run(..., inline=True)`, a new
message's commit): when the writer thread is idle, nothing is waiting and no group ended in the
last `INLINE_IDLE_SECONDS`, the caller's own thread takes the writer's turn and commits it, the
same transaction and fsyncs, without the two thread hand-offs (waking the writer thread, then
waking the caller's loop) that cost about 0.15 ms of a lone message's acceptance latency. The
caller's event loop waits for that commit: that is why only a caller that has seen no commit for
a while goes inline; under load commits keep arriving, and they group in the thread as before.
An inline commit slower than `INLINE_SLOW_SECONDS` (a disk that stalls) stops inline commits for
`INLINE_PAUSE_SECONDS`: a stalling disk holds up the loop once, then the thread waits for it.
Several worker processes share one database. SQLite's own answer to a write lock held by another
process is to sleep and retry (1, 2, 5, 10 ms ...), which under load cost more than the commits
themselves; so a writer made with `lock_path` first takes an exclusive `flock` on that file, which
wakes the waiting process the moment the other one releases it, and takes its group only then, so
everything that arrived while it waited shares its fsync.
Must not: know the schema or the queue's records; `sqlite_store.py` supplies the operations.
Hand-written because the standard library has no group-commit helper and the ones in ORMs and
aiosqlite serialise one transaction per call, which costs one fsync per message.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("mailgate.queue")

WriteFunction = Callable[[sqlite3.Connection], Any]
StageFunction = Callable[[sqlite3.Connection], None]  # runs outside any transaction
AfterCommit = Callable[[], None]
ConnectionFactory = Callable[[], sqlite3.Connection]


class Reserve(Protocol):
    """Room on the disk kept for bookkeeping (queue/space_reserve.py)."""

    def release(self) -> bool:
        """Free the room; True if there was any."""

    def restore(self) -> bool:
        """Take the room again if the disk has it (cheap when held or tried recently)."""


def disk_full(exc: BaseException) -> bool:
    """The write failed for lack of space: SQLite's SQLITE_FULL or an OSError ENOSPC/EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Staging(Protocol):
    """What the stages of a group write outside SQLite (the segment files of large bodies)."""

    def sync(self) -> None:
        """Make everything staged since the last call durable (one sync per group; it runs in a
        helper thread, alone: nothing else touches the staging until it returns)."""

    def end_group(self) -> None:
        """Called after each group, once its commit succeeded or failed."""


# A group is bounded so that one transaction stays a reasonable size; what is left waits for the
# next commit, a few milliseconds later.
MAX_GROUP = 1000
# An inline commit needs this long without a group ending: at 100 messages a second a worker sees
# one every 10-20 ms, under load several per millisecond (module doc).
INLINE_IDLE_SECONDS = 0.002
INLINE_SLOW_SECONDS = 0.05  # a commit's fsync takes 0.2-0.5 ms on an ordinary disk
INLINE_PAUSE_SECONDS = 10.0


class WriterStoppedError(RuntimeError):
    """An operation was submitted after close() (API misuse) or the writer thread died."""


@dataclass(slots=True)
class WriterStats:
    """Counters kept by the writer thread (read them from any thread; they only grow)."""

    commits: int = 0  # transactions committed (durable ones fsync the WAL)
    operations: int = 0  # operations run (successful or not)
    failed_operations: int = 0
    failed_commits: int = 0
    largest_group: int = 0
    stage_syncs: int = 0  # Staging.sync() calls: one per group holding staged data
    inline_commits: int = 0  # groups of one committed by their caller's thread


@dataclass(slots=True)
class _Operation:
    function: WriteFunction
    future: asyncio.Future[Any] | None  # None: nobody awaits it (`run_unawaited`)
    loop: asyncio.AbstractEventLoop | None
    after_commit: list[AfterCommit] = field(default_factory=list)
    durable: bool = True
    stage: StageFunction | None = None
    undo: WriteFunction | None = None  # removes what `function` committed (with a stage only)
    may_use_reserve: bool = True  # retried with the space reserve released on a full disk
    result: Any = None
    error: BaseException | None = None


_STOP = object()


class GroupCommitWriter:
    def __init__(
        self,
        connect: ConnectionFactory,
        name: str = "mailgate-queue-writer",
        *,
        staging: Staging | None = None,
        lock_path: os.PathLike[str] | str | None = None,
        reserve: Reserve | None = None,
    ) -> None:
        self.stats = WriterStats()
        self._connect = connect
        self._lock_path = lock_path
        self._staging = staging
        self._reserve = reserve
        self._inbox: queue.SimpleQueue[_Operation | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping = False
        self._synchronous = "FULL"  # what the connection is set to (queue/sqlite_schema.py)
        self._syncer: ThreadPoolExecutor | None = None  # syncs the staging beside each commit
        # The writer's turn: whoever holds it (the thread, or an inline caller) alone uses the
        # connection, the staging and the flock on `lock_path`.
        self._turn = threading.Lock()
        self._connection: sqlite3.Connection | None = None  # open while the thread runs
        self._lock_fd = -1
        self._last_group_end = 0.0  # time.monotonic()
        self._inline_paused_until = 0.0  # time.monotonic(); after a slow inline commit

    async def start(self) -> None:
        """Start the thread and open the connection in it; raises what opening raised."""
        self._thread.start()
        await asyncio.to_thread(self._started.wait)
        if self._start_error is not None:
            raise self._start_error

    async def run(
        self,
        function: WriteFunction,
        after_commit: list[AfterCommit] | None = None,
        *,
        durable: bool = True,
        stage: StageFunction | None = None,
        undo: WriteFunction | None = None,
        reserve: bool = True,
        inline: bool = False,
    ) -> Any:
        """Queue one write and return its result once the group holding it has committed.

        `function` runs in the writer thread inside a savepoint; `after_commit` actions run in
        the writer thread after a successful commit (never if the operation or commit failed).
        `stage` runs in the writer thread before the group's transaction, and `undo` if the sync
        of what it staged failed after the transaction committed (see the module doc).
        `reserve=False`: on a full disk this operation fails rather than use the space reserve.
        `inline=True`: commit it in this thread if the writer is idle (see the module doc).
        """
        if stage is not None and (self._staging is None or undo is None):
            raise ValueError("a stage needs a writer made with staging, and an undo")
        if self._stopping or not self._thread.is_alive():
            raise WriterStoppedError("the queue writer is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        operation = _Operation(function, future, loop, list(after_commit or ()), durable, stage, undo, reserve)
        if inline and self._committed_inline(operation):
            if operation.error is not None:
                raise operation.error
            return operation.result
        self._inbox.put(operation)
        return await future

    def run_unawaited(self, function: WriteFunction) -> None:
        """Queue a write that nobody awaits, from any thread: non-durable (it commits with the
        next group, or alone with `synchronous=NORMAL`), its result and errors dropped. Ignored
        once the writer is stopping."""
        if self._stopping or not self._thread.is_alive():
            return
        self._inbox.put(_Operation(function, None, None, durable=False))

    def _committed_inline(self, operation: _Operation) -> bool:
        """Commit `operation` alone in the calling thread if the writer is idle; False (nothing
        done) if it is not: a group is running or waiting, one ended just now, another
        process holds the flock, or an inline commit was slow a short while ago."""
        started = time.monotonic()
        if not self._inbox.empty() or started - self._last_group_end < INLINE_IDLE_SECONDS:
            return False
        if started < self._inline_paused_until or not self._turn.acquire(blocking=False):
            return False
        try:
            connection = self._connection
            if connection is None or not self._lock_writers(blocking=False):
                return False
            try:
                self._commit_group(connection, [operation])
            finally:
                self._unlock_writers()
                self._last_group_end = time.monotonic()
                if self._last_group_end - started > INLINE_SLOW_SECONDS:
                    self._inline_paused_until = self._last_group_end + INLINE_PAUSE_SECONDS
                    log.warning("a commit took %.3f s: commits wait in the writer thread for %d s",
                                self._last_group_end - started, INLINE_PAUSE_SECONDS)
            self.stats.inline_commits += 1
            return True
        finally:
            self._turn.release()

    def _lock_writers(self, *, blocking: bool) -> bool:
        """Take the flock the worker processes take turns on (held with `_turn` only)."""
        if self._lock_fd < 0:
            return True
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock_writers(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def close(self) -> None:
        """Finish every queued operation, then stop the thread and close the connection."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            # Opened here, in the process that writes: a descriptor inherited across fork would
            # share its flock with the parent's and exclude nobody.
            if self._lock_path is not None:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            connection = self._connect()
            if self._staging is not None:
                self._syncer = ThreadPoolExecutor(1, thread_name_prefix=f"{self._thread.name}-sync")
        except BaseException as exc:  # reported to start(); the thread ends
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            self._start_error = exc
            self._started.set()
            return
        self._connection = connection
        self._started.set()
        try:
            stop = False
            while not stop:
                first = self._inbox.get()
                with self._turn:
                    self._lock_writers(blocking=True)
                    try:
                        group, stop = self._take_group(first)
                        if group:
                            self._commit_group(connection, group)
                    finally:
                        self._unlock_writers()
                        self._last_group_end = time.monotonic()
                self._settle(group)
                if self._synchronous != "FULL" and self._inbox.empty():
                    self._restore_full_sync(connection)
        finally:
            with self._turn:  # no inline commit is running, and none starts
                self._connection = None
                connection.close()
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)
                    self._lock_fd = -1
            if self._syncer is not None:
                self._syncer.shutdown()

    def _restore_full_sync(self, connection: sqlite3.Connection) -> None:
        """Idle after a group without a durable write: set `synchronous` back to FULL now, so
        that the next new message's commit (often inline, its client waiting) does not pay for
        the switch (about 23 µs: SQLite reads the schema for it)."""
        with self._turn:
            if self._connection is None or self._synchronous == "FULL":
                return
            try:
                connection.execute("PRAGMA synchronous = FULL")
                self._synchronous = "FULL"
            except sqlite3.Error:
                pass  # the next durable transaction sets it, as it always did

    def _take_group(self, item: _Operation | object) -> tuple[list[_Operation], bool]:
        """Take `item` (the first pending operation) and everything else already pending."""
        group: list[_Operation] = []
        while True:
            if item is _STOP:
                return group, True
            assert isinstance(item, _Operation)
            group.append(item)
            if len(group) >= MAX_GROUP:
                return group, False
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return group, False

    def _commit_group(self, connection: sqlite3.Connection, group: list[_Operation]) -> None:
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        staged = [operation for operation in group if operation.stage is not None]
        written = self._stage(connection, staged)
        sync = self._syncer.submit(self._sync_staging) if written and self._syncer else None
        try:
            self._transaction(connection, group)
            self._retry_with_reserve(connection, group)
        finally:
            if sync is not None:
                self._await_sync(connection, sync, written)
            if self._staging is not None:
                try:
                    self._staging.end_group()
                except OSError:
                    pass  # closing a finished segment; recover() cleans up after it

    def _retry_with_reserve(self, connection: sqlite3.Connection, group: list[_Operation]) -> None:
        """Bookkeeping that failed for lack of space runs again with the reserve released; after
        a group that needed none, a released reserve is taken back when there is room."""
        if self._reserve is None:
            return
        starved = [
            operation
            for operation in group
            if operation.may_use_reserve and operation.stage is None
            and operation.error is not None and disk_full(operation.error)
        ]
        if not starved:
            try:
                self._reserve.restore()
            except OSError as exc:
                log.warning("space reserve not restored: %s", exc)
            return
        if not self._reserve.release() and not _checkpointed(connection):
            return  # nothing left to give: they fail, and their callers save them again later
        for operation in starved:
            operation.error = None
            operation.result = None
        self._transaction(connection, starved)

    def _stage(self, connection: sqlite3.Connection, staged: list[_Operation]) -> list[_Operation]:
        """Run the stages; returns the operations whose data was written (failed ones get their
        error and are not run in the transaction)."""
        written = []
        for operation in staged:
            assert operation.stage is not None
            try:
                operation.stage(connection)
                written.append(operation)
            except Exception as exc:  # this operation fails alone
                self.stats.failed_operations += 1
                operation.error = exc
        return written

    def _sync_staging(self) -> None:  # in the helper thread
        assert self._staging is not None
        self.stats.stage_syncs += 1
        self._staging.sync()

    def _await_sync(self, connection: sqlite3.Connection, sync: Future[None], written: list[_Operation]) -> None:
        try:
            sync.result()
        except Exception as exc:  # nothing staged in this group is durable: fail them all
            committed = [operation for operation in written if operation.error is None]
            for operation in committed:
                self.stats.failed_operations += 1
                operation.error = exc
            if committed:
                self._undo(connection, committed)

    def _undo(self, connection: sqlite3.Connection, operations: list[_Operation]) -> None:
        """Remove the rows of operations whose staged data did not become durable."""
        try:
            if self._synchronous != "FULL":
                connection.execute("PRAGMA synchronous = FULL")
                self._synchronous = "FULL"
            connection.execute("BEGIN IMMEDIATE")
            for operation in operations:
                assert operation.undo is not None
                operation.undo(connection)
            connection.execute("COMMIT")
        except Exception:  # their bodies' CRC-32 still keeps them from being delivered
            log.exception("could not remove %d message(s) whose body sync failed", len(operations))
            try:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _transaction(self, connection: sqlite3.Connection, group: list[_Operation]) -> None:
        synchronous = "FULL" if any(operation.durable for operation in group) else "NORMAL"
        try:
            if synchronous != self._synchronous:
                connection.execute(f"PRAGMA synchronous = {synchronous}")
                self._synchronous = synchronous
            connection.execute("BEGIN IMMEDIATE")
            if len(group) == 1:
                self._run_alone(connection, group[0])
            else:
                for operation in group:
                    self._run_operation(connection, operation)
            if not connection.in_transaction:
                return  # the lone operation failed and was rolled back: nothing to commit
            connection.execute("COMMIT")
        except BaseException as exc:  # the whole group failed to become durable
            self.stats.failed_commits += 1
            try:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite may have rolled back already (disk full, I/O error); keep serving
            for operation in group:
                operation.error = operation.error or exc
            return
        self.stats.commits += 1
        for operation in group:
            if operation.error is None:
                for action in operation.after_commit:
                    try:
                        action()
                    except OSError:
                        pass  # after-commit actions are clean-ups; recover() redoes them

    def _run_alone(self, connection: sqlite3.Connection, operation: _Operation) -> None:
        """The only operation of its transaction needs no savepoint: a failure rolls it all back."""
        self.stats.operations += 1
        if operation.error is not None:  # its stage failed: its rows must not be written
            return
        try:
            operation.result = operation.function(connection)
        except Exception as exc:  # the caller gets it
            self.stats.failed_operations += 1
            operation.error = exc
            connection.execute("ROLLBACK")

    def _run_operation(self, connection: sqlite3.Connection, operation: _Operation) -> None:
        self.stats.operations += 1
        if operation.error is not None:  # its stage failed: its rows must not be written
            return
        connection.execute("SAVEPOINT operation")
        try:
            operation.result = operation.function(connection)
        except Exception as exc:  # the caller gets it; the rest of the group goes on
            self.stats.failed_operations += 1
            operation.error = exc
            connection.execute("ROLLBACK TO operation")
        connection.execute("RELEASE operation")

    @staticmethod
    def _settle(group: list[_Operation]) -> None:
        """One wake-up of each caller's loop for the whole group, not one per operation."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Operation]] = {}
        for operation in group:
            if operation.loop is not None:
                by_loop.setdefault(operation.loop, []).append(operation)
        for loop, operations in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, operations)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody is waiting any more


def _checkpointed(connection: sqlite3.Connection) -> bool:
    """Copy every WAL frame into the database file; True if all were (the WAL restarts then)."""
    try:
        busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:
        log.debug("checkpoint on a full disk failed: %s", exc)
        return False
    return busy == 0 and frames == copied


def _resolve_all(operations: list[_Operation]) -> None:
    for operation in operations:
        assert operation.future is not None  # only awaited operations are settled
        if operation.future.cancelled():
            continue
        if operation.error is not None:
            operation.future.set_exception(operation.error)
        else:
            operation.future.set_result(operation.result)
