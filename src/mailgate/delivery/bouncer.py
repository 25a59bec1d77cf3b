"""The bouncer: turns failed, expired and long-delayed recipients into DSNs and queues them.

Owns: deciding which recipients are reported (RFC 3461 NOTIFY: FAILURE, DELAY, NEVER; never a
report for a message from the null sender, RFC 5321 §6.1), reading the original from the store
(headers only, or the whole message when RET=FULL and it is not too large), and committing the
report as a new message from `<>`. Must not: format the report (dsn/report.py) or deliver it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mailgate.core.envelope import Envelope, Notify, Recipient, Ret
from mailgate.core.status import RecipientState
from mailgate.dsn.report import FailedRecipient, build_dsn
from mailgate.queue.backoff import RetrySchedule
from mailgate.queue.store import MessageMeta, QueuedMessage, QueueStore, RecipientUpdate

log = logging.getLogger("mailgate.bounce")

# Larger originals are returned as headers only even with RET=FULL (RFC 3461 §4.3 allows it).
MAX_RETURNED_BODY = 10 * 1024 * 1024


class Bouncer:
    def __init__(
        self,
        store: QueueStore,
        reporting_mta: str,
        delay_warning: float,
        schedule: RetrySchedule,
        on_queued: Callable[[], None] = lambda: None,
        on_dsn: Callable[[str, str, str, str, list[str]], None] = lambda *args: None,
    ) -> None:
        self._store = store
        self._reporting_mta = reporting_mta
        self._delay_warning = delay_warning
        self._schedule = schedule
        self._on_queued = on_queued
        self._on_dsn = on_dsn

    async def after_attempt(self, message: QueuedMessage, updates: list[RecipientUpdate], now: float) -> bool:
        """Queue the DSNs this attempt calls for; return the message's new delay_notified flag."""
        by_index = {r.index: r for r in message.recipients}
        failed = [
            (by_index[u.index], u)
            for u in updates
            if u.state is RecipientState.FAILED and by_index[u.index].recipient.wants(Notify.FAILURE)
        ]
        if failed and message.envelope.sender is not None:
            await self._send(message, failed, "failed", now)
        delay_notified = message.delay_notified
        if (
            not delay_notified
            and self._delay_warning > 0
            and now - message.created >= self._delay_warning
        ):
            delayed = [
                (by_index[u.index], u)
                for u in updates
                if u.state is RecipientState.QUEUED and by_index[u.index].recipient.wants(Notify.DELAY)
            ]
            if delayed and message.envelope.sender is not None:
                await self._send(message, delayed, "delayed", now)
            delay_notified = True
        return delay_notified

    async def bounce_now(self, message: QueuedMessage, updates: list[RecipientUpdate], now: float) -> None:
        """`mailgate queue bounce`: the admin failed these recipients; report them."""
        by_index = {r.index: r for r in message.recipients}
        chosen = [(by_index[u.index], u) for u in updates if by_index[u.index].recipient.wants(Notify.FAILURE)]
        if chosen and message.envelope.sender is not None:
            await self._send(message, chosen, "failed", now)

    async def _send(self, message: QueuedMessage, pairs, action: str, now: float) -> None:
        ret_full = message.envelope.ret is Ret.FULL and message.size <= MAX_RETURNED_BODY
        original = await self._original(message.queue_id, ret_full)
        recipients = [
            FailedRecipient(
                address=str(queued.recipient.address),
                orcpt=queued.recipient.orcpt,
                action=action,
                status=update.reply.enhanced or ("5.0.0" if action == "failed" else "4.0.0"),
                diagnostic=update.reply,
                remote_mta=update.remote_mta,
                last_attempt=now,
                will_retry_until=self._schedule.given_up_at(message.created) if action == "delayed" else None,
            )
            for queued, update in pairs
        ]
        report = build_dsn(
            reporting_mta=self._reporting_mta,
            original_sender=message.envelope.sender_text,
            envid=message.envelope.envid,
            arrival_date=message.created,
            recipients=recipients,
            original=original,
            ret_full=ret_full,
            queue_id=message.queue_id,
            now=now,
        )
        writer = self._store.begin()
        writer.write(report)
        envelope = Envelope(
            sender=None,  # RFC 3464 §2 / RFC 5321 §4.5.5: reports go from the null sender
            recipients=[Recipient(message.envelope.sender, notify=(Notify.NEVER,))],
            smtputf8=message.envelope.smtputf8,
        )
        queue_id = await self._store.commit(writer, envelope, MessageMeta(direction="local", protocol="local"))
        log.info("%s DSN %s queued for %s about %s", action, queue_id, message.envelope.sender_text, message.queue_id)
        self._on_dsn(message.queue_id, queue_id, action, message.envelope.sender_text, [r.address for r in recipients])
        self._on_queued()

    async def _original(self, queue_id: str, whole: bool) -> bytes:
        parts: list[bytes] = []
        async for chunk in self._store.body_chunks(queue_id):
            parts.append(chunk)
            if not whole:
                joined = b"".join(parts)
                end = joined.find(b"\r\n\r\n")
                if end >= 0:
                    return joined[: end + 2]
        return b"".join(parts)
