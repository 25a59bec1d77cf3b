"""Many clients at once: 300 concurrent connections, each a full transaction, all queued.

Checks that the listener, the sessions and the group commit keep every message apart under
concurrency (each client's unique body is found under the queue id it was given), not speed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import HOSTED, RawSmtp, config_text, queued, split_received, stored_message

pytestmark = pytest.mark.timeout(120)

CLIENTS = 300


def _body(index: int) -> bytes:
    return f"Subject: load {index}\r\n\r\nclient {index} says hello\r\n".encode()


async def _one_client(port: int, index: int, start: asyncio.Event) -> tuple[int, list]:
    client = await RawSmtp.connect(port)
    await start.wait()  # every connection is open before anyone sends
    replies = [await client.reply()]
    replies.append(await client.command(f"EHLO client{index}.test"))
    replies.append(await client.command(f"MAIL FROM:<sender{index}@external.test>"))
    replies.append(await client.command(f"RCPT TO:<user{index}@{HOSTED}>"))
    replies.append(await client.command("DATA"))
    await client.send(_body(index) + b".\r\n")
    replies.append(await client.reply())
    replies.append(await client.command("QUIT"))
    await client.close()
    return index, replies


async def _all_clients(port: int) -> list[tuple[int, list]]:
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one_client(port, index, start)) for index in range(CLIENTS)]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)


def test_300_concurrent_connections_are_all_queued(tmp_path: Path) -> None:
    text = config_text(tmp_path, mx_extra=f"max_connections_per_client = {CLIENTS + 50}")
    with InProcessMailgate(text) as mg:
        results = asyncio.run(_all_clients(mg.port("mx")))

        queue_ids = {}
        for index, replies in results:
            assert [r.code for r in replies] == [220, 250, 250, 250, 354, 250, 221], (index, replies)
            assert replies[5].text.startswith("2.0.0 OK queued as ")
            queue_ids[index] = replies[5].text.rsplit(" ", 1)[1]
        assert len(set(queue_ids.values())) == CLIENTS
        summaries = {summary.queue_id: summary for summary in queued(mg)}
        assert set(summaries) == set(queue_ids.values())
        for index in (0, CLIENTS // 2, CLIENTS - 1):
            queue_id = queue_ids[index]
            assert summaries[queue_id].sender == f"sender{index}@external.test"
            assert split_received(stored_message(mg, queue_id))[1] == _body(index)
