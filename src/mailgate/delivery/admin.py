"""Queue administration: the operations behind `mailgate queue ...` (like postqueue/postsuper).

Owns: list, show, flush, retry, hold, release, delete and bounce over a `QueueStore`, with the
same filters everywhere, and their JSON-ready results. The live server runs them behind its
control socket (server/control.py); a stopped server's store is opened directly by the CLI.
Must not: parse command lines or talk to sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailgate.core.clock import Clock
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.delivery.bouncer import Bouncer
from mailgate.queue.store import MessageState, QueueFilter, QueueStore, QueueSummary, RecipientUpdate

# RFC 3463 §3.2: 5.0.0 "other undefined status" for a failure the admin chose.
ADMIN_BOUNCE = Reply(550, "5.0.0", "Returned to sender by the mail administrator")


def filter_from_dict(data: dict[str, Any]) -> QueueFilter:
    state = data.get("state")
    after = data.get("after")
    if after is not None:
        if not (isinstance(after, (list, tuple)) and len(after) == 2
                and isinstance(after[0], (int, float)) and isinstance(after[1], str)):
            raise ValueError("after must be [created, queue_id] of the last message listed")
        after = (float(after[0]), after[1])
    return QueueFilter(
        queue_id=data.get("queue_id"),
        sender=data.get("sender"),
        recipient=data.get("recipient"),
        domain=data.get("domain"),
        state=MessageState(state) if state else None,
        older_than=data.get("older_than"),
        younger_than=data.get("younger_than"),
        limit=data.get("limit"),
        after=after,
    )


class QueueAdmin:
    def __init__(self, store: QueueStore, bouncer: Bouncer, clock: Clock, wake: Callable[[], None]) -> None:
        self._store = store
        self._bouncer = bouncer
        self._clock = clock
        self._wake = wake

    async def run(self, operation: str, query: dict[str, Any], reason: str = "") -> dict[str, Any]:
        """Dispatch one operation by name; the result is JSON-serialisable."""
        selection = filter_from_dict(query)
        if operation == "list":
            rows = await self._store.list(selection)
            return {"messages": [_summary(row) for row in rows]}
        if operation == "show":
            message = await self._store.get(selection.queue_id or "")
            if message is None:
                return {"message": None}
            detail = _detail(message)
            detail["headers"] = (await self._headers(message.queue_id)).decode("utf-8", "replace")
            return {"message": detail}
        if operation in ("flush", "retry"):
            ids = await self._store.reschedule(selection, self._clock.now())
        elif operation == "hold":
            ids = await self._store.hold(selection, reason or "held by the administrator")
        elif operation == "release":
            ids = await self._store.release(selection)
        elif operation == "delete":
            ids = await self._store.delete(selection)
        elif operation == "bounce":
            ids = await self._bounce(selection)
        else:
            raise ValueError(f"unknown queue operation {operation!r}")
        self._wake()
        return {"ids": ids}

    async def _headers(self, queue_id: str) -> bytes:
        collected = b""
        async for chunk in self._store.body_chunks(queue_id):
            collected += chunk
            end = collected.find(b"\r\n\r\n")
            if end >= 0:
                return collected[: end + 2]
        return collected

    async def _bounce(self, selection: QueueFilter) -> list[str]:
        bounced = []
        for row in await self._store.list(selection):
            message = await self._store.get(row.queue_id)
            if message is None or not message.pending:
                continue
            updates = [RecipientUpdate(r.index, RecipientState.FAILED, ADMIN_BOUNCE) for r in message.pending]
            await self._store.record(message.queue_id, updates)
            await self._bouncer.bounce_now(message, updates, self._clock.now())
            await self._store.finish(message.queue_id)
            bounced.append(message.queue_id)
        return bounced


def _summary(row: QueueSummary) -> dict[str, Any]:
    """One `queue list` row as JSON (by hand: dataclasses.asdict deep-copies every field, which
    was most of the time a 1,000-message page took)."""
    return {
        "queue_id": row.queue_id,
        "sender": row.sender,
        "recipients": [
            {"address": address, "state": state.value, "last_reply": reply} for address, state, reply in row.recipients
        ],
        "size": row.size,
        "created": row.created,
        "state": row.state.value,
        "hold_reason": row.hold_reason,
        "next_attempt": row.next_attempt,
    }


def _detail(message) -> dict[str, Any]:
    envelope = message.envelope
    return {
        "queue_id": message.queue_id,
        "sender": envelope.sender_text,
        "size": message.size,
        "created": message.created,
        "held": message.held,
        "hold_reason": message.meta.hold_reason,
        "client": message.meta.client_address,
        "helo": message.meta.client_helo,
        "auth_user": message.meta.auth_user,
        "direction": message.meta.direction,
        "envid": envelope.envid,
        "ret": envelope.ret.value if envelope.ret else None,
        "smtputf8": envelope.smtputf8,
        "recipients": [
            {
                "address": str(r.recipient.address),
                "state": r.state.value,
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_reply": str(r.last_reply) if r.last_reply else "",
                "remote_mta": r.remote_mta,
                "notify": [n.value for n in r.recipient.notify],
                "orcpt": r.recipient.orcpt,
            }
            for r in message.recipients
        ],
    }
