"""A flood of connections from one client does not starve a normal client; idle or slow clients
cannot hold their connections for ever (SPEC §4, issue "Abuse limits").

Mechanism under test: the per-client connection cap of the listener (421 4.7.0 beyond it, RFC 5321
§4.2.3) keeps one address to its share of `max_connections`, and the command time-out (RFC 5321
§4.5.3.2.7) ends connections that hold a slot without using it.
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import HOSTED, UNTRUSTED_SOURCE, RawSmtp, config_text, queued

pytestmark = pytest.mark.timeout(60)

PER_CLIENT = 5
MESSAGE = b"From: <normal@external.test>\r\nSubject: still served\r\n\r\nhello\r\n"


def _mailgate(tmp_path: Path, command_timeout: int = 300) -> InProcessMailgate:
    extra = f"max_connections = 50\nmax_connections_per_client = {PER_CLIENT}\ncommand_timeout = {command_timeout}\n"
    return InProcessMailgate(config_text(tmp_path, mx_extra=extra))


def _send_normally(port: int) -> None:
    """A normal client (127.0.0.1), blocking smtplib: EHLO and one message."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="normal.test", timeout=15) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.sendmail("normal@external.test", [f"user@{HOSTED}"], MESSAGE) == {}


def test_a_flood_from_one_address_does_not_starve_a_normal_client(tmp_path: Path) -> None:
    with _mailgate(tmp_path) as mailgate:
        port = mailgate.port("mx")

        async def scenario() -> str:
            idle = []
            try:
                for _ in range(PER_CLIENT):
                    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
                    assert (await client.reply()).code == 220
                    idle.append(client)
                one_more = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
                refusal = await one_more.reply()
                assert await one_more.at_eof()
                await one_more.close()
                # While the flood holds its share, a normal client is served as usual.
                await asyncio.to_thread(_send_normally, port)
                return str(refusal)
            finally:
                for client in idle:
                    await client.close()

        assert asyncio.run(scenario()) == "421 4.7.0 Too many connections, try again later"
        assert [m.sender for m in queued(mailgate)] == ["normal@external.test"]


def test_idle_connections_are_ended_so_they_hold_no_slot_for_ever(tmp_path: Path) -> None:
    with _mailgate(tmp_path, command_timeout=1) as mailgate:
        port = mailgate.port("mx")

        async def scenario() -> list[str]:
            idle = []
            for _ in range(PER_CLIENT):
                client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
                assert (await client.reply()).code == 220
                idle.append(client)
            # Each idle client is told why and disconnected after the command time-out.
            farewells = [str(await client.reply()) for client in idle]
            assert all([await client.at_eof() for client in idle])
            for client in idle:
                await client.close()
            # The address has its slots back: a new connection from it is greeted.
            again = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
            greeting = await again.reply()
            await again.command("QUIT")
            await again.close()
            return farewells + [str(greeting.code)]

        outcome = asyncio.run(scenario())
        assert outcome == ["421 4.4.2 Timeout exceeded, closing connection"] * PER_CLIENT + ["220"]
