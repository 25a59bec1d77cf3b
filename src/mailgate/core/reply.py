"""SMTP replies: code, enhanced status code and text, and every reply mailgate sends by name.

Owns: the `Reply` value, its wire encoding (single and multi-line, RFC 5321 §4.2.1), the
classification of a reply by its first digit (RFC 5321 §4.2.1, "retry or bounce" lives here and
nowhere else), and named constants shared by the server, the client, the policy and the tests.
Must not: know about sockets, sessions or configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ReplyClass(Enum):
    """What a reply means for the transaction (RFC 5321 §4.2.1, first digit)."""

    POSITIVE = "positive"  # 2yz, 3yz
    TRANSIENT = "transient"  # 4yz: try again later
    PERMANENT = "permanent"  # 5yz: do not retry


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply. `enhanced` is the RFC 3463 code without the class digit check."""

    code: int
    enhanced: str
    text: str

    @property
    def reply_class(self) -> ReplyClass:
        first = self.code // 100
        if first == 4:
            return ReplyClass.TRANSIENT
        if first == 5:
            return ReplyClass.PERMANENT
        return ReplyClass.POSITIVE

    @property
    def is_positive(self) -> bool:
        return self.reply_class is ReplyClass.POSITIVE

    @property
    def is_transient(self) -> bool:
        return self.reply_class is ReplyClass.TRANSIENT

    @property
    def is_permanent(self) -> bool:
        return self.reply_class is ReplyClass.PERMANENT

    def with_text(self, text: str) -> "Reply":
        return Reply(self.code, self.enhanced, text)

    def lines(self, *, enhanced: bool = True) -> list[str]:
        """The reply's text lines, the enhanced code prefixed on each (RFC 2034 §3)."""
        prefix = f"{self.enhanced} " if enhanced and self.enhanced else ""
        return [prefix + part for part in self.text.split("\n")]

    def encode(self, *, enhanced: bool = True) -> bytes:
        """Wire form: `250-first` ... `250 last`, each line ending in CRLF (RFC 5321 §4.2.1)."""
        lines = self.lines(enhanced=enhanced)
        out = []
        for index, line in enumerate(lines):
            separator = " " if index == len(lines) - 1 else "-"
            out.append(f"{self.code}{separator}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ")


# --- Connection and session (RFC 5321 §3.1, §4.2.2, §4.2.3) -------------------------------------
SERVICE_READY = 220
CLOSING = Reply(221, "2.0.0", "Bye")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
# RFC 3030 §2: a BDAT whose chunk size cannot be read leaves no way to find the next command.
FRAMING_LOST = Reply(421, "4.5.2", "BDAT chunk size unreadable, framing lost, closing connection")

# --- Positive ------------------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
# RFC 5321 §3.5.3: 252 when the server will not verify but will accept and try.
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
)


def queued(queue_id: str) -> Reply:
    """250 after the durable commit, naming the queue id (ARCHITECTURE.md step 7)."""
    return Reply(250, "2.0.0", f"OK queued as {queue_id}")


def bdat_chunk_ok(octets: int) -> Reply:
    """RFC 3030 §2: each non-final BDAT chunk is acknowledged with its size."""
    return Reply(250, "2.0.0", f"{octets} octets received")


# --- Transient failures (4yz) --------------------------------------------------------------------
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
SCANNER_UNAVAILABLE = Reply(451, "4.7.1", "Message cannot be scanned now, try again later")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TEMP_AUTH_FAILURE = Reply(454, "4.7.0", "Too many authentication failures, try again later")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
RATE_LIMITED = Reply(450, "4.7.1", "Too many messages, slow down")

# --- Permanent failures (5yz) --------------------------------------------------------------------
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long")
BARE_LINE_ENDING = Reply(500, "5.5.2", "Bare CR or LF not allowed, lines end with CRLF")
PARAM_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_ADDRESS_SYNTAX = Reply(501, "5.1.3", "Bad address syntax")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
PARAM_NOT_RECOGNIZED = Reply(555, "5.5.4", "Parameter not recognized")
UNKNOWN_AUTH_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# RFC 4954 §4 / RFC 5248: 538 5.7.11 "Encryption required for requested authentication mechanism".
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
UTF8_NOT_ANNOUNCED = Reply(553, "5.6.7", "SMTPUTF8 required for a non-ASCII address")
PIPELINED_STARTTLS = Reply(554, "5.5.1", "Commands pipelined behind STARTTLS refused")
SENDER_REFUSED = Reply(550, "5.7.1", "Sender refused")
CLIENT_REFUSED = Reply(554, "5.7.1", "Client refused")
USER_UNKNOWN = Reply(550, "5.1.1", "Recipient address rejected: user unknown")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by authenticated user")
LOOP_DETECTED = Reply(554, "5.4.6", "Too many Received headers, mail loop detected")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
# RFC 7505 §4.2: a domain publishing a null MX accepts no mail.
NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Recipient domain does not exist")
# RFC 6531 §3.7.5: a message needing SMTPUTF8 to a server without it.
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Next hop does not support SMTPUTF8")


def unable_to_relay(address: str) -> Reply:
    """SPEC R3: the refusal for relaying, at RCPT."""
    return Reply(550, "5.7.1", f"Unable to relay for <{address}>")
