"""The cluster queue store's own guarantees on a real, private PostgreSQL: fencing tokens, claims
that never overlap, heartbeats that keep leases and their lapse that hands them over, the
refusals at start (synchronous_commit off, a schema of another version), migrations, and
reconnecting by itself after the database came back. The shared contract is in
test_sqlite_store.py and test_queue_contract.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import psycopg
import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.clock import FakeClock, SystemClock
from mailgate.core.envelope import Envelope, Recipient
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue import pg_schema
from mailgate.queue.postgres_store import LeaseLostError, PostgresQueueStore
from mailgate.queue.store import MessageMeta, NodeNameInUseError, QueueFilter, QueueUnavailableError, RecipientUpdate
from tests.support.postgres import PASSWORD, start_postgres

pytestmark = pytest.mark.timeout(120)

START = 1_800_000_000.0
DELIVERED = Reply(250, "2.0.0", "ok")


def store_on(dsn: str, spool: Path, node: str, clock=None, **options) -> PostgresQueueStore:  # type: ignore[no-untyped-def]
    return PostgresQueueStore(dsn, spool / node, password=PASSWORD, node=node, clock=clock, **options)


@contextlib.asynccontextmanager
async def two_nodes(dsn: str, spool: Path, clock, **options):  # type: ignore[no-untyped-def]
    """The open stores of nodes n1 and n2 on one database; both closed after."""
    first, second = (store_on(dsn, spool, name, clock, **options) for name in ("n1", "n2"))
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@contextlib.asynccontextmanager
async def claimed_by_n1(dsn: str, spool: Path, lease: float):  # type: ignore[no-untyped-def]
    """Nodes n1 and n2 on the real clock with `lease`-second leases, and one message n1 has claimed:
    (clock, n1, n2, queue id)."""
    clock = SystemClock()
    async with two_nodes(dsn, spool, clock, lease_seconds=lease) as (first, second):
        queue_id = await enqueue(first)
        assert [m.queue_id for m in await first.claim_due(clock.now(), 10)] == [queue_id]
        yield clock, first, second, queue_id


async def enqueue(store: PostgresQueueStore, body: bytes = b"Subject: t\r\n\r\nhi\r\n") -> str:
    writer = store.begin()
    writer.write(body)
    envelope = Envelope(parse_mailbox("s@example.com"), [Recipient(parse_mailbox("r@example.net"))])
    return await store.commit(writer, envelope, MessageMeta())


def test_a_node_whose_lease_lapsed_cannot_record_over_the_newer_claim(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dsn = postgres_server.new_database()

    async def scenario() -> None:
        clock = FakeClock(START)
        async with two_nodes(dsn, tmp_path, clock) as (first, second):
            queue_id = await enqueue(first)
            assert [m.queue_id for m in await first.claim_due(START, 10)] == [queue_id]
            assert await second.claim_due(START, 10) == []  # leased to n1
            clock.advance(61)  # n1 was cut off: its lease (60 s) lapsed and n2 claims
            assert [m.queue_id for m in await second.claim_due(clock.now(), 10)] == [queue_id]
            failed = [RecipientUpdate(0, RecipientState.FAILED, Reply(550, "5.1.1", "stale"))]
            with pytest.raises(LeaseLostError):
                await first.record(queue_id, failed)
            with pytest.raises(LeaseLostError):
                await first.finish(queue_id, updates=failed)
            message = await second.get(queue_id)
            assert message is not None and message.recipients[0].state is RecipientState.QUEUED
            assert message.recipients[0].attempts == 0 and message.first_attempt is None
            assert await second.finish(queue_id, updates=[RecipientUpdate(0, RecipientState.DELIVERED, DELIVERED)])
            assert await first.get(queue_id) is None

    asyncio.run(scenario())


def test_nodes_claiming_at_once_never_take_the_same_message(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dsn = postgres_server.new_database()

    async def scenario() -> None:
        clock = FakeClock(START)
        stores = [store_on(dsn, tmp_path, f"n{n}", clock) for n in range(3)]
        for store in stores:
            await store.open()
        try:
            ids = set(await asyncio.gather(*(enqueue(stores[0]) for _ in range(300))))
            taken: list[list[str]] = [[] for _ in stores]

            async def drain(index: int) -> None:
                for _ in range(100):
                    claimed = await stores[index].claim_due(START, 7)
                    if not claimed and not await stores[index].next_due():
                        return
                    taken[index] += [m.queue_id for m in claimed]

            await asyncio.gather(*(drain(n) for n in range(len(stores))))
            every = [queue_id for mine in taken for queue_id in mine]
            assert len(every) == len(set(every)) == len(ids) and set(every) == ids
            assert all(taken), "every node got a share"
        finally:
            for store in stores:
                await store.close()

    asyncio.run(scenario())


def test_heartbeats_keep_a_live_nodes_leases_and_a_dead_nodes_are_taken_over(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dsn = postgres_server.new_database()
    lease = 1.0

    async def scenario() -> None:
        async with claimed_by_n1(dsn, tmp_path, lease) as (clock, alive, other, queue_id):
            await asyncio.sleep(lease * 2.5)  # the heartbeat renewed the lease meanwhile
            assert await other.claim_due(clock.now(), 10) == []
            assert alive._heartbeat_task is not None
            alive._heartbeat_task.cancel()  # the node hangs: no more heartbeats
            died = time.monotonic()
            taken: list[str] = []
            while not taken and time.monotonic() - died < lease * 10:
                taken = [m.queue_id for m in await other.claim_due(clock.now(), 10)]
                await asyncio.sleep(0.05)
            assert taken == [queue_id]
            assert time.monotonic() - died <= lease * 10
            nodes = {name for name, _, _ in await other.nodes()}
            assert nodes == {"n1", "n2"}

    asyncio.run(scenario())


def test_synchronous_commit_off_is_refused_at_start(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dsn = postgres_server.new_database()
    database = dsn.rsplit("dbname=", 1)[1]
    postgres_server.psql(f"ALTER DATABASE {database} SET synchronous_commit = off", database="postgres")

    async def scenario() -> None:
        store = store_on(dsn, tmp_path, "n1")
        with pytest.raises(QueueUnavailableError, match="synchronous_commit = off"):
            await store.open()

    asyncio.run(scenario())


def test_schema_versions_newer_refused_older_needs_migrate(postgres_server, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    dsn = postgres_server.new_database()

    async def scenario() -> None:
        store = store_on(dsn, tmp_path, "n1")
        await store.open()  # an empty database gets the schema at the first start
        queue_id = await enqueue(store)
        await store.close()
        # A later mailgate adds a column: this node's database is now one version behind.
        monkeypatch.setattr(pg_schema, "SCHEMA_VERSION", 2)
        monkeypatch.setattr(pg_schema, "MIGRATIONS", (*pg_schema.MIGRATIONS, ("ALTER TABLE messages ADD COLUMN extra text",)))
        with pytest.raises(QueueUnavailableError, match="run `mailgate queue migrate`"):
            await store_on(dsn, tmp_path, "n1").open()
        async with await psycopg.AsyncConnection.connect(dsn, password=PASSWORD, autocommit=True) as connection:
            assert await pg_schema.migrate(connection) == (1, 2)
            assert await pg_schema.migrate(connection) == (2, 2)  # idempotent
        upgraded = store_on(dsn, tmp_path, "n1")
        await upgraded.open()
        assert await upgraded.get(queue_id) is not None  # the migration kept the mail
        await upgraded.close()
        monkeypatch.setattr(pg_schema, "SCHEMA_VERSION", 1)  # the old node again
        with pytest.raises(QueueUnavailableError, match="newer than this mailgate"):
            await store_on(dsn, tmp_path, "n1").open()

    asyncio.run(scenario())


def test_commits_fail_while_the_database_is_down_and_work_again_after(tmp_path: Path) -> None:
    """No 250 without a commit: while PostgreSQL is down commit() raises (the session says 451);
    once it is back the same store commits again without being reopened."""
    server = start_postgres()
    try:
        dsn = server.new_database()

        async def scenario() -> None:
            store = store_on(dsn, tmp_path, "n1")
            await store.open()
            try:
                before = await enqueue(store)
                server.stop()
                with pytest.raises(psycopg.OperationalError):
                    await enqueue(store)
                with pytest.raises(psycopg.OperationalError):
                    await store.claim_due(time.time(), 10)
                server.start()
                after = await enqueue(store)
                listed = {summary.queue_id for summary in await store.list(QueueFilter())}
                assert listed == {before, after}
            finally:
                await store.close()

        asyncio.run(scenario())
    finally:
        server.cleanup()


def test_a_claim_whose_finish_failed_is_not_renewed_and_lapses_to_another_node(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A finish that could not be saved (the database dropped the connection) ends the attempt:
    the node's heartbeat must stop extending that lease, or the message stays "active" for ever."""
    dsn = postgres_server.new_database()
    lease = 1.0

    async def scenario() -> None:
        async with claimed_by_n1(dsn, tmp_path, lease) as (clock, first, second, queue_id):
            saved_run = first._writer.run

            async def broken(operation):  # type: ignore[no-untyped-def]
                raise psycopg.OperationalError("server closed the connection unexpectedly")

            first._writer.run = broken  # type: ignore[method-assign]
            with pytest.raises(psycopg.OperationalError):
                await first.finish(queue_id, updates=[RecipientUpdate(0, RecipientState.DELIVERED, DELIVERED)])
            first._writer.run = saved_run  # type: ignore[method-assign]
            started = time.monotonic()
            taken: list[str] = []
            while not taken and time.monotonic() - started < lease * 10:  # n1 keeps heartbeating
                taken = [m.queue_id for m in await second.claim_due(clock.now(), 10)]
                await asyncio.sleep(0.1)
            assert taken == [queue_id]
            with pytest.raises(LeaseLostError):  # and n1's late outcome is fenced off
                await first.finish(queue_id, updates=[RecipientUpdate(0, RecipientState.DELIVERED, DELIVERED)])

    asyncio.run(scenario())


def test_a_node_name_is_held_by_one_live_instance(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Leases are keyed by the node name: a second live instance under it is refused (also when
    both start at the same instant), the admin commands' store does not take it, a clean stop
    gives it up at once, and a crashed instance's name is free once its heartbeat is stale."""
    dsn = postgres_server.new_database()

    def instance(node: str, name: str, clock: FakeClock, **options) -> PostgresQueueStore:  # type: ignore[no-untyped-def]
        return store_on(dsn, tmp_path / name, node, clock, instance=name, **options)

    async def scenario() -> None:
        clock = FakeClock(START)
        first, second = instance("twin", "i1", clock), instance("twin", "i2", clock)
        await first.open()
        try:
            clock.advance(2.5)
            with pytest.raises(NodeNameInUseError) as refused:
                await second.open()
            assert str(refused.value) == ("node 'twin' is alive (last heartbeat 2.5s ago, instance i1); "
                                          "queue.node_name must be unique per node")
            admin = instance("twin", "admin", clock, register=False)
            await admin.open()  # `mailgate queue ...` next to a running node
            await admin.close()
            clock.advance(60)  # i1 stopped heartbeating (crashed) for the takeover time
            await second.open()
            assert await first._beat() == ("i2", clock.now())  # i1 comes back: the name is i2's
        finally:
            await first.close()
            await second.close()

        clock = FakeClock(START)
        racing = [instance("race", f"r{n}", clock) for n in range(4)]
        outcomes = await asyncio.gather(*(store.open() for store in racing), return_exceptions=True)
        assert sum(outcome is None for outcome in outcomes) == 1, outcomes
        assert all(isinstance(o, NodeNameInUseError) for o in outcomes if o is not None), outcomes
        for store, outcome in zip(racing, outcomes):
            if outcome is None:
                await store.close()  # a clean stop gives the name up at once
        after = instance("race", "r9", clock)
        await after.open()
        await after.close()

    asyncio.run(scenario())
