"""The sans-IO client protocol: reply parsing byte for byte, the command table, body encoding."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Notify, Recipient, Ret
from mailgate.core.reply import Reply
from mailgate.smtp.client import (
    BodyEncoder,
    ClientProtocol,
    ClientUsageError,
    Ending,
    PeerProtocolError,
    ReplyEvent,
    ReplyParser,
    State,
    Verb,
    encode_command,
    mail_command,
    parse_ehlo,
    rcpt_command,
    xtext,
)

pytestmark = pytest.mark.timeout(30)


# --- reply parsing -------------------------------------------------------------------------------
def test_single_line_reply_with_enhanced_code():
    assert ReplyParser().feed(b"250 2.1.0 Sender OK\r\n") == [Reply(250, "2.1.0", "Sender OK")]


def test_reply_without_enhanced_code_or_text():
    parser = ReplyParser()
    assert parser.feed(b"354 End data with <CR><LF>.<CR><LF>\r\n") == [Reply(354, "", "End data with <CR><LF>.<CR><LF>")]
    assert parser.feed(b"250\r\n") == [Reply(250, "", "")]


def test_enhanced_code_with_wrong_class_is_plain_text():
    # RFC 2034 §4: the class digit must match the reply's first digit.
    assert ReplyParser().feed(b"550 2.1.0 odd\r\n") == [Reply(550, "", "2.1.0 odd")]


def test_multi_line_ehlo_across_chunks():
    parser = ReplyParser()
    wire = b"250-mx.test greets you\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
    replies = []
    for index in range(len(wire)):  # one byte at a time: no reply until the last line is complete
        replies += parser.feed(wire[index : index + 1])
        if index < len(wire) - 1:
            assert replies == []
    assert replies == [Reply(250, "", "mx.test greets you\nPIPELINING\nSIZE 1000\nAUTH PLAIN LOGIN\n8BITMIME")]
    extensions = parse_ehlo(replies[0])
    assert extensions.has("pipelining") and extensions.has("8BITMIME") and not extensions.has("STARTTLS")
    assert extensions.size_limit == 1000
    assert extensions.auth_mechanisms == {"PLAIN", "LOGIN"}


def test_multi_line_enhanced_code_stripped_from_every_line():
    wire = b"550-5.7.1 first line\r\n550-5.7.1 second line\r\n550 5.7.1 third\r\n"
    assert ReplyParser().feed(wire) == [Reply(550, "5.7.1", "first line\nsecond line\nthird")]


def test_several_replies_in_one_chunk_and_a_partial_one():
    parser = ReplyParser()
    replies = parser.feed(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 unknown\r\n354 go")
    assert [reply.code for reply in replies] == [250, 250, 550]
    assert parser.has_pending_input
    assert parser.feed(b" ahead\r\n") == [Reply(354, "", "go ahead")]
    assert not parser.has_pending_input


def test_bare_lf_reply_tolerated():
    assert ReplyParser().feed(b"220 mx.test ready\n") == [Reply(220, "", "mx.test ready")]


@pytest.mark.parametrize(
    "wire, text",
    [
        (b"550 5.1.1 gone\r\r\n", "gone"),
        (b"550 5.1.1 half\rway\r\n", "half way"),
        (b"451-4.3.0 first\r\r\n451 4.3.0 second\r\n", "first\nsecond"),
        (b"250 ok\r\r\r\n", "ok"),
    ],
)
def test_no_carriage_return_stays_in_reply_text(wire, text):
    (reply,) = ReplyParser().feed(wire)
    assert reply.text == text and "\r" not in reply.text


def test_size_zero_means_no_limit():
    assert parse_ehlo(Reply(250, "", "mx\nSIZE 0")).size_limit is None
    assert parse_ehlo(Reply(250, "", "mx\nSIZE")).size_limit is None


@pytest.mark.parametrize(
    "wire",
    [
        b"hello there\r\n",
        b"25 short\r\n",
        b"600 out of range\r\n",
        b"250x2.0.0 no separator\r\n",
        b"250-first\r\n550 second code differs\r\n",
        b"\r\n",
    ],
)
def test_garbage_is_a_peer_protocol_error(wire):
    with pytest.raises(PeerProtocolError):
        ReplyParser().feed(wire)


def test_endless_line_is_refused():
    with pytest.raises(PeerProtocolError):
        ReplyParser().feed(b"250 " + b"x" * 5000)


def test_endless_multi_line_reply_is_refused():
    with pytest.raises(PeerProtocolError):
        ReplyParser().feed(b"250-x\r\n" * 300)


@given(st.binary(max_size=200))
def test_parser_never_fails_unexpectedly(data):
    try:
        replies = ReplyParser().feed(data)
    except PeerProtocolError:
        return
    assert all(200 <= reply.code <= 599 for reply in replies)


@given(st.integers(200, 599), st.lists(st.text(string.ascii_letters + " -"), min_size=1, max_size=5))
def test_round_trip_with_reply_encode(code, lines):
    reply = Reply(code, "", "\n".join(lines))
    assert ReplyParser().feed(reply.encode()) == [reply]


# --- MAIL and RCPT parameters -------------------------------------------------------------------
ALL = parse_ehlo(Reply(250, "", "mx\nSIZE 1000\n8BITMIME\nDSN\nSMTPUTF8"))
NONE = parse_ehlo(Reply(250, "", "mx"))


@pytest.mark.parametrize(
    "value, wire",
    [("rfc822;a@b.example", "rfc822;a@b.example"), ("id 1=2", "id+201+3D2"), ("a+2Bb", "a+2Bb"), ("a+b", "a+2Bb")],
)
def test_xtext(value, wire):
    assert xtext(value) == wire


def test_mail_command_parameters_only_when_offered():
    line = mail_command("a@b", ALL, size=10, eight_bit=True, smtputf8=True, ret=Ret.FULL, envid="Q1")
    assert line == "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=Q1"
    assert mail_command("", NONE, size=10, eight_bit=True, smtputf8=False, ret=Ret.FULL, envid="Q1") == "MAIL FROM:<>"


def test_rcpt_command_dsn_parameters():
    plain = Recipient(parse_mailbox("x@y.example"))
    assert rcpt_command(plain, ALL) == "RCPT TO:<x@y.example>"  # default NOTIFY is not repeated
    never = Recipient(parse_mailbox("x@y.example"), notify=(Notify.NEVER,), orcpt="rfc822;x@y.example")
    assert rcpt_command(never, ALL) == "RCPT TO:<x@y.example> NOTIFY=NEVER ORCPT=rfc822;x@y.example"
    assert rcpt_command(never, NONE) == "RCPT TO:<x@y.example>"


# --- commands and the state table ----------------------------------------------------------------
@pytest.mark.parametrize("line", ["MAIL FROM:<a@b>\r\nRCPT TO:<x@y>", "EHLO a\nb", "HELO a\rb", "NOOP\0"])
def test_command_with_line_break_is_refused(line):
    with pytest.raises(ClientUsageError):
        encode_command(line)


def test_command_encoding():
    assert encode_command("MAIL FROM:<a@b> SIZE=10") == b"MAIL FROM:<a@b> SIZE=10\r\n"
    assert encode_command("RCPT TO:<ü@b>", utf8=True) == "RCPT TO:<ü@b>\r\n".encode()


def ready_protocol() -> ClientProtocol:
    protocol = ClientProtocol()
    assert protocol.receive(b"220 mx.test ESMTP\r\n") == [ReplyEvent(Verb.GREETING, Reply(220, "", "mx.test ESMTP"))]
    assert protocol.send(Verb.EHLO, "EHLO me") == b"EHLO me\r\n"
    protocol.receive(b"250-mx.test\r\n250 PIPELINING\r\n")
    assert protocol.state is State.READY
    return protocol


def test_nothing_may_be_sent_before_the_greeting():
    with pytest.raises(ClientUsageError):
        ClientProtocol().send(Verb.EHLO, "EHLO me")


def test_mail_needs_hello_and_data_needs_rcpt():
    protocol = ClientProtocol()
    protocol.receive(b"220 hi\r\n")
    with pytest.raises(ClientUsageError):
        protocol.send(Verb.MAIL, "MAIL FROM:<>")
    protocol = ready_protocol()
    protocol.send(Verb.MAIL, "MAIL FROM:<>")
    with pytest.raises(ClientUsageError):
        protocol.send(Verb.DATA, "DATA")


def test_pipelined_replies_are_matched_in_order():
    protocol = ready_protocol()
    wire = b"".join(
        [
            protocol.send(Verb.MAIL, "MAIL FROM:<a@b>"),
            protocol.send(Verb.RCPT, "RCPT TO:<x@y>"),
            protocol.send(Verb.RCPT, "RCPT TO:<z@y>"),
            protocol.send(Verb.DATA, "DATA"),
        ]
    )
    assert wire == b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\nDATA\r\n"
    assert protocol.outstanding == 4
    events = protocol.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    assert [(event.verb, event.reply.code) for event in events] == [
        (Verb.MAIL, 250),
        (Verb.RCPT, 250),
        (Verb.RCPT, 550),
        (Verb.DATA, 354),
    ]
    assert protocol.state is State.BODY
    assert protocol.body(b"Subject: x\n\n.hi") == b"Subject: x\r\n\r\n..hi"
    assert protocol.end_of_data() == b"\r\n.\r\n"
    assert protocol.state is State.READY
    assert protocol.receive(b"250 2.0.0 queued\r\n")[0].verb is Verb.END_OF_DATA


def test_refused_data_needs_rset_before_the_next_mail():
    """Postfix answers DATA with 554 but keeps the MAIL: the next MAIL would get 503 nested MAIL."""
    protocol = ready_protocol()
    for verb, line in [(Verb.MAIL, "MAIL FROM:<>"), (Verb.RCPT, "RCPT TO:<x@y>"), (Verb.DATA, "DATA")]:
        protocol.send(verb, line)
    protocol.receive(b"250 ok\r\n550 no\r\n554 5.5.1 No valid recipients\r\n")
    assert protocol.state is State.NEEDS_RESET and protocol.ending is Ending.RESET
    with pytest.raises(ClientUsageError):
        protocol.body(b"x")
    with pytest.raises(ClientUsageError):
        protocol.send(Verb.MAIL, "MAIL FROM:<b@c>")
    protocol.send(Verb.RSET, "RSET")
    with pytest.raises(ClientUsageError):  # not before the 250 to RSET is in
        protocol.send(Verb.MAIL, "MAIL FROM:<b@c>")
    protocol.receive(b"250 2.0.0 reset\r\n")
    assert protocol.ending is Ending.REUSE
    protocol.send(Verb.MAIL, "MAIL FROM:<b@c>")


def test_unsolicited_reply_is_a_protocol_error():
    protocol = ready_protocol()
    with pytest.raises(PeerProtocolError):
        protocol.receive(b"250 surprise\r\n")


def test_starttls_then_hello_again():
    protocol = ready_protocol()
    protocol.send(Verb.STARTTLS, "STARTTLS")
    protocol.receive(b"220 2.0.0 go ahead\r\n")
    assert protocol.state is State.TLS_HANDSHAKE
    with pytest.raises(ClientUsageError):
        protocol.send(Verb.MAIL, "MAIL FROM:<>")
    protocol.tls_established()
    assert protocol.state is State.NEED_HELLO


def test_bytes_behind_starttls_reply_are_an_injection():
    protocol = ready_protocol()
    protocol.send(Verb.STARTTLS, "STARTTLS")
    with pytest.raises(PeerProtocolError):
        protocol.receive(b"220 go ahead\r\n250 injected\r\n")


def test_service_closing_reply_closes():
    protocol = ready_protocol()
    protocol.send(Verb.MAIL, "MAIL FROM:<>")
    protocol.receive(b"421 4.4.2 idle too long\r\n")
    assert protocol.state is State.CLOSED


# --- body encoding -------------------------------------------------------------------------------
def encode_all(chunks: list[bytes]) -> bytes:
    encoder = BodyEncoder()
    return b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.finish()


@pytest.mark.parametrize(
    "chunks, wire",
    [
        ([b""], b".\r\n"),
        ([b"a\r\nb\r\n"], b"a\r\nb\r\n.\r\n"),
        ([b"a\nb"], b"a\r\nb\r\n.\r\n"),  # bare LF, missing final CRLF
        ([b"a\rb\r"], b"a\r\nb\r\n.\r\n"),  # bare CR
        ([b"a\r\r\nb"], b"a\r\n\r\nb\r\n.\r\n"),  # lone CR then CRLF: two line ends
        ([b".\r\n"], b"..\r\n.\r\n"),  # a line that is just "." must not end the data
        ([b"a\r\n.b\r\n..c\r\n"], b"a\r\n..b\r\n...c\r\n.\r\n"),
        ([b"a\r", b"\nb"], b"a\r\nb\r\n.\r\n"),  # CRLF split across chunks
        ([b"a\r", b"b"], b"a\r\nb\r\n.\r\n"),  # lone CR at a chunk end
        ([b"a\r\n", b".b"], b"a\r\n..b\r\n.\r\n"),  # dot at the start of the next chunk
        ([b"a\n", b".", b"\n"], b"a\r\n..\r\n.\r\n"),
        ([b"x\r"], b"x\r\n.\r\n"),
    ],
)
def test_body_encoding(chunks, wire):
    assert encode_all(chunks) == wire


def unstuff(wire: bytes) -> bytes:
    """What a receiver stores (RFC 5321 §4.5.2), for the property test below."""
    assert wire.endswith(b".\r\n")
    lines = wire[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@given(st.lists(st.binary(max_size=30), max_size=8))
def test_body_encoding_properties(chunks):
    wire = encode_all(chunks)
    body = wire[:-3]
    # Only CRLF line ends, and the terminator appears nowhere but at the end.
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    assert not (b"\r\n" + wire).removesuffix(b"\r\n.\r\n").count(b"\r\n.\r\n")
    # Chunking does not change the result, and un-stuffing gives the normalised body back.
    joined = b"".join(chunks)
    assert wire == encode_all([joined])
    normalised = joined.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    expected = normalised if not normalised or normalised.endswith(b"\r\n") else normalised + b"\r\n"
    assert unstuff(wire) == expected
