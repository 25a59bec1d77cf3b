"""The delivery seam: one delivery-request value in, one outcome per recipient out.

Owns: the values a delivery attempt is made of (where to: `Candidate`, `HopPolicy`, `Route`;
what: `DeliveryRequest`; what came of it: `AttemptResult`) and the `Transport` interface that the
SMTP transport (delivery/transport.py), the Maildir transport (delivery/maildir.py) and the
fake in tests implement, so the runner schedules, retries, expires and bounces without knowing
which one carried the message (ARCHITECTURE.md "Seams"). Must not: do I/O, speak SMTP or decide
retry-or-bounce (core/status.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from mailgate.core.envelope import Recipient, Ret
from mailgate.core.status import Outcome

TLS_MODES = ("none", "may", "encrypt", "verify")


@dataclass(frozen=True)
class Candidate:
    """One address to try, in order."""

    host: str  # name for TLS verification, SNI and logs, e.g. "mx1.example.com"
    address: str  # IP to connect to (v4 or v6)
    port: int


@dataclass(frozen=True)
class HopPolicy:
    tls: str = "may"  # none | may (opportunistic) | encrypt (no cert check) | verify (chain + name)
    # Smart-host AUTH PLAIN/LOGIN, only ever over TLS; kept out of repr so logs never show it.
    auth: tuple[str, str] | None = field(default=None, repr=False)
    ca_file: str | None = None  # extra trust for "verify", on top of the system store
    helo_name: str = "localhost"
    source_address: str | None = None  # delivery.bind_address: to IPv4 next hops
    source_address6: str | None = None  # delivery.bind_address6: to IPv6 next hops

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {self.tls!r}")


@dataclass(frozen=True)
class Route:
    """Where one group of recipients goes. Recipients whose routes are equal share a transaction."""

    key: str  # for grouping, logs and per-destination limits
    candidates: tuple[Candidate, ...] = ()
    policy: HopPolicy = field(default_factory=HopPolicy)
    maildir: str = ""  # non-empty: the built-in local mailbox, not SMTP


@dataclass(frozen=True)
class DeliveryRequest:
    """One attempt: one message to the recipients that share one route."""

    route: Route
    sender: str  # the reverse path, "" for a DSN
    recipients: tuple[tuple[int, Recipient], ...]  # (index in the message, recipient)
    body: Callable[[], AsyncIterator[bytes]]  # a fresh iterator over the message per call
    size: int
    smtputf8: bool = False
    eight_bit: bool = False
    ret: Ret | None = None
    envid: str | None = None
    crlf_clean: bool = False  # reception verified: no bare CR or LF in the message


@dataclass
class AttemptResult:
    outcomes: dict[int, Outcome]  # recipient index -> outcome of this attempt
    remote_mta: str | None  # host that answered
    tls: str | None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"



class Transport(Protocol):
    """Carries one request; never raises for a failed delivery (that is an outcome)."""

    async def deliver(self, request: DeliveryRequest) -> AttemptResult: ...

    async def close(self) -> None: ...


class RoutedTransport:
    """The runner's one transport: Maildir routes to `maildir`, every other route to `smtp`."""

    def __init__(self, smtp: Transport, maildir: Transport) -> None:
        self._smtp = smtp
        self._maildir = maildir

    async def deliver(self, request: DeliveryRequest) -> AttemptResult:
        return await (self._maildir if request.route.maildir else self._smtp).deliver(request)

    async def close(self) -> None:
        await self._smtp.close()
        await self._maildir.close()
