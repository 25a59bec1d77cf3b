"""The durable queue stores: round trips, leases, admin filters, spill files, group commit. The
tests taking `any_store` run against the embedded store on a real SQLite file and against the
cluster store on a real, private PostgreSQL; the others are about SQLite's own mechanics."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailgate.core.address import Address, parse_mailbox
from mailgate.core.clock import FakeClock
from mailgate.core.envelope import BodyType, Envelope, Notify, Recipient, Ret
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue import sqlite_schema
from mailgate.queue.postgres_store import PostgresQueueStore
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta, MessageNotFoundError, MessageState, QueueFilter, RecipientUpdate
from tests.support.loop_ticks import ticking_while

pytestmark = pytest.mark.timeout(60)

START = 1_800_000_000.0


StoreTest = Callable[[Any, FakeClock], Awaitable[None]]
StoreFactory = Callable[..., Any]  # (clock, **options) -> an unopened store
PASSWORD = "queue-secret"  # the role's password in tests/support/postgres.py


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """The tests taking this run against both durable stores: the same contract, the same checks."""
    if request.param == "sqlite":
        return lambda clock, **options: SqliteQueueStore(tmp_path, clock=clock, **options)
    dsn = request.getfixturevalue("postgres_server").new_database()
    return lambda clock, **options: PostgresQueueStore(
        dsn, tmp_path, password=PASSWORD, node="n1", clock=clock, **options
    )


def run(target: Path | StoreFactory, test: StoreTest, **kwargs: Any) -> None:
    """Run `test` on a store opened on `target`: a spool directory (SQLite) or a factory."""
    async def main() -> None:
        clock = FakeClock(START)
        if isinstance(target, Path):
            store = SqliteQueueStore(target, clock=clock, **kwargs)
        else:
            store = target(clock, **kwargs)
        await store.open()
        try:
            await test(store, clock)
        finally:
            await store.close()

    asyncio.run(main())


def envelope(sender: str | None, *recipients: str) -> Envelope:
    return Envelope(
        sender=None if sender is None else parse_mailbox(sender),
        recipients=[Recipient(parse_mailbox(item)) for item in recipients],
    )


async def enqueue(store: SqliteQueueStore, env: Envelope, body: bytes = b"Subject: t\r\n\r\nhi\r\n",
                  meta: MessageMeta | None = None) -> str:
    writer = store.begin()
    writer.write(body)
    return await store.commit(writer, env, meta or MessageMeta())


async def body_of(store: SqliteQueueStore, queue_id: str, chunk_size: int = 65536) -> bytes:
    return b"".join([chunk async for chunk in store.body_chunks(queue_id, chunk_size)])


def test_envelope_meta_and_body_round_trip_exactly(any_store: StoreFactory) -> None:
    rich = Envelope(
        sender=Address('"odd@local"', "xn--bcher-kva.example", had_source_route=True),
        recipients=[
            Recipient(Address("user", "[IPv6:2001:db8::1]", literal=True), (Notify.NEVER,), None),
            Recipient(parse_mailbox("jösé@example.org", smtputf8=True),
                      (Notify.SUCCESS, Notify.FAILURE), "rfc822;orig@example.org"),
            Recipient(parse_mailbox("plain@example.net"), (), "utf-8;x@y"),
        ],
        body=BodyType.EIGHT_BIT_MIME,
        smtputf8=True,
        size_declared=12345,
        ret=Ret.HDRS,
        envid="ENV-1+2",
    )
    meta = MessageMeta(client_address="192.0.2.7", client_helo="client.example", auth_user="bob",
                       protocol="ESMTPSA", listener="submission", direction="outbound",
                       received_count=3, headers_end=42)
    body = bytes(range(256)) * 3

    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        queue_id = await enqueue(store, rich, body, meta)
        message = await store.get(queue_id)
        assert message is not None
        assert message.envelope == rich
        assert message.meta == meta
        assert message.size == len(body) and message.created == START
        assert not message.held and message.first_attempt is None
        assert [r.recipient for r in message.recipients] == rich.recipients
        assert all(r.state is RecipientState.QUEUED and r.attempts == 0 for r in message.recipients)
        assert await body_of(store, queue_id, chunk_size=100) == body
        assert await store.get("NOSUCHID") is None
        with pytest.raises(MessageNotFoundError):
            await body_of(store, "NOSUCHID")

    run(any_store, test)


def test_null_sender_round_trips_as_none(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        queue_id = await enqueue(store, envelope(None, "a@example.com"))
        message = await store.get(queue_id)
        assert message is not None and message.envelope.sender is None
        assert (await store.list(QueueFilter()))[0].sender == ""

    run(any_store, test)


def test_claim_record_finish_cycle(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        queue_id = await enqueue(store, envelope("s@example.com", "a@one.example", "b@two.example"))
        assert await store.next_due() == START
        claimed = await store.claim_due(START, 10)
        assert [m.queue_id for m in claimed] == [queue_id]
        assert await store.claim_due(START, 10) == []  # leased: a second claim gets nothing
        assert await store.next_due() is None
        assert (await store.count_by_state())[MessageState.ACTIVE] == 1

        retry_at = START + 300
        deferred = Reply(451, "4.3.0", "try later")
        delivered = Reply(250, "2.0.0", "ok id=1")
        await store.record(queue_id, [
            RecipientUpdate(0, RecipientState.DELIVERED, delivered, 0.0, "dns; mx.one"),
            RecipientUpdate(1, RecipientState.QUEUED, deferred, retry_at, "dns; mx.two"),
        ])  # fmt: skip
        message = await store.get(queue_id)
        assert message is not None and message.first_attempt == START
        first, second = message.recipients
        assert (first.state, first.attempts, first.remote_mta, first.last_reply) == (
            RecipientState.DELIVERED, 1, "dns; mx.one", delivered,
        )  # fmt: skip
        assert (second.state, second.next_attempt, second.last_reply, second.remote_mta) == (
            RecipientState.QUEUED, retry_at, deferred, "dns; mx.two",
        )  # fmt: skip
        assert [r.index for r in message.pending] == [1]

        assert await store.finish(queue_id, delay_notified=True) is False  # one still queued
        message = await store.get(queue_id)
        assert message is not None and message.delay_notified
        assert (await store.count_by_state())[MessageState.DEFERRED] == 1
        assert await store.next_due() == retry_at
        assert await store.claim_due(retry_at - 1, 10) == []
        again = await store.claim_due(retry_at, 10)
        assert [m.queue_id for m in again] == [queue_id] and again[0].delay_notified

        failed = [RecipientUpdate(1, RecipientState.FAILED, Reply(550, "5.1.1", "no"))]
        await store.record(queue_id, failed)
        assert await store.finish(queue_id) is True
        assert await store.get(queue_id) is None
        assert await store.list(QueueFilter()) == []
        assert await store.oldest_created() is None
        # A message deleted meanwhile (an admin) is not an error for the runner.
        await store.record(queue_id, failed)
        assert await store.finish(queue_id) is True

    run(any_store, test)


def test_commit_claimed_is_leased_to_the_committer_and_matches_what_a_claim_would_load(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        env = envelope("s@example.com", "a@one.example", "b@two.example")
        writer = store.begin()
        writer.write(b"Subject: hand-off\r\n\r\nbody\r\n")
        meta = MessageMeta(client_address="192.0.2.7", protocol="ESMTP")
        handed = await store.commit_claimed(writer, env, meta)
        assert await store.claim_due(START, 10) == []  # leased to us: no runner may claim it
        assert await store.next_due() is None
        assert (await store.count_by_state())[MessageState.ACTIVE] == 1
        stored = await store.get(handed.queue_id)
        assert stored is not None
        # What the runner is handed equals what it would have loaded after a claim.
        for field_name in ("queue_id", "envelope", "meta", "size", "created", "held", "first_attempt"):
            assert getattr(handed, field_name) == getattr(stored, field_name), field_name
        assert handed.recipients == stored.recipients
        assert await body_of(store, handed.queue_id) == b"Subject: hand-off\r\n\r\nbody\r\n"
        updates = [RecipientUpdate(i, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok")) for i in (0, 1)]
        assert await store.finish(handed.queue_id, updates=updates) is True
        assert await store.get(handed.queue_id) is None

        # A lease that is never finished (the worker died) expires like a claim's.
        writer = store.begin()
        writer.write(b"x\r\n")
        lost = await store.commit_claimed(writer, envelope("s@example.com", "c@one.example"), MessageMeta())
        assert [m.queue_id for m in await store.claim_due(START + 61, 10)] == [lost.queue_id]

        writer = store.begin()
        writer.write(b"x\r\n")
        with pytest.raises(ValueError):  # a quarantined message is never handed to delivery
            await store.commit_claimed(writer, envelope(None, "d@one.example"), MessageMeta(hold_reason="rule x"))

    run(any_store, test, lease_seconds=60.0)


def test_commits_wait_for_the_writer_lock_another_process_holds(tmp_path: Path) -> None:
    """Workers take turns on a flock (group_commit.py): a holder blocks the commit until it lets go."""
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        descriptor = os.open(tmp_path / "queue.db.writer-lock", os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            pending = asyncio.ensure_future(enqueue(store, envelope("s@example.com", "a@example.com")))
            await asyncio.sleep(0.3)
            assert not pending.done()
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            queue_id = await asyncio.wait_for(pending, 10)
        finally:
            os.close(descriptor)
        assert await store.get(queue_id) is not None

    run(tmp_path, test)


def test_a_new_spool_uses_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        queue_id = await enqueue(store, envelope("s@example.com", "a@example.com"), b"y" * 5000)
        assert await body_of(store, queue_id) == b"y" * 5000

    run(tmp_path / "new", test)
    with sqlite3.connect(tmp_path / "new" / "queue.db") as connection:
        assert connection.execute("PRAGMA page_size").fetchone()[0] == sqlite_schema.PAGE_SIZE == 1024

    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "queue.db") as connection:  # made by an earlier mailgate
        connection.execute("PRAGMA page_size = 4096")
        connection.execute("PRAGMA journal_mode = WAL")
    run(old, test)
    with sqlite3.connect(old / "queue.db") as connection:
        assert connection.execute("PRAGMA page_size").fetchone()[0] == 4096


def test_claim_order_limit_and_expired_lease(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        ids = []
        for n in range(5):
            ids.append(await enqueue(store, envelope("s@example.com", f"r{n}@example.com")))
            clock.advance(1)
        await store.reschedule(QueueFilter(queue_id=ids[0]), START + 100)  # due last now
        first = await store.claim_due(START + 100, 2)
        assert [m.queue_id for m in first] == ids[1:3]
        rest = await store.claim_due(START + 100, 10)
        assert [m.queue_id for m in rest] == ids[3:] + ids[:1]
        # Leases last lease_seconds (60 here): after that a vanished worker's messages come back.
        assert await store.claim_due(START + 159, 10) == []
        assert len(await store.claim_due(START + 161, 10)) == 5

    run(any_store, test, lease_seconds=60.0)


def test_recover_returns_leases_and_removes_stale_spill_files(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        queue_id = await enqueue(store, envelope("s@example.com", "a@example.com"))
        assert len(await store.claim_due(START, 10)) == 1
        stale = store.incoming_dir / "HALFWRITTEN0000"
        stale.write_bytes(b"x" * 1000)
        assert await store.recover() == 1
        assert not stale.exists()
        assert [m.queue_id for m in await store.claim_due(START, 10)] == [queue_id]

    run(any_store, test)


def test_messages_survive_close_and_reopen(any_store: StoreFactory) -> None:
    ids: list[str] = []

    async def first(store: SqliteQueueStore, clock: FakeClock) -> None:
        ids.append(await enqueue(store, envelope("s@example.com", "a@example.com"), b"persisted"))
        await store.claim_due(START, 1)

    async def second(store: SqliteQueueStore, clock: FakeClock) -> None:
        assert await store.recover() == 1
        assert await body_of(store, ids[0]) == b"persisted"

    run(any_store, first)
    run(any_store, second)


def test_hold_at_commit_is_quarantine_and_release_makes_due(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        queue_id = await enqueue(store, envelope("s@example.com", "a@example.com"),
                                 meta=MessageMeta(hold_reason="attachment rule exe"))
        message = await store.get(queue_id)
        assert message is not None and message.held
        assert message.meta.hold_reason == "attachment rule exe"
        assert await store.claim_due(START + 10, 10) == []
        assert await store.next_due() is None
        summary = (await store.list(QueueFilter(state=MessageState.HELD)))[0]
        assert (summary.queue_id, summary.hold_reason) == (queue_id, "attachment rule exe")

        clock.advance(50)
        assert await store.release(QueueFilter()) == [queue_id]
        assert await store.release(QueueFilter()) == []  # nothing held any more
        released = await store.get(queue_id)
        assert released is not None and not released.held and released.meta.hold_reason == ""
        assert released.recipients[0].next_attempt == START + 50
        assert [m.queue_id for m in await store.claim_due(START + 50, 10)] == [queue_id]

    run(any_store, test)


def test_admin_filters_hold_reschedule_delete(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        old_envelope = envelope("Alice@Sender.example", "x@one.example", "y@two.example")
        old = await enqueue(store, old_envelope)
        clock.advance(3600)
        mid = await enqueue(store, envelope("bob@other.example", "z@Two.example"))
        clock.advance(60)
        new = await enqueue(store, envelope(None, "w@xn--bcher-kva.example"))
        clock.advance(10)

        async def ids(**kwargs) -> list[str]:
            return [s.queue_id for s in await store.list(QueueFilter(**kwargs))]

        assert await ids() == [old, mid, new]
        assert await ids(queue_id=mid) == [mid]
        assert await ids(sender="alice@SENDER") == [old]  # substring, any case
        assert await ids(recipient="Z@TWO") == [mid]
        assert await ids(domain="two.example") == [old, mid]
        assert await ids(domain="BÜCHER.example") == [new]  # IDN normalised to the stored A-label
        assert await ids(older_than=3000) == [old]
        assert await ids(younger_than=100) == [mid, new]
        assert await ids(limit=2) == [old, mid]
        assert await ids(sender="bob", recipient="x@") == []  # every given field must match

        # A recipient no longer queued no longer counts for the domain filter.
        await store.claim_due(clock.now(), 10)
        delivered = RecipientUpdate(1, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))
        await store.record(old, [delivered])
        await store.finish(old)
        await store.finish(mid)
        await store.finish(new)
        assert await ids(domain="two.example") == [mid]
        assert await ids(state=MessageState.DEFERRED) == [old]
        assert await ids(state=MessageState.QUEUED) == [mid, new]
        summary = (await store.list(QueueFilter(queue_id=old)))[0]
        assert summary.recipients == [
            ("x@one.example", RecipientState.QUEUED, ""),
            ("y@two.example", RecipientState.DELIVERED, "250 2.0.0 ok"),
        ]

        assert await store.hold(QueueFilter(domain="two.example"), "admin") == [mid]
        assert await store.hold(QueueFilter(), "admin") == [old, new]
        assert await store.hold(QueueFilter(), "again") == []
        assert (await store.count_by_state())[MessageState.HELD] == 3
        await store.release(QueueFilter(queue_id=new))

        later = clock.now() + 999
        assert await store.reschedule(QueueFilter(sender="bob"), later) == [mid]
        held_mid = await store.get(mid)
        assert held_mid is not None and held_mid.held
        assert held_mid.recipients[0].next_attempt == later

        assert await store.delete(QueueFilter(state=MessageState.HELD)) == [old, mid]
        assert await ids() == [new]
        assert await store.delete(QueueFilter(queue_id="NOSUCH")) == []
        counts = await store.count_by_state()
        assert counts == {MessageState.QUEUED: 1, MessageState.ACTIVE: 0,
                          MessageState.DEFERRED: 0, MessageState.HELD: 0}
        assert await store.oldest_created() == START + 3660

    run(any_store, test)


def test_large_message_spills_to_disk_and_comes_back_identical(any_store: StoreFactory) -> None:
    body = random.Random(5).randbytes(5 * 1024 * 1024 + 17)

    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        writer = store.begin()
        for start in range(0, len(body), 8191):
            writer.write(body[start:start + 8191])
        spill = writer.spill_path
        assert spill.exists()  # past the threshold the bytes are on disk, not in memory
        env = envelope("s@example.com", "a@example.com")
        queue_id, ticks = await ticking_while(store.commit(writer, env, MessageMeta()))
        assert ticks > 1  # the loop kept running while the writer thread copied 5 MB
        assert not spill.exists()  # the database owns the bytes now
        writer.discard()  # harmless after commit
        assert (await store.get(queue_id)).size == len(body)  # type: ignore[union-attr]
        chunks = [chunk async for chunk in store.body_chunks(queue_id, 65536)]
        assert all(len(chunk) == 65536 for chunk in chunks[:-1])
        assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(body).digest()

    run(any_store, test, memory_threshold=64 * 1024)


def test_small_message_stays_in_memory_and_discard_cleans_up(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        small = store.begin()
        small.write(b"x" * 1000)
        assert small.spill_path is None
        big = store.begin()
        big.write(b"y" * 5000)
        assert big.spill_path is not None and big.spill_path.exists()
        big.discard()
        big.discard()
        assert os.listdir(store.incoming_dir) == []
        assert await store.list(QueueFilter()) == []

    run(any_store, test, memory_threshold=4096)


def test_empty_recipient_list_is_refused_and_nothing_is_stored(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        writer = store.begin()
        writer.write(b"data")
        with pytest.raises(ValueError):
            await store.commit(writer, envelope("s@example.com"), MessageMeta())
        writer.discard()
        assert await store.list(QueueFilter()) == []

    run(any_store, test)


def test_a_failing_commit_does_not_spoil_its_group(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        doomed = store.begin()
        doomed.write(b"z" * 10_000)  # spills (threshold 1024)
        doomed.spill_path.unlink()  # the spill file vanished under us
        good = [store.begin() for _ in range(5)]
        for writer in good:
            writer.write(b"fine")
        env = envelope("s@example.com", "a@example.com")
        results = await asyncio.gather(
            store.commit(doomed, env, MessageMeta()),
            *(store.commit(writer, env, MessageMeta()) for writer in good),
            return_exceptions=True,
        )
        assert isinstance(results[0], OSError)
        assert sorted(results[1:]) == sorted(writer.queue_id for writer in good)
        assert sorted(s.queue_id for s in await store.list(QueueFilter())) == sorted(results[1:])
        assert store.stats.failed_operations == 1

    run(any_store, test, memory_threshold=1024)


def test_a_lone_failing_commit_leaves_no_partial_rows_and_the_writer_goes_on(tmp_path: Path) -> None:
    """A group of one runs without a savepoint: its failure must roll back what it had written."""
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        doomed = store.begin()
        doomed.write(b"z" * 10_000)  # spills (threshold 1024); the message and recipient rows go in first
        doomed.spill_path.unlink()
        with pytest.raises(OSError):
            await store.commit(doomed, envelope("s@example.com", "a@example.com"), MessageMeta())
        assert await store.list(QueueFilter()) == []
        assert (await store.count_by_state())[MessageState.QUEUED] == 0
        queue_id = await enqueue(store, envelope("s@example.com", "b@example.com"))
        assert [s.queue_id for s in await store.list(QueueFilter())] == [queue_id]
        assert store.stats.failed_operations == 1 and store.stats.failed_commits == 0

    run(tmp_path, test, memory_threshold=1024)


def test_concurrent_enqueues_share_commits(any_store: StoreFactory) -> None:
    async def test(store: SqliteQueueStore, clock: FakeClock) -> None:
        commits_before = store.stats.commits
        bodies = [os.urandom(random.randint(1, 4096)) for _ in range(200)]
        env = envelope("s@example.com", "a@example.com")
        ids = await asyncio.gather(*(enqueue(store, env, body) for body in bodies))
        commits = store.stats.commits - commits_before
        assert len(set(ids)) == 200
        assert commits < 50, f"{commits} commits for 200 enqueues: group commit is not grouping"
        assert store.stats.largest_group > 4
        for queue_id, body in zip(ids, bodies):
            assert await body_of(store, queue_id) == body

    run(any_store, test)
