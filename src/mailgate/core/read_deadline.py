"""Read time-outs without a new timer for every read.

Owns: "no more than N seconds waiting for the peer" on a stream (RFC 5321 §4.5.3.2: the client's
and the server's time-outs), with one timer per stream that is only moved when it fires, instead
of `asyncio.timeout()` making and cancelling a timer on every read (measurably costly at hundreds
of messages per second). Inbound sessions give each read its own time-out; an outbound
connection gives a whole reply one time-out over all the reads it takes, so a next hop that
drips a reply byte by byte cannot stretch it.
Must not: know about SMTP; it only bounds reads.
"""

from __future__ import annotations

import asyncio


class ReadDeadline:
    """The reads of one stream. Only one task reads at a time, but it need not be the same task
    each time (a pooled outbound connection serves one delivery after another)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._deadline = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._reading = False
        self._expired = False

    def now(self) -> float:
        """The loop's clock, which `read`'s `started` is measured by."""
        return self._loop.time()

    async def read(self, reader: asyncio.StreamReader, size: int, timeout: float, started: float | None = None) -> bytes:
        """`reader.read(size)`, raising TimeoutError when nothing arrives within `timeout`
        seconds of `started` (a `now()`; by default, of this call)."""
        self._deadline = (self._loop.time() if started is None else started) + timeout
        self._task = asyncio.current_task()
        if self._handle is not None and self._handle.when() > self._deadline:
            self._handle.cancel()  # a shorter time-out than the timer's (the end of a DATA deadline)
            self._handle = None
        if self._handle is None:
            self._handle = self._loop.call_at(self._deadline, self._fire)
        self._reading = True
        try:
            return await reader.read(size)
        except asyncio.CancelledError:
            if self._expired and self._task is not None:
                self._expired = False
                self._task.uncancel()
                raise TimeoutError from None
            raise
        finally:
            self._reading = False

    def _fire(self) -> None:
        self._handle = None
        if not self._reading:
            return  # the next read starts a new timer
        if self._loop.time() >= self._deadline and self._task is not None:
            self._expired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(self._deadline, self._fire)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
