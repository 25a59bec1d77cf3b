"""The message-authentication seam: what the acceptance path asks, a real implementation, a fake.

Owns: the `MessageAuthenticator` interface the server calls at the end of data, the values it
exchanges (`Origin`: who sent the message; `InboundVerdict`: what the inbound checks found and
what to do about it), and `FakeMessageAuthenticator`, a data-driven fake for tests without DNS.
Must not: know sockets, the queue, or SMTP sessions; the real checks live in their own modules
(dkim_sign, spf, dkim_verify, dmarc, arc, inbound) and are put together in authenticator.py.

The calls, in the order of the acceptance path (docs/flow.md):
- `check(message, origin)` before the screener, on the bytes the sender sent (a stripped copy no
  longer verifies): inbound checks for mail from outside; internal mail gets `NOT_CHECKED`.
- after the screener, on the message that will be stored, one of:
  - `sign(message)` for internal mail: the DKIM-signed message. Plain CPU work with no waiting, so
    the caller runs it in the same thread as reading and storing the message (one hand-off);
  - `finish(message, verdict)` for mail from outside: the Authentication-Results header (and an ARC
    set when sealing is on).
  Both return the new message, or None when it is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mailgate.core.reply import Reply

ACCEPT = "accept"
REJECT = "reject"
TEMPFAIL = "tempfail"
QUARANTINE = "quarantine"
TAG = "tag"


@dataclass(frozen=True)
class Origin:
    client_address: str
    helo: str
    mail_from: str  # "" for the null sender
    internal: bool  # a trusted network or an authenticated user: sign; otherwise check


@dataclass(frozen=True)
class InboundVerdict:
    action: str = ACCEPT  # accept | reject | tempfail | quarantine | tag
    reply: Reply | None = None  # for reject and tempfail
    rule: str = ""  # what decided: dmarc, spf, hosted-from, from-header
    reason: str = ""  # for the logs, the hold reason and the tag header
    results: str = ""  # the Authentication-Results value after the authserv-id (RFC 8601 §2.2)
    extra_headers: tuple[tuple[str, str], ...] = field(default=())


NOT_CHECKED = InboundVerdict()


class MessageAuthenticator(Protocol):
    async def check(self, message: bytes, origin: Origin) -> InboundVerdict: ...

    def sign(self, message: bytes) -> bytes | None: ...

    async def finish(self, message: bytes, verdict: InboundVerdict) -> bytes | None: ...


class FakeMessageAuthenticator:
    """Answers every inbound check with `verdict` and prepends `signature` to internal mail."""

    def __init__(self, verdict: InboundVerdict = NOT_CHECKED, signature: bytes = b"") -> None:
        self.verdict = verdict
        self.signature = signature
        self.checked: list[tuple[bytes, Origin]] = []
        self.finished: list[bytes] = []

    async def check(self, message: bytes, origin: Origin) -> InboundVerdict:
        self.checked.append((message, origin))
        return NOT_CHECKED if origin.internal else self.verdict

    def sign(self, message: bytes) -> bytes | None:
        self.finished.append(message)
        return self.signature + message if self.signature else None

    async def finish(self, message: bytes, verdict: InboundVerdict) -> bytes | None:
        self.finished.append(message)
        return f"Authentication-Results: fake; {verdict.results or 'none'}\r\n".encode() + message
