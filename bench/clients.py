"""The load the benchmark puts on a server under test.

Owns: (1) running Postfix's smtp-source (N messages over C parallel sessions) and timing it,
(2) our own small SMTP client that sends at a steady rate and times end-of-data to the 250 reply,
(3) opening many idle connections at once and timing until every one has its 220 greeting.
Must NOT: start servers or read their processes (peers and procstat do that).

Hand-written client: smtplib is blocking and cannot hold 5,000 connections or keep a steady
open-loop rate; the SMTP subset here (EHLO, MAIL, RCPT, DATA, QUIT, RFC 5321) is tiny.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = "a@src.test"
RECIPIENT = "b@hosted.test"
REPLY_TIMEOUT_S = 30.0  # a bench bound, far below RFC 5321 §4.5.3.2's 10 minutes for DATA end
MAX_LATENCY_SESSIONS = 200


class LoadError(RuntimeError):
    """The load generator failed: the server refused or dropped what it should have taken."""


def run_smtp_source(
    port: int, messages: int, sessions: int, size: int, timeout: float
) -> tuple[float, float]:
    """smtp-source -s C -m N -l SIZE into 127.0.0.1:port; (start, end) monotonic times."""
    command = [
        SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
        "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}",
    ]
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                               check=False)
    finished = time.monotonic()
    if completed.returncode != 0:
        raise LoadError(f"smtp-source exited {completed.returncode}: {completed.stderr.strip()}")
    return started, finished


def message_bytes(size: int) -> bytes:
    """A message of about `size` bytes: a few headers and 78-character lines (no dot-stuffing)."""
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench latency probe\r\n\r\n"
    ).encode()
    line = b"x" * 78 + b"\r\n"
    lines = max(1, (size - len(head)) // len(line))
    return head + line * lines


class _Session:
    """One SMTP session that sends messages one after another (RFC 5321 §3.3)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        # Drain means "all bytes handed to the kernel", so the clock starts after the dot left.
        writer.transport.set_write_buffer_limits(high=0)

    @classmethod
    async def open(cls, port: int) -> _Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        session = cls(reader, writer)
        await session._expect(220)
        await session._command(b"EHLO bench.test", 250)
        return session

    async def send(self, body: bytes) -> float:
        """Sends one message; seconds from the end-of-data dot to the 250 reply."""
        await self._command(f"MAIL FROM:<{SENDER}>".encode(), 250)
        await self._command(f"RCPT TO:<{RECIPIENT}>".encode(), 250)
        await self._command(b"DATA", 354)
        self._writer.write(body)
        await self._writer.drain()
        self._writer.write(b".\r\n")
        await self._writer.drain()
        started = time.perf_counter()
        await self._expect(250)
        return time.perf_counter() - started

    async def close(self) -> None:
        try:
            self._writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self._reader.read(512), REPLY_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            pass
        self._writer.close()

    def abort(self) -> None:
        """Drops a session left in an unknown state (after an error)."""
        self._writer.close()

    async def _command(self, line: bytes, expected: int) -> None:
        self._writer.write(line + b"\r\n")
        await self._writer.drain()
        await self._expect(expected)

    async def _expect(self, expected: int) -> None:
        while True:
            line = await asyncio.wait_for(self._reader.readline(), REPLY_TIMEOUT_S)
            if not line:
                raise LoadError("connection closed by the server")
            if line[3:4] != b"-":
                break
        if not line.startswith(str(expected).encode()):
            raise LoadError(f"expected {expected}, got {line.decode(errors='replace').strip()}")


@dataclass
class LatencyResult:
    seconds: list[float]
    errors: list[str]


def acceptance_latencies(port: int, rate: float, count: int, size: int) -> LatencyResult:
    """Sends `count` messages at a steady `rate` per second (open loop, sessions reused)."""
    return asyncio.run(_latencies(port, rate, count, message_bytes(size)))


async def _latencies(port: int, rate: float, count: int, body: bytes) -> LatencyResult:
    idle: list[_Session] = []
    result = LatencyResult([], [])
    session_slots = asyncio.Semaphore(MAX_LATENCY_SESSIONS)

    async def send_one() -> None:
        async with session_slots:
            session: _Session | None = None
            try:
                session = idle.pop() if idle else await _Session.open(port)
                result.seconds.append(await session.send(body))
                idle.append(session)
            except (OSError, LoadError, asyncio.TimeoutError) as error:
                result.errors.append(f"{type(error).__name__}: {error}")
                if session is not None:
                    session.abort()

    started = time.monotonic()
    tasks = []
    for index in range(count):
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        tasks.append(asyncio.create_task(send_one()))
    await asyncio.gather(*tasks)
    await asyncio.gather(*(session.close() for session in idle))
    return result


@dataclass
class IdleConnectionResult:
    requested: int
    greeted: int
    seconds_to_greet_all: float | None
    held_measurement: int
    fresh_client_seconds: list[float]  # connect to the EHLO reply, one per probe, while held
    fresh_client_errors: list[str]


IDLE_SOURCES = 50  # the idle connections come from 127.0.0.2 .. 127.0.0.51, the probes from .1
FRESH_PROBES = 5
FRESH_PROBE_TIMEOUT_S = 5.0  # a server that serves no new client (Postfix past its process limit)


def idle_connections(
    port: int, count: int, deadline: float, measure_while_held: Callable[[], int]
) -> IdleConnectionResult:
    """Opens `count` connections at once; waits (bounded) for every 220 greeting.

    `measure_while_held` runs while the connections are all still open (e.g. the server's
    memory); the connections are then closed without QUIT.
    """
    return asyncio.run(_idle_connections(port, count, deadline, measure_while_held))


async def _idle_connections(
    port: int, count: int, deadline: float, measure_while_held: Callable[[], int]
) -> IdleConnectionResult:
    writers: list[asyncio.StreamWriter] = []
    greeted_at: list[float] = []

    async def open_one(number: int) -> None:
        source = f"127.0.0.{2 + number % IDLE_SOURCES}"  # past one address's ephemeral ports
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writers.append(writer)
        line = await reader.readline()
        if line.startswith(b"220"):
            greeted_at.append(time.monotonic())

    started = time.monotonic()
    tasks = [asyncio.create_task(open_one(number)) for number in range(count)]
    await asyncio.wait(tasks, timeout=deadline)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    held = await asyncio.to_thread(measure_while_held)
    fresh: list[float] = []
    fresh_errors: list[str] = []
    for _ in range(FRESH_PROBES):  # a new client while they are all held: greeted and served?
        try:
            fresh.append(await asyncio.wait_for(_greeting_and_ehlo(port), FRESH_PROBE_TIMEOUT_S))
        except (OSError, LoadError, asyncio.TimeoutError) as error:
            fresh_errors.append(f"{type(error).__name__}: {error}")
        await asyncio.sleep(0.2)
    for writer in writers:
        writer.close()
    greeted = len(greeted_at)
    all_greeted = greeted == count
    return IdleConnectionResult(
        requested=count,
        greeted=greeted,
        seconds_to_greet_all=max(greeted_at) - started if all_greeted else None,
        held_measurement=held,
        fresh_client_seconds=fresh,
        fresh_client_errors=fresh_errors,
    )


async def _greeting_and_ehlo(port: int) -> float:
    """Seconds from connecting to the end of the EHLO reply (RFC 5321 §4.3.2: 220, then 250)."""
    started = time.perf_counter()
    session = await _Session.open(port)
    elapsed = time.perf_counter() - started
    await session.close()
    return elapsed
