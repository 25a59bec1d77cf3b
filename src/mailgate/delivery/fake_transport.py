"""A `Transport` for tests: answers each recipient from a script, records what it was asked.

Owns: per-address scripts of replies (one per attempt, the last one repeated; 250 when none),
and the record of every request it carried with the body it read. Must not: open sockets or
files; it stands in for delivery/transport.py and delivery/maildir.py behind the same seam.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailgate.core.reply import Reply
from mailgate.core.status import classify
from mailgate.delivery.request import AttemptResult, DeliveryRequest

DELIVERED = Reply(250, "2.0.0", "Ok: queued by the fake transport")


@dataclass(frozen=True)
class Carried:
    """One request as the fake transport saw it."""

    route_key: str
    sender: str
    recipients: tuple[str, ...]
    body: bytes


class FakeTransport:
    def __init__(self, scripts: dict[str, Iterable[Reply]] | None = None) -> None:
        self._scripts = {address.lower(): list(replies) for address, replies in (scripts or {}).items()}
        self.carried: list[Carried] = []
        self.closed = False

    async def deliver(self, request: DeliveryRequest) -> AttemptResult:
        body = b"".join([chunk async for chunk in request.body()])
        addresses = tuple(str(recipient.address) for _, recipient in request.recipients)
        self.carried.append(Carried(request.route.key, request.sender, addresses, body))
        outcomes = {
            index: classify(self._next_reply(str(recipient.address)), f"dns; {request.route.key}")
            for index, recipient in request.recipients
        }
        return AttemptResult(outcomes, request.route.key, None)

    def _next_reply(self, address: str) -> Reply:
        script = self._scripts.get(address.lower(), [])
        return script.pop(0) if len(script) > 1 else (script[0] if script else DELIVERED)

    async def close(self) -> None:
        self.closed = True
