"""Micro-benchmark of the DATA body path: microseconds of CPU per message from the first body
bytes received to the sealed body, without sockets.

Usage: python -m bench.data_path_bench [--runs N] [--messages M] [--read OCTETS] [--lf] [--json]

One message is a realistic text mail (a header section, then lines of about 70 characters of
words, about one line in 40 starting with a dot, so dot-stuffed on the wire) of 4 KiB and of
100 KiB; with `--lf` its lines end in a bare LF, as some scripts send them, and are normalized
to CRLF (`server.bare_newline`'s default). Each message goes through what the server does with
it: `ServerProtocol.receive_data` with the wire bytes in reads of `--read` octets (a socket
read's size, 64 KiB by default; 0 = the whole message in one read), `next_event` until
`MessageEnd`, each `BodyChunk` through the session's storing path (`Session._body` and `_store`
in server/session.py, copied here as `SessionBody`: `HeadBuilder`, the Received header,
`SpoolWriter.write`) and at the end `SpoolWriter.seal()`. The commands before DATA are not
timed. Printed: per size, the median over `--runs` runs of each run's median time per message.
Must not: be imported by mailgate; it is a tool for people. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mailgate.queue.spool_writer import SpoolWriter  # noqa: E402
from mailgate.server.message_head import HeadBuilder  # noqa: E402
from mailgate.smtp import events as ev  # noqa: E402
from mailgate.smtp.server import ServerProtocol, ServerSettings  # noqa: E402

SIZES = (4 * 1024, 100 * 1024)
MEMORY_THRESHOLD = 256 * 1024  # the stores' default (queue/sqlite_store.py)
PRIMING_BLOCK = 4 * 1024 * 1024
COMMANDS = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n"
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will can more "
    "mailgate relay message delivery queue recipient sender header body transport"
).split()
HEADER = (
    b"From: Anna <anna@corp.example>\r\nTo: Ben <ben@hosted.test>\r\nSubject: quarterly figures\r\n"
    b"Date: Sun, 06 Dec 2026 02:00:00 +0000\r\nMessage-ID: <bench.1@corp.example>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
)


def message(size: int, seed: int = 18) -> bytes:
    """A text message of about `size` octets (as stored, before dot-stuffing)."""
    rng = random.Random(seed)
    lines = [HEADER]
    total = len(HEADER)
    while total < size:
        words: list[str] = []
        while sum(len(word) + 1 for word in words) < 68:
            words.append(rng.choice(WORDS))
        line = " ".join(words)
        if rng.random() < 0.025:
            line = "." + line
        encoded = line.encode() + b"\r\n"
        lines.append(encoded)
        total += len(encoded)
    return b"".join(lines)


def wire(body: bytes) -> bytes:
    """The DATA wire form: dot-stuffed (RFC 5321 §4.5.2; only after CRLF), then CRLF.CRLF (a
    body of LF-only lines gets the CRLF before the dot too)."""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def reads(data: bytes, size: int) -> list[bytes]:
    """`data` as a socket delivers it in reads of `size` octets (0: all in one read)."""
    size = size or len(data)
    return [data[offset:offset + size] for offset in range(0, len(data), size)]


def _ready_protocol() -> ServerProtocol:
    """A protocol in DATA mode, the commands before it answered (not timed)."""
    # server.bare_newline's default, "normalize" (config/schema.py)
    protocol = ServerProtocol(ServerSettings("mx.test", 10 * 1024 * 1024, False, False, bare_line_endings="normalize"))
    protocol.receive_data(COMMANDS)
    while True:
        event = protocol.next_event()
        if isinstance(event, ev.NeedData):
            return protocol
        protocol.send(_accept(event))


def _accept(event: object):
    from mailgate.core.reply import RECIPIENT_OK, SENDER_OK, START_DATA, Reply

    return {ev.Hello: Reply(250, "", "Hello"), ev.MailFrom: SENDER_OK, ev.RcptTo: RECIPIENT_OK,
            ev.DataStart: START_DATA}[type(event)]


class SessionBody:
    """What `Session._body`, `_store` and `_end_of_message` do with the body's bytes (keep in step)."""

    def __init__(self, head: HeadBuilder, writer: SpoolWriter, trace: bytes) -> None:
        self.head, self.writer, self.trace = head, writer, trace

    def feed(self, data: bytes) -> None:
        if self.head.done:
            self.writer.write(data)
            return
        rest = self.head.feed(data)
        if self.head.done:
            self.writer.write(self.trace + self.head.completed_head())
            self.writer.write(rest)

    def finish(self) -> None:
        if not self.head.done:
            self.head.finish()
            self.writer.write(self.trace + self.head.completed_head())


def receive_one(chunks: list[bytes], incoming: Path) -> tuple[int, bytes | Path]:
    """Time one message's body path; return (nanoseconds, sealed body)."""
    protocol = _ready_protocol()
    writer = SpoolWriter("BENCH1", incoming, MEMORY_THRESHOLD)
    head = HeadBuilder(add_message_id_and_date=False, hostname="mx.test", queue_id="BENCH1")
    store = SessionBody(head, writer, b"Received: from client.test ([192.0.2.7])\r\n\tby mx.test\r\n")
    started = time.perf_counter_ns()
    pending = iter(chunks)
    while True:
        event = protocol.next_event()
        if isinstance(event, ev.NeedData):
            protocol.receive_data(next(pending))
            continue
        if isinstance(event, ev.BodyChunk):
            store.feed(event.data)
            continue
        assert isinstance(event, ev.MessageEnd), event
        store.finish()
        sealed = writer.seal()
        return time.perf_counter_ns() - started, sealed


def prime_allocator() -> None:
    """Allocate and free one large block, as a running server has done at some point: glibc then
    keeps freed memory instead of handing it back to the kernel at once. Without it the bench
    pays page faults per 100 KiB message (about 60, some 90 us) that a real worker does not
    (0.0-0.2 per message measured with /proc/PID/stat)."""
    block = bytes(PRIMING_BLOCK)
    del block


def measure(size: int, runs: int, messages: int, read_size: int, lf_only: bool) -> dict[str, object]:
    body = message(size)
    if lf_only:
        body = body.replace(b"\r\n", b"\n")
    chunks = reads(wire(body), read_size)
    stored = body.replace(b"\n", b"\r\n") + b"\r\n" if lf_only else body  # as normalized
    per_run: list[float] = []
    faults = 0
    with tempfile.TemporaryDirectory() as directory:
        incoming = Path(directory)
        _, sealed = receive_one(chunks, incoming)
        assert isinstance(sealed, bytes) and sealed.endswith(stored[-200:]), "the body did not survive"
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times = [receive_one(chunks, incoming)[0] for _ in range(messages)]
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            per_run.append(statistics.median(times) / 1000)
    # Page faults: the C library handing freed memory back to the kernel and taking it again
    # costs more than the copies themselves (see docs/performance.md).
    return {"size": size, "reads": len(chunks), "us_per_message": round(statistics.median(per_run), 1),
            "runs_us": [round(value, 1) for value in per_run],
            "page_faults_per_message": round(faults / (runs * messages), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--read", type=int, default=64 * 1024, help="octets per socket read (0: one read)")
    parser.add_argument("--lf", action="store_true", help="LF-only lines (bare LF, normalized to CRLF)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    prime_allocator()
    results = [measure(size, args.runs, args.messages, args.read, args.lf) for size in SIZES]
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            print(f"{result['size'] // 1024:>4} KiB in {result['reads']} read(s): "
                  f"{result['us_per_message']:7.1f} us per message (runs: {result['runs_us']}), "
                  f"{result['page_faults_per_message']} page faults per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
