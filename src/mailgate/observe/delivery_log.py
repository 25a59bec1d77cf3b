"""What happened to each message after it was queued, in both logs (like Postfix's maillog).

Owns: turning one delivery attempt's outcomes into a transaction-log record per recipient and a
diagnostic line per recipient, `QUEUEID: to=<rcpt>, relay=NEXT-HOP (remote MTA), delay=S,
status=sent|deferred|bounced (reply)`, so that the diagnostic log answers "what happened to this
message" on its own, joined by queue id to the acceptance line (the session's) and the DSN line
(the bouncer's).
Must not: decide outcomes (delivery/ does) or write files (the log handlers and writer do).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mailgate.core.clock import Clock
from mailgate.core.status import Outcome, RecipientState
from mailgate.observe.translog import TransactionLog

log = logging.getLogger("mailgate.delivery")

STATUS_WORDS = {  # Postfix's words: an admin greps for status=bounced
    RecipientState.DELIVERED: "sent",
    RecipientState.QUEUED: "deferred",
    RecipientState.FAILED: "bounced",
}


class DeliveryObserver:
    def __init__(self, transactions: TransactionLog, clock: Clock) -> None:
        self._transactions = transactions
        self._clock = clock

    def attempt(self, message: Any, route: Any, outcomes: Mapping[int, Outcome], tls: str | None,
                elapsed: float) -> None:
        """The runner's `on_attempt`: `route` None when routing itself failed."""
        delay = self._clock.now() - message.created
        by_index = {r.index: r for r in message.recipients}
        next_hop = route.key if route else ""
        for index, outcome in outcomes.items():
            recipient = str(by_index[index].recipient.address)
            self._transactions.delivery_attempt(
                message.queue_id, recipient, next_hop, outcome, sender=message.envelope.sender_text,
                tls=tls or "", elapsed=elapsed, delay=delay, size=message.size,
            )
            relay = next_hop or "none"
            if outcome.remote_mta:
                relay += f" ({outcome.remote_mta.removeprefix('dns; ')})"
            log.info("%s: to=<%s>, relay=%s, delay=%.1f, tls=%s, status=%s (%s)", message.queue_id, recipient,
                     relay, delay, tls or "none", STATUS_WORDS[outcome.state], outcome.reply)

    def dsn(self, queue_id: str, dsn_queue_id: str, kind: str, sender: str, recipients: Sequence[str]) -> None:
        """The bouncer's `on_dsn`: a delivery status notification was queued to `sender` (the
        bouncer logs its own diagnostic line)."""
        self._transactions.bounce(queue_id, dsn_queue_id, kind, sender, recipients)
