"""The queue-store contract the runner relies on, run against the SQLite store, the PostgreSQL store
(a real, private PostgreSQL) and the memory store alike, so the memory store used by the runner's
unit tests behaves as the real ones do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.clock import FakeClock
from mailgate.core.envelope import Envelope, Recipient
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue.memory_store import MemoryQueueStore
from mailgate.queue.postgres_store import PostgresQueueStore
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta, MessageState, QueueFilter, RecipientUpdate

pytestmark = pytest.mark.timeout(60)

BODY = b"Subject: t\r\n\r\n" + b"line\r\n" * 20000  # several body chunks


PASSWORD = "queue-secret"  # tests/support/postgres.py's role


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_factory(kind: str, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """An async function (clock) -> an open store of `kind`, empty."""
    dsn = None
    if kind == "postgresql":
        dsn = request.getfixturevalue("postgres_server").new_database()

    async def open_store(clock: FakeClock):  # type: ignore[no-untyped-def]
        if kind == "memory":
            return MemoryQueueStore(clock)
        if kind == "postgresql":
            store = PostgresQueueStore(dsn, tmp_path, password=PASSWORD, node="n1", clock=clock)
        else:
            store = SqliteQueueStore(tmp_path, clock=clock)
        await store.open()
        return store

    return open_store


async def enqueue(store, *recipients: str, hold: str = "") -> str:
    writer = store.begin()
    writer.write(BODY)
    envelope = Envelope(parse_mailbox("a@sender.test"), [Recipient(parse_mailbox(r)) for r in recipients])
    return await store.commit(writer, envelope, MessageMeta(hold_reason=hold))


def test_the_store_contract_the_runner_uses(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        clock = FakeClock()
        store = await store_factory(clock)
        try:
            first = await enqueue(store, "b@example.net", "c@example.net")
            held = await enqueue(store, "d@example.net", hold="quarantine")
            (claimed,) = await store.claim_due(clock.now(), 10)  # the held one is never claimed
            assert claimed.queue_id == first and await store.claim_due(clock.now(), 10) == []  # leased
            assert b"".join([chunk async for chunk in store.body_chunks(first)]) == BODY
            later = clock.now() + 300
            updates = [RecipientUpdate(0, RecipientState.QUEUED, Reply(451, "4.3.0", "later"), later),
                       RecipientUpdate(1, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))]
            assert await store.finish(first, updates=updates) is False  # one recipient left
            assert await store.next_due() == later
            (summary,) = await store.list(QueueFilter(state=MessageState.DEFERRED))
            assert summary.queue_id == first and summary.next_attempt == later
            message = await store.get(first)
            assert [(r.state, r.attempts) for r in message.recipients] == [
                (RecipientState.QUEUED, 1), (RecipientState.DELIVERED, 1)]
            assert await store.claim_due(later - 1, 10) == []
            assert [m.queue_id for m in await store.claim_due(later, 10)] == [first]
            assert await store.recover() == 1  # a crash: the lease comes back
            assert await store.reschedule(QueueFilter(queue_id=first), clock.now()) == [first]
            assert [m.queue_id for m in await store.claim_due(clock.now(), 10)] == [first]
            done = [RecipientUpdate(0, RecipientState.FAILED, Reply(550, "5.1.1", "no"))]
            assert await store.finish(first, updates=done) is True and await store.get(first) is None
            assert await store.release(QueueFilter(queue_id=held)) == [held]
            assert [m.queue_id for m in await store.claim_due(clock.now(), 10)] == [held]
            counts = await store.count_by_state()
            assert counts[MessageState.ACTIVE] == 1 and sum(counts.values()) == 1
            assert await store.delete(QueueFilter(queue_id=held)) == [held]
            assert await store.list(QueueFilter()) == [] and await store.oldest_created() is None
        finally:
            await store.close()

    asyncio.run(scenario())


def test_keyset_paging_walks_every_message_once_in_order(store_factory) -> None:  # type: ignore[no-untyped-def]
    """QueueFilter.after (the console's queue pages): pages of 3 over 10 messages, two of them
    arriving in the same instant, give each message exactly once, oldest first, filters kept."""
    async def scenario() -> None:
        clock = FakeClock()
        store = await store_factory(clock)
        try:
            ids = []
            for number in range(10):
                if number != 5:  # messages 4 and 5 share their `created`: the queue id breaks the tie
                    clock.advance(1)
                ids.append(await enqueue(store, f"r{number}@example.net"))
            seen, after = [], None
            while True:
                page = await store.list(QueueFilter(limit=3, after=after))
                if not page:
                    break
                seen += [row.queue_id for row in page]
                after = (page[-1].created, page[-1].queue_id)
            expected = [row.queue_id for row in await store.list(QueueFilter())]
            assert seen == expected and sorted(seen) == sorted(ids)
            (row,) = await store.list(QueueFilter(recipient="r7@", after=after_of(await store.list(QueueFilter(limit=2)))))
            assert row.queue_id == ids[7]
        finally:
            await store.close()

    def after_of(page):
        return (page[-1].created, page[-1].queue_id)

    asyncio.run(scenario())
