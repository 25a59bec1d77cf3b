"""The DATA scanner and the body inspector against a plain line-by-line reference, for any body
and any cutting of it into reads (inside CRLF.CRLF, inside CRLF ".", a CR at a read's end):
end of data only at CRLF "." CRLF (RFC 5321 §4.1.1.4, never at a bare CR or LF), dot-unstuffing
(§4.5.2), size and oversize (RFC 1870), bare line endings, normalize, long lines (§4.5.3.1.6),
and the same facts for BDAT (RFC 3030)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgate.smtp import events as ev
from mailgate.smtp.data import BodyInspector, DotBodyScanner
from tests.support.smtp_driver import Driver, make_settings

pytestmark = pytest.mark.timeout(120)

OPEN = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n"
MODES = ("normalize", "reject", "no")

# Pieces that make terminators, stuffed dots and bare line endings likely, plus any octet.
TOKENS = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.", b"\r\n.\r\n", b"a", b"text", b"\x00"])
STREAMS = st.lists(st.one_of(TOKENS, st.binary(max_size=3)), max_size=80).map(b"".join)


# --- the reference: one line at a time, no cleverness ---------------------------------------


def reference_data(stream: bytes) -> tuple[bytes, int | None]:
    """(unstuffed body, octets up to and including the end of data or None if it never came).
    Lines end only at CRLF; a line "." ends the data; a line's leading dot is dropped."""
    body, position = b"", 0
    while True:
        if stream.startswith(b".\r\n", position):
            return body, position + 3
        line_end = stream.find(b"\r\n", position)
        line = stream[position:] if line_end < 0 else stream[position:line_end + 2]
        if line.startswith(b"."):
            line = line[1:]
        body += line
        if line_end < 0:
            return body, None
        position = line_end + 2


def reference_normalized(body: bytes) -> bytes:
    """Every CRLF kept, every bare CR or LF made CRLF."""
    out, index = b"", 0
    while index < len(body):
        octet = body[index:index + 1]
        if octet == b"\r" and body[index + 1:index + 2] == b"\n":
            index += 1
        out += b"\r\n" if octet in (b"\r", b"\n") else octet
        index += 1
    return out


def reference_bare(body: bytes) -> bool:
    for index, octet in enumerate(body):
        if octet == 0x0D and body[index + 1:index + 2] != b"\n":
            return True
        if octet == 0x0A and body[index - 1:index] != b"\r":
            return True
    return False


def reference_long_line(text: bytes, max_line: int) -> bool:
    """A line of max_line octets or more before its LF (or before the end)."""
    return any(len(line) >= max_line for line in text.split(b"\n"))


def reference_end(body: bytes, mode: str, max_size: int, max_line: int) -> tuple[bytes, ev.MessageEnd]:
    stored = reference_normalized(body) if mode == "normalize" else body
    oversize = bool(max_size) and len(body) > max_size
    end = ev.MessageEnd(len(body), oversize, reference_bare(body), reference_long_line(stored, max_line))
    return stored, end


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


# --- the scanner alone ---------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(STREAMS, CUTS)
@example(b"a\r\n.\r\nrest", [1, 2, 3, 4, 5, 6])  # cut at every octet of CRLF.CRLF
@example(b".\r\n", [1, 2])  # the end of data as the very first line, cut
@example(b"a\r\n..b\r\n.\r\n", [2, 3])  # cut inside CRLF "." of a stuffed dot
@example(b"a\r", [2])  # a CR at the end of a read
@example(b"a\r\n.\n.\r\n\r.\r\n", [3])  # bare LF / bare CR variants are body
@example(b"\r\n..x" * 40 + b"\r\n.\r\n", [7, 100])  # many stuffed dots in one read
@example(b"x\r\n..\r\n..\r\n" * 20 + b"\r\n.\r\n", [])
def test_scanner_matches_the_reference_for_any_reads(stream: bytes, points: list[int]) -> None:
    scanner, buffer, body, consumed_total, done = DotBodyScanner(), bytearray(), b"", 0, False
    for read in cut(stream, points):
        buffer += read
        while not done:  # as ServerProtocol: scan until nothing more comes out of the buffer
            out, consumed, done = scanner.scan(buffer)
            assert isinstance(out, bytes)
            del buffer[:consumed]  # fails if the scanner left its buffer exported
            body += out
            consumed_total += consumed
            if not consumed:
                break
        if done:
            break
    expected_body, expected_end = reference_data(stream)
    assert done is (expected_end is not None)
    if done:
        assert (body, consumed_total) == (expected_body, expected_end)
    else:  # at most a possible terminator's start is held back, never body past it
        assert expected_body.startswith(body) and len(expected_body) - len(body) <= 4


# --- the whole server protocol: DATA and BDAT ---------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(STREAMS, CUTS, st.sampled_from(MODES), st.sampled_from([0, 40, 200]), st.sampled_from([1, 3, 8, 1000]))
@example(b"a\r\n.b\r", [4], "normalize", 0, 8)
def test_data_transaction_matches_the_reference(
    stream: bytes, points: list[int], mode: str, max_size: int, max_line: int
) -> None:
    wire = stream + b"\r\n.\r\n"  # so that the data always ends, at the first CRLF.CRLF
    driver = Driver(make_settings(bare_line_endings=mode, max_message_size=max_size, max_text_line=max_line))
    driver.feed(OPEN + b"DATA\r\n")
    for read in cut(wire, points):
        driver.feed(read)
    body, end_at = reference_data(wire)
    assert end_at is not None
    stored, end = reference_end(body, mode, max_size, max_line)
    received, got = driver.messages[0]
    assert got == end
    if not end.oversize:
        assert received == stored


@settings(max_examples=200, deadline=None)
@given(STREAMS, CUTS, CUTS, st.sampled_from(MODES), st.sampled_from([1, 3, 8, 1000]))
@example(b"a\r\nb", [2], [], "normalize", 1000)  # a CRLF split between BDAT chunks
def test_bdat_transaction_matches_the_reference(
    content: bytes, chunk_points: list[int], read_points: list[int], mode: str, max_line: int
) -> None:
    chunks = cut(content, chunk_points) or [b""]
    wire = b"".join(
        b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if index == len(chunks) - 1 else b"") + chunk
        for index, chunk in enumerate(chunks)
    )
    driver = Driver(make_settings(bare_line_endings=mode, max_message_size=0, max_text_line=max_line))
    driver.feed(OPEN)
    for read in cut(wire, read_points):
        driver.feed(read)
    stored, end = reference_end(content, mode, 0, max_line)
    assert driver.messages == [(stored, end)]


@settings(max_examples=300, deadline=None)
@given(STREAMS, CUTS, st.sampled_from([1, 3, 8]))
@example(b"ab\r\nwxyz", [], 4)  # a last line of exactly max_line octets, no LF after it
@example(b"ab\r\nwxyz", [4], 4)
def test_inspector_alone_matches_the_reference(body: bytes, points: list[int], max_line: int) -> None:
    inspector = BodyInspector(0, max_line)
    passed = b"".join(out for out in (inspector.inspect(piece) for piece in cut(body, points)) if out)
    assert passed == body
    expected = reference_end(body, "no", 0, max_line)[1]
    assert (inspector.size, inspector.bare_line_ending, inspector.long_line) == (
        expected.size, expected.bare_line_ending, expected.long_line
    )
