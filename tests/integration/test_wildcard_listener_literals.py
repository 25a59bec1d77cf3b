"""A listener on 0.0.0.0 or :: answers on every address of the host, so a domain literal naming
any of them names this relay (issue 13 item 8). Relaying `user@[that address]` would send the
message back to ourselves: it is refused (550 5.7.1, RFC 5321 §4.2.2 / RFC 3463 §3.8) even for
a trusted client, which may relay anywhere else.

Before: only the listeners' own configured addresses counted, and a wildcard one none, so the
trusted client got 250 for `user@[<the host's eth0 address>]` and the message looped.
The addresses come from the host's real interfaces (psutil); loopback is always among them.
The port is probed on the wildcard itself: one free on 127.0.0.1 may be held on another address
(a peer another test left on 127.0.0.2), which a wildcard bind would collide with.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path

import pytest

from mailgate.server.interfaces import interface_addresses
from tests.conftest import free_port
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import EXTERNAL, RawSmtp, config_text

pytestmark = pytest.mark.timeout(60)


def _literal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 4 else f"[IPv6:{address}]"


async def _rcpt_replies(host: str, port: int, recipients: list[str]) -> dict[str, str]:
    """From a trusted client (loopback), one transaction per recipient: code and enhanced code."""
    client = RawSmtp(*await asyncio.open_connection(host, port))
    try:
        assert (await client.reply()).code == 220
        await client.command("EHLO trusted.test")
        replies = {}
        for recipient in recipients:
            assert (await client.command("MAIL FROM:<sender@inside.test>")).code == 250
            reply = await client.command(f"RCPT TO:<{recipient}>")
            replies[recipient] = f"{reply.code} {reply.lines[0].split()[0]}"
            await client.command("RSET")
        return replies
    finally:
        await client.close()


@pytest.mark.parametrize("wildcard, loopback", [("0.0.0.0", "127.0.0.1"), ("[::]", "::1")])
def test_a_literal_naming_any_interface_of_a_wildcard_listener_is_refused(
    tmp_path: Path, wildcard: str, loopback: str
) -> None:
    port = free_port(wildcard.strip("[]"))
    text = re.sub(r'address = "127\.0\.0\.1:\d+"', f'address = "{wildcard}:{port}"', config_text(tmp_path), count=1)
    text = text.replace('trusted_networks = ["127.0.0.1/32"]', 'trusted_networks = ["127.0.0.1/32", "::1/128"]')
    interfaces = interface_addresses()
    others = [a for a in interfaces if not a.is_loopback]
    assert ipaddress.ip_address("127.0.0.1") in interfaces
    with InProcessMailgate(text) as mg:
        recipients = [f"user@{_literal(address)}" for address in interfaces]
        replies = asyncio.run(_rcpt_replies(loopback, mg.port("mx"), recipients + [f"user@{EXTERNAL}"]))
    assert replies.pop(f"user@{EXTERNAL}") == "250 2.1.5"  # the trusted client may relay ...
    assert replies == dict.fromkeys(recipients, "550 5.7.1"), others  # ... but never to ourselves
