"""The events the sans-IO SMTP server protocol hands to its caller, and the API-misuse error.

Owns: one small frozen dataclass per thing a client can do (RFC 5321 §4.1 commands, the DATA and
BDAT body of RFC 5321 §4.1.1.4 / RFC 3030, the AUTH exchange of RFC 4954 §4), plus `NeedData`
and `Closed`. Which events need a reply is stated here once (`needs_reply`).
Must not: parse bytes, hold state or decide anything; `smtp/server.py` produces these values.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.core.address import Address
from mailgate.core.envelope import BodyType, Recipient, Ret
from mailgate.core.reply import Reply


class ServerUsageError(Exception):
    """The caller misused the protocol API (h11's LocalProtocolError): a bug in our code."""


@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO (`extended`) or HELO, RFC 5321 §4.1.1.1. Reply 250 to accept."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM with its ESMTP parameters already checked. `sender` None is `<>`."""

    sender: Address | None
    size: int | None = None  # RFC 1870 SIZE=, as declared
    body: BodyType = BodyType.SEVEN_BIT  # RFC 6152 BODY=
    smtputf8: bool = False  # RFC 6531 §3.4
    ret: Ret | None = None  # RFC 3461 §4.3
    envid: str | None = None  # RFC 3461 §4.4, xtext-decoded
    auth_param: str | None = None  # RFC 4954 §5 AUTH=, xtext-decoded; "<>" kept as "<>"


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO with NOTIFY and ORCPT parsed (RFC 3461 §4.1, §4.2)."""

    recipient: Recipient


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA was valid in sequence: reply 354 to receive the body, or refuse it."""


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Message bytes (dot-unstuffed for DATA), in large pieces. Needs no reply."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """End of DATA or of the LAST BDAT chunk. The caller replies 250 queued or refuses.

    Refuse (RFC 5321 §4.5.3.1.7 552 5.3.4) when `oversize`; refuse when `bare_line_ending`
    (a bare CR or LF inside the message: SMTP smuggling, CVE-2023-51764 family).
    """

    size: int
    oversize: bool
    bare_line_ending: bool
    long_line: bool


@dataclass(frozen=True, slots=True)
class BdatChunkEnd:
    """A non-LAST BDAT chunk was read (RFC 3030 §2); reply `bdat_chunk_ok(size)` or refuse."""

    size: int
    oversize: bool


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET, RFC 5321 §4.1.1.5."""


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP, RFC 5321 §4.1.1.9 (its argument is ignored)."""


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT, RFC 5321 §4.1.1.10: reply 221, then close."""


@dataclass(frozen=True, slots=True)
class Verify:
    """VRFY, RFC 5321 §4.1.1.6. Reply `CANNOT_VRFY` (252): never reveal a user list."""

    argument: str


@dataclass(frozen=True, slots=True)
class Help:
    """HELP, RFC 5321 §4.1.1.8."""

    argument: str


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS with nothing pipelined behind it (RFC 3207 §4). Reply 220, then handshake."""


@dataclass(frozen=True, slots=True)
class AuthStart:
    """AUTH with an offered mechanism, RFC 4954 §4; `initial_response` as sent ("=" = empty)."""

    mechanism: str
    initial_response: str | None


@dataclass(frozen=True, slots=True)
class AuthLine:
    """A client line answering a 334 challenge (RFC 4954 §4); "*" never arrives here."""

    text: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A reply the protocol already decided (sequence, syntax, ...): send it as it is."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class TooManyErrors:
    """The client used up its error budget: send the 421 and close the connection."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class FramingLost:
    """A BDAT line whose chunk size cannot be read (RFC 3030 §2): the octets that follow cannot
    be told apart from commands, so send the 421 and close the connection."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed the connection, or the session is over. Needs no reply."""


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can be decided until more bytes arrive (or `b""` says the peer closed)."""


Event = (
    Hello | MailFrom | RcptTo | DataStart | BodyChunk | MessageEnd | BdatChunkEnd | Reset | Noop
    | Quit | Verify | Help | StartTls | AuthStart | AuthLine | ProtocolError | TooManyErrors
    | FramingLost | Closed
)


def needs_reply(event: Event | NeedData) -> bool:
    """Every event except BodyChunk, Closed and NeedData waits for exactly one `send`."""
    return not isinstance(event, (BodyChunk, Closed, NeedData))
