"""The queue store seam: the one interface every queue implementation offers.

Owns: the abstract `QueueStore`, the `MessageWriter` that streams one incoming message to the
spool, and the plain records the store hands out (`QueuedMessage`, `QueuedRecipient`,
`MessageMeta`, `QueueFilter`). The embedded implementation is `queue/sqlite_store.py`; a
PostgreSQL one for a cluster implements the same class without touching its callers.
Must not: know about SMTP sessions, routing or DSN text; it stores and hands back.

Contract every implementation keeps:
- `commit()` returns only once the message and its envelope are on stable storage. Commits that
  are pending at the same moment share one sync (group commit).
- A claimed message is leased to its claimer until `finish()`; `recover()` at start-up returns
  the leases a crash left behind, so nothing acknowledged is ever stranded.
- Each `record()` and `finish()` is saved before it returns (ARCHITECTURE.md step 9): atomic and
  safe against a crash of the process. Against a power loss they may be lost until the next
  durable commit, which can only make an attempt happen again (a possible duplicate delivery,
  RFC 5321 §6.1 accepts those), never lose or corrupt a message: delivery bookkeeping does not pay
  an fsync per message, as Postfix's does not for its queue file deletions.
"""

from __future__ import annotations

import abc
import errno
from collections.abc import AsyncIterator
from typing import BinaryIO
from dataclasses import dataclass, field
from enum import Enum

from mailgate.core.envelope import Envelope, Recipient
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState


class MessageState(str, Enum):
    """A message's state as shown by `mailgate queue list` (derived, never stored apart)."""

    ACTIVE = "active"  # claimed by a delivery worker right now
    QUEUED = "queued"  # due now or waiting for a retry
    DEFERRED = "deferred"  # at least one attempt made, waiting for the next
    HELD = "held"  # on hold (admin or quarantine) until released


@dataclass(slots=True)
class MessageMeta:
    """What reception knew about the message, kept for logs, `queue show` and DSNs."""

    client_address: str = ""
    client_helo: str = ""
    auth_user: str = ""
    protocol: str = "ESMTP"
    listener: str = ""
    direction: str = "inbound"  # inbound | outbound | local (DSNs made by mailgate)
    hold_reason: str = ""  # non-empty: the message is committed on hold (quarantine)
    received_count: int = 0
    headers_end: int = 0  # offset of the empty line ending the header, 0 if unknown
    crlf_clean: bool = False  # reception verified: no bare CR or LF anywhere in the message


class MessageNotFoundError(KeyError):
    """No message with that queue id (never queued, or delivered and deleted)."""


# ENOSPC: no space left on the device; EDQUOT: the spool user's disk quota is used up.
_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def out_of_space(exc: BaseException) -> bool:
    """Did storing fail for lack of space? (Stores raise OSError with ENOSPC for a full database.)
    Reception answers 452 4.3.1 for it (RFC 3463 §3.4 "mail system full"), not 451."""
    return isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE


class LeaseLostError(RuntimeError):
    """The message was claimed again since this store's claim (its lease lapsed, say while a
    cluster node was cut off from the database): the outcome is not recorded, the newer claim's
    is. Only a store shared by several nodes raises it."""


class QueueUnavailableError(RuntimeError):
    """The store cannot be opened: its database refused, is unreachable, unsafe or of another
    schema version. One line saying why."""


class NodeNameInUseError(RuntimeError):
    """Another live process serves under this node's name (its heartbeat is fresh): leases are
    keyed by the name, so two nodes sharing it would renew and finish each other's claims. One
    line naming the other node and how long ago it last said it was alive."""


class CorruptBodyError(Exception):
    """A stored body does not match the checksum taken when it was written: torn by a power loss
    before its message was acknowledged, or damaged on disk since. Not an OSError on purpose: it
    is no network or disk failure to retry, and the runner holds the message for an admin."""


@dataclass(slots=True)
class QueuedRecipient:
    index: int
    recipient: Recipient
    state: RecipientState
    attempts: int = 0
    next_attempt: float = 0.0
    last_reply: Reply | None = None
    remote_mta: str | None = None


@dataclass(slots=True)
class QueuedMessage:
    queue_id: str
    envelope: Envelope
    recipients: list[QueuedRecipient]
    meta: MessageMeta
    size: int
    created: float
    held: bool = False
    delay_notified: bool = False
    first_attempt: float | None = None

    @property
    def pending(self) -> list[QueuedRecipient]:
        return [r for r in self.recipients if r.state is RecipientState.QUEUED]


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """The result of one attempt for one recipient, to be recorded durably."""

    index: int
    state: RecipientState
    reply: Reply
    next_attempt: float = 0.0  # for QUEUED: when to try again
    remote_mta: str | None = None


@dataclass(slots=True)
class QueueFilter:
    """Filters for list, hold, release, delete (all given ones must match)."""

    queue_id: str | None = None
    sender: str | None = None  # substring, case-insensitive
    recipient: str | None = None  # substring of any recipient, case-insensitive
    domain: str | None = None  # any pending recipient's domain, exact
    state: MessageState | None = None
    older_than: float | None = None  # seconds of age
    younger_than: float | None = None
    limit: int | None = None
    # Keyset paging (the console's queue list): only messages after this (created, queue_id),
    # in that order, so a page costs the same at the 100,000th message as at the first.
    after: tuple[float, str] | None = None


@dataclass(slots=True)
class QueueSummary:
    """One row of `mailgate queue list`."""

    queue_id: str
    sender: str
    recipients: list[tuple[str, RecipientState, str]] = field(default_factory=list)
    size: int = 0
    created: float = 0.0
    state: MessageState = MessageState.QUEUED
    hold_reason: str = ""
    next_attempt: float | None = None


class MessageWriter(abc.ABC):
    """Streams one incoming message into the spool. Not durable until the store commits it."""

    queue_id: str
    size: int

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append bytes; cheap to call often; never keeps the whole of a large message in memory."""

    @abc.abstractmethod
    def open_reader(self) -> BinaryIO:
        """A fresh binary file object reading what was written so far (for the screener)."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Drop everything written; safe to call twice and after a failed commit."""


class QueueStore(abc.ABC):
    """The durable queue (ARCHITECTURE.md "Seams")."""

    @abc.abstractmethod
    def begin(self, queue_id: str | None = None) -> MessageWriter:
        """Start a message; its queue id is known from here on (for the Received header).
        `queue_id` reuses the id of a message being rewritten before its commit."""

    @abc.abstractmethod
    async def commit(self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta) -> str:
        """Make the message durable (group commit) and return its queue id."""

    @abc.abstractmethod
    async def commit_claimed(self, writer: MessageWriter, envelope: Envelope, meta: MessageMeta) -> QueuedMessage:
        """commit(), with the message leased to this store at once as claim_due() would lease
        it, for a caller that delivers it now (a lease that is never finished expires the same
        way). Saves the claim and the read-back of a message the caller still holds."""

    @abc.abstractmethod
    async def claim_due(self, now: float, limit: int) -> list[QueuedMessage]:
        """Lease up to `limit` messages that have a recipient due at `now` and are not held."""

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """The earliest next attempt among unleased, unheld messages, or None if none."""

    @abc.abstractmethod
    def body_chunks(self, queue_id: str, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """The message bytes, in order, in chunks."""

    @abc.abstractmethod
    async def record(self, queue_id: str, updates: list[RecipientUpdate]) -> None:
        """Save per-recipient outcomes durably (before the next attempt is made)."""

    @abc.abstractmethod
    async def finish(
        self, queue_id: str, *, delay_notified: bool = False, updates: list[RecipientUpdate] | None = None
    ) -> bool:
        """Record `updates` (as `record` does), return the lease, and delete the message if no
        recipient is left queued, all in one durable step. True if deleted."""

    @abc.abstractmethod
    async def get(self, queue_id: str) -> QueuedMessage | None:
        """One message's envelope and per-recipient state (for `queue show`)."""

    @abc.abstractmethod
    async def list(self, query: QueueFilter) -> list[QueueSummary]:
        ...

    @abc.abstractmethod
    async def hold(self, query: QueueFilter, reason: str) -> list[str]:
        """Put matching messages on hold; returns their ids."""

    @abc.abstractmethod
    async def release(self, query: QueueFilter) -> list[str]:
        """Release held messages and make them due now."""

    @abc.abstractmethod
    async def reschedule(self, query: QueueFilter, when: float) -> list[str]:
        """Make every queued recipient of matching messages due at `when` (flush, retry)."""

    @abc.abstractmethod
    async def delete(self, query: QueueFilter) -> list[str]:
        ...

    @abc.abstractmethod
    async def recover(self) -> int:
        """At start-up: return leases a crash left behind, drop half-written spool files."""

    @abc.abstractmethod
    async def count_by_state(self) -> dict[MessageState, int]:
        ...

    @abc.abstractmethod
    async def oldest_created(self) -> float | None:
        ...

    @abc.abstractmethod
    async def close(self) -> None:
        ...
