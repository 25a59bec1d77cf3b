"""The session's storing path for a body: `HeadBuilder` finds the header's end in any cutting
of the body into chunks (RFC 5322 §2.1: the first empty line), and `SpoolWriter` keeps the
written pieces themselves, so what it gives back is exactly what was written, whatever the
caller does with its own buffers afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgate.queue.spool_writer import SpoolWriter
from mailgate.server.message_head import HeadBuilder

pytestmark = pytest.mark.timeout(60)

LINES = st.lists(
    st.sampled_from([b"Received: x\r\n", b"Subject: s\r\n", b"\r\n", b"\n", b"\r", b"a: b\n", b"body\r\n", b"x"]),
    max_size=30,
).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=1000), max_size=8)


def reference_head(message: bytes) -> tuple[bytes, bytes]:
    """(header, the rest from the empty line on), one line at a time; no empty line: all header."""
    position = 0
    while (newline := message.find(b"\n", position)) >= 0:
        if message[position:newline + 1] in (b"\n", b"\r\n"):
            return message[:position], message[position:]
        position = newline + 1
    return message, b""


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


@settings(max_examples=300, deadline=None)
@given(LINES, CUTS)
@example(b"Subject: s\r\n\r\nbody", [11, 12, 13])  # cut inside the CRLF CRLF
@example(b"a: b\r", [5])  # the empty line's CR in one chunk, its LF in the next
def test_head_builder_splits_any_cutting_like_the_reference(message: bytes, points: list[int]) -> None:
    head = HeadBuilder(add_message_id_and_date=False, hostname="mx.test", queue_id="Q1")
    body = b""
    for chunk in cut(message, points):
        if head.done:  # as Session._body: after the header, chunks go straight to the writer
            body += chunk
            continue
        rest = head.feed(chunk)
        assert isinstance(rest, bytes)
        body += rest
    if not head.done:
        head.finish()
    expected_head, expected_body = reference_head(message)
    lines = expected_head.lower().split(b"\n")
    assert head.received_count == sum(line.startswith(b"received:") for line in lines)
    assert (head.completed_head(), body) == (expected_head, expected_body)


def test_spool_writer_keeps_what_was_written_not_what_the_caller_changed_later(tmp_path: Path) -> None:
    writer = SpoolWriter("Q1", tmp_path, memory_threshold=1024)
    reused = bytearray(b"first ")
    writer.write(reused)
    reused[:] = b"XXXXXX"  # a caller reusing its buffer must not change the message
    writer.write(memoryview(b"second "))
    writer.write(b"third")
    with writer.open_reader() as reader:
        assert reader.read() == b"first second third"
    writer.write(b" fourth")  # read once, then written again: still in order
    assert writer.seal() == b"first second third fourth" and writer.size == 25


def test_spool_writer_gives_a_lone_piece_back_as_it_is(tmp_path: Path) -> None:
    writer = SpoolWriter("Q1", tmp_path, memory_threshold=1024)
    body = b"Subject: one piece\r\n\r\nbody\r\n"
    writer.write(body)
    assert writer.seal() is body  # no copy of a one-piece message


def test_spool_writer_spills_every_piece_in_order_past_the_threshold(tmp_path: Path) -> None:
    writer = SpoolWriter("Q1", tmp_path, memory_threshold=10)
    pieces = [b"abcd", bytearray(b"efgh"), b"ijklmnop", b"q"]
    for piece in pieces:
        writer.write(piece)
    sealed = writer.seal()
    assert isinstance(sealed, Path) and sealed.read_bytes() == b"abcdefghijklmnopq"
    writer.discard()
    assert not sealed.exists()
