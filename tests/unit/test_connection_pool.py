"""delivery/pool.py ConnectionPool: idle connections kept per key and QUIT when idle too long,
with one timer for the pool.

Socket-free: the connections are fakes that record when they were QUIT. No timed assertion of
speed: only "never before its idle time", and "eventually" within a bounded wait.
"""

from __future__ import annotations

import asyncio

import pytest

from mailgate.delivery.pool import ConnectionPool

pytestmark = pytest.mark.timeout(20)
IDLE = 0.1


class FakeConnection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.usable = True
        self.quit_at: float | None = None
        self.aborted = False

    async def quit(self) -> None:
        self.quit_at = asyncio.get_running_loop().time()

    def abort(self) -> None:
        self.aborted = True


async def until(condition, limit: float = 5.0) -> None:
    """Bounded wait for `condition()`."""
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_an_idle_connection_is_quit_after_its_idle_time_never_before():
    async def scenario():
        pool = ConnectionPool(IDLE, 4)
        loop = asyncio.get_running_loop()
        connections, put_at = [], {}
        for number in range(5):  # put at staggered times, under several keys
            connection = FakeConnection(f"c{number}")
            put_at[connection.name] = loop.time()
            pool.put(f"key{number % 2}", connection)
            connections.append(connection)
            await asyncio.sleep(IDLE / 4)
        await until(lambda: all(c.quit_at is not None for c in connections))
        await pool.close()
        return connections, put_at

    connections, put_at = asyncio.run(scenario())
    for connection in connections:
        assert connection.quit_at - put_at[connection.name] >= IDLE, connection.name


def test_a_connection_taken_and_put_back_starts_its_idle_time_again():
    async def scenario():
        pool = ConnectionPool(IDLE, 4)
        loop = asyncio.get_running_loop()
        connection = FakeConnection("reused")
        pool.put("key", connection)
        await asyncio.sleep(IDLE * 0.6)
        assert pool.take("key") is connection
        pool.put("key", connection)
        put_again = loop.time()
        await until(lambda: connection.quit_at is not None)
        await pool.close()
        return connection.quit_at - put_again

    assert asyncio.run(scenario()) >= IDLE


def test_take_gives_the_newest_live_connection_and_drops_dead_ones():
    async def scenario():
        pool = ConnectionPool(3600, 4)
        old, dead = FakeConnection("old"), FakeConnection("dead")
        pool.put("key", old)
        pool.put("key", dead)
        dead.usable = False  # the peer closed it while it was idle
        taken = pool.take("key")
        second = pool.take("key")
        await pool.close()
        return taken, second, dead.aborted

    taken, second, dead_aborted = asyncio.run(scenario())
    assert taken.name == "old" and second is None and dead_aborted


def test_past_the_cap_a_connection_is_quit_at_once_and_close_quits_the_rest():
    async def scenario():
        pool = ConnectionPool(3600, 2)
        connections = [FakeConnection(f"c{number}") for number in range(3)]
        for connection in connections:
            pool.put("key", connection)
        await until(lambda: connections[2].quit_at is not None)
        kept_idle = [c.quit_at is None for c in connections[:2]]
        await pool.close()
        return kept_idle, connections

    kept_idle, connections = asyncio.run(scenario())
    assert kept_idle == [True, True]
    assert all(connection.quit_at is not None for connection in connections)


def test_a_zero_idle_time_quits_at_once():
    async def scenario():
        pool = ConnectionPool(0, 4)
        connection = FakeConnection("c")
        pool.put("key", connection)
        await until(lambda: connection.quit_at is not None)
        gone = pool.take("key") is None
        await pool.close()
        return gone

    assert asyncio.run(scenario())
