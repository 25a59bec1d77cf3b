"""The events the sans-IO SMTP server protocol hands to its caller, and the API-misuse error.

Owns: one small frozen dataclass per thing a client can do (RFC 5321 §4.1 commands, the DATA and
BDAT body of RFC 5321 §4.1.1.4 / RFC 3030, the AUTH exchange of RFC 4954 §4), plus `NeedData`
and `Closed`; each event's `verb`, the command it answers to ("ERROR" for a reply the protocol
decided, "" for what is not a command), and which events need a reply, stated here once
(`needs_reply`). Consumers dispatch on the event's type from one table each (smtp/server.py,
server/session.py, server/command_log.py); tests/unit/test_event_tables.py checks they cover
every event.
Must not: parse bytes, hold state or decide anything; `smtp/server.py` produces these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, get_args

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

    @property
    def verb(self) -> str:
        return "EHLO" if self.extended else "HELO"


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM with its ESMTP parameters already checked. `sender` None is `<>`."""

    verb: ClassVar[str] = "MAIL"

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

    verb: ClassVar[str] = "RCPT"

    recipient: Recipient


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA was valid in sequence: reply 354 to receive the body, or refuse it."""

    verb: ClassVar[str] = "DATA"


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Message bytes (dot-unstuffed for DATA), in large pieces. Needs no reply."""

    verb: ClassVar[str] = ""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """End of DATA or of the LAST BDAT chunk. The caller replies 250 queued or refuses.

    Refuse (RFC 5321 §4.5.3.1.7 552 5.3.4) when `oversize`. `bare_line_ending`: a bare CR or LF
    was inside the message (SMTP smuggling, CVE-2023-51764 family; with `bare_line_endings =
    "normalize"` the body chunks already carried it as CRLF). `long_line`: a line over the
    limit (RFC 5321 §4.5.3.1.6). The caller decides whether either refuses the message.
    """

    verb: ClassVar[str] = "DATA"

    size: int
    oversize: bool
    bare_line_ending: bool
    long_line: bool


@dataclass(frozen=True, slots=True)
class BdatChunkEnd:
    """A non-LAST BDAT chunk was read (RFC 3030 §2); reply `bdat_chunk_ok(size)` or refuse."""

    verb: ClassVar[str] = "BDAT"

    size: int
    oversize: bool


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET, RFC 5321 §4.1.1.5."""

    verb: ClassVar[str] = "RSET"


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP, RFC 5321 §4.1.1.9 (its argument is ignored)."""

    verb: ClassVar[str] = "NOOP"


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT, RFC 5321 §4.1.1.10: reply 221, then close."""

    verb: ClassVar[str] = "QUIT"


@dataclass(frozen=True, slots=True)
class Verify:
    """VRFY, RFC 5321 §4.1.1.6. Reply `CANNOT_VRFY` (252): never reveal a user list."""

    verb: ClassVar[str] = "VRFY"

    argument: str


@dataclass(frozen=True, slots=True)
class Help:
    """HELP, RFC 5321 §4.1.1.8."""

    verb: ClassVar[str] = "HELP"

    argument: str


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS with nothing pipelined behind it (RFC 3207 §4). Reply 220, then handshake."""

    verb: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, slots=True)
class AuthStart:
    """AUTH with an offered mechanism, RFC 4954 §4; `initial_response` as sent ("=" = empty)."""

    verb: ClassVar[str] = "AUTH"

    mechanism: str
    initial_response: str | None


@dataclass(frozen=True, slots=True)
class AuthLine:
    """A client line answering a 334 challenge (RFC 4954 §4); "*" never arrives here."""

    verb: ClassVar[str] = "AUTH"

    text: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A reply the protocol already decided (sequence, syntax, ...): send it as it is."""

    verb: ClassVar[str] = "ERROR"

    reply: Reply


@dataclass(frozen=True, slots=True)
class TooManyErrors:
    """The client used up its error budget: send the 421 and close the connection."""

    verb: ClassVar[str] = "ERROR"

    reply: Reply


@dataclass(frozen=True, slots=True)
class FramingLost:
    """A BDAT line whose chunk size cannot be read (RFC 3030 §2): the octets that follow cannot
    be told apart from commands, so send the 421 and close the connection."""

    verb: ClassVar[str] = "ERROR"

    reply: Reply


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed the connection, or the session is over. Needs no reply."""

    verb: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can be decided until more bytes arrive (or `b""` says the peer closed)."""

    verb: ClassVar[str] = ""


Event = (
    Hello | MailFrom | RcptTo | DataStart | BodyChunk | MessageEnd | BdatChunkEnd | Reset | Noop
    | Quit | Verify | Help | StartTls | AuthStart | AuthLine | ProtocolError | TooManyErrors
    | FramingLost | Closed
)


EVENT_TYPES: tuple[type, ...] = get_args(Event)


def needs_reply(event: Event | NeedData) -> bool:
    """Every event except BodyChunk, Closed and NeedData waits for exactly one `send`."""
    return not isinstance(event, (BodyChunk, Closed, NeedData))
