"""Byte-exact tests of the sans-IO SMTP server protocol: sequencing, syntax, EHLO, framing,
STARTTLS injection, AUTH, error budget and API misuse. DATA/BDAT bodies: test_smtp_data.py."""

from __future__ import annotations

import base64

import pytest

from mailgate.core import reply as r
from mailgate.core.envelope import BodyType, Notify, Ret
from mailgate.smtp import events as ev
from mailgate.smtp.server import TLS_ALREADY_ACTIVE, Mode, ServerProtocol
from tests.support.smtp_driver import Driver, make_settings

pytestmark = pytest.mark.timeout(30)

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<a@b.test>\r\n"
RCPT = b"RCPT TO:<x@y.test>\r\n"


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")[:-1]


def tls_driver(**overrides: object) -> Driver:
    return Driver(make_settings(tls_active=True, starttls_offered=False, **overrides))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- EHLO / HELO ---------------------------------------------------------------------------------


def test_ehlo_lists_extensions_without_auth_in_clear_text() -> None:
    assert Driver().feed(EHLO) == (
        b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 DSN\r\n"
    )


def test_ehlo_under_tls_offers_auth_and_not_starttls() -> None:
    out = tls_driver().feed(EHLO)
    assert b"250-AUTH PLAIN LOGIN\r\n" in out
    assert b"STARTTLS" not in out


def test_ehlo_leaves_out_disabled_extensions() -> None:
    settings = make_settings(
        pipelining=False, chunking=False, dsn=False, smtputf8=False, eight_bit_mime=False,
        starttls_offered=False, max_message_size=0,
    )
    assert Driver(settings).feed(EHLO) == b"250-mx.test Hello\r\n250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n"


def test_helo_is_one_line_and_refuses_esmtp_parameters() -> None:
    driver = Driver()
    assert driver.feed(b"HELO client.test\r\n") == b"250 mx.test Hello\r\n"
    assert driver.feed(b"MAIL FROM:<a@b.test> SIZE=10\r\n") == b"555 5.5.4 Parameter not recognized\r\n"
    assert driver.feed(MAIL) == b"250 2.1.0 Sender OK\r\n"
    assert driver.feed(b"RCPT TO:<x@y.test> NOTIFY=NEVER\r\n").startswith(b"555 5.5.4")


def test_refused_hello_does_not_greet() -> None:
    driver = Driver(overrides={ev.Hello: r.CLIENT_REFUSED})
    assert driver.feed(EHLO + MAIL) == b"554 5.7.1 Client refused\r\n503 5.5.1 Send EHLO or HELO first\r\n"


# --- one reply per command, in order (PIPELINING, RFC 2920) ------------------------------------


def test_whole_transaction_in_one_write() -> None:
    driver = Driver()
    out = driver.feed(
        EHLO + MAIL + RCPT + b"RCPT TO:<z@y.test>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    assert lines(out)[9:] == [
        b"250 2.1.0 Sender OK",
        b"250 2.1.5 Recipient OK",
        b"250 2.1.5 Recipient OK",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 OK queued as Q1",
        b"221 2.0.0 Bye",
    ]
    assert [type(e) for e in driver.events] == [
        ev.Hello, ev.MailFrom, ev.RcptTo, ev.RcptTo, ev.DataStart, ev.BodyChunk, ev.MessageEnd,
        ev.Quit, ev.Closed,
    ]
    assert driver.messages[0][0] == b"Subject: t\r\n\r\nhi\r\n"
    assert driver.protocol.mode is Mode.CLOSED


def test_second_transaction_after_message_and_rset() -> None:
    driver = Driver()
    driver.feed(EHLO + MAIL + RCPT + b"DATA\r\nx\r\n.\r\n")
    assert driver.feed(MAIL + b"RSET\r\n" + MAIL) == (
        b"250 2.1.0 Sender OK\r\n250 2.0.0 Reset OK\r\n250 2.1.0 Sender OK\r\n"
    )


def test_refused_recipient_does_not_open_data() -> None:
    driver = Driver(overrides={ev.RcptTo: r.unable_to_relay("x@y.test")})
    out = driver.feed(EHLO + MAIL + RCPT + b"DATA\r\n")
    assert lines(out)[-2:] == [
        b"550 5.7.1 Unable to relay for <x@y.test>", b"503 5.5.1 Need RCPT command first",
    ]


def test_noop_help_vrfy() -> None:
    out = Driver().feed(b"NOOP anything\r\nHELP\r\nVRFY postmaster\r\n")
    assert lines(out) == [
        b"250 2.0.0 OK",
        b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
        b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
    ]


# --- sequence and syntax errors ----------------------------------------------------------------

ERROR_CASES = [
    # (sent before, the command, the exact reply)
    (b"", MAIL, b"503 5.5.1 Send EHLO or HELO first"),
    (b"", RCPT, b"503 5.5.1 Send EHLO or HELO first"),
    (EHLO, RCPT, b"503 5.5.1 Need MAIL command first"),
    (EHLO, b"DATA\r\n", b"503 5.5.1 Need MAIL command first"),
    (EHLO + MAIL, b"DATA\r\n", b"503 5.5.1 Need RCPT command first"),
    (EHLO + MAIL, MAIL, b"503 5.5.1 Sender already specified"),
    (EHLO, b"FOO bar\r\n", b"500 5.5.2 Syntax error, command unrecognized"),
    (EHLO, b"EXPN staff\r\n", b"502 5.5.1 Command not implemented"),
    (b"", b"EHLO\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (b"", b"EHLO two words\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL TO:<a@b.test>\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL FROM:<a@>\r\n", b"501 5.1.7 Bad sender address syntax"),
    (EHLO, b"MAIL FROM:<a@b.test\r\n", b"501 5.1.7 Bad sender address syntax"),
    (EHLO + MAIL, b"RCPT TO:<>\r\n", b"501 5.1.3 Bad address syntax"),
    (EHLO + MAIL, b"RCPT TO:<a%b@c.test@d.test>\r\n", b"501 5.1.3 Bad address syntax"),
    (EHLO + MAIL, b"RCPT FROM:<x@y.test>\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL FROM:<a@b.test> FOO=1\r\n", b"555 5.5.4 Parameter not recognized"),
    (EHLO, b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n", b"555 5.5.4 Parameter not recognized"),
    (EHLO, b"MAIL FROM:<a@b.test> BODY=9BIT\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL FROM:<a@b.test> SIZE=abc\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL FROM:<a@b.test> SIZE\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2\r\n", b"501 5.5.4 Duplicate parameter"),
    (EHLO, b"MAIL FROM:<a@b.test> SIZE=10001\r\n",
     b"552 5.3.4 Message size exceeds fixed maximum message size"),
    (EHLO, b"MAIL FROM:<a@b.test> RET=ALL\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL FROM:<a@b.test> ENVID=ab+2\r\n", b"501 5.5.4 Invalid xtext in parameter value"),
    (EHLO, b"MAIL FROM:<a@b.test> ENVID=" + b"x" * 101 + b"\r\n",
     b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"MAIL FROM:<a@b.test> AUTH=<>\r\n", b"555 5.5.4 Parameter not recognized"),
    (EHLO, "MAIL FROM:<jö@b.test>\r\n".encode(), b"553 5.6.7 SMTPUTF8 required for a non-ASCII address"),
    (EHLO + MAIL, "RCPT TO:<jö@y.test>\r\n".encode(),
     b"553 5.6.7 SMTPUTF8 required for a non-ASCII address"),
    (EHLO + MAIL, b"RCPT TO:<x@y.test> NOTIFY=NEVER,SUCCESS\r\n",
     b"501 5.5.4 NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY"),
    (EHLO + MAIL, b"RCPT TO:<x@y.test> NOTIFY=SOMETIMES\r\n",
     b"501 5.5.4 NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY"),
    (EHLO + MAIL, b"RCPT TO:<x@y.test> ORCPT=rfc822\r\n",
     b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO + MAIL, b"RCPT TO:<x@y.test> XFOO\r\n", b"555 5.5.4 Parameter not recognized"),
    (EHLO, b"RSET now\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"QUIT now\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"VRFY\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO + MAIL + RCPT, b"DATA now\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"AUTH PLAIN\r\n", b"538 5.7.11 Encryption required for requested authentication mechanism"),
    (EHLO, b"STARTTLS now\r\n", b"501 5.5.4 Syntax error in parameters or arguments"),
    (EHLO, b"NOOP \x00\r\n", b"500 5.5.2 Syntax error, command unrecognized"),
    (EHLO, b"NOOP \xff\xfe\r\n", b"500 5.5.2 Syntax error, command unrecognized"),
]


@pytest.mark.parametrize(("before", "command", "expected"), ERROR_CASES)
def test_error_replies(before: bytes, command: bytes, expected: bytes) -> None:
    driver = Driver()
    if before:
        driver.feed(before)  # feed(b"") would mean "peer closed"
    errors = driver.protocol.errors
    assert driver.feed(command) == expected + b"\r\n"
    assert isinstance(driver.events[-1], ev.ProtocolError)
    counted = 0 if expected.startswith(b"552") else 1  # a SIZE refusal is not a client mistake
    assert driver.protocol.errors == errors + counted


@pytest.mark.parametrize("size", [b"ten", b"-5", b"1e3", b"9" * 19, b"10 LAST MORE", b"", b"0x10"])
def test_bdat_size_that_does_not_parse_closes_the_session(size: bytes) -> None:
    # RFC 3030 §2: the chunk's octets cannot be found, so they must never be read as commands.
    driver = Driver()
    driver.feed(EHLO + MAIL + RCPT)
    out = driver.feed(b"BDAT " + size + b"\r\nRSET\r\nMAIL FROM:<smuggled@b.test>\r\n")
    assert out == b"421 4.5.2 BDAT chunk size unreadable, framing lost, closing connection\r\n"
    assert isinstance(driver.events[-2], ev.FramingLost) and driver.closed
    assert driver.protocol.mode is Mode.CLOSED and driver.protocol.buffered == b""


def test_starttls_refusals() -> None:
    assert tls_driver().feed(b"STARTTLS\r\n") == TLS_ALREADY_ACTIVE.encode()
    assert Driver(make_settings(starttls_offered=False)).feed(b"STARTTLS\r\n") == (
        b"502 5.5.1 Command not implemented\r\n"
    )


# --- MAIL and RCPT parameters ---------------------------------------------------------------


def test_mail_parameters_are_parsed() -> None:
    driver = tls_driver()
    driver.feed(EHLO)
    driver.feed(
        "MAIL FROM:<jö@b.test> SIZE=500 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=id+2Bone "
        "AUTH=alice+40b.test\r\n".encode()
    )
    mail = driver.events[-1]
    assert isinstance(mail, ev.MailFrom)
    assert (mail.size, mail.body, mail.smtputf8, mail.ret) == (500, BodyType.EIGHT_BIT_MIME, True, Ret.HDRS)
    assert (mail.envid, mail.auth_param) == ("id+one", "alice@b.test")
    assert str(mail.sender) == "jö@b.test"
    assert driver.feed("RCPT TO:<ü@y.test>\r\n".encode()) == b"250 2.1.5 Recipient OK\r\n"


def test_null_sender_and_auth_empty() -> None:
    driver = tls_driver()
    driver.feed(EHLO + b"MAIL FROM:<> AUTH=<>\r\n")
    mail = driver.events[-1]
    assert isinstance(mail, ev.MailFrom) and mail.sender is None and mail.auth_param == "<>"


def test_rcpt_parameters_are_parsed() -> None:
    driver = Driver()
    driver.feed(EHLO + MAIL + b"RCPT TO:<x@Y.Test> NOTIFY=never ORCPT=rfc822;x+40y.test\r\n")
    rcpt = driver.events[-1]
    assert isinstance(rcpt, ev.RcptTo)
    assert rcpt.recipient.notify == (Notify.NEVER,)
    assert rcpt.recipient.orcpt == "rfc822;x+40y.test"
    assert str(rcpt.recipient.address) == "x@y.test"


def test_rcpt_postmaster_without_domain() -> None:
    driver = Driver()
    assert driver.feed(EHLO + MAIL + b"RCPT TO:<Postmaster>\r\n").endswith(b"250 2.1.5 Recipient OK\r\n")
    rcpt = driver.events[-1]
    assert isinstance(rcpt, ev.RcptTo) and str(rcpt.recipient.address) == "postmaster@mx.test"


# --- command-line framing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"MAIL FROM:<a@b.test>\n", b"MAIL FROM:<a@b.test>\r\r\n", b"RSET\rMAIL FROM:<a@b.test>\r\n",
     b"MAIL FROM:<a@b.test>\rRSET\n"],
)
def test_bare_cr_or_lf_in_a_command_line_is_never_executed(line: bytes) -> None:
    driver = Driver()
    driver.feed(EHLO)
    assert driver.feed(line) == b"500 5.5.2 Bare CR or LF not allowed, lines end with CRLF\r\n"
    assert not driver.of_type(ev.MailFrom)
    assert driver.protocol.errors == 1
    assert driver.feed(RCPT) == b"503 5.5.1 Need MAIL command first\r\n"


def test_over_long_command_line_is_dropped_whole() -> None:
    driver = Driver()
    driver.feed(EHLO)
    assert driver.feed(b"NOOP " + b"x" * 505 + b"\r\n") == b"250 2.0.0 OK\r\n"  # 512 with CRLF
    long_mail = b"MAIL FROM:<a@b.test> " + b"x" * 600 + b"\r\n"
    assert driver.feed(long_mail) == b"500 5.5.6 Line too long\r\n"
    assert not driver.of_type(ev.MailFrom)
    assert driver.feed(MAIL) == b"250 2.1.0 Sender OK\r\n"


def test_over_long_line_arriving_in_pieces_is_refused_once() -> None:
    driver = Driver()
    driver.feed(EHLO)
    assert driver.feed(b"MAIL FROM:<a@b.test> " + b"x" * 600) == b"500 5.5.6 Line too long\r\n"
    assert driver.feed(b"y" * 2000) == b""
    assert driver.feed(b"z\r\nNOOP\r\n") == b"250 2.0.0 OK\r\n"
    assert not driver.of_type(ev.MailFrom)


def test_partial_line_waits_for_crlf() -> None:
    driver = Driver()
    assert driver.feed(b"EHLO client.te") == b""
    assert driver.feed(b"st\r") == b""
    assert driver.feed(b"\n").startswith(b"250-mx.test")


def test_error_budget_ends_with_421() -> None:
    driver = Driver(make_settings(error_budget=3))
    out = driver.feed(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert lines(out) == [b"500 5.5.2 Syntax error, command unrecognized"] * 3 + [
        b"421 4.7.0 Too many errors, closing connection"
    ]
    assert not driver.of_type(ev.Noop)
    assert driver.feed(b"NOOP\r\n") == b""
    assert isinstance(driver.events[-1], ev.Closed)


def test_peer_close_gives_closed_and_drops_partial_line() -> None:
    driver = Driver()
    driver.feed(b"NOOP")
    driver.feed(b"")
    assert driver.events == [ev.Closed()]


def test_api_misuse_is_an_exception() -> None:
    protocol = ServerProtocol(make_settings())
    with pytest.raises(ev.ServerUsageError):
        protocol.send(r.OK)
    protocol.receive_data(b"NOOP\r\nNOOP\r\n")
    assert isinstance(protocol.next_event(), ev.Noop)
    with pytest.raises(ev.ServerUsageError):
        protocol.next_event()
    with pytest.raises(ev.ServerUsageError):
        protocol.start_tls_done()


# --- STARTTLS (RFC 3207, CVE-2011-0411) -------------------------------------------------------


def test_starttls_with_pipelined_command_is_refused_and_bytes_dropped() -> None:
    driver = Driver()
    driver.feed(EHLO)
    out = driver.feed(b"STARTTLS\r\n" + MAIL + RCPT)
    assert out == b"554 5.5.1 Commands pipelined behind STARTTLS refused\r\n"
    assert driver.protocol.buffered == b""
    assert driver.protocol.mode is Mode.COMMAND
    assert driver.protocol.errors == 1
    assert not driver.of_type(ev.StartTls) and not driver.of_type(ev.MailFrom)


def test_starttls_resets_the_session() -> None:
    driver = Driver()
    driver.feed(EHLO + MAIL)
    driver.feed(b"RSET\r\n")
    assert driver.feed(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    assert driver.protocol.mode is Mode.TLS_PENDING
    assert driver.feed(b"MAIL FROM:<injected@b.test>\r\n") == b""  # plaintext after the 220
    driver.protocol.start_tls_done()
    assert driver.protocol.buffered == b""
    assert driver.feed(MAIL) == b"503 5.5.1 Send EHLO or HELO first\r\n"
    out = driver.feed(EHLO)
    assert b"250-AUTH PLAIN LOGIN\r\n" in out and b"STARTTLS" not in out
    assert [str(e.sender) for e in driver.of_type(ev.MailFrom)] == ["a@b.test"]


# --- AUTH (RFC 4954) -----------------------------------------------------------------------------


def test_auth_plain_with_initial_response() -> None:
    driver = tls_driver()
    driver.feed(EHLO)
    assert driver.feed(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'secret')}\r\n".encode()) == (
        b"235 2.7.0 Authentication successful\r\n"
    )
    assert driver.protocol.authenticated
    assert driver.feed(b"AUTH LOGIN\r\n") == b"503 5.5.1 Already authenticated\r\n"


def test_auth_login_dialog() -> None:
    driver = tls_driver()
    driver.feed(EHLO)
    assert driver.feed(b"AUTH login\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert driver.feed(f"{b64('alice')}\r\n".encode()) == b"334 UGFzc3dvcmQ6\r\n"
    assert driver.feed(f"{b64('secret')}\r\n".encode()) == b"235 2.7.0 Authentication successful\r\n"
    assert [type(e) for e in driver.events[1:]] == [ev.AuthStart, ev.AuthLine, ev.AuthLine]


def test_auth_failure_and_cancel_leave_client_unauthenticated() -> None:
    driver = tls_driver()
    driver.feed(EHLO)
    wrong = f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'guess')}\r\n".encode()
    assert driver.feed(wrong) == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert driver.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert driver.feed(b"*\r\n") == b"501 5.0.0 Authentication cancelled\r\n"
    assert driver.feed(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"  # back to commands
    assert not driver.protocol.authenticated and driver.protocol.errors == 0


def test_auth_refusals() -> None:
    driver = tls_driver()
    assert driver.feed(b"AUTH PLAIN\r\n") == b"503 5.5.1 Send EHLO or HELO first\r\n"
    driver.feed(EHLO)
    assert driver.feed(b"AUTH CRAM-MD5\r\n") == b"504 5.5.4 Unrecognized authentication mechanism\r\n"
    assert driver.feed(b"AUTH\r\n") == b"501 5.5.4 Syntax error in parameters or arguments\r\n"
    driver.feed(MAIL)
    assert driver.feed(b"AUTH PLAIN\r\n") == b"503 5.5.1 Bad sequence of commands\r\n"


def test_auth_lines_may_be_long_but_not_endless() -> None:
    driver = tls_driver()
    driver.feed(EHLO)
    response = base64.b64encode(b"\0alice\0" + b"p" * 8000).decode()
    assert driver.feed(f"AUTH PLAIN {response}\r\n".encode()) == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert driver.feed(b"AUTH PLAIN " + b"A" * 13000 + b"\r\n") == b"500 5.5.6 Line too long\r\n"
