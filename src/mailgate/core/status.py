"""Per-recipient delivery outcomes and the one place where "retry or bounce" is decided.

Owns: `RecipientState`, `Outcome` and `classify`, which turns a reply into delivered, deferred
or failed by its class digit (RFC 5321 §4.2.1; ARCHITECTURE.md: decided in one place).
Must not: schedule retries (queue/backoff) or write DSNs (dsn/).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mailgate.core.reply import Reply


class RecipientState(str, Enum):
    QUEUED = "queued"  # waiting for its next attempt (new or deferred)
    DELIVERED = "delivered"
    FAILED = "failed"  # permanent failure or expired; a DSN is due unless NOTIFY says otherwise


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did for one recipient."""

    state: RecipientState
    reply: Reply
    remote_mta: str | None = None  # "dns; mx.example.com" style, for the DSN Remote-MTA field


def classify(reply: Reply, remote_mta: str | None = None) -> Outcome:
    """2yz delivered, 4yz deferred, 5yz failed (RFC 5321 §4.2.1)."""
    if reply.is_positive:
        return Outcome(RecipientState.DELIVERED, reply, remote_mta)
    if reply.is_transient:
        return Outcome(RecipientState.QUEUED, reply, remote_mta)
    return Outcome(RecipientState.FAILED, reply, remote_mta)
