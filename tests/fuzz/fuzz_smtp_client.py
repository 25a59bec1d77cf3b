"""Coverage-guided fuzzing of the sans-IO SMTP client (smtp/client.py) with arbitrary server
replies, and of its body encoder and line wrapper (smtp/line_wrap.py) with arbitrary bodies.

Input layout: bytes 0-3 seed the driver's choices (which allowed command to send next, how the
server's bytes are cut into receive() calls); byte 4 splits the rest into the server's byte
stream and a message body.

Invariants checked (an AssertionError is a finding):
- the client sends only what its state table allows, and a body only after its MAIL and at
  least one RCPT of this transaction got 2xx and DATA got 354 (mirrored from the replies);
- ReplyEvents come back in the order the commands were sent, one per command;
- reply codes are 2xx-5xx; an enhanced code is x.y.z with the reply's class digit (RFC 2034 §4);
- a parsed reply encodes and parses back to itself;
- `ending` is REUSE only when the state is READY and nothing is outstanding;
- the body encoder's output holds CRLF.CRLF only at its very end, no bare CR or LF, and unstuffs
  to the body with its line endings made CRLF (RFC 5321 §4.5.2, §2.3.8), however it is cut;
- the line wrapper gives the same output however the message is cut, no line over its limit,
  and adds nothing but line breaks and spaces.
The only exceptions the API promises are PeerProtocolError (the server broke the protocol;
the connection is then closed) and ClientUsageError for a send the protocol refuses.
"""

from __future__ import annotations

import random
import re
import sys

import atheris

with atheris.instrument_imports(include=["mailgate"]):
    from mailgate.smtp.line_wrap import LineWrapper, wrap_message
    from mailgate.smtp.sasl import login_response
    from mailgate.smtp.client import (
        BodyEncoder, ClientProtocol, ClientUsageError, Ending, PeerProtocolError, ReplyParser, State,
        Verb, parse_ehlo, _SEND_TABLE,
    )

ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
LINES = {
    Verb.EHLO: "EHLO client.fuzz.test", Verb.HELO: "HELO client.fuzz.test", Verb.STARTTLS: "STARTTLS",
    Verb.AUTH: "AUTH PLAIN AGFsaWNlAHNlY3JldA==", Verb.AUTH_RESPONSE: "c2VjcmV0", Verb.MAIL: "MAIL FROM:<a@b.test>",
    Verb.RCPT: "RCPT TO:<c@d.test>", Verb.DATA: "DATA", Verb.RSET: "RSET", Verb.NOOP: "NOOP", Verb.QUIT: "QUIT",
}

# The command that moves a transaction on, preferred so that runs get past the greeting.
FORWARD = {State.NEED_HELLO: Verb.EHLO, State.READY: Verb.MAIL, State.IN_MAIL: Verb.RCPT, State.IN_RCPT: Verb.DATA,
           State.NEEDS_RESET: Verb.RSET, State.AUTH_CHALLENGE: Verb.AUTH_RESPONSE}


class Finding(AssertionError):
    """An invariant of the client protocol does not hold."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


def expected_wire(body: bytes) -> bytes:
    """What RFC 5321 says goes on the wire for `body`: CRLF line endings, dot-stuffed, ".CRLF"."""
    lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if lines and not lines.endswith(b"\r\n"):
        lines += b"\r\n"
    stuffed = b"".join(b"." + line if line.startswith(b".") else line for line in lines.splitlines(keepends=True))
    return stuffed + b".\r\n"


def check_body_encoder(body: bytes, rng: random.Random) -> None:
    encoder, wire, offset = BodyEncoder(), bytearray(), 0
    while offset < len(body):
        size = rng.choice((1, 2, 5, 64, len(body)))
        wire += encoder.encode(body[offset:offset + size])
        offset += size
    wire += encoder.finish()
    check(bytes(wire) == expected_wire(body), f"body encoded wrongly: {body[:80]!r} -> {bytes(wire)[:120]!r}")
    check(wire.find(b"\r\n.\r\n") in (-1, len(wire) - 5), "CRLF.CRLF inside the encoded body")
    check(not re.search(rb"\r(?!\n)|(?<!\r)\n", wire), "bare CR or LF in the encoded body")
    # A body already CRLF-clean, sent with crlf_clean=True, goes out the same.
    clean = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    encoder, wire, offset = BodyEncoder(), bytearray(), 0
    while offset < len(clean):
        size = rng.choice((1, 2, 5, 64, len(clean)))
        wire += encoder.encode(clean[offset:offset + size], crlf_clean=True)
        offset += size
    wire += encoder.finish()
    check(bytes(wire) == expected_wire(body), f"clean body encoded wrongly: {clean[:80]!r}")


def check_line_wrapper(message: bytes, limit: int, rng: random.Random) -> None:
    """smtp/line_wrap.py: however the message is cut, the same output; no line over the limit;
    only line breaks and spaces added (RFC 5322 §2.1.1, §2.2.3)."""
    wrapper, out, offset = LineWrapper(limit), bytearray(), 0
    while offset < len(message):
        size = rng.choice((1, 3, limit, len(message)))
        out += wrapper.feed(message[offset:offset + size])
        offset += size
    out += wrapper.finish()
    check(bytes(out) == wrap_message(message, limit), "line wrapping depends on where the message is cut")
    for line in out.split(b"\n"):
        check(len(line.removesuffix(b"\r")) <= limit, f"a line of {len(line)} octets, limit {limit}")
    added = bytes(out).translate(None, b"\r\n \t")
    check(added == message.translate(None, b"\r\n \t"), "wrapping changed more than line breaks and spaces")


def check_reply(reply) -> None:  # noqa: ANN001
    check(200 <= reply.code <= 599, f"reply code {reply.code}")
    if reply.enhanced:
        check(ENHANCED.fullmatch(reply.enhanced), f"enhanced code {reply.enhanced!r}")
        check(int(reply.enhanced[0]) == reply.code // 100, f"class of {reply.enhanced} against {reply.code}")
    again = ReplyParser().feed(reply.encode())
    check(again == [reply], f"reply does not round-trip: {reply!r} -> {again!r}")


class Driver:
    """Sends commands the state table allows and mirrors what the replies accepted."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.client = ClientProtocol()
        self.sent: list[Verb] = [Verb.GREETING]
        self.mail_ok: bool | None = None
        self.rcpt_ok = 0
        self.data_ok = False
        self.closed = False

    def step(self) -> None:
        """Send something allowed in the current state (or nothing)."""
        state = self.client.state
        if state is State.BODY:
            check(self.mail_ok and self.rcpt_ok and self.data_ok, "BODY state without MAIL, RCPT and DATA accepted")
            self.client.body(b"Subject: x\r\n\r\n.hi\r\n")
            self.client.end_of_data()
            self.sent.append(Verb.END_OF_DATA)
            self.data_ok = False
            return
        if state is State.TLS_HANDSHAKE:
            self.client.tls_established()
            return
        allowed = sorted(_SEND_TABLE[state], key=lambda verb: verb.value)
        if not allowed or self.rng.random() < 0.2:
            return
        forward = FORWARD.get(state)
        verb = forward if forward in allowed and self.rng.random() < 0.6 else self.rng.choice(allowed)
        try:
            self.client.send(verb, LINES[verb])
        except ClientUsageError:
            return  # a send the protocol refuses in this state (documented)
        if verb is Verb.MAIL:
            self.mail_ok, self.rcpt_ok, self.data_ok = None, 0, False
        self.sent.append(verb)

    def receive(self, data: bytes) -> None:
        before = self.client.outstanding
        try:
            events = self.client.receive(data)
        except PeerProtocolError:
            self.closed = True  # the driver closes the connection
            return
        check(len(events) <= before, "more replies than commands outstanding")
        for event in events:
            expected = self.sent.pop(0)
            check(event.verb is expected, f"reply matched to {event.verb}, expected {expected}")
            check_reply(event.reply)
            positive = 200 <= event.reply.code < 400
            if event.verb is Verb.MAIL:
                self.mail_ok = positive
            elif event.verb is Verb.RCPT and positive:
                self.rcpt_ok += 1
            elif event.verb is Verb.DATA:
                self.data_ok = event.reply.code == 354
            elif event.reply.code == 334:
                try:  # the answer to a LOGIN challenge; ValueError is its documented refusal
                    check(login_response(event.reply.text, "alice", "secret").isascii(), "non-base64 answer")
                except ValueError:
                    pass
            elif event.verb is Verb.EHLO and positive:
                parse_ehlo(event.reply).size_limit  # noqa: B018 (must not raise)
        check(self.client.outstanding == len(self.sent), "outstanding count disagrees with the commands sent")
        if self.client.ending is Ending.REUSE:
            check(self.client.state is State.READY and not self.client.outstanding, "REUSE while not idle")


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if len(data) < 5:
        return
    rng = random.Random(int.from_bytes(data[:4], "big"))
    rest = data[5:]
    split = len(rest) * data[4] // 256
    server, body = rest[split:], rest[:split]
    check_body_encoder(body, rng)
    check_line_wrapper(body, 4 + data[3] % 60, rng)
    driver = Driver(rng)
    offset = 0
    while offset < len(server) and not driver.closed:
        for _ in range(rng.choice((1, 1, 2, 4))):  # up to a few commands pipelined (RFC 2920)
            driver.step()
        size = rng.choice((1, 3, 16, 128, len(server)))
        driver.receive(server[offset:offset + size])
        offset += size
        if driver.client.state in (State.CLOSED, State.BROKEN):
            break


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
