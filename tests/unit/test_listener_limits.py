"""Connection limits of a listener, without sockets: the accept path driven with fake sockets and streams."""

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


class FakeSocket:
    """An accepted socket: what a refusal sends, and whether it was closed."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        self.closed = True


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

        async def streams(conn, tls):
            return None, FakeWriter("")

        listener._streams = streams
        peers = [f"2001:db8:1:2::{i:x}" for i in range(1, 11)] + ["2001:db8:1:3::1"]  # the last: another /64
        sockets = [FakeSocket() for _ in peers]
        for sock, peer in zip(sockets, peers):
            listener._accepted(sock, (peer, 40000))
        await asyncio.sleep(0.05)
        accepted = served
        release.set()
        await asyncio.gather(*listener._sessions)
        return sockets, accepted

    sockets, accepted = asyncio.run(scenario())
    assert accepted == 4  # three from the first /64, one from the other
    refused = [s for s in sockets[:10] if s.sent == TOO_MANY_CONNECTIONS.encode() and s.closed]
    assert len(refused) == 7
    assert sockets[10].sent == b""
