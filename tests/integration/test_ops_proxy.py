"""The PROXY protocol (HAProxy's proxy-protocol.txt v1 and v2) through the real server: a
listener behind a load balancer (SPEC §4, issue "Operations").

The listener has `proxy_protocol = true` and `proxy_from = ["127.0.0.1/32"]`: the test plays the
load balancer from 127.0.0.1 and writes the header itself, then speaks SMTP. Checked:
- the client address the header carries is the one in the stored Received header and in the
  JSON log (v1 text header with IPv4, v2 binary header with IPv6);
- relay policy uses that address: a proxied client inside trusted_networks may relay, the load
  balancer's own address (v1 UNKNOWN, v2 LOCAL: spec §2.1/§2.2, "use the real endpoints") may not;
- a peer not in proxy_from, or a malformed header, is dropped without a greeting (spec §2: the
  receiver "MUST NOT try to guess").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from pathlib import Path

import pytest

from mailgate.observe.jsonlog import log_files, read_records
from tests.conftest import free_port
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import EXTERNAL, HOSTED, RawSmtp, SmtpReply, queued, split_received, stored_message

pytestmark = pytest.mark.timeout(60)

BALANCER = "127.0.0.1"  # the only proxy_from network; deliberately not a trusted network
STRANGER = "127.0.0.2"  # a peer that is not a configured load balancer
PROXIED_V4 = "203.0.113.7"  # inside trusted_networks
UNTRUSTED_V4 = "198.51.100.9"
PROXIED_V6 = "2001:db8::7"
MESSAGE = b"Subject: through the load balancer\r\n\r\nhello\r\n"

# proxy-protocol.txt §2.2: the v2 signature, then version 2 with a command, family and protocol.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY, V2_LOCAL = 0x21, 0x20  # version 2 (high nibble), command PROXY 1 / LOCAL 0
V2_TCP_OVER_IPV4, V2_TCP_OVER_IPV6, V2_UNSPEC = 0x11, 0x21, 0x00


def v1_header(source: str, dest: str = "192.0.2.1", source_port: int = 40000, dest_port: int = 25) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {dest} {source_port} {dest_port}\r\n".encode("ascii")


def v2_header(source: str | None, dest: str = "2001:db8::25", source_port: int = 40000, dest_port: int = 25) -> bytes:
    """A v2 binary header built per the spec; `source` None makes a LOCAL command (no addresses)."""
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, V2_UNSPEC, 0)
    source_ip, dest_ip = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    family = V2_TCP_OVER_IPV6 if source_ip.version == 6 else V2_TCP_OVER_IPV4
    addresses = source_ip.packed + dest_ip.packed + struct.pack("!HH", source_port, dest_port)
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, family, len(addresses)) + addresses


def _config(tmp_path: Path) -> str:
    return f"""
[server]
hostname = "mx.test"
spool_dir = "{tmp_path / 'spool'}"
users_file = "{tmp_path / 'users'}"

[[listener]]
name = "behind-lb"
address = "127.0.0.1:{free_port()}"
profile = "mx"
tls = "none"
proxy_protocol = true
proxy_from = ["127.0.0.1/32"]
proxy_timeout = 2

[relay]
trusted_networks = ["203.0.113.0/24"]

[authentication]
inbound_checks = false  # the stored message is compared byte for byte; test_inbound_auth.py checks these

[[domain]]
name = "{HOSTED}"
next_hop = ["127.0.0.1:{free_port()}"]

[log]
json_file = "{tmp_path / 'log' / 'tx.jsonl'}"
"""


@pytest.fixture
def mailgate(tmp_path: Path):
    with InProcessMailgate(_config(tmp_path)) as mg:
        yield mg


async def _proxied(port: int, header: bytes, recipient: str, source: str = BALANCER) -> list[SmtpReply]:
    """The header, then greeting, EHLO, MAIL, RCPT and (when RCPT is accepted) the message."""
    client = await RawSmtp.connect(port, source=source)
    try:
        await client.send(header)
        replies = [await client.reply(), await client.command("EHLO client.test"),
                   await client.command("MAIL FROM:<sender@example.org>"),
                   await client.command(f"RCPT TO:<{recipient}>")]
        if replies[-1].code == 250:
            replies.append(await client.command("DATA"))
            await client.send(MESSAGE + b".\r\n")
            replies.append(await client.reply())
        await client.command("QUIT")
        return replies
    finally:
        await client.close()


def _json_records(mg: InProcessMailgate) -> list[dict]:
    assert mg.app is not None and mg.app.log.flush()
    return list(read_records(log_files(mg.config.log.json_file)))


def _received_of_only_message(mg: InProcessMailgate) -> str:
    [summary] = queued(mg)
    received, rest = split_received(stored_message(mg, summary.queue_id))
    assert rest == MESSAGE
    return received.decode()


def test_v1_header_names_the_real_client_in_received_and_json_log(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_proxied(mailgate.port("behind-lb"), v1_header(PROXIED_V4), f"user@{HOSTED}"))
    assert [r.code for r in replies] == [220, 250, 250, 250, 354, 250]

    received = _received_of_only_message(mailgate)
    assert received.startswith(f"Received: from client.test ([{PROXIED_V4}])")
    assert BALANCER not in received
    records = _json_records(mailgate)
    opened = [r for r in records if r["event"] == "connection.opened"]
    accepted = [r for r in records if r["event"] == "transaction.accepted"]
    assert [r["client_ip"] for r in opened] == [PROXIED_V4]
    assert [(r["client_ip"], r["rule"]) for r in accepted] == [(PROXIED_V4, "hosted_domain")]


def test_v2_header_with_an_ipv6_source_names_it(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_proxied(mailgate.port("behind-lb"), v2_header(PROXIED_V6), f"user@{HOSTED}"))
    assert [r.code for r in replies] == [220, 250, 250, 250, 354, 250]

    received = _received_of_only_message(mailgate)
    assert received.startswith(f"Received: from client.test ([IPv6:{PROXIED_V6}])")  # RFC 5321 §4.1.3
    accepted = [r for r in _json_records(mailgate) if r["event"] == "transaction.accepted"]
    assert [r["client_ip"] for r in accepted] == [PROXIED_V6]


@pytest.mark.parametrize(
    ("header", "relays"),
    [
        (v1_header(PROXIED_V4), True),  # inside trusted_networks
        (v2_header(PROXIED_V4, dest="192.0.2.1"), True),
        (v1_header(UNTRUSTED_V4), False),
        (b"PROXY UNKNOWN\r\n", False),  # spec §2.1: the balancer's own address is used
        (v2_header(None), False),  # spec §2.2 LOCAL: likewise
    ],
    ids=["v1-trusted", "v2-trusted", "v1-untrusted", "v1-unknown-is-the-balancer", "v2-local-is-the-balancer"],
)
def test_relay_is_decided_on_the_proxied_client_address(
    mailgate: InProcessMailgate, header: bytes, relays: bool
) -> None:
    replies = asyncio.run(_proxied(mailgate.port("behind-lb"), header, f"friend@{EXTERNAL}"))
    rcpt = replies[3]
    if relays:
        assert (rcpt.code, replies[-1].code) == (250, 250)
        assert [m.recipients[0][0] for m in queued(mailgate)] == [f"friend@{EXTERNAL}"]
    else:
        assert str(rcpt) == f"550 5.7.1 Unable to relay for <friend@{EXTERNAL}>"  # SPEC R3
        assert queued(mailgate) == []


async def _what_the_server_says(port: int, source: str, data: bytes) -> bytes:
    """Everything the server sends (until it closes) after the client connects and sends `data`."""
    client = await RawSmtp.connect(port, source=source)
    try:
        if data:
            await client.send(data)
        received = b""
        for _ in range(100):  # bounded: a dropped connection ends at once
            try:
                chunk = await asyncio.wait_for(client.reader.read(4096), 15)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received
    finally:
        await client.close()


def test_header_from_a_peer_that_is_not_a_configured_balancer_is_dropped(
    mailgate: InProcessMailgate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.listener")
    port = mailgate.port("behind-lb")
    assert asyncio.run(_what_the_server_says(port, STRANGER, v1_header(PROXIED_V4))) == b""
    assert asyncio.run(_what_the_server_says(port, STRANGER, b"")) == b""
    records = _json_records(mailgate)
    assert not any(r["event"] == "connection.opened" for r in records)
    refused = [r for r in records if r["event"] == "connection.refused"]
    assert [(r["reason"], r["client_ip"], "reply_code" in r) for r in refused] == [("proxy", STRANGER, False)] * 2
    dropped = [r.getMessage() for r in caplog.records if "not a configured load balancer" in r.getMessage()]
    assert len(dropped) == 2 and all(STRANGER in message for message in dropped)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"EHLO client.test\r\n", "no PROXY protocol header"),  # no header at all: never guessed (spec §2)
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 040000 25\r\n", "is not a port"),  # leading zero in a port
        (b"PROXY TCP4 2001:db8::7 192.0.2.1 40000 25\r\n", "does not match the protocol"),  # IPv6 address under TCP4
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n", "needs protocol, two addresses"),  # a field missing
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\n", "bare CR or LF"),  # bare LF
        (b"PROXY " + b"X" * 120 + b"\r\n", "longer than 107 bytes"),  # longer than 107 bytes (spec §2.1)
        (V2_SIGNATURE + struct.pack("!BBH", 0x31, V2_TCP_OVER_IPV4, 12) + bytes(12), "with version 3"),
        (V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, V2_TCP_OVER_IPV6, 12) + bytes(12), "address block too short"),
    ],
    ids=["smtp-first", "v1-leading-zero", "v1-family-mismatch", "v1-field-missing", "v1-bare-lf",
         "v1-too-long", "v2-bad-version", "v2-short-block"],
)
def test_malformed_header_is_dropped_without_a_greeting(
    mailgate: InProcessMailgate, caplog: pytest.LogCaptureFixture, data: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.listener")
    assert asyncio.run(_what_the_server_says(mailgate.port("behind-lb"), BALANCER, data)) == b""
    records = _json_records(mailgate)
    assert not any(r["event"] == "connection.opened" for r in records)
    refused = [r for r in records if r["event"] == "connection.refused"]
    assert [(r["reason"], r["client_ip"]) for r in refused] == [("proxy", BALANCER)]
    # Refused by the parser for this reason, not merely timed out waiting for more bytes.
    refusals = [r.getMessage() for r in caplog.records if "bad PROXY header" in r.getMessage()]
    assert len(refusals) == 1 and reason in refusals[0], refusals
