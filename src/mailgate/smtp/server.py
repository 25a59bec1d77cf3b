"""The SMTP server protocol as a sans-IO state machine (modelled on h11).

Owns: command-line framing (CRLF only, RFC 5321 §2.3.8; line limits, §4.5.3.1.4), command
sequencing (RFC 5321 §4.1.4, 503), the EHLO extension list, the DATA and BDAT body modes, the
STARTTLS injection check (RFC 3207 §4, CVE-2011-0411, CVE-2024-34083) and the AUTH line mode
(RFC 4954 §4). Must not: touch sockets, await, or decide policy (relay, credentials, storage):
the caller answers every event that needs a decision. Helpers: `smtp/commands.py` (MAIL/RCPT
arguments), `smtp/data.py` (body scanning), `smtp/events.py`, `smtp/settings.py` (EHLO list).

Use (bytes in, events out; replies in, bytes out)::

    protocol = ServerProtocol(settings)
    protocol.receive_data(data)               # b"" when the peer closed
    while not isinstance(event := protocol.next_event(), NeedData | Closed):
        if needs_reply(event):                # everything but BodyChunk
            write(protocol.send(decide(event)))   # ProtocolError/TooManyErrors: event.reply

Exactly one `send` answers each event that needs a reply, in order, so PIPELINING (RFC 2920)
needs nothing special. Protocol-decided errors arrive as `ProtocolError(reply)`; each one
counts against `error_budget`, after which the next event is `TooManyErrors` (421).

Two tables in code drive the state machine (h11's transition table is the model;
tests/unit/test_event_tables.py checks they cover every event and every stage):
- `SEQUENCE`: per `Stage` of RFC 5321 §4.1.4's command order, the commands that are out of
  sequence there and the 503 each gets; a command not listed is allowed.
- `EFFECTS`: what a reply to each event does (no row: nothing).

    event          reply       effect
    Hello          2xx         greeted, transaction cleared; EHLO lists the extensions
    MailFrom       2xx         transaction open (SMTPUTF8 remembered for RCPT)
    RcptTo         2xx         one more accepted recipient (DATA/BDAT need one)
    DataStart      354         DATA mode until CRLF.CRLF -> MessageEnd
    BdatChunkEnd   not 2xx     transaction failed and cleared (RFC 3030 §2)
    MessageEnd     any         transaction cleared
    Reset          2xx         transaction cleared
    StartTls       220         wait for start_tls_done(): then before-EHLO, TLS active
    AuthStart/Line 334 / 235   AUTH line mode / authenticated; anything else ends AUTH
    Quit, TooManyErrors, FramingLost  any   closed: next_event() says Closed

Replies carry enhanced status codes (RFC 2034 §3) except the greeting and the EHLO/HELO reply.
A positive reply to Hello supplies only the greeting text; the hostname and extensions are added.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from mailgate.core.reply import (
    ALREADY_AUTHENTICATED, AUTH_CANCELLED, BAD_SEQUENCE, BARE_LINE_ENDING, ENCRYPTION_REQUIRED,
    FRAMING_LOST, LINE_TOO_LONG, NEED_HELO, NEED_MAIL, NEED_RCPT, NESTED_MAIL, NOT_IMPLEMENTED, PARAM_SYNTAX,
    PIPELINED_STARTTLS, SYNTAX_ERROR, TOO_MANY_ERRORS, UNKNOWN_AUTH_MECHANISM, Reply,
)
from mailgate.smtp.commands import CommandError, parse_mail, parse_rcpt
from mailgate.smtp.data import BodyInspector, DotBodyScanner
from mailgate.smtp.events import (
    AuthLine, AuthStart, BdatChunkEnd, BodyChunk, Closed, DataStart, Event, FramingLost, Hello, Help,
    MailFrom,
    MessageEnd, NeedData, Noop, ProtocolError, Quit, RcptTo, Reset, ServerUsageError, StartTls,
    TooManyErrors, Verify, needs_reply,
)
from mailgate.smtp.settings import ServerSettings, ehlo_keywords

__all__ = [
    "AUTH_LINE_LIMIT", "EFFECTS", "NO_EFFECT", "SEQUENCE", "TLS_ALREADY_ACTIVE", "Effect", "Mode", "ServerProtocol",
    "ServerSettings", "Stage",
]

AUTH_LINE_LIMIT = 12288  # RFC 4954 §4: AUTH command and responses may be up to 12288 octets
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")  # RFC 3207 §4
# RFC 5321 §4.1.1 commands we know and refuse: 502 rather than 500 (§4.2.4).
_NOT_IMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"})
# Control characters other than HT have no place in a command line (RFC 5321 §4.1.2).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]; chunk-size = 1*DIGIT.
_BDAT = re.compile(r"([0-9]{1,18})(?: +(LAST))? *", re.IGNORECASE)


class Mode(Enum):
    COMMAND = "command"
    AUTH = "auth"  # the next line answers a 334 challenge
    DATA = "data"
    BDAT = "bdat"  # reading the octets of one chunk
    TLS_PENDING = "tls-pending"  # 220 sent to STARTTLS, handshake not done
    CLOSED = "closed"


class Stage(Enum):
    """Where the session stands in the command order of RFC 5321 §4.1.4."""

    NEED_HELLO = "need hello"  # no EHLO/HELO yet, or none since STARTTLS (RFC 3207 §4.2)
    READY = "ready"  # greeted, no transaction
    IN_MAIL = "in mail"  # MAIL accepted, no recipient yet
    IN_RCPT = "in rcpt"  # at least one recipient accepted
    IN_BDAT = "in bdat"  # a BDAT chunk was taken: no DATA in this transaction (RFC 3030 §2)


# Per stage, the commands out of sequence there and their 503 (RFC 5321 §4.1.4, RFC 4954 §4:
# no AUTH during a mail transaction; RFC 3030 §2: no DATA after BDAT). Not listed: allowed.
SEQUENCE: dict[Stage, dict[str, Reply]] = {
    Stage.NEED_HELLO: {"MAIL": NEED_HELO, "RCPT": NEED_HELO, "DATA": NEED_HELO, "BDAT": NEED_HELO, "AUTH": NEED_HELO},
    Stage.READY: {"RCPT": NEED_MAIL, "DATA": NEED_MAIL, "BDAT": NEED_MAIL},
    Stage.IN_MAIL: {"MAIL": NESTED_MAIL, "DATA": NEED_RCPT, "BDAT": NEED_RCPT, "AUTH": BAD_SEQUENCE},
    Stage.IN_RCPT: {"MAIL": NESTED_MAIL, "AUTH": BAD_SEQUENCE},
    Stage.IN_BDAT: {"MAIL": NESTED_MAIL, "DATA": BAD_SEQUENCE, "AUTH": BAD_SEQUENCE},
}


@dataclass
class _Transaction:
    smtputf8: bool
    recipients: int = 0
    inspector: BodyInspector | None = None  # set when the body starts
    bdat_used: bool = False  # RFC 3030 §2: no DATA after BDAT in one transaction


@dataclass
class _Chunk:
    """One BDAT chunk being read. A refused chunk is still read in full: framing is kept."""

    size: int
    last: bool
    remaining: int
    refusal: Reply | None


class ServerProtocol:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.greeted = False
        self.extended = False
        self.authenticated = False
        self.errors = 0
        self.mode = Mode.COMMAND
        self._buffer = bytearray()
        self._eof = False
        self._pending: Event | None = None
        self._transaction: _Transaction | None = None
        self._scanner: DotBodyScanner | None = None
        self._chunk: _Chunk | None = None
        self._message_ended = False  # DATA end seen after a last BodyChunk went out
        self._discarding_line = False  # skipping the rest of an over-long line

    @property
    def buffered(self) -> bytes:
        """Bytes received and not yet consumed by an event."""
        return bytes(self._buffer)

    @property
    def in_transaction(self) -> bool:
        return self._transaction is not None

    @property
    def stage(self) -> Stage:
        transaction = self._transaction
        if not self.greeted:
            return Stage.NEED_HELLO
        if transaction is None:
            return Stage.READY
        if transaction.bdat_used:
            return Stage.IN_BDAT
        return Stage.IN_RCPT if transaction.recipients else Stage.IN_MAIL

    def _out_of_sequence(self, verb: str) -> Reply | None:
        """The 503 for `verb` in the current stage (`SEQUENCE`), or None when it is allowed."""
        return SEQUENCE[self.stage].get(verb)

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self.mode not in (Mode.CLOSED, Mode.TLS_PENDING):
            # After our 220 to STARTTLS only the handshake may come; plaintext is dropped.
            self._buffer += data

    def next_event(self) -> Event | NeedData:
        if self._pending is not None:
            raise ServerUsageError(f"send a reply to {self._pending!r} first")
        event = self._next_event()
        if needs_reply(event):
            self._pending = event
        return event

    def _next_event(self) -> Event | NeedData:
        if self.mode is Mode.CLOSED:
            return Closed()
        if self.errors >= self.settings.error_budget:
            return TooManyErrors(TOO_MANY_ERRORS)
        event = _READERS[self.mode](self)
        if isinstance(event, NeedData) and self._eof:
            return Closed()
        return event

    def send(self, reply: Reply) -> bytes:
        """Encode the caller's reply to the pending event and apply its effect (table above)."""
        event, self._pending = self._pending, None
        if event is None:
            raise ServerUsageError("no event is waiting for a reply")
        effect = EFFECTS.get(type(event))
        if effect is not None and effect.applies(reply.code):
            encoded = effect.apply(self, event, reply)
            if encoded is not None:
                return encoded
        return reply.encode()

    def start_tls_done(self) -> None:
        """The TLS handshake after our 220 completed: RFC 3207 §4.2, forget everything."""
        if self.mode is not Mode.TLS_PENDING:
            raise ServerUsageError("start_tls_done() without a 220 to STARTTLS")
        self._buffer.clear()  # nothing from before the handshake is read as protected
        self.settings = replace(self.settings, tls_active=True, starttls_offered=False)
        self.greeted = self.extended = self.authenticated = False
        self._transaction = None
        self.mode = Mode.COMMAND

    # --- the effects of replies (EFFECTS) -----------------------------------------------------

    def _greeted(self, event: Hello, reply: Reply) -> bytes:
        self.greeted, self.extended, self._transaction = True, event.extended, None
        return self._hello_reply(reply, event.extended)

    def _open_transaction(self, event: MailFrom, reply: Reply) -> None:
        self._transaction = _Transaction(smtputf8=event.smtputf8)

    def _count_recipient(self, event: RcptTo, reply: Reply) -> None:
        if self._transaction is not None:
            self._transaction.recipients += 1

    def _clear_transaction(self, event: Event, reply: Reply) -> None:
        self._transaction = None

    def _await_handshake(self, event: StartTls, reply: Reply) -> None:
        self.mode = Mode.TLS_PENDING

    def _auth_answered(self, event: AuthStart | AuthLine, reply: Reply) -> None:
        self.authenticated = reply.code == 235
        self.mode = Mode.AUTH if reply.code == 334 else Mode.COMMAND

    def _close(self, event: Event, reply: Reply) -> None:
        self.mode = Mode.CLOSED
        self._buffer.clear()

    # --- replies the protocol builds ---------------------------------------------------------

    def _hello_reply(self, reply: Reply, extended: bool) -> bytes:
        first = f"{self.settings.hostname} {reply.text}".rstrip()
        lines = [first, *ehlo_keywords(self.settings)] if extended else [first]
        # RFC 2034 §3: no enhanced status code on the EHLO/HELO reply.
        return Reply(reply.code, "", "\n".join(lines)).encode(enhanced=False)

    def _error(self, reply: Reply, *, counts: bool = True) -> ProtocolError:
        if counts:
            self.errors += 1
        return ProtocolError(reply)

    # --- command lines -----------------------------------------------------------------------

    def _line_limit(self, start: bytes) -> int:
        if self.mode is Mode.AUTH or start[:5].upper() == b"AUTH ":
            return max(AUTH_LINE_LIMIT, self.settings.max_command_line)
        return self.settings.max_command_line

    def _line_event(self) -> Event | NeedData:
        if self._discarding_line:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                self._buffer.clear()
                return NeedData()
            del self._buffer[: newline + 1]
            self._discarding_line = False
        newline = self._buffer.find(b"\n")
        limit = self._line_limit(bytes(self._buffer[:5]))
        if newline < 0 and len(self._buffer) <= limit:
            return NeedData()
        if newline < 0 or newline + 1 > limit:
            # RFC 5321 §4.5.3.1.4: the over-long line is dropped whole, never executed.
            self._discarding_line = True
            return self._line_failed(LINE_TOO_LONG)
        raw = bytes(self._buffer[: newline + 1])
        del self._buffer[: newline + 1]
        if not raw.endswith(b"\r\n") or b"\r" in raw[:-2]:
            return self._line_failed(BARE_LINE_ENDING)  # RFC 5321 §2.3.8: CRLF only
        try:
            line = raw[:-2].decode("utf-8")
        except UnicodeDecodeError:
            return self._line_failed(SYNTAX_ERROR)
        if _CONTROL.search(line):
            return self._line_failed(SYNTAX_ERROR)
        if self.mode is Mode.AUTH:
            return self._auth_line(line)
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        handler = _HANDLERS.get(verb)
        if handler is not None:
            return handler(self, argument.strip(" "), verb)
        return self._error(NOT_IMPLEMENTED if verb in _NOT_IMPLEMENTED else SYNTAX_ERROR)

    def _line_failed(self, reply: Reply) -> ProtocolError:
        self.mode = Mode.COMMAND if self.mode is Mode.AUTH else self.mode  # a broken line ends AUTH
        return self._error(reply)

    def _auth_line(self, line: str) -> Event:
        if line == "*":
            self.mode = Mode.COMMAND
            return self._error(AUTH_CANCELLED, counts=False)  # RFC 4954 §4: 501 on "*"
        return AuthLine(line)

    def _hello(self, argument: str, verb: str) -> Event:
        if not argument or " " in argument:
            return self._error(PARAM_SYNTAX)  # RFC 5321 §4.1.1.1: exactly one domain
        return Hello(argument, extended=verb == "EHLO")

    def _mail(self, argument: str, verb: str) -> Event:
        refusal = self._out_of_sequence(verb)
        if refusal is not None:
            return self._error(refusal)
        if argument[:5].upper() != "FROM:":
            return self._error(PARAM_SYNTAX)
        settings = self.settings
        try:
            return parse_mail(
                argument[5:], esmtp=self.extended, max_message_size=settings.max_message_size,
                eight_bit_mime=settings.eight_bit_mime, smtputf8=settings.smtputf8,
                dsn=settings.dsn, auth=self.settings.auth_offered,
            )
        except CommandError as error:
            return self._error(error.reply, counts=error.counts_as_error)

    def _rcpt(self, argument: str, verb: str) -> Event:
        refusal = self._out_of_sequence(verb)
        if refusal is not None:
            return self._error(refusal)
        assert self._transaction is not None
        if argument[:3].upper() != "TO:":
            return self._error(PARAM_SYNTAX)
        try:
            return RcptTo(parse_rcpt(
                argument[3:], esmtp=self.extended, smtputf8=self._transaction.smtputf8,
                dsn=self.settings.dsn, postmaster_domain=self.settings.postmaster_domain or self.settings.hostname,
            ))
        except CommandError as error:
            return self._error(error.reply, counts=error.counts_as_error)

    def _data(self, argument: str, verb: str) -> Event:
        if argument:
            return self._error(PARAM_SYNTAX)
        refusal = self._out_of_sequence(verb)
        return self._error(refusal) if refusal else DataStart()

    def _start_data(self, event: DataStart, reply: Reply) -> None:
        assert self._transaction is not None
        self._transaction.inspector = self._new_inspector()
        self._scanner = DotBodyScanner()
        self.mode = Mode.DATA

    def _new_inspector(self) -> BodyInspector:
        return BodyInspector(
            self.settings.max_message_size, self.settings.max_text_line,
            normalize=self.settings.bare_line_endings == "normalize",
        )

    def _data_event(self) -> Event | NeedData:
        transaction, scanner = self._transaction, self._scanner
        assert transaction is not None and transaction.inspector is not None and scanner
        if self._message_ended:
            self._message_ended = False
            return self._message_end(transaction.inspector)
        body, consumed, done = scanner.scan(self._buffer)
        del self._buffer[:consumed]
        passed = transaction.inspector.inspect(body)
        if done:
            self._message_ended = passed is not None
            if passed is None:
                return self._message_end(transaction.inspector)
        return BodyChunk(passed) if passed is not None else NeedData()

    def _message_end(self, inspector: BodyInspector) -> MessageEnd:
        self.mode = Mode.COMMAND
        self._scanner = self._chunk = None
        return MessageEnd(
            inspector.size, inspector.oversize, inspector.bare_line_ending, inspector.long_line
        )

    def _bdat(self, argument: str, verb: str) -> Event | NeedData:
        match = _BDAT.fullmatch(argument)
        if match is None:
            # RFC 3030 §2: without the size the chunk's octets would be read as commands.
            self._buffer.clear()
            return FramingLost(FRAMING_LOST)
        size = int(match[1])
        refusal = self._out_of_sequence(verb) if self.settings.chunking else NOT_IMPLEMENTED
        if refusal is None and self._transaction is not None:
            self._transaction.bdat_used = True
            if self._transaction.inspector is None:
                self._transaction.inspector = self._new_inspector()
        self._chunk = _Chunk(size, match[2] is not None, size, refusal)
        self.mode = Mode.BDAT
        return self._bdat_event()

    def _bdat_event(self) -> Event | NeedData:
        chunk = self._chunk
        assert chunk is not None
        while chunk.remaining:
            size = min(chunk.remaining, len(self._buffer))
            if not size:
                return NeedData()
            with memoryview(self._buffer) as view:
                taken = bytes(view[:size])  # one copy (a bytearray slice would be a second)
            del self._buffer[:size]
            chunk.remaining -= len(taken)
            if chunk.refusal is None and self._transaction and self._transaction.inspector:
                passed = self._transaction.inspector.inspect(taken)
                if passed is not None:
                    return BodyChunk(passed)
        self.mode = Mode.COMMAND
        self._chunk = None
        if chunk.refusal is not None:
            return self._error(chunk.refusal)
        assert self._transaction is not None and self._transaction.inspector is not None
        if chunk.last:
            return self._message_end(self._transaction.inspector)
        return BdatChunkEnd(chunk.size, self._transaction.inspector.oversize)

    def _starttls(self, argument: str, verb: str) -> Event:
        if argument:
            return self._error(PARAM_SYNTAX)
        if self.settings.tls_active:
            return self._error(TLS_ALREADY_ACTIVE)
        if not self.settings.starttls_offered:
            return self._error(NOT_IMPLEMENTED)
        if self._buffer:
            # RFC 3207 §4, CVE-2011-0411: bytes behind STARTTLS would be read as if protected.
            self._buffer.clear()
            return self._error(PIPELINED_STARTTLS)
        return StartTls()

    def _auth(self, argument: str, verb: str) -> Event:
        if not self.settings.tls_active:
            return self._error(ENCRYPTION_REQUIRED)  # RFC 4954 §4, SPEC R4: 538 5.7.11
        if not self.settings.auth_mechanisms:
            return self._error(NOT_IMPLEMENTED)
        if self.authenticated:  # only after EHLO, so NEED_HELO still comes first
            return self._error(ALREADY_AUTHENTICATED)  # RFC 4954 §4: 503
        refusal = self._out_of_sequence(verb)
        if refusal is not None:
            return self._error(refusal)
        parts = argument.split(" ")
        if not parts[0] or len(parts) > 2:
            return self._error(PARAM_SYNTAX)
        mechanism = parts[0].upper()
        if mechanism not in self.settings.auth_mechanisms:
            return self._error(UNKNOWN_AUTH_MECHANISM)  # RFC 4954 §4: 504
        return AuthStart(mechanism, parts[1] if len(parts) == 2 else None)

    def _simple(self, argument: str, verb: str) -> Event:
        if verb == "NOOP":
            return Noop()  # RFC 5321 §4.1.1.9: any argument is ignored
        if verb == "HELP":
            return Help(argument)
        if verb == "VRFY":
            return Verify(argument) if argument else self._error(PARAM_SYNTAX)
        if argument:
            return self._error(PARAM_SYNTAX)  # RSET, QUIT take no argument (§4.1.1.5, §4.1.1.10)
        return Reset() if verb == "RSET" else Quit()


_HANDLERS = {
    "EHLO": ServerProtocol._hello,
    "HELO": ServerProtocol._hello,
    "MAIL": ServerProtocol._mail,
    "RCPT": ServerProtocol._rcpt,
    "DATA": ServerProtocol._data,
    "BDAT": ServerProtocol._bdat,
    "RSET": ServerProtocol._simple,
    "NOOP": ServerProtocol._simple,
    "QUIT": ServerProtocol._simple,
    "VRFY": ServerProtocol._simple,
    "HELP": ServerProtocol._simple,
    "STARTTLS": ServerProtocol._starttls,
    "AUTH": ServerProtocol._auth,
}


def _awaiting_handshake(protocol: ServerProtocol) -> NeedData:
    return NeedData()  # after our 220 to STARTTLS only the handshake may come


# How the next event is read in each mode (CLOSED is answered before: always Closed).
_READERS: dict[Mode, Callable[[ServerProtocol], Event | NeedData]] = {
    Mode.COMMAND: ServerProtocol._line_event,
    Mode.AUTH: ServerProtocol._line_event,
    Mode.DATA: ServerProtocol._data_event,
    Mode.BDAT: ServerProtocol._bdat_event,
    Mode.TLS_PENDING: _awaiting_handshake,
}


@dataclass(frozen=True)
class Effect:
    """What a reply to one event type does, when its code fits (the table in the docstring)."""

    applies: Callable[[int], bool]
    apply: Callable[[ServerProtocol, Any, Reply], bytes | None]  # bytes: the protocol built the reply


def _positive(code: int) -> bool:
    return 200 <= code < 300


def _any(code: int) -> bool:
    return True


# Every event that needs a reply and changes something; the rest (Noop, Verify, Help,
# ProtocolError) change nothing.
EFFECTS: dict[type, Effect] = {
    Hello: Effect(_positive, ServerProtocol._greeted),
    MailFrom: Effect(_positive, ServerProtocol._open_transaction),
    RcptTo: Effect(_positive, ServerProtocol._count_recipient),
    DataStart: Effect(lambda code: code == 354, ServerProtocol._start_data),
    BdatChunkEnd: Effect(lambda code: not _positive(code), ServerProtocol._clear_transaction),  # RFC 3030 §2
    MessageEnd: Effect(_any, ServerProtocol._clear_transaction),
    Reset: Effect(_positive, ServerProtocol._clear_transaction),
    StartTls: Effect(lambda code: code == 220, ServerProtocol._await_handshake),  # RFC 3207 §4
    AuthStart: Effect(_any, ServerProtocol._auth_answered),  # RFC 4954 §4: 334 / 235
    AuthLine: Effect(_any, ServerProtocol._auth_answered),
    Quit: Effect(_any, ServerProtocol._close),
    TooManyErrors: Effect(_any, ServerProtocol._close),
    FramingLost: Effect(_any, ServerProtocol._close),
}
# The events whose reply changes nothing (tests/unit/test_event_tables.py: with EFFECTS, all).
NO_EFFECT = frozenset({Noop, Verify, Help, ProtocolError})
