"""The cluster store's cost as its backlog grows: an empty queue against one holding N deferred
messages (docs/cluster.md "Sizing").

    .venv/bin/python -m bench.pg_backlog [N ...]      # default 0 100000

Owns: a private PostgreSQL (fsync on), filling it with N deferred messages (due in a day, written
by SQL in bulk), then timing through PostgresQueueStore what a node does per message: 100
concurrent commit_claimed + finish pairs (1,000 messages), and claim_due / next_due on the
backlog. Prints a Markdown table.
Must NOT: be part of the test suite (it measures, it asserts nothing).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Envelope, Recipient
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue.postgres_store import PostgresQueueStore
from mailgate.queue.store import MessageMeta, RecipientUpdate
from tests.support.postgres import PASSWORD, start_postgres

BODY = b"Subject: backlog\r\n\r\n" + b"x" * 4000 + b"\r\n"
DELIVERED = [RecipientUpdate(0, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))]


def fill(server, database: str, count: int) -> None:  # type: ignore[no-untyped-def]
    if not count:
        return
    server.psql(
        "INSERT INTO messages (queue_id, sender_local, sender_domain, sender_text, body_type, smtputf8,"
        " meta, size, created, accepted_by, first_attempt)"
        " SELECT 'B' || n, 's', 'x.test', 's@x.test', '7BIT', 0, '{}', 4000,"
        " extract(epoch from now()), 'filler', extract(epoch from now()) FROM generate_series(1, %d) n;"
        "INSERT INTO recipients (queue_id, idx, local, domain, literal, had_source_route, address_text,"
        " notify, state, next_attempt, attempts)"
        " SELECT 'B' || n, 0, 'r', 'y.test', 0, 0, 'r@y.test', '', 'queued',"
        " extract(epoch from now()) + 86400, 1 FROM generate_series(1, %d) n;"
        "INSERT INTO bodies (queue_id, seq, data) SELECT 'B' || n, 0, convert_to(repeat('x', 4000), 'UTF8')"
        " FROM generate_series(1, %d) n;" % (count, count, count),
        database=database,
    )
    server.psql("VACUUM ANALYZE", database=database)


async def measure(dsn: str) -> tuple[float, float, float]:
    store = PostgresQueueStore(dsn, tempfile.mkdtemp(), password=PASSWORD, node="bench")
    await store.open()
    envelope = Envelope(parse_mailbox("s@x.test"), [Recipient(parse_mailbox("r@y.test"))])

    async def one() -> None:
        writer = store.begin()
        writer.write(BODY)
        message = await store.commit_claimed(writer, envelope, MessageMeta())
        await store.finish(message.queue_id, updates=DELIVERED)

    started = time.perf_counter()
    for _ in range(10):
        await asyncio.gather(*(one() for _ in range(100)))
    rate = 1000 / (time.perf_counter() - started)
    claims = []
    for _ in range(20):
        begun = time.perf_counter()
        await store.claim_due(time.time(), 100)
        await store.next_due()
        claims.append(time.perf_counter() - begun)
    await store.close()
    return rate, statistics.median(claims) * 1000, max(claims) * 1000


def main(argv: list[str]) -> int:
    sizes = [int(arg) for arg in argv] or [0, 100_000]
    rows = ["| queued messages | commit + finish (msg/s, 100 at once) | claim_due + next_due p50 (ms) | max (ms) |",
            "| --- | --- | --- | --- |"]
    for count in sizes:
        server = start_postgres(fsync=True)
        try:
            dsn = server.new_database()
            probe = PostgresQueueStore(dsn, tempfile.mkdtemp(), password=PASSWORD, node="schema")
            asyncio.run(_create(probe))
            fill(server, dsn.rsplit("dbname=", 1)[1], count)
            rate, p50, worst = asyncio.run(measure(dsn))
            rows.append(f"| {count:,} | {rate:.0f} | {p50:.1f} | {worst:.1f} |")
        finally:
            server.cleanup()
    print("\n".join(rows))
    return 0


async def _create(store: PostgresQueueStore) -> None:
    await store.open()  # an empty database gets the schema
    await store.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
