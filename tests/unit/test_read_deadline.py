"""core/read_deadline.py: one timer per stream, reads bounded alone or as a whole reply.

Socket-free: a StreamReader fed by hand. The time-outs are short and nothing is a timed
assertion: each test checks what happened (data, TimeoutError, CancelledError), never how long.
"""

from __future__ import annotations

import asyncio

import pytest

from mailgate.core.read_deadline import ReadDeadline

pytestmark = pytest.mark.timeout(20)
SHORT = 0.05


def feed_later(reader: asyncio.StreamReader, data: bytes, delay: float) -> None:
    asyncio.get_running_loop().call_later(delay, reader.feed_data, data)


def test_a_read_returns_what_arrives_in_time():
    async def scenario():
        reader, deadline = asyncio.StreamReader(), ReadDeadline()
        feed_later(reader, b"EHLO x\r\n", 0.01)
        return await deadline.read(reader, 100, 5.0)

    assert asyncio.run(scenario()) == b"EHLO x\r\n"


def test_silence_raises_timeout_and_leaves_the_task_usable():
    async def scenario():
        reader, deadline = asyncio.StreamReader(), ReadDeadline()
        with pytest.raises(TimeoutError):
            await deadline.read(reader, 100, SHORT)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the expiry's cancel was taken back
        await asyncio.sleep(0.01)  # not cancelled again
        feed_later(reader, b"late", 0.0)
        return await deadline.read(reader, 100, 5.0)

    assert asyncio.run(scenario()) == b"late"


def test_a_shorter_time_out_after_a_longer_one_is_kept():
    async def scenario():
        reader, deadline = asyncio.StreamReader(), ReadDeadline()
        reader.feed_data(b"first")
        assert await deadline.read(reader, 100, 3600.0) == b"first"
        with pytest.raises(TimeoutError):  # the hour-long timer must not hold this one
            await deadline.read(reader, 100, SHORT)

    asyncio.run(scenario())


def test_a_reply_dripped_octet_by_octet_is_bounded_as_a_whole():
    """Every read gets an octet, but reads sharing `started` share one time-out."""

    async def scenario():
        reader, deadline = asyncio.StreamReader(), ReadDeadline()
        loop = asyncio.get_running_loop()
        drip = loop.call_later(0.0, lambda: None)

        def next_octet() -> None:
            nonlocal drip
            reader.feed_data(b"x")
            drip = loop.call_later(0.01, next_octet)

        next_octet()
        started = deadline.now()
        received = b""
        try:
            with pytest.raises(TimeoutError):
                for _ in range(10_000):  # bounded: far more octets than the time-out lets in
                    received += await deadline.read(reader, 1, SHORT * 2, started)
        finally:
            drip.cancel()
        return received

    received = asyncio.run(scenario())
    assert 0 < len(received) < 10_000


def test_the_timer_of_one_task_never_cancels_the_next_reader():
    """A pooled connection is made by one delivery task and then serves others: a timer armed
    by the first fires while the next is busy elsewhere and must leave it alone, and the next
    one's own time-out must end its own read."""

    async def scenario():
        reader = asyncio.StreamReader()

        async def first() -> tuple[ReadDeadline, bytes]:
            deadline = ReadDeadline()  # made here, as SmtpConnection is, by the first delivery
            reader.feed_data(b"250 first\r\n")
            return deadline, await deadline.read(reader, 100, SHORT)

        async def second(deadline: ReadDeadline) -> bytes:
            await asyncio.sleep(SHORT * 3)  # the first task's timer fires meanwhile
            feed_later(reader, b"250 second\r\n", 0.01)
            got = await deadline.read(reader, 100, 5.0)
            with pytest.raises(TimeoutError):
                await deadline.read(reader, 100, SHORT)
            return got

        deadline, got_first = await asyncio.create_task(first())
        later = asyncio.create_task(second(deadline))
        done, _ = await asyncio.wait({later}, timeout=5.0)  # bounded: a lost time-out hangs
        assert later in done, "the second task's read was never timed out"
        return got_first, later.result()

    assert asyncio.run(scenario()) == (b"250 first\r\n", b"250 second\r\n")


def test_a_cancel_from_elsewhere_stays_a_cancel():
    async def scenario():
        reader, deadline = asyncio.StreamReader(), ReadDeadline()
        reading = asyncio.create_task(deadline.read(reader, 100, 3600.0))
        await asyncio.sleep(0.01)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        deadline.close()

    asyncio.run(scenario())
