"""Coverage-guided fuzzing of the sans-IO SMTP server (smtp/server.py, smtp/commands.py,
smtp/data.py, smtp/sasl.py) with an arbitrary client byte stream.

Input layout: byte 0 picks the listener settings (TLS, STARTTLS, CHUNKING, SMTPUTF8, DSN,
8BITMIME, small line and size limits), bytes 1-4 seed the bare line ending mode and the caller's
decisions (accept or refuse
each event, how the stream is cut into receive_data calls); the rest is what the client sends.

Invariants checked (an AssertionError is a finding):
- every reply on the wire is well formed: 3-digit code 2xx-5xx, one code per reply, "-" on every
  line but the last, each line at most 512 octets with its CRLF (RFC 5321 §4.2.1, §4.5.3.1.5);
  replies the protocol decided itself (ProtocolError, TooManyErrors, FramingLost) are 4xx/5xx;
- the event order follows the state table of smtp/server.py (MAIL only after a greeting and
  outside a transaction, RCPT inside one, DATA/BDAT only with an accepted recipient, AUTH only
  over TLS and never twice, an AuthLine only after a 334, STARTTLS only when offered);
- DATA ends exactly at the first CRLF.CRLF after the 354 (so one DATA never yields a second
  message), the body handed on is the line-by-line unstuffing of exactly those octets (with
  bare CR and LF made CRLF in "normalize" mode), and size / oversize / bare line ending / long
  line agree with independent checks;
- a BDAT chunk consumes exactly the octets its command line declares;
- after QUIT, a 421 or lost framing only Closed follows; STARTTLS leaves nothing buffered.
Only ServerUsageError would be our harness's fault; nothing else may be raised.
"""

from __future__ import annotations

import random
import re
import sys

import atheris

with atheris.instrument_imports(include=["mailgate"]):
    from mailgate.core.reply import (
        AUTH_FAILED, AUTH_OK, CANNOT_VRFY, CLOSING, HELP, NOOP_OK, READY_TLS, RECIPIENT_OK, RESET_OK,
        SENDER_OK, START_DATA, Reply, bdat_chunk_ok, queued,
    )
    from mailgate.smtp import events as ev
    from mailgate.smtp.sasl import Challenge, Credentials, SaslExchange
    from mailgate.smtp.server import Mode, ServerProtocol, ServerSettings

REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n")
MAX_REPLY_LINE = 512  # RFC 5321 §4.5.3.1.5, including CRLF
BDAT_LINE = re.compile(rb"BDAT +([0-9]{1,18})(?: +LAST)? *\r\n", re.IGNORECASE)
BARE_LINE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")
REFUSALS = {
    ev.Hello: Reply(550, "5.7.1", "Go away"),
    ev.MailFrom: Reply(550, "5.7.1", "Sender refused"),
    ev.RcptTo: Reply(550, "5.1.1", "User unknown"),
    ev.DataStart: Reply(554, "5.5.1", "No valid recipients"),
    ev.MessageEnd: Reply(552, "5.3.4", "Too big"),
    ev.BdatChunkEnd: Reply(552, "5.3.4", "Too big"),
    ev.Reset: RESET_OK,
    ev.Noop: NOOP_OK,
    ev.Verify: CANNOT_VRFY,
    ev.Help: HELP,
    ev.StartTls: Reply(454, "4.7.0", "TLS not available"),
    ev.Quit: CLOSING,
}
USERS = {"alice": "secret"}


class Finding(AssertionError):
    """An invariant of the server protocol does not hold."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


def settings_from(flags: int, rng: random.Random) -> ServerSettings:
    return ServerSettings(
        bare_line_endings=rng.choice(("reject", "normalize", "no")),
        hostname="mx.fuzz.test",
        max_message_size=(0, 64, 1000, 10_000_000)[flags & 3],
        starttls_offered=bool(flags & 4),
        tls_active=bool(flags & 8),
        chunking=not flags & 16,
        smtputf8=not flags & 32,
        dsn=not flags & 64,
        eight_bit_mime=not flags & 64,
        max_command_line=512 if flags & 128 else 40,
        max_text_line=1000 if flags & 128 else 20,
        error_budget=10 if flags & 128 else 3,
    )


def unstuff(raw: bytes) -> bytes:
    """RFC 5321 §4.5.2, the obvious way: each CRLF-ended line loses one leading dot."""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in raw.split(b"\r\n"))


def long_line(body: bytes, limit: int) -> bool:
    """A line of `limit` or more octets before its LF (smtp/data.py's measure)."""
    return any(len(segment) >= limit for segment in body.split(b"\n"))


def check_reply(wire: bytes, decided: bool) -> int:
    """The reply bytes are one well-formed SMTP reply; returns its code."""
    lines = wire.split(b"\r\n")[:-1]
    check(wire.endswith(b"\r\n") and lines, f"reply not CRLF-terminated: {wire!r}")
    codes = set()
    for index, line in enumerate(lines):
        match = REPLY_LINE.fullmatch(line + b"\r\n")
        check(match, f"malformed reply line {line!r}")
        check(len(line) + 2 <= MAX_REPLY_LINE, f"reply line over {MAX_REPLY_LINE} octets")
        last = index == len(lines) - 1
        check(match[2] == (b" " if last else b"-"), f"bad continuation mark in {wire!r}")
        codes.add(match[1])
    check(len(codes) == 1, f"several codes in one reply: {wire!r}")
    code = int(codes.pop())
    if decided:
        check(code >= 400, f"a protocol-decided error that is not 4xx/5xx: {wire!r}")
    return code


class Session:
    """Feeds the stream, answers every event like a session would, and mirrors the state table."""

    def __init__(self, settings: ServerSettings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self.protocol = ServerProtocol(settings)
        self.stream = bytearray()  # every octet the protocol kept (not dropped)
        self.tls = settings.tls_active
        self.greeted = False
        self.authenticated = False
        self.in_auth = False
        self.transaction = False
        self.accepted_rcpts = 0
        self.bdat_used = False
        self.smtputf8 = self.pending_smtputf8 = False  # the transaction's MAIL said SMTPUTF8
        self.data_start: int | None = None  # stream offset where the DATA body began
        self.body = bytearray()  # BodyChunks of this transaction
        self.bdat_body = bytearray()  # the BDAT chunks accepted in this transaction
        self.region_start = 0  # stream offset after the last event that needed a reply
        self.closed = False
        self.sasl: SaslExchange | None = None

    @property
    def position(self) -> int:
        return len(self.stream) - len(self.protocol.buffered)

    def feed(self, data: bytes) -> None:
        if data and self.protocol.mode not in (Mode.CLOSED, Mode.TLS_PENDING):
            self.stream += data
        self.protocol.receive_data(data)
        for _ in range(100_000):
            event = self.protocol.next_event()
            if isinstance(event, ev.NeedData):
                return
            if isinstance(event, ev.Closed):
                self.closed = True
                return
            check(not self.closed, f"{event!r} after the session closed")
            if isinstance(event, ev.BodyChunk):
                check(event.data, "empty BodyChunk")
                check(self.data_start is not None or self.bdat_line_read(), "body octets outside DATA and BDAT")
                self.body += event.data
                continue
            self.answer(event)
        raise Finding("the protocol did not settle")

    def bdat_line_read(self) -> bool:
        """Whether what was consumed since the last reply starts with a BDAT command line."""
        region = bytes(self.stream[self.region_start:self.position])
        return bool(BDAT_LINE.match(region) or BDAT_LINE.match(region, region.find(b"\n") + 1))

    def answer(self, event: ev.Event) -> None:
        region = bytes(self.stream[self.region_start:self.position])
        self.region_start = self.position
        decided = isinstance(event, (ev.ProtocolError, ev.TooManyErrors, ev.FramingLost))
        self.check_sequence(event, region)
        reply = event.reply if decided else self.decide(event)
        wire = self.protocol.send(reply)
        code = check_reply(wire, decided)
        self.apply(event, code)

    def check_sequence(self, event: ev.Event, region: bytes) -> None:
        kind = type(event).__name__
        if isinstance(event, ev.MailFrom):
            check(self.greeted and not self.transaction, f"{kind} outside the state table")
            check(self.settings.smtputf8 or not event.smtputf8, "SMTPUTF8 accepted while not offered")
            check(event.smtputf8 or event.sender is None or str(event.sender).isascii(),
                  "non-ASCII MAIL without SMTPUTF8 (RFC 6531 §3.4)")
            self.pending_smtputf8 = event.smtputf8
        elif isinstance(event, ev.RcptTo):
            check(self.transaction, f"{kind} without a transaction")
            check(self.smtputf8 or str(event.recipient.address).isascii(), "non-ASCII RCPT without SMTPUTF8")
        elif isinstance(event, ev.DataStart):
            check(self.transaction and self.accepted_rcpts and not self.bdat_used, f"{kind} out of sequence")
        elif isinstance(event, (ev.BdatChunkEnd, ev.MessageEnd)) and self.data_start is None:
            check(self.settings.chunking, "BDAT accepted while CHUNKING is off")
            check(self.transaction and self.accepted_rcpts, f"BDAT {kind} out of sequence")
            self.check_bdat(event, region)
        elif isinstance(event, ev.MessageEnd):
            self.check_data_end(event)
        elif isinstance(event, ev.AuthStart):
            check(self.tls and self.greeted and not self.authenticated and not self.transaction,
                  "AUTH outside the state table")
        elif isinstance(event, ev.AuthLine):
            check(self.in_auth, "AuthLine without a 334")
            check(event.text != "*", "the AUTH cancel line reached the caller")
        elif isinstance(event, ev.StartTls):
            check(self.settings.starttls_offered and not self.tls, "STARTTLS when not offered")
            check(not self.protocol.buffered, "STARTTLS with octets pipelined behind it")
        if not isinstance(event, ev.AuthLine):
            check(not self.in_auth or isinstance(event, (ev.ProtocolError, ev.TooManyErrors)),
                  f"{kind} inside an AUTH exchange")

    def check_bdat(self, event: ev.BdatChunkEnd | ev.MessageEnd, region: bytes) -> None:
        """`region` is the BDAT line and its chunk, after at most the rest of an over-long line
        being discarded (RFC 5321 §4.5.3.1.4)."""
        first = region.find(b"\n") + 1
        match = BDAT_LINE.match(region)
        if match is None:  # the first line was the discarded rest of an over-long line
            match = BDAT_LINE.match(region, first)
        check(match, f"BDAT chunk event after {region[:60]!r}")
        size = int(match[1])
        chunk = region[match.end():]
        check(len(chunk) == size, f"BDAT {size} consumed {len(chunk)} octets")
        self.bdat_body += chunk
        if isinstance(event, ev.BdatChunkEnd):
            check(event.size == size, f"BdatChunkEnd size {event.size} for BDAT {size}")
            return
        self.check_message(event, bytes(self.bdat_body))

    def check_data_end(self, event: ev.MessageEnd) -> None:
        assert self.data_start is not None
        view = b"\r\n" + bytes(self.stream[self.data_start:])
        end = view.find(b"\r\n.\r\n")
        check(end >= 0, "DATA ended without CRLF.CRLF")
        raw = bytes(self.stream[self.data_start:self.data_start + end])
        check(self.position == self.data_start + end + 3,
              f"DATA ended at {self.position - self.data_start}, the first CRLF.CRLF ends at {end + 3}")
        self.check_message(event, unstuff(raw))

    def check_message(self, event: ev.MessageEnd, body: bytes) -> None:
        """The facts MessageEnd reports and the BodyChunks handed on, against `body`."""
        check(event.size == len(body), f"MessageEnd size {event.size}, body is {len(body)}")
        limit = self.settings.max_message_size
        check(event.oversize == bool(limit and len(body) > limit), "oversize flag wrong")
        check(event.bare_line_ending == bool(BARE_LINE_ENDING.search(body)), "bare line ending flag wrong")
        if self.settings.bare_line_endings == "normalize":  # every bare CR or LF passed on as CRLF
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if not event.oversize:
            check(bytes(self.body) == body, "the body handed on is not the (unstuffed) octets received")
        else:
            check(body.startswith(bytes(self.body)), "oversize body chunks are not a prefix")
        check(event.long_line == long_line(body, self.settings.max_text_line), "long line flag wrong")

    def decide(self, event: ev.Event) -> Reply:
        if isinstance(event, ev.AuthStart):
            self.sasl = SaslExchange(event.mechanism, event.initial_response)
            return self.sasl_reply(self.sasl.challenge())
        if isinstance(event, ev.AuthLine):
            assert self.sasl is not None
            return self.sasl_reply(self.sasl.feed(event.text))
        if self.rng.random() < 0.15:
            return REFUSALS[type(event)]
        if isinstance(event, ev.MessageEnd):
            return queued("Q1")
        if isinstance(event, ev.BdatChunkEnd):
            return bdat_chunk_ok(event.size)
        return {
            ev.Hello: Reply(250, "", "Hello"), ev.MailFrom: SENDER_OK, ev.RcptTo: RECIPIENT_OK,
            ev.DataStart: START_DATA, ev.Reset: RESET_OK, ev.Noop: NOOP_OK, ev.Quit: CLOSING,
            ev.Verify: CANNOT_VRFY, ev.Help: HELP, ev.StartTls: READY_TLS,
        }[type(event)]

    def sasl_reply(self, step: object) -> Reply:
        if isinstance(step, Challenge):
            return step.reply
        if isinstance(step, Credentials):
            return AUTH_OK if USERS.get(step.user) == step.password and not step.authzid else AUTH_FAILED
        return step.reply  # type: ignore[attr-defined]

    def end_transaction(self) -> None:
        self.transaction, self.accepted_rcpts, self.bdat_used, self.data_start = False, 0, False, None
        self.body.clear()
        self.bdat_body.clear()

    def apply(self, event: ev.Event, code: int) -> None:
        """Mirror the state table of smtp/server.py for the reply just sent."""
        positive = 200 <= code < 300
        if self.in_auth and not isinstance(event, ev.AuthLine):
            self.in_auth = False  # a broken line or "*" ends the exchange
        if isinstance(event, ev.Hello) and positive:
            self.end_transaction()
            self.greeted = True
        elif isinstance(event, ev.MailFrom) and positive:
            self.end_transaction()
            self.transaction, self.smtputf8 = True, self.pending_smtputf8
        elif isinstance(event, ev.RcptTo) and positive:
            self.accepted_rcpts += 1
        elif isinstance(event, ev.DataStart) and code == 354:
            self.data_start = self.position
        elif isinstance(event, ev.MessageEnd) or (isinstance(event, ev.BdatChunkEnd) and not positive):
            self.end_transaction()
        elif isinstance(event, ev.BdatChunkEnd):
            self.bdat_used = True
        elif isinstance(event, ev.Reset) and positive:
            self.end_transaction()
        elif isinstance(event, (ev.AuthStart, ev.AuthLine)):
            self.authenticated = code == 235
            self.in_auth = code == 334
        elif isinstance(event, ev.StartTls) and code == 220:
            self.protocol.start_tls_done()  # the handshake succeeded
            check(not self.protocol.buffered, "octets survived the TLS handshake")
            self.end_transaction()
            self.tls, self.greeted, self.authenticated = True, False, False
            self.region_start = self.position
        if isinstance(event, (ev.Quit, ev.TooManyErrors, ev.FramingLost)):
            check(self.protocol.mode is Mode.CLOSED, f"{type(event).__name__} did not close")


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if len(data) < 5:
        return
    rng = random.Random(int.from_bytes(data[1:5], "big"))
    settings = settings_from(data[0], rng)
    stream = data[5:]
    session = Session(settings, rng)
    offset = 0
    while offset < len(stream) and not session.closed:
        # A line at a time as a client without PIPELINING sends, or any cut (RFC 2920).
        line = stream.find(b"\n", offset) + 1 - offset
        size = rng.choice((line, line, line, 1, 2, 3, 7, 64, 512, len(stream))) or len(stream)
        session.feed(stream[offset:offset + size])
        offset += size
    if not session.closed:
        session.feed(b"")  # the client closes
        check(session.closed, "no Closed after the end of the stream")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
