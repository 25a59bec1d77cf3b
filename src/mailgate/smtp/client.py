"""The outbound SMTP client protocol, sans-IO: bytes in, replies out; commands in, bytes out.

Owns: parsing server replies (multi-line, RFC 5321 §4.2.1; enhanced status codes, RFC 2034 §4)
into `core.reply.Reply`, matching replies to the commands sent (in order, so PIPELINING of
RFC 2920 works), the command sequence table below, reading the EHLO keywords (RFC 5321 §4.1.1.1),
building MAIL and RCPT with the ESMTP parameters a server announced (SIZE, BODY, SMTPUTF8, DSN),
encoding command lines (never a CR or LF inside one, RFC 5321 §2.3.8) and streaming the message
body with dot-stuffing and CRLF-only line endings (RFC 5321 §4.5.2, §2.3.8).
Must not: touch sockets, await, time out, pick candidates or decide retry-or-bounce (that is
`core.status.classify`). aiosmtplib exists, but it owns its socket; the driver here must own TLS
policy, pooling and time-outs (delivery/transport.py), so the protocol is written as h11 is.
Errors are split as h11 splits them: `PeerProtocolError` (the server broke the protocol) and
`ClientUsageError` (our caller misused this API).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from mailgate.core.envelope import DEFAULT_NOTIFY, Recipient, Ret
from mailgate.core.reply import Reply

# RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets; real servers exceed it, so we tolerate
# 8 times that (RFC 5321 §4.5.3.1 asks for liberal limits) before calling the peer broken.
MAX_REPLY_LINE = 4096
# A reply longer than this many lines is a hostile peer, not an EHLO list.
MAX_REPLY_LINES = 256

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)(.*)", re.DOTALL)
# RFC 3463 §2: class "." subject (1-3 digits) "." detail (1-3 digits).
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


class PeerProtocolError(Exception):
    """The server sent something that is not SMTP (garbage, mixed codes, unsolicited reply)."""


class ClientUsageError(Exception):
    """We asked for something the protocol forbids (wrong order, CR/LF inside a command)."""


class Verb(str, Enum):
    GREETING = "GREETING"  # not sent: the reply the server sends first (RFC 5321 §3.1)
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "AUTH_RESPONSE"  # a line answering a 334 challenge (RFC 4954 §4)
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "END_OF_DATA"  # the final "." line; not a command of its own
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


class State(Enum):
    """Where the conversation stands, as far as what we may send next."""

    GREETING = "greeting"  # waiting for 220
    NEED_HELLO = "need hello"  # after greeting or TLS handshake (RFC 3207 §4.2)
    READY = "ready"  # no transaction open: the only state in which MAIL may be sent
    IN_MAIL = "in mail"  # MAIL sent
    IN_RCPT = "in rcpt"  # at least one RCPT sent
    DATA_SENT = "data sent"  # waiting for 354
    BODY = "body"  # 354 received after an accepted MAIL and RCPT: the body is being streamed
    NEEDS_RESET = "needs reset"  # the transaction ended without a 250 to the final dot: RSET
    TLS_HANDSHAKE = "tls handshake"  # 220 to STARTTLS received; the driver must wrap the socket
    AUTH_CHALLENGE = "auth challenge"  # 334 received
    BROKEN = "broken"  # a reply did not fit its command: nothing more may be sent, only closed
    CLOSED = "closed"


class Ending(Enum):
    """What the driver must do with the connection once it stops using it."""

    REUSE = "reuse"  # ready for MAIL, nothing outstanding: it may go back to the pool
    RESET = "reset"  # a transaction may be open at the server: RSET first, then ask again
    CLOSE = "close"  # anything else, or any doubt


# What may be sent in each state, and the state it leads to (optimistically: with PIPELINING a
# command is sent before the reply to the previous one; `_after_reply` corrects the state).
_SEND_TABLE: dict[State, dict[Verb, State]] = {
    State.NEED_HELLO: {Verb.EHLO: State.READY, Verb.HELO: State.READY, Verb.QUIT: State.CLOSED},
    State.READY: {
        Verb.MAIL: State.IN_MAIL,
        Verb.STARTTLS: State.READY,
        Verb.AUTH: State.READY,
        Verb.EHLO: State.READY,
        Verb.RSET: State.READY,
        Verb.NOOP: State.READY,
        Verb.QUIT: State.CLOSED,
    },
    State.IN_MAIL: {Verb.RCPT: State.IN_RCPT, Verb.RSET: State.READY, Verb.QUIT: State.CLOSED},
    State.IN_RCPT: {
        Verb.RCPT: State.IN_RCPT,
        Verb.DATA: State.DATA_SENT,
        Verb.RSET: State.READY,
        Verb.QUIT: State.CLOSED,
    },
    State.NEEDS_RESET: {Verb.RSET: State.READY, Verb.QUIT: State.CLOSED},
    State.DATA_SENT: {},
    State.BODY: {},  # body() and end_of_data(), not send()
    State.AUTH_CHALLENGE: {Verb.AUTH_RESPONSE: State.READY},
    State.GREETING: {},
    State.TLS_HANDSHAKE: {},
    State.BROKEN: {},
    State.CLOSED: {},
}

# The positive replies that fit each command (RFC 5321 §4.3.2, RFC 3207 §4, RFC 4954 §4); any
# 4yz or 5yz fits too, except 503 "bad sequence of commands" (see `_in_step`).
_POSITIVE_REPLIES: dict[Verb, frozenset[int]] = {
    Verb.GREETING: frozenset({220}),
    Verb.EHLO: frozenset({250}),
    Verb.HELO: frozenset({250}),
    Verb.STARTTLS: frozenset({220}),
    Verb.AUTH: frozenset({235, 334}),
    Verb.AUTH_RESPONSE: frozenset({235, 334}),
    Verb.MAIL: frozenset({250}),
    Verb.RCPT: frozenset({250, 251}),
    Verb.DATA: frozenset({354}),
    Verb.END_OF_DATA: frozenset({250}),
    Verb.RSET: frozenset({250}),
    Verb.NOOP: frozenset({250}),
    Verb.QUIT: frozenset({221}),
}
BAD_SEQUENCE = 503  # RFC 5321 §4.2.2


class OutOfStepError(PeerProtocolError):
    """A reply that does not fit the command it answers, or a 503 where our sequence was right:
    the two sides no longer agree on the session's state (the connection's fault, not the
    recipient's)."""


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    """A reply and the command it answers."""

    verb: Verb
    reply: Reply


@dataclass(frozen=True)
class Extensions:
    """The service extensions an EHLO reply announced (RFC 5321 §4.1.1.1); empty after HELO."""

    keywords: dict[str, str] = field(default_factory=dict)  # upper-case keyword -> parameters

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size_limit(self) -> int | None:
        """RFC 1870 §4: SIZE with a number; 0 or no number means no fixed limit."""
        value = self.keywords.get("SIZE", "").strip()
        return int(value) if value.isdigit() and int(value) > 0 else None

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        return frozenset(self.keywords.get("AUTH", "").upper().split())


def parse_ehlo(reply: Reply) -> Extensions:
    """Keywords from the second line on; the first line is the server's greeting name."""
    keywords: dict[str, str] = {}
    for line in reply.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            keywords[keyword.upper()] = params.strip()
    return Extensions(keywords)


def _split_enhanced(code: int, text: str) -> tuple[str, str]:
    match = _ENHANCED.match(text)
    if match is None or int(match.group(1)) != code // 100:
        return "", text  # RFC 2034 §4: the class digit must agree with the reply code
    return match.group(0).strip(), text[match.end() :]


class ReplyParser:
    """Turns received bytes into complete `Reply` values; keeps partial lines for later."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[tuple[int, str]] = []

    @property
    def has_pending_input(self) -> bool:
        """Bytes received but not yet part of a complete reply (STARTTLS injection check)."""
        return bool(self._buffer or self._lines)

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise PeerProtocolError("reply line too long")
                return replies
            raw = bytes(self._buffer[:end]).removesuffix(b"\r")  # a bare LF is tolerated
            del self._buffer[: end + 1]
            reply = self._take_line(raw)
            if reply is not None:
                replies.append(reply)

    def _take_line(self, raw: bytes) -> Reply | None:
        if len(raw) > MAX_REPLY_LINE:
            raise PeerProtocolError("reply line too long")
        match = _REPLY_LINE.fullmatch(raw)
        if match is None:
            raise PeerProtocolError(f"not an SMTP reply line: {raw[:80]!r}")
        code = int(match.group(1))
        if self._lines and self._lines[0][0] != code:
            raise PeerProtocolError("reply code changed inside a multi-line reply")
        # RFC 5321 §4.2: a reply line ends with CRLF; a CR left inside the text ("250 a\r\r\n", or
        # a bare CR) would reach logs and DSNs, so a trailing one is dropped and any other is a space.
        text = match.group(3).decode("utf-8", "replace").rstrip("\r").replace("\r", " ")
        self._lines.append((code, text))
        if len(self._lines) > MAX_REPLY_LINES:
            raise PeerProtocolError("too many lines in one reply")
        if match.group(2) == b"-":
            return None
        lines, self._lines = self._lines, []
        enhanced, first = _split_enhanced(code, lines[0][1])
        texts = [first]
        for _, text in lines[1:]:
            # RFC 2034 §4: the code is repeated on each line; strip it where it is.
            texts.append(text[len(enhanced) + 1 :] if enhanced and text.startswith(enhanced + " ") else text)
        return Reply(code, enhanced, "\n".join(texts))


def encode_command(line: str, *, utf8: bool = False) -> bytes:
    """One command line with CRLF; refuses CR, LF or NUL inside (RFC 5321 §2.3.8, §4.1.1)."""
    if any(char in line for char in "\r\n\0"):
        raise ClientUsageError("CR, LF or NUL inside a command line")
    return (line + "\r\n").encode("utf-8" if utf8 else "ascii")


def xtext(value: str) -> str:
    """RFC 3461 §4: a value already in xtext passes as is; anything else is encoded."""
    if all(33 <= ord(char) <= 126 and char != "=" for char in value) and _valid_plus_escapes(value):
        return value
    return "".join(
        char if 33 <= ord(char) <= 126 and char not in "+=" else "".join(f"+{byte:02X}" for byte in char.encode())
        for char in value
    )


def _valid_plus_escapes(value: str) -> bool:
    return all(len(part) >= 2 and set(part[:2]) <= set("0123456789ABCDEF") for part in value.split("+")[1:])


def mail_command(
    sender: str,
    extensions: Extensions,
    *,
    size: int,
    eight_bit: bool,
    smtputf8: bool,
    ret: Ret | None = None,
    envid: str | None = None,
) -> str:
    """MAIL FROM with the parameters the server announced it understands (empty sender: `<>`)."""
    params = []
    if extensions.has("SIZE"):
        params.append(f"SIZE={size}")  # RFC 1870 §3
    if eight_bit and extensions.has("8BITMIME"):
        params.append("BODY=8BITMIME")  # RFC 6152 §2
    if smtputf8:
        params.append("SMTPUTF8")  # RFC 6531 §3.4; the caller checks the server offers it
    if extensions.has("DSN"):
        if ret is not None:
            params.append(f"RET={ret.value}")  # RFC 3461 §4.3
        if envid:
            params.append(f"ENVID={xtext(envid)}")  # RFC 3461 §4.4
    return " ".join([f"MAIL FROM:<{sender}>", *params])


def rcpt_command(recipient: Recipient, extensions: Extensions) -> str:
    """RCPT TO with the DSN parameters when the server offers DSN (RFC 3461 §4.1, §4.2)."""
    params = []
    if extensions.has("DSN"):
        if tuple(recipient.notify) != DEFAULT_NOTIFY:  # the default is what no NOTIFY means
            params.append("NOTIFY=" + ",".join(kind.value for kind in recipient.notify))
        if recipient.orcpt:
            params.append(f"ORCPT={xtext(recipient.orcpt)}")
    return " ".join([f"RCPT TO:<{recipient.address}>", *params])


class ClientProtocol:
    """The command/reply state machine of one outbound connection.

    `send(verb, line)` gives the bytes to write; `receive(data)` gives `ReplyEvent`s in the order
    of the commands they answer. Several commands may be outstanding (PIPELINING, RFC 2920 §3.1).
    It alone decides whether the connection may carry another transaction (`ending`), and it
    refuses, as a `ClientUsageError`, the two sends that harm mail: a MAIL while a transaction may
    still be open at the server, and a body (even an empty one) unless this transaction's MAIL
    and at least one RCPT were accepted and DATA got 354. A reply that does not fit the command
    it answers raises `OutOfStepError` and leaves the protocol BROKEN.
    """

    def __init__(self) -> None:
        self.state = State.GREETING
        self._parser = ReplyParser()
        self._pending: deque[Verb] = deque([Verb.GREETING])
        self._body = BodyEncoder()
        self._mail_accepted: bool | None = None  # this transaction's MAIL reply; None: not yet
        self._rcpt_accepted = 0  # RCPTs of this transaction answered 2yz

    @property
    def outstanding(self) -> int:
        """Commands sent (or the greeting) whose reply has not arrived yet."""
        return len(self._pending)

    @property
    def ending(self) -> Ending:
        """Back to the pool only when ready for MAIL (after a 250 to the final dot, to RSET or to
        EHLO) with nothing outstanding; RSET when a transaction may be open; otherwise close."""
        if self._pending:
            return Ending.CLOSE
        if self.state is State.READY:
            return Ending.REUSE
        if self.state in (State.IN_MAIL, State.IN_RCPT, State.NEEDS_RESET):
            return Ending.RESET
        return Ending.CLOSE

    def send(self, verb: Verb, line: str, *, utf8: bool = False) -> bytes:
        allowed = _SEND_TABLE[self.state]
        if verb not in allowed:
            raise ClientUsageError(f"{verb.value} may not be sent in state {self.state.value}")
        if verb is Verb.MAIL and self._pending:
            # RFC 5321 §4.1.4: a MAIL inside an open transaction is a sequence error; until the
            # reply that ended the last one (or the EHLO/RSET reply) is in, one may be open.
            raise ClientUsageError("MAIL before the previous command was answered")
        if verb in (Verb.RCPT, Verb.DATA) and self._mail_accepted is False:
            raise ClientUsageError(f"{verb.value} after a refused MAIL")
        if verb is Verb.DATA and self._answered_rcpts_all_refused():
            raise ClientUsageError("DATA with every recipient refused")
        data = encode_command(line, utf8=utf8)
        if verb is Verb.MAIL:
            self._mail_accepted, self._rcpt_accepted = None, 0
        self.state = allowed[verb]
        self._pending.append(verb)
        return data

    def body(self, chunk: bytes, *, crlf_clean: bool = False) -> bytes:
        """Wire bytes for a piece of the message, after the 354 (see `BodyEncoder`)."""
        if self.state is not State.BODY:
            raise ClientUsageError("body data outside DATA")
        return self._body.encode(chunk, crlf_clean=crlf_clean)

    def end_of_data(self) -> bytes:
        """The rest of the body and the final ".", whose reply ends the transaction."""
        if self.state is not State.BODY:
            raise ClientUsageError("end of data outside DATA")
        self.state = State.READY
        self._pending.append(Verb.END_OF_DATA)
        tail = self._body.finish()
        self._body = BodyEncoder()
        return tail

    def receive(self, data: bytes) -> list[ReplyEvent]:
        events = []
        for reply in self._parser.feed(data):
            if not self._pending:
                raise PeerProtocolError(f"unsolicited reply: {reply}")
            verb = self._pending.popleft()
            if self.state not in (State.CLOSED, State.BROKEN) and not self._in_step(verb, reply):
                self.state = State.BROKEN
                raise OutOfStepError(f"{reply} does not answer {verb.value} in this session's state")
            self._after_reply(verb, reply)
            events.append(ReplyEvent(verb, reply))
        if self.state is State.TLS_HANDSHAKE and self._parser.has_pending_input:
            # Bytes behind the 220 to STARTTLS were sent in clear text: a response injection.
            raise PeerProtocolError("data received behind the STARTTLS reply")
        return events

    def tls_established(self) -> None:
        """After the handshake the session starts over: EHLO again (RFC 3207 §4.2)."""
        if self.state is not State.TLS_HANDSHAKE:
            raise ClientUsageError("no STARTTLS was accepted")
        self.state = State.NEED_HELLO

    def _answered_rcpts_all_refused(self) -> bool:
        """Every RCPT sent so far is answered and none was accepted (no DATA to send then)."""
        return self._rcpt_accepted == 0 and Verb.RCPT not in self._pending and self.state is State.IN_RCPT

    def _in_step(self, verb: Verb, reply: Reply) -> bool:
        if reply.code == 421:  # RFC 5321 §3.8: the server may close at any step
            return True
        if verb in (Verb.RCPT, Verb.DATA) and self._mail_accepted is False:
            # RFC 2920 §3.1: behind a refused MAIL, the pipelined RCPTs and DATA must fail too.
            return not reply.is_positive
        if verb is Verb.DATA and reply.code == 354:
            return bool(self._mail_accepted) and self._rcpt_accepted > 0  # else the body goes nowhere
        if verb is Verb.DATA and reply.code == BAD_SEQUENCE:
            return self._rcpt_accepted == 0  # "no valid recipients" as some servers word it
        if not reply.is_positive:
            return reply.code != BAD_SEQUENCE
        return reply.code in _POSITIVE_REPLIES[verb]

    def _after_reply(self, verb: Verb, reply: Reply) -> None:
        if reply.code == 421 or verb is Verb.QUIT:  # RFC 5321 §3.8: the server is closing
            self.state = State.CLOSED
        elif self.state in (State.CLOSED, State.BROKEN):
            return
        elif verb is Verb.GREETING:
            self.state = State.NEED_HELLO if reply.code == 220 else State.CLOSED
        elif verb in (Verb.EHLO, Verb.HELO) and not reply.is_positive:
            self.state = State.NEED_HELLO
        elif verb is Verb.STARTTLS and reply.code == 220:
            self.state = State.TLS_HANDSHAKE
        elif verb in (Verb.AUTH, Verb.AUTH_RESPONSE) and reply.code == 334:
            self.state = State.AUTH_CHALLENGE
        elif verb is Verb.MAIL:
            self._mail_accepted = reply.is_positive
            if not reply.is_positive and self.state is State.IN_MAIL:
                self.state = State.NEEDS_RESET  # nothing behind it: end the transaction now
        elif verb is Verb.RCPT:
            self._rcpt_accepted += reply.is_positive
        elif verb is Verb.DATA:
            self.state = State.BODY if reply.code == 354 else State.NEEDS_RESET
        elif verb is Verb.END_OF_DATA and not reply.is_positive:
            self.state = State.NEEDS_RESET  # RFC 5321 §4.1.1.4 clears it; RSET makes it certain
        elif verb is Verb.RSET and not reply.is_positive:
            self.state = State.BROKEN  # the server cannot even reset: close


class BodyEncoder:
    """Streams a message body onto the wire: dot-stuffed, every line ending CRLF.

    Lone LF and lone CR become CRLF (RFC 5321 §2.3.8 forbids sending them bare); a line starting
    with "." gets another (RFC 5321 §4.5.2). Work is done with `bytes.replace` over whole chunks;
    only a CR at the very end of a chunk is carried to the next, since an LF may follow it.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._carried_cr = False

    def encode(self, chunk: bytes, *, crlf_clean: bool = False) -> bytes:
        """`crlf_clean`: the caller knows the message holds no bare CR or LF (reception verified
        it), so the three counting passes over every chunk are skipped."""
        if self._carried_cr:
            chunk = b"\r" + chunk
            self._carried_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._carried_cr = True
        if not chunk:
            return b""
        if crlf_clean or chunk.count(b"\r\n") == chunk.count(b"\n") == chunk.count(b"\r"):
            lines = chunk  # already CRLF-clean (as everything mailgate accepted is): no copies
        else:
            lines = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        stuffed = lines.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._at_line_start = stuffed.endswith(b"\r\n")
        return stuffed

    def finish(self) -> bytes:
        """The rest: a pending CR as CRLF, a CRLF if the body did not end with one, then ".CRLF"."""
        tail = b""
        if self._carried_cr:
            tail, self._carried_cr, self._at_line_start = b"\r\n", False, True
        if not self._at_line_start:
            tail += b"\r\n"
        self._at_line_start = True
        return tail + b".\r\n"
