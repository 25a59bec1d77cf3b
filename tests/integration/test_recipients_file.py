"""The file recipient source through SMTP: a real mailgate process, a map file it re-reads
when the file changes and on SIGHUP (a broken file keeps the old map), and a million entries."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from mailgate.recipients.mapfile import MapFileSource
from mailgate.recipients.source import LookupStatus
from tests.support.mailgate_server import MailgateProcess
from tests.support.receiving import HOSTED, config_text, rcpt_replies


async def rcpt(port: int, address: str) -> str:
    return (await rcpt_replies(port, [address]))[0]


def eventually(port: int, address: str, prefix: str, timeout: float = 15.0) -> str:
    """The reply once every worker gives it (each worker follows the file on its own)."""
    deadline = time.monotonic() + timeout
    streak = 0
    while True:
        reply = asyncio.run(rcpt(port, address))
        streak = streak + 1 if reply.startswith(prefix) else 0
        if streak >= 6 or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


def test_map_file_is_followed_on_change_and_on_sighup(tmp_path) -> None:
    recipients = tmp_path / "recipients"
    recipients.write_text(f"alice@{HOSTED}\n")
    text = config_text(tmp_path).replace(
        f'[[domain]]\nname = "{HOSTED}"\n', f'[[domain]]\nname = "{HOSTED}"\nrecipient_sources = ["users"]\n'
    ) + f'\n[[recipient_source]]\nname = "users"\ntype = "file"\npath = "{recipients}"\n'
    port = int(text.split('address = "127.0.0.1:')[1].split('"')[0])
    server = MailgateProcess(tmp_path, text).start(wait=("127.0.0.1", port))
    try:
        assert asyncio.run(rcpt(port, f"alice@{HOSTED}")).startswith("250")
        assert asyncio.run(rcpt(port, f"bob@{HOSTED}")).startswith("550 5.1.1")
        recipients.write_text(f"alice@{HOSTED}\nbob@{HOSTED}\n")  # noticed without a signal
        assert eventually(port, f"bob@{HOSTED}", "250").startswith("250")
        recipients.write_text("this is not an address\n")
        os.kill(server.process.pid, signal.SIGHUP)
        time.sleep(1.5)
        assert asyncio.run(rcpt(port, f"bob@{HOSTED}")).startswith("250")  # the old map stays
        assert "keeping the previous 2 entries" in server.log()
    finally:
        assert server.stop() == 0


def test_a_million_entries(tmp_path) -> None:
    path = tmp_path / "recipients"
    with path.open("w") as handle:
        for index in range(1_000_000):
            handle.write(f"user{index}@{HOSTED}\n")
    source = MapFileSource("users", path)
    assert len(source.map) == 1_000_000 and source.map.nbytes == 8_000_000

    async def statuses() -> list[LookupStatus]:
        return [(await source.lookup(address)).status for address in (
            f"user0@{HOSTED}", f"user999999@{HOSTED}", f"USER500000@{HOSTED}", f"user1000000@{HOSTED}", f"user@{HOSTED}",
        )]

    assert asyncio.run(statuses()) == [LookupStatus.FOUND] * 3 + [LookupStatus.NOT_FOUND] * 2

