"""The envelope of one message: sender, recipients and the ESMTP parameters stored with them.

Owns: the plain values that travel from reception through the queue to delivery and DSNs:
`Envelope`, `Recipient`, the DSN parameters of RFC 3461 (NOTIFY, ORCPT, RET, ENVID) and the
body type of RFC 6152 / RFC 6531. Must not: parse commands or touch storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from mailgate.core.address import Address


class Notify(str, Enum):
    """RFC 3461 §4.1 NOTIFY values."""

    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


class Ret(str, Enum):
    """RFC 3461 §4.3 RET values: return the full message or only its headers."""

    FULL = "FULL"
    HDRS = "HDRS"


class BodyType(str, Enum):
    """RFC 1652 / RFC 6152 BODY values."""

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"
    BINARYMIME = "BINARYMIME"


# RFC 3461 §4.1: without NOTIFY the MTA behaves as if NOTIFY=FAILURE (and DELAY at its choice).
DEFAULT_NOTIFY = (Notify.FAILURE, Notify.DELAY)


@dataclass(slots=True)
class Recipient:
    address: Address
    notify: tuple[Notify, ...] = DEFAULT_NOTIFY
    orcpt: str | None = None  # RFC 3461 §4.2, stored as given: "rfc822;user@example.com"

    def wants(self, kind: Notify) -> bool:
        return Notify.NEVER not in self.notify and kind in self.notify


@dataclass(slots=True)
class Envelope:
    """What MAIL and RCPT established. `sender` None is the null reverse-path `<>`."""

    sender: Address | None
    recipients: list[Recipient] = field(default_factory=list)
    body: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    size_declared: int | None = None
    ret: Ret | None = None
    envid: str | None = None

    @property
    def sender_text(self) -> str:
        return "" if self.sender is None else str(self.sender)
