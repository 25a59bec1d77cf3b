"""An in-memory `QueueStore`: the same contract as the SQLite store, kept in dictionaries.

Owns: messages, bodies, leases and per-recipient state in memory, with the store's semantics
(a lease per claimed message, every update counted as one attempt, a message deleted when no
recipient is left queued, held messages never claimed), so the runner's scheduling, retry,
expiry and bounce logic is tested without a disk (ARCHITECTURE.md "Seams").
Must not: be used where mail must survive a restart: nothing here is durable.
"""

from __future__ import annotations

import copy
import io
from collections.abc import AsyncIterator
from typing import BinaryIO

from mailgate.core.clock import Clock
from mailgate.core.envelope import Envelope
from mailgate.core.status import RecipientState
from mailgate.queue.ids import new_queue_id
from mailgate.queue.store import (
    MessageMeta,
    MessageState,
    MessageWriter,
    QueuedMessage,
    QueuedRecipient,
    QueueFilter,
    QueueStore,
    QueueSummary,
    RecipientUpdate,
)


class _MemoryWriter(MessageWriter):
    def __init__(self, queue_id: str) -> None:
        self.queue_id = queue_id
        self.size = 0
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        self._data += data
        self.size += len(data)

    def open_reader(self) -> BinaryIO:
        return io.BytesIO(bytes(self._data))

    def discard(self) -> None:
        self._data.clear()
        self.size = 0

    def take(self) -> bytes:
        return bytes(self._data)


class MemoryQueueStore(QueueStore):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._messages: dict[str, QueuedMessage] = {}
        self._bodies: dict[str, bytes] = {}
        self._leased: set[str] = set()

    def begin(self, queue_id: str | None = None) -> MessageWriter:
        return _MemoryWriter(queue_id or new_queue_id(self._clock.now()))

    async def commit(self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta) -> str:
        assert isinstance(writer, _MemoryWriter)
        now = self._clock.now()
        recipients = [
            QueuedRecipient(index, recipient, RecipientState.QUEUED, next_attempt=now)
            for index, recipient in enumerate(envelope.recipients)
        ]
        self._messages[writer.queue_id] = QueuedMessage(
            writer.queue_id, envelope, recipients, meta, writer.size, now, held=bool(meta.hold_reason)
        )
        self._bodies[writer.queue_id] = writer.take()
        return writer.queue_id

    async def commit_claimed(self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta) -> QueuedMessage:
        queue_id = await self.commit(writer, envelope, meta)
        self._leased.add(queue_id)
        return copy.deepcopy(self._messages[queue_id])

    async def claim_due(self, now: float, limit: int) -> list[QueuedMessage]:
        due = [message for message in self._waiting() if _due_at(message) <= now]
        due.sort(key=_due_at)
        claimed = due[:limit]
        self._leased.update(message.queue_id for message in claimed)
        return [copy.deepcopy(message) for message in claimed]

    async def next_due(self) -> float | None:
        return min((_due_at(message) for message in self._waiting()), default=None)

    async def body_chunks(self, queue_id: str, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        body = self._bodies[queue_id]
        for start in range(0, len(body), chunk_size):
            yield body[start : start + chunk_size]

    async def record(self, queue_id: str, updates: list[RecipientUpdate]) -> None:
        message = self._messages.get(queue_id)
        if message is None:
            return  # deleted meanwhile by an admin
        for update in updates:
            recipient = message.recipients[update.index]
            recipient.state, recipient.last_reply = update.state, update.reply
            recipient.attempts += 1
            recipient.next_attempt = update.next_attempt if update.state is RecipientState.QUEUED else 0.0
            recipient.remote_mta = update.remote_mta
        if message.first_attempt is None:
            message.first_attempt = self._clock.now()

    async def finish(
        self, queue_id: str, *, delay_notified: bool = False, updates: list[RecipientUpdate] | None = None
    ) -> bool:
        await self.record(queue_id, updates or [])
        self._leased.discard(queue_id)
        message = self._messages.get(queue_id)
        if message is None:
            return True
        message.delay_notified = message.delay_notified or delay_notified
        if message.pending:
            return False
        self._forget(queue_id)
        return True

    async def get(self, queue_id: str) -> QueuedMessage | None:
        message = self._messages.get(queue_id)
        return copy.deepcopy(message) if message is not None else None

    async def list(self, query: QueueFilter) -> list[QueueSummary]:
        return [self._summary(message) for message in self._matching(query)]

    async def hold(self, query: QueueFilter, reason: str) -> list[str]:
        matching = self._matching(query)
        for message in matching:
            message.held, message.meta.hold_reason = True, reason
        return [message.queue_id for message in matching]

    async def release(self, query: QueueFilter) -> list[str]:
        matching = [message for message in self._matching(query) if message.held]
        now = self._clock.now()
        for message in matching:
            message.held, message.meta.hold_reason = False, ""
            for recipient in message.pending:
                recipient.next_attempt = now
        return [message.queue_id for message in matching]

    async def reschedule(self, query: QueueFilter, when: float) -> list[str]:
        matching = self._matching(query)
        for message in matching:
            for recipient in message.pending:
                recipient.next_attempt = when
        return [message.queue_id for message in matching]

    async def delete(self, query: QueueFilter) -> list[str]:
        matching = [message.queue_id for message in self._matching(query)]
        for queue_id in matching:
            self._forget(queue_id)
        return matching

    async def recover(self) -> int:
        returned = len(self._leased)
        self._leased.clear()
        return returned

    async def count_by_state(self) -> dict[MessageState, int]:
        counts = {state: 0 for state in MessageState}
        for message in self._messages.values():
            counts[self._state(message)] += 1
        return counts

    async def oldest_created(self) -> float | None:
        return min((message.created for message in self._messages.values()), default=None)

    async def close(self) -> None:
        """Nothing to release."""

    def _forget(self, queue_id: str) -> None:
        self._messages.pop(queue_id, None)
        self._bodies.pop(queue_id, None)
        self._leased.discard(queue_id)

    def _waiting(self) -> list[QueuedMessage]:
        """Unleased, unheld messages with a recipient left to try."""
        return [
            message
            for message in self._messages.values()
            if message.queue_id not in self._leased and not message.held and message.pending
        ]

    def _state(self, message: QueuedMessage) -> MessageState:
        if message.held:
            return MessageState.HELD
        if message.queue_id in self._leased:
            return MessageState.ACTIVE
        return MessageState.DEFERRED if message.first_attempt is not None else MessageState.QUEUED

    def _matching(self, query: QueueFilter) -> list[QueuedMessage]:
        now = self._clock.now()
        found = [
            message
            for message in sorted(self._messages.values(), key=lambda message: (message.created, message.queue_id))
            if (query.queue_id is None or message.queue_id == query.queue_id)
            and (query.sender is None or query.sender.lower() in message.envelope.sender_text.lower())
            and (query.recipient is None or any(
                query.recipient.lower() in str(r.recipient.address).lower() for r in message.recipients))
            and (query.domain is None or any(r.recipient.address.domain == query.domain for r in message.pending))
            and (query.state is None or self._state(message) is query.state)
            and (query.older_than is None or now - message.created >= query.older_than)
            and (query.younger_than is None or now - message.created < query.younger_than)
            and (query.after is None or (message.created, message.queue_id) > query.after)
        ]
        return found[: query.limit] if query.limit is not None else found

    def _summary(self, message: QueuedMessage) -> QueueSummary:
        pending = [r.next_attempt for r in message.pending]
        return QueueSummary(
            message.queue_id,
            message.envelope.sender_text,
            [(str(r.recipient.address), r.state, str(r.last_reply or "")) for r in message.recipients],
            message.size,
            message.created,
            self._state(message),
            message.meta.hold_reason,
            min(pending) if pending else None,
        )


def _due_at(message: QueuedMessage) -> float:
    return min(recipient.next_attempt for recipient in message.pending)
