"""The mapping between queue records and database rows, shared by the SQLite and PostgreSQL stores.

Owns: the column values of a message and of a recipient (`message_row`, `recipient_row`, the
JSON of `MessageMeta`), and turning those columns back into a `QueuedMessage`. Both stores keep
the same columns with the same meaning (booleans as 0/1 integers), so the encoding lives once.
Must not: run SQL, name tables, or know which database holds the rows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from mailgate.core.address import Address
from mailgate.core.envelope import BodyType, Envelope, Notify, Recipient, Ret
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.queue.store import MessageMeta, MessageState, QueuedMessage, QueuedRecipient, QueueSummary

# MessageMeta holds only scalars; dataclasses.asdict() would deep-copy each one on the commit path.
META_FIELDS = tuple(item.name for item in dataclasses.fields(MessageMeta))

# The columns `message_from_row` reads, in order (after the store's own key column).
MESSAGE_COLUMNS = (
    "queue_id, sender_local, sender_domain, sender_literal, sender_route, body_type, smtputf8,"
    " size_declared, ret, envid, meta, size, created, held, hold_reason, delay_notified,"
    " first_attempt"
)
# The columns `recipient_from_row` reads, in order (after the store's own key column).
RECIPIENT_COLUMNS = (
    "idx, local, domain, literal, had_source_route, notify, orcpt, state, attempts,"
    " next_attempt, reply_code, reply_enhanced, reply_text, remote_mta"
)


def message_row(
    queue_id: str, envelope: Envelope, meta: MessageMeta, size: int, created: float
) -> dict[str, Any]:
    sender = envelope.sender
    return {
        "queue_id": queue_id,
        "sender_local": None if sender is None else sender.local,
        "sender_domain": None if sender is None else sender.domain,
        "sender_literal": int(sender is not None and sender.literal),
        "sender_route": int(sender is not None and sender.had_source_route),
        "sender_text": envelope.sender_text,
        "body_type": envelope.body.value,
        "smtputf8": int(envelope.smtputf8),
        "size_declared": envelope.size_declared,
        "ret": None if envelope.ret is None else envelope.ret.value,
        "envid": envelope.envid,
        "meta": json.dumps({name: getattr(meta, name) for name in META_FIELDS}),
        "size": size,
        "created": created,
        "held": int(bool(meta.hold_reason)),
        "hold_reason": meta.hold_reason,
    }


def recipient_row(message_key: Any, index: int, recipient: Recipient, due: float) -> dict[str, Any]:
    """`message_key` is what the store joins recipients on (SQLite: the row id)."""
    address = recipient.address
    return {
        "message_id": message_key,
        "idx": index,
        "local": address.local,
        "domain": address.domain,
        "literal": int(address.literal),
        "had_source_route": int(address.had_source_route),
        "address_text": str(address),
        "notify": ",".join(value.value for value in recipient.notify),
        "orcpt": recipient.orcpt,
        "state": RecipientState.QUEUED.value,
        "next_attempt": due,
    }


def meta_from_json(text: str, hold_reason: str) -> MessageMeta:
    values = {key: value for key, value in json.loads(text).items() if key in META_FIELDS}
    meta = MessageMeta(**values)
    meta.hold_reason = hold_reason  # the current reason: an admin hold or release changes it
    return meta


def recipient_from_row(row: Sequence[Any]) -> QueuedRecipient:
    """`row` holds RECIPIENT_COLUMNS in order."""
    (index, local, domain, literal, route, notify, orcpt, state, attempts, next_attempt,
     code, enhanced, text, remote_mta) = row  # fmt: skip
    address = Address(local, domain, bool(literal), bool(route))
    notify_values = tuple(Notify(value) for value in notify.split(",") if value)
    return QueuedRecipient(
        index=index,
        recipient=Recipient(address, notify_values, orcpt),
        state=RecipientState(state),
        attempts=attempts,
        next_attempt=next_attempt,
        last_reply=None if code is None else Reply(code, enhanced, text),
        remote_mta=remote_mta,
    )


def message_from_row(row: Sequence[Any], recipients: list[QueuedRecipient]) -> QueuedMessage:
    """`row` holds MESSAGE_COLUMNS in order; `recipients` are the message's, by index."""
    (queue_id, s_local, s_domain, s_literal, s_route, body_type, smtputf8, size_declared, ret,
     envid, meta, size, created, held, hold_reason, delay_notified, first_attempt) = row  # fmt: skip
    sender = None if s_local is None else Address(s_local, s_domain, bool(s_literal), bool(s_route))
    envelope = Envelope(
        sender=sender,
        recipients=[item.recipient for item in recipients],
        body=BodyType(body_type),
        smtputf8=bool(smtputf8),
        size_declared=size_declared,
        ret=None if ret is None else Ret(ret),
        envid=envid,
    )
    return QueuedMessage(
        queue_id=queue_id,
        envelope=envelope,
        recipients=recipients,
        meta=meta_from_json(meta, hold_reason),
        size=size,
        created=created,
        held=bool(held),
        delay_notified=bool(delay_notified),
        first_attempt=first_attempt,
    )


def fresh_message(queue_id: str, envelope: Envelope, meta: MessageMeta, size: int, created: float) -> QueuedMessage:
    """A message as a claim would load it right after its commit (commit_claimed's result)."""
    recipients = [
        QueuedRecipient(index, recipient, RecipientState.QUEUED, next_attempt=created)
        for index, recipient in enumerate(envelope.recipients)
    ]
    return QueuedMessage(queue_id, envelope, recipients, meta, size, created)


def queue_summary(
    queue_id: str, sender: str, size: int, created: float, state: str, hold_reason: str | None,
    recipient_rows: Sequence[Sequence[Any]],
) -> QueueSummary:
    """One `queue list` line from a message's columns and its recipients' rows, each (address,
    state, next_attempt, reply_code, reply_enhanced, reply_text) in recipient order."""
    pending = [float(row[2]) for row in recipient_rows if row[1] == RecipientState.QUEUED.value]
    return QueueSummary(
        queue_id=queue_id,
        sender=sender,
        recipients=[(address, RecipientState(r_state), _reply_text(code, enhanced, text))
                    for address, r_state, _, code, enhanced, text in recipient_rows],
        size=int(size),
        created=float(created),
        state=MessageState(state),
        hold_reason=hold_reason,
        next_attempt=min(pending) if pending else None,
    )


def _reply_text(code: int | None, enhanced: str | None, text: str | None) -> str:
    """The last reply as `queue list` shows it, '' before the first attempt."""
    return "" if code is None else str(Reply(code, enhanced or "", text or ""))
