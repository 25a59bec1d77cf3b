"""What the two durable stores share at reception: incoming bytes go through a `SpoolWriter`
(memory, then a spill file on the node's disk) and a commit turns them into a queued message.

Owns: `SpooledQueueStore`, the `QueueStore` base whose begin(), commit(), commit_claimed() and
body_chunks() both durable stores use, `_sealed` (the sealed body and the message row each
`_commit` starts from), and the read of a body still in the store's hot cache (hot_bodies.py);
each store supplies `_commit` (how its database takes the message) and `_stored_chunks` (how a
body is read back from it).
Must not: write to any database, or hold state beyond what its subclass sets.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mailgate.core.clock import Clock
from mailgate.core.envelope import Envelope
from mailgate.queue import records
from mailgate.queue.hot_bodies import HotBodies
from mailgate.queue.ids import new_queue_id
from mailgate.queue.spool_writer import SpoolWriter, seal_for_commit
from mailgate.queue.store import MessageMeta, MessageWriter, QueuedMessage, QueueStore


class SpooledQueueStore(QueueStore):
    incoming_dir: Path
    _memory_threshold: int
    _clock: Clock
    _hot: HotBodies

    def begin(self, queue_id: str | None = None) -> MessageWriter:
        queue_id = queue_id or new_queue_id(self._clock.now())
        return SpoolWriter(queue_id, self.incoming_dir, self._memory_threshold)

    async def commit(self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta) -> str:
        queue_id, _ = await self._commit(writer, envelope, meta, leased=False)
        return queue_id

    async def commit_claimed(self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta) -> QueuedMessage:
        queue_id, created = await self._commit(writer, envelope, meta, leased=True)
        return records.fresh_message(queue_id, envelope, meta, writer.size, created)

    async def body_chunks(self, queue_id: str, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """From memory if this process committed the body and still caches it, else `_stored_chunks`."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        hot = self._hot.get(queue_id)
        if hot is not None:  # committed by this process and still cached: no read-back
            for start in range(0, len(hot), chunk_size):
                yield hot[start : start + chunk_size]
            return
        async for chunk in self._stored_chunks(queue_id, chunk_size):
            yield chunk

    @abc.abstractmethod
    def _stored_chunks(self, queue_id: str, chunk_size: int) -> AsyncIterator[bytes]:
        """The body as the database holds it, in chunks of `chunk_size` bytes (the last one shorter)."""

    @abc.abstractmethod
    async def _commit(
        self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta, *, leased: bool
    ) -> tuple[str, float]:
        """Make the message durable (leased to this store if `leased`); (queue id, created)."""

    def _sealed(
        self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta, *, leased: bool
    ) -> tuple[SpoolWriter, bytes | Path, dict[str, Any], float]:
        """The writer, its sealed body (bytes, or the spill file), the message row and its creation time."""
        body = seal_for_commit(writer, envelope, meta, leased=leased)
        assert isinstance(writer, SpoolWriter)
        created = self._clock.now()
        return writer, body, records.message_row(writer.queue_id, envelope, meta, writer.size, created), created
