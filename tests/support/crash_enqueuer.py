"""Child process of tests/integration/test_queue_crash.py: enqueue for ever until SIGKILLed.

Run as `python -m tests.support.crash_enqueuer SPOOL_DIR BASE_SEED PRODUCERS [DSN]`. Opens the
store (SQLite in SPOOL_DIR, or with a DSN the PostgreSQL cluster store, spilling to SPOOL_DIR),
prints `READY`, then several producers enqueue random messages concurrently; after each commit
returns the child prints `<queue_id> <sha256 hex>` and flushes. Every message is derived from a
seed carried in its sender address (`expected_message`), so the parent can recompute what any
visible message must contain, including ones whose id was never printed.
Three messages in four are delivered at once instead: committed leased (as a message the
worker delivers straight away), then finished as delivered, which deletes it without an fsync.
That empties segments (small ones, `SEGMENT_LIMIT`, so that they rotate often): a finished one is
unlinked, the current one is cut back and reused. Such a message is never printed; if a kill
brings it back, it must be whole like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import sys

from mailgate.core.address import Address
from mailgate.core.envelope import BodyType, Envelope, Notify, Recipient, Ret
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue.postgres_store import PostgresQueueStore
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta, QueueStore, RecipientUpdate
from tests.support.postgres import PASSWORD

MAX_SIZE = 300 * 1024
MEMORY_THRESHOLD = 32 * 1024  # low, so that many messages take the spill-file path
KEEP_EVERY = 4  # the others are delivered at once
SEGMENT_LIMIT = 1024 * 1024
SENDER_DOMAIN = "crash.test"
NOTIFY_CHOICES = (
    (Notify.NEVER,),
    (Notify.SUCCESS, Notify.FAILURE),
    (),
    (Notify.FAILURE, Notify.DELAY),
)


def seed_of(envelope: Envelope) -> int:
    """The seed a crash-test message was made from (its sender's local part is `s<seed>`)."""
    assert envelope.sender is not None and envelope.sender.local.startswith("s")
    return int(envelope.sender.local[1:])


def expected_message(seed: int) -> tuple[Envelope, bytes]:
    """The envelope and body made from `seed`: 1 B to 300 KB, sizes spread log-uniformly."""
    rng = random.Random(seed)
    size = max(1, min(MAX_SIZE, int(MAX_SIZE ** rng.random())))
    body = rng.randbytes(size)
    recipients = [
        Recipient(
            Address(f"r{index}-{seed % 1000}", f"d{rng.randrange(5)}.crash.test"),
            NOTIFY_CHOICES[rng.randrange(len(NOTIFY_CHOICES))],
            None if rng.random() < 0.5 else f"rfc822;orig{index}@crash.test",
        )
        for index in range(1 + rng.randrange(3))
    ]
    envelope = Envelope(
        sender=Address(f"s{seed}", SENDER_DOMAIN),
        recipients=recipients,
        body=BodyType.EIGHT_BIT_MIME if rng.random() < 0.5 else BodyType.SEVEN_BIT,
        size_declared=size if rng.random() < 0.5 else None,
        ret=Ret.HDRS if rng.random() < 0.5 else None,
        envid=f"env{seed}" if rng.random() < 0.5 else None,
    )
    return envelope, body


async def _produce(store: QueueStore, rng: random.Random) -> None:
    for number in itertools.count():
        seed = rng.getrandbits(62)
        envelope, body = expected_message(seed)
        writer = store.begin()
        position = 0
        while position < len(body):
            step = rng.randint(1, 64 * 1024)
            writer.write(body[position:position + step])
            position += step
            await asyncio.sleep(0)  # let the other producers interleave
        meta = MessageMeta(client_address="127.0.0.1")
        if number % KEEP_EVERY:
            message = await store.commit_claimed(writer, envelope, meta)
            delivered = [RecipientUpdate(index, RecipientState.DELIVERED, Reply(250, "2.0.0", "ok"))
                         for index in range(len(envelope.recipients))]
            await store.finish(message.queue_id, updates=delivered)
            continue
        queue_id = await store.commit(writer, envelope, meta)
        sys.stdout.write(f"{queue_id} {hashlib.sha256(body).hexdigest()}\n")
        sys.stdout.flush()

CRASH_INSTANCE = "crash-node"


async def _main(spool_dir: str, base_seed: int, producers: int, dsn: str | None) -> None:
    if dsn is None:
        store: QueueStore = SqliteQueueStore(spool_dir, memory_threshold=MEMORY_THRESHOLD, segment_limit=SEGMENT_LIMIT)
    else:
        # One fixed instance for every round and the verifier: each stands for the same node
        # restarted, not a second live node (which would be refused while the killed one's
        # heartbeat is fresh).
        store = PostgresQueueStore(dsn, spool_dir, password=PASSWORD, node="crash", instance=CRASH_INSTANCE,
                                   memory_threshold=MEMORY_THRESHOLD)
    await store.open()  # type: ignore[attr-defined]
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    rngs = [random.Random(base_seed * 1000 + n) for n in range(producers)]
    await asyncio.gather(*(_produce(store, rng) for rng in rngs))


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None))
