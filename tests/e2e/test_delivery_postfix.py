"""Delivery with real peers: Postfix as the internal server, as an internet MX and as a sender;
and mailgate killed with SIGKILL while deliveries are in flight.
"""

from __future__ import annotations

import email
import smtplib
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import free_port, require_binary
from tests.support.config_text import hosted_domain, loopback_dns, relay_config
from tests.support.dns_server import LoopbackDnsServer
from tests.support.mailgate_server import MailgateProcess
from tests.support.postfix import start_receiver, start_relay

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def mailgate_config(tmp_path: Path, port: int, hosted_hop: str, *, dns_port: int = 53, mx_port: int = 25) -> str:
    delivery = f'[delivery]\nmx_port = {mx_port}\nretry_schedule = ["1s"]\nmax_retry_interval = "60s"\n'
    return relay_config(tmp_path / "spool", port, hosted_domain(hosted_hop, extra='tls = "may"\n'), delivery,
                        loopback_dns(dns_port), hostname="relay.test")


def message(number: int) -> bytes:
    return (
        f"From: a@sender.test\r\nTo: b@hosted.test\r\nSubject: message {number}\r\n"
        f"Message-ID: <m{number}@sender.test>\r\n\r\nBody of message {number}.\r\n"
    ).encode()


def message_ids(paths: list[Path]) -> Counter:
    ids: Counter = Counter()
    for path in paths:
        parsed = email.message_from_bytes(path.read_bytes())
        ids[parsed["Message-ID"]] += 1
    return ids


@pytest.fixture()
def peers():
    require_binary("postfix")


def test_inbound_mail_reaches_postfix_as_the_internal_server(tmp_path: Path, peers) -> None:
    with start_receiver(free_port(), ["hosted.test"]) as internal:
        port = free_port()
        mailgate = MailgateProcess(tmp_path, mailgate_config(tmp_path, port, f"127.0.0.1:{internal.port}"))
        mailgate.start(wait=("127.0.0.1", port))
        try:
            with smtplib.SMTP("127.0.0.1", port) as client:
                for number in range(20):
                    client.sendmail("a@sender.test", ["b@hosted.test"], message(number))
            delivered = internal.wait_delivered(20, timeout=60)
            ids = message_ids(delivered)
            assert set(ids) == {f"<m{n}@sender.test>" for n in range(20)}
            sample = delivered[0].read_bytes()
            assert b"by relay.test (mailgate) with ESMTP" in sample
        finally:
            mailgate.stop()


def test_outbound_mail_reaches_postfix_as_the_mx_found_in_dns(tmp_path: Path, peers) -> None:
    with start_receiver(free_port(), ["remote.test"]) as mx, LoopbackDnsServer(
        {"remote.test": {"MX": [(10, "mx1.remote.test")]}, "mx1.remote.test": {"A": ["127.0.0.1"]}}
    ) as dns:
        port = free_port()
        config = mailgate_config(tmp_path, port, "127.0.0.1:1", dns_port=dns.port, mx_port=mx.port)
        mailgate = MailgateProcess(tmp_path, config).start(wait=("127.0.0.1", port))
        try:
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("app@relay.test", ["user@remote.test"], message(1))
            delivered = mx.wait_delivered(1, timeout=60)
            assert message_ids(delivered) == Counter({"<m1@sender.test>": 1})
        finally:
            mailgate.stop()


def test_postfix_sends_through_mailgate_to_postfix(tmp_path: Path, peers) -> None:
    with start_receiver(free_port(), ["hosted.test"]) as internal:
        port = free_port()
        mailgate = MailgateProcess(tmp_path, mailgate_config(tmp_path, port, f"127.0.0.1:{internal.port}"))
        mailgate.start(wait=("127.0.0.1", port))
        try:
            with start_relay(free_port(), "hosted.test", ("127.0.0.1", port)) as sender:
                with smtplib.SMTP("127.0.0.1", sender.port) as client:
                    for number in range(5):
                        client.sendmail("a@sender.test", ["b@hosted.test"], message(number))
                delivered = internal.wait_delivered(5, timeout=90)
                assert len(message_ids(delivered)) == 5
        finally:
            mailgate.stop()


def test_sigkill_during_deliveries_loses_nothing(tmp_path: Path, peers) -> None:
    total = 300
    with start_receiver(free_port(), ["hosted.test"]) as internal:
        port = free_port()
        config = mailgate_config(tmp_path, port, f"127.0.0.1:{internal.port}")
        mailgate = MailgateProcess(tmp_path, config).start(wait=("127.0.0.1", port))
        acknowledged = 0
        try:
            with smtplib.SMTP("127.0.0.1", port) as client:
                for number in range(total):
                    client.sendmail("a@sender.test", ["b@hosted.test"], message(number))
                    acknowledged += 1
            # Kill as soon as deliveries are under way but not finished.
            deadline = time.monotonic() + 60
            while len(internal.delivered()) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            mailgate.kill()
            at_kill = len(internal.delivered())
            mailgate.start(wait=("127.0.0.1", port))
            delivered = internal.wait_delivered(total, timeout=150)
            time.sleep(1)  # anything still arriving is a duplicate worth counting
            ids = message_ids(internal.delivered())
        finally:
            mailgate.stop()
        assert acknowledged == total
        assert set(ids) == {f"<m{n}@sender.test>" for n in range(total)}, "an acknowledged message was lost"
        duplicates = sum(count - 1 for count in ids.values())
        # Only messages in flight at the kill can arrive twice (bounded by the delivery workers).
        assert duplicates <= 200, (duplicates, at_kill, len(delivered))
