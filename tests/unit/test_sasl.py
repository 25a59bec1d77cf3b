"""SASL PLAIN (RFC 4616) and LOGIN steps, server and client side."""

from __future__ import annotations

import base64

import pytest

from mailgate.smtp.sasl import (
    MALFORMED_PLAIN, MALFORMED_RESPONSE, Challenge, Credentials, SaslError, SaslExchange,
    SaslUsageError, login_response, login_responses, plain_initial_response,
)

pytestmark = pytest.mark.timeout(10)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_plain_initial_response() -> None:
    step = SaslExchange("PLAIN", b64(b"\0alice\0s3cr\xc3\xa9t")).challenge()
    assert step == Credentials(user="alice", password="s3cré t".replace(" ", ""), authzid="")


def test_plain_with_authzid_is_reported() -> None:
    step = SaslExchange("plain", b64(b"bob\0alice\0pw")).challenge()
    assert step == Credentials(user="alice", password="pw", authzid="bob")


def test_plain_without_initial_response_sends_empty_challenge() -> None:
    exchange = SaslExchange("PLAIN", None)
    first = exchange.challenge()
    assert first == Challenge("") and first.reply.encode() == b"334 \r\n"
    assert exchange.feed(b64(b"\0alice\0pw")) == Credentials("alice", "pw")
    with pytest.raises(SaslUsageError):
        exchange.feed("x")


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("not base64!", MALFORMED_RESPONSE),
        ("YWJ", MALFORMED_RESPONSE),
        (b64(b"\xff\xfe"), MALFORMED_RESPONSE),
        ("=", MALFORMED_PLAIN),
        (b64(b"alice\0pw"), MALFORMED_PLAIN),
        (b64(b"\0\0pw"), MALFORMED_PLAIN),
        (b64(b"\0alice\0"), MALFORMED_PLAIN),
        (b64(b"\0a\0b\0c"), MALFORMED_PLAIN),
    ],
)
def test_plain_malformed(line: str, reply: object) -> None:
    assert SaslExchange("PLAIN", line).challenge() == SaslError(reply)  # type: ignore[arg-type]
    assert MALFORMED_RESPONSE.code == 501 and MALFORMED_RESPONSE.enhanced == "5.5.2"


def test_login_two_steps() -> None:
    exchange = SaslExchange("LOGIN", None)
    assert exchange.challenge() == Challenge("VXNlcm5hbWU6")
    assert exchange.feed(b64(b"alice")) == Challenge("UGFzc3dvcmQ6")
    assert exchange.feed(b64(b"pw")) == Credentials("alice", "pw")


def test_login_with_initial_username() -> None:
    exchange = SaslExchange("LOGIN", b64(b"alice"))
    assert exchange.challenge() == Challenge("UGFzc3dvcmQ6")
    assert exchange.feed(b64(b"pw")) == Credentials("alice", "pw")


def test_login_malformed_and_cancel() -> None:
    assert SaslExchange("LOGIN", "%%%").challenge() == SaslError(MALFORMED_RESPONSE)
    cancelled = SaslExchange("LOGIN", None)
    cancelled.challenge()
    step = cancelled.feed("*")
    assert isinstance(step, SaslError) and step.reply.code == 501 and step.reply.enhanced == "5.0.0"


def test_unknown_mechanism_is_a_usage_error() -> None:
    with pytest.raises(SaslUsageError):
        SaslExchange("CRAM-MD5", None)


def test_client_helpers_round_trip_through_the_server_side() -> None:
    assert SaslExchange("PLAIN", plain_initial_response("alice", "pw")).challenge() == Credentials(
        "alice", "pw"
    )
    server = SaslExchange("LOGIN", None)
    first = server.challenge()
    assert isinstance(first, Challenge)
    second = server.feed(login_response(first.text, "alice", "pw"))
    assert isinstance(second, Challenge)
    assert server.feed(login_response(second.text, "alice", "pw")) == Credentials("alice", "pw")
    assert login_responses("alice", "pw") == (b64(b"alice"), b64(b"pw"))
    with pytest.raises(ValueError):
        login_response(b64(b"Realm:"), "alice", "pw")
