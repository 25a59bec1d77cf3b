"""Connection limits of a listener, without sockets: the accept path driven with fake streams."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.core.reply import TOO_MANY_CONNECTIONS
from mailgate.server.listener import Listener, ListenerSettings

pytestmark = pytest.mark.timeout(30)


class FakeWriter:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default=None):
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_ipv6_clients_are_counted_by_their_64_prefix() -> None:
    """Issue 21 item 6: one host owns its /64; counting each exact address let it open
    max_connections_per_client connections from every address of the prefix."""

    async def scenario() -> tuple[list[FakeWriter], int]:
        release = asyncio.Event()
        served = 0

        async def handler(reader, writer, listener, client) -> None:
            nonlocal served
            served += 1
            await release.wait()

        settings = ListenerSettings(
            name="mx", host="::1", port=0, implicit_tls=None, max_connections=100, max_connections_per_client=3,
        )
        listener = Listener(settings, handler)
        writers = [FakeWriter(f"2001:db8:1:2::{i:x}") for i in range(1, 11)]
        other = FakeWriter("2001:db8:1:3::1")  # another /64
        tasks = [asyncio.create_task(listener._accept(None, w)) for w in [*writers, other]]
        await asyncio.sleep(0.05)
        accepted = served
        release.set()
        await asyncio.gather(*tasks)
        return writers + [other], accepted

    writers, accepted = asyncio.run(scenario())
    assert accepted == 4  # three from the first /64, one from the other
    refused = [w for w in writers[:10] if w.written == TOO_MANY_CONNECTIONS.encode()]
    assert len(refused) == 7
    assert writers[10].written == b""
