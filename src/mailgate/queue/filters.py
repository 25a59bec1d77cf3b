"""The SQL form of a `QueueFilter` (store.py), for both the SQLite and the PostgreSQL store.

Owns: which clause each filter field becomes, over `messages m` and its `recipients r`. The two
databases differ only in spelling (parameter marks, the case-insensitive substring test, the key
joining recipients to their message, the state expression): each store passes its `Dialect`.
Must not: run SQL or apply `limit` (the callers order and limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailgate.core.address import AddressError, normalise_domain
from mailgate.queue.store import QueueFilter


@dataclass(frozen=True)
class Dialect:
    mark: Callable[[str], str]  # parameter name -> its placeholder
    contains: Callable[[str, str], str]  # (column, placeholder) -> case-insensitive substring test
    recipient_of_message: str  # joins `recipients r` to `messages m`
    state_sql: str  # the derived MessageState of `m`, using the `now` parameter


def normalised_domain(text: str) -> str:
    try:
        return normalise_domain(text)
    except AddressError:
        return text  # an address literal or a typo: compared as given, case-insensitively


def filter_sql(query: QueueFilter, now: float, dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """A WHERE clause over `messages m` matching every given field, and its parameters."""
    mark, recipients = dialect.mark, f"SELECT 1 FROM recipients r WHERE {dialect.recipient_of_message}"
    clauses = ["1 = 1"]
    params: dict[str, Any] = {"now": now}
    if query.queue_id is not None:
        clauses.append(f"m.queue_id = {mark('queue_id')}")
        params["queue_id"] = query.queue_id
    if query.sender is not None:
        clauses.append(dialect.contains("m.sender_text", mark("sender")))
        params["sender"] = query.sender
    if query.recipient is not None:
        clauses.append(f"EXISTS ({recipients} AND {dialect.contains('r.address_text', mark('recipient'))})")
        params["recipient"] = query.recipient
    if query.domain is not None:
        clauses.append(
            f"EXISTS ({recipients} AND r.state = 'queued' AND lower(r.domain) = lower({mark('domain')}))"
        )
        params["domain"] = normalised_domain(query.domain)
    if query.state is not None:
        clauses.append(f"({dialect.state_sql}) = {mark('state')}")
        params["state"] = query.state.value
    if query.older_than is not None:
        clauses.append(f"m.created <= {mark('now')} - {mark('older_than')}")
        params["older_than"] = query.older_than
    if query.younger_than is not None:
        clauses.append(f"m.created > {mark('now')} - {mark('younger_than')}")
        params["younger_than"] = query.younger_than
    if query.after is not None:
        # Keyset paging; spelled out (not a row value) so that the index on `created` bounds the scan.
        after_created, after_id = mark("after_created"), mark("after_id")
        clauses.append(f"m.created >= {after_created} AND (m.created > {after_created} OR m.queue_id > {after_id})")
        params["after_created"], params["after_id"] = query.after
    return " AND ".join(clauses), params
