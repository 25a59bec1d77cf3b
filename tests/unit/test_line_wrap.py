"""Breaking lines over 998 octets for delivery (RFC 5322 §2.1.1), streamed in any chunking:
no line of the output is too long, header fields unfold to what they were, body lines join back
by dropping the CRLF SP that was inserted, and short lines are never touched."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp.line_wrap import MAX_LINE, LineWrapper, wire_form, wrap_message

pytestmark = pytest.mark.timeout(60)


def _lines(message: bytes) -> list[bytes]:
    return message.replace(b"\r\n", b"\n").split(b"\n")


def _streamed(message: bytes, cuts: list[int], limit: int = MAX_LINE) -> bytes:
    wrapper, out, previous = LineWrapper(limit), b"", 0
    for cut in sorted(set(cuts)) + [len(message)]:
        out += wrapper.feed(message[previous:cut])
        previous = cut
    return out + wrapper.finish()


def test_a_long_header_field_is_folded_at_whitespace_and_unfolds_to_the_same_field() -> None:
    subject = b"Subject: " + b" ".join(b"word%d" % n for n in range(400))
    message = subject + b"\r\nFrom: a@b.test\r\n\r\nbody\r\n"
    wrapped = wrap_message(message)
    assert all(len(line) <= MAX_LINE for line in _lines(wrapped))
    head = wrapped.split(b"\r\n\r\n")[0]
    assert re.sub(rb"\r\n(?=[ \t])", b"", head) == subject + b"\r\nFrom: a@b.test"  # RFC 5322 §2.2.3
    assert wrapped.endswith(b"\r\nFrom: a@b.test\r\n\r\nbody\r\n")


def test_a_header_without_whitespace_and_a_body_line_are_broken_with_crlf_sp() -> None:
    header = b"X-Token: " + b"t" * 2500
    body_line = b"<p>" + b"h" * 3000 + b"</p>"
    message = header + b"\r\n\r\n" + body_line + b"\r\nend\r\n"
    wrapped = wrap_message(message)
    assert all(len(line) <= MAX_LINE for line in _lines(wrapped))
    head, body = wrapped.split(b"\r\n\r\n", 1)
    # The field is folded once at its only whitespace, then broken twice by CRLF SP.
    assert head.replace(b"\r\n ", b"") == header.replace(b" ", b"") and head.count(b"\r\n ") == 3
    assert body.replace(b"\r\n ", b"") == body_line + b"\r\nend\r\n"
    assert body.count(b"\r\n ") == 3  # 3007 octets: 998, then 997 + 997 + 15 after each SP


@pytest.mark.parametrize("length", [997, 998])
def test_lines_up_to_the_limit_are_left_alone(length: int) -> None:
    message = b"H: " + b"v" * (length - 3) + b"\r\n\r\n" + b"b" * length + b"\r\n" + b"c" * length
    assert wrap_message(message) == message
    if length == MAX_LINE:
        assert wrap_message(message + b"c").endswith(b"c" * 998 + b"\r\n c")  # 999: broken


def test_wire_form_makes_line_endings_crlf_and_breaks_lines() -> None:
    message = b"Subject: x\n\n" + b"a" * 1500 + b"\rb\n"
    assert wire_form(message) == b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n " + b"a" * 502 + b"\r\nb\r\n"


_message = st.builds(
    lambda head, body: head + b"\r\n" + body,
    st.lists(
        st.builds(lambda name, value: name + b": " + value + b"\r\n",
                  st.sampled_from([b"Subject", b"X-A", b"To"]),
                  st.binary(max_size=300).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))),
        max_size=4,
    ).map(b"".join),
    st.lists(st.one_of(st.binary(max_size=120), st.just(b" " * 50), st.just(b"\r\n"), st.just(b"\n")),
             max_size=30).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(_message, st.lists(st.integers(min_value=1, max_value=4000), max_size=8), st.integers(min_value=20, max_value=80))
def test_streaming_in_any_chunking_equals_the_whole_and_respects_the_limit(message: bytes, cuts: list[int], limit: int) -> None:
    whole = wrap_message(message, limit)
    assert _streamed(message, [c for c in cuts if c < len(message)], limit) == whole
    for line in _lines(whole):
        assert len(line.rstrip(b"\r")) <= limit or b"\r" in line[:-1]  # a bare CR splits lines too


@pytest.mark.parametrize("after", [b"\n", b"b\r\n"])
def test_a_crlf_split_after_a_full_length_line_is_not_a_break(after: bytes) -> None:
    message = b"H: v\r\n\r\n" + b"a" * MAX_LINE + b"\r" + after
    whole = wrap_message(message)
    assert _streamed(message, [len(message) - len(after)]) == whole
    assert (whole == message) is (after == b"\n")


@pytest.mark.parametrize("length", [MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, *range(MAX_LINE + 2, 3 * MAX_LINE, 37)])
def test_a_long_line_is_found_wherever_it_ends_in_a_chunk(length: int) -> None:
    """The quick test looks at blocks of half the limit: a long line ending exactly on a block
    boundary, or just before or after it, is still broken."""
    head = b"H: v\r\n\r\n"
    wrapper = LineWrapper()
    out = wrapper.feed(head + b"x" * length + b"\r\n") + wrapper.finish()
    assert all(len(line) <= MAX_LINE for line in _lines(out))


def _reference_split(line: bytes, limit: int, in_head: bool) -> tuple[bytes, bytes]:
    if in_head:
        fold = max(line.rfind(b" ", 1, limit + 1), line.rfind(b"\t", 1, limit + 1))
        if fold > 0 and line[:fold].strip(b" \t"):
            return line[:fold] + b"\r\n", line[fold:]
    return line[:limit] + b"\r\n", b" " + line[limit:]


def _reference_wrap(message: bytes, limit: int) -> bytes:
    """Line by line, the rules of the module doc: header lines up to the first empty line are
    folded at whitespace, every other long line broken with CRLF SP; a CR before the LF (or at
    the very end) does not count toward the length."""
    out, in_head = [], True
    lines = message.split(b"\n")
    for number, line in enumerate(lines):
        ending = b"" if number == len(lines) - 1 else b"\n"
        if in_head and ending and line in (b"", b"\r"):
            in_head = False
            out.append(line + ending)
            continue
        body = line[:-1] if line.endswith(b"\r") else line
        while len(body) > limit:
            piece, body = _reference_split(body, limit, in_head)
            out.append(piece)
        out.append(body + (b"\r" if line.endswith(b"\r") else b"") + ending)
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(_message, st.integers(min_value=20, max_value=80))
def test_the_wrapper_equals_a_line_by_line_reference(message: bytes, limit: int) -> None:
    """The header's quick path (no long line: copied whole) changes nothing."""
    assert wrap_message(message, limit) == _reference_wrap(message, limit)
