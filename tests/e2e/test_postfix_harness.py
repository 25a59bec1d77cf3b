"""The private Postfix harness works in each shape: mail arrives where it should, and only there."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Iterator

import pytest

from tests.conftest import free_port, require_binary
from tests.support import postfix

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _message(subject: str) -> bytes:
    return f"From: a@src.test\r\nSubject: {subject}\r\n\r\nHello from the harness.\r\n".encode()


@pytest.fixture
def receiver() -> Iterator[postfix.PostfixInstance]:
    require_binary("postfix")
    with postfix.start_receiver(free_port(), ["dest.test", "other-dest.test"]) as instance:
        yield instance


def test_receiver_delivers_each_domain_into_its_maildir(receiver: postfix.PostfixInstance) -> None:
    with smtplib.SMTP(receiver.host, receiver.port, timeout=10) as client:
        client.sendmail("a@src.test", ["x@dest.test", "y@dest.test"], _message("two rcpts"))
        client.sendmail("a@src.test", ["z@other-dest.test"], _message("other domain"))

    delivered = receiver.wait_delivered(3)

    assert len(delivered) == 3
    by_domain = sorted(path.parent.parent.name for path in delivered)
    assert by_domain == ["dest.test", "dest.test", "other-dest.test"]
    parsed = [email.message_from_bytes(path.read_bytes()) for path in delivered]
    assert sorted(message["Delivered-To"] for message in parsed) == [
        "x@dest.test",
        "y@dest.test",
        "z@other-dest.test",
    ]
    assert receiver.pending_count() == 0


def test_receiver_refuses_domains_it_does_not_host(receiver: postfix.PostfixInstance) -> None:
    with smtplib.SMTP(receiver.host, receiver.port, timeout=10) as client:
        client.ehlo()
        client.mail("a@src.test")
        code, text = client.rcpt("x@elsewhere.test")

    assert (code, text.split(b" ")[0]) == (454, b"4.7.1")
    assert b"Relay access denied" in text


def test_relay_forwards_hosted_domain_to_its_next_hop(receiver: postfix.PostfixInstance) -> None:
    with postfix.start_relay(
        free_port(), "dest.test", (receiver.host, receiver.port), trusted_networks=""
    ) as relay:
        with smtplib.SMTP(relay.host, relay.port, timeout=10) as client:
            refused = client.sendmail("a@src.test", ["hosted@dest.test"], _message("relayed"))
            client.mail("a@src.test")
            foreign = client.rcpt("x@elsewhere.test")

        delivered = receiver.wait_delivered(1)
        relay_log = relay.wait_log("status=sent")

    assert refused == {}
    assert foreign[0] == 454 and b"Relay access denied" in foreign[1]
    assert len(delivered) == 1
    arrived = email.message_from_bytes(delivered[0].read_bytes())
    assert arrived["Subject"] == "relayed"
    assert f"relay={receiver.host}[{receiver.host}]:{receiver.port}" in relay_log
    assert "status=sent" in relay_log


def test_open_relay_accepts_any_domain_and_sends_nothing_off_the_machine() -> None:
    require_binary("postfix")
    with postfix.start_open_relay(free_port()) as relay:
        with smtplib.SMTP(relay.host, relay.port, timeout=10) as client:
            refused = client.sendmail(
                "a@src.test", ["victim@example.com", "other@example.org"], _message("open")
            )
        relay_log = relay.wait_log("status=sent (open relay harness)", count=2)
        pending = relay.pending_count()

    assert refused == {}
    assert pending == 0
    assert relay_log.count("status=sent (open relay harness)") == 2
    assert "to=<victim@example.com>, relay=none" in relay_log


def test_open_relay_with_next_hop_forwards_everything(receiver: postfix.PostfixInstance) -> None:
    with postfix.start_open_relay(free_port(), next_hop=(receiver.host, receiver.port)) as relay:
        with smtplib.SMTP(relay.host, relay.port, timeout=10) as client:
            client.sendmail("a@src.test", ["via-open@other-dest.test"], _message("via open relay"))
        delivered = receiver.wait_delivered(1)

    assert [path.parent.parent.name for path in delivered] == ["other-dest.test"]


def test_stop_ends_the_master_and_removes_the_instance() -> None:
    require_binary("postfix")
    instance = postfix.start_open_relay(free_port())
    master = instance.master_pid()
    assert master is not None

    instance.stop()

    assert instance.master_pid() is None
    assert not instance.root.exists()
    with pytest.raises(OSError):
        smtplib.SMTP(instance.host, instance.port, timeout=5)
