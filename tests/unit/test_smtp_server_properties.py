"""Property tests: the server protocol gives the same events and bytes however the input is
split into receive_data calls (terminators, stuffed dots and CRLFs cut at any byte)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp import events as ev
from tests.support.smtp_driver import Driver

pytestmark = pytest.mark.timeout(120)

OPEN = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n"
LINES = [b"plain", b".", b"..", b".stuffed", b"", b"x" * 40, b"a\nb", b"c\rd", b"\r\n.", b".\r"]


def bodies() -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(LINES), max_size=12).map(lambda ls: b"".join(l + b"\r\n" for l in ls))


def session_bytes(body: bytes) -> bytes:
    bdat = b"BDAT %d LAST\r\n%s" % (len(body), body)
    return (
        OPEN + b"DATA\r\n" + body + b".\r\n"
        + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n" + bdat + b"NOOP\r\nQUIT\r\n"
    )


def run(data: bytes, cuts: list[int]) -> tuple[list[object], bytes, list[tuple[bytes, object]]]:
    driver = Driver()
    out = bytearray()
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut > start:
            out += driver.feed(data[start:cut])
            start = cut
    merged: list[object] = []
    for event in driver.events:  # BodyChunk boundaries follow the input; their bytes must not
        if isinstance(event, ev.BodyChunk) and merged and isinstance(merged[-1], ev.BodyChunk):
            merged[-1] = ev.BodyChunk(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged, bytes(out), driver.messages


@settings(max_examples=300, deadline=None)
@given(body=bodies(), data=st.data())
def test_random_splits_give_the_same_events(body: bytes, data: st.DataObject) -> None:
    wire = session_bytes(body)
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(wire) - 1), max_size=20))
    assert run(wire, cuts) == run(wire, [])


def dot_stuff(content: bytes) -> bytes:
    """What a correct client sends for `content` (RFC 5321 §4.5.2), terminator excluded."""
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in content.split(b"\r\n"))


@settings(max_examples=300, deadline=None)
@given(content=bodies(), data=st.data())
def test_data_and_bdat_agree_on_content_and_flags(content: bytes, data: st.DataObject) -> None:
    wire = (
        OPEN + b"DATA\r\n" + dot_stuff(content) + b".\r\n"
        + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n"
        + b"BDAT %d LAST\r\n%s" % (len(content), content)
    )
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(wire) - 1), max_size=20))
    _, _, messages = run(wire, cuts)
    (data_body, data_end), (bdat_body, bdat_end) = messages
    assert data_body == bdat_body == content
    bare = re.search(rb"\r(?!\n)|(?<!\r)\n", content) is not None  # independent oracle
    assert data_end == bdat_end == ev.MessageEnd(len(content), False, bare, False)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300), data=st.data())
def test_arbitrary_bytes_never_break_the_protocol(garbage: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(garbage)), max_size=10))
    events, _, _ = run(OPEN + garbage, cuts)
    assert all(not isinstance(event, ev.MessageEnd) for event in events)
