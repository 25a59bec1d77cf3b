"""DATA and BDAT bodies: end of data, dot-unstuffing, SMTP smuggling variants, size and line
limits, BDAT framing; plus the scanner and inspector on their own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.core.reply import Reply
from mailgate.smtp import events as ev
from mailgate.smtp.client import BodyEncoder
from mailgate.smtp.data import BodyInspector, DotBodyScanner, LineEndingNormalizer
from tests.support.smtp_driver import Driver, make_settings

pytestmark = pytest.mark.timeout(30)

OPEN = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n"
FAKE_TRANSACTION = (
    b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSubject: smuggled\r\n\r\npay\r\n"
)


def send_data(body: bytes, driver: Driver | None = None) -> Driver:
    driver = driver or Driver()
    driver.feed(OPEN + b"DATA\r\n" + body)
    return driver


# --- end of data and dot-unstuffing (RFC 5321 §4.1.1.4, §4.5.2) -------------------------------


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (b".\r\n", b""),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..leading\r\n.\r\n", b".leading\r\n"),
        (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n"),
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
        (b"a.b\r\n .\r\n.\r\n", b"a.b\r\n .\r\n"),
    ],
)
def test_end_of_data_and_unstuffing(wire: bytes, body: bytes) -> None:
    driver = send_data(wire)
    [(received, end)] = driver.messages
    assert received == body
    assert end == ev.MessageEnd(len(body), oversize=False, bare_line_ending=False, long_line=False)


def test_commands_after_end_of_data_are_commands_again() -> None:
    driver = send_data(b"x\r\n.\r\nQUIT\r\n")
    assert isinstance(driver.events[-2], ev.Quit)


# --- SMTP smuggling (CVE-2023-51764 family) ----------------------------------------------------

SMUGGLING = [
    b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r", b"\n.\r", b"\r\n\x00.\r\n",
    b"\n\n.\n\n", b"\r\r\n.\r\r\n",
]


@pytest.mark.parametrize("fake_end", SMUGGLING)
def test_smuggled_end_of_data_never_starts_a_second_message(fake_end: bytes) -> None:
    driver = send_data(b"Subject: real\r\n\r\nhello" + fake_end + FAKE_TRANSACTION + b".\r\nQUIT\r\n")
    assert len(driver.messages) == 1
    body, end = driver.messages[0]
    assert b"ceo@bank.test" in body  # the fake transaction is message content
    assert len(driver.of_type(ev.MailFrom)) == 1
    assert isinstance(driver.events[-2], ev.Quit)
    if fake_end != b"\r\n\x00.\r\n":
        assert end.bare_line_ending


def test_clean_body_is_not_flagged_but_bare_lf_anywhere_is() -> None:
    assert not send_data(b"a\r\nb\r\n.\r\n").messages[0][1].bare_line_ending
    assert send_data(b"a\nb\r\n.\r\n").messages[0][1].bare_line_ending
    assert send_data(b"a\rb\r\n.\r\n").messages[0][1].bare_line_ending


# --- size and line limits ---------------------------------------------------------------------


def test_oversize_body_is_dropped_and_flagged() -> None:
    driver = Driver(make_settings(max_message_size=100))
    driver.feed(OPEN + b"DATA\r\n")
    for _ in range(10):
        driver.feed(b"y" * 48 + b"\r\n")
    driver.feed(b".\r\nNOOP\r\n")
    body, end = driver.messages[0]
    assert end.oversize and end.size == 500
    assert len(body) <= 100
    assert isinstance(driver.events[-1], ev.Noop)


@pytest.mark.parametrize(("length", "long_line"), [(998, False), (999, True)])
def test_long_text_line_is_flagged(length: int, long_line: bool) -> None:
    driver = send_data(b"x" * length + b"\r\n.\r\n")
    assert driver.messages[0][1].long_line is long_line


def test_data_body_pipelined_before_354() -> None:
    driver = Driver()
    out = driver.feed(OPEN + b"DATA\r\nhi\r\n.\r\n")
    assert out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 OK queued as Q1\r\n")


def test_refused_data_keeps_transaction_and_reads_commands() -> None:
    driver = Driver(overrides={ev.DataStart: Reply(451, "4.3.0", "Not now")})
    out = driver.feed(OPEN + b"DATA\r\nRSET\r\n")
    assert out.endswith(b"451 4.3.0 Not now\r\n250 2.0.0 Reset OK\r\n")


def test_peer_closing_inside_data_gives_closed_and_no_message() -> None:
    driver = send_data(b"partial\r\n.")
    driver.feed(b"")
    assert driver.messages == [] and isinstance(driver.events[-1], ev.Closed)


# --- BDAT (RFC 3030) ----------------------------------------------------------------------------


def test_bdat_in_several_chunks_pipelined() -> None:
    driver = Driver()
    out = driver.feed(OPEN + b"BDAT 5\r\nab\r\n.BDAT 7\r\n\r\n.\r\nxyBDAT 0 LAST\r\nQUIT\r\n")
    assert out.endswith(
        b"250 2.0.0 5 octets received\r\n250 2.0.0 7 octets received\r\n"
        b"250 2.0.0 OK queued as Q1\r\n221 2.0.0 Bye\r\n"
    )
    [(body, end)] = driver.messages
    assert body == b"ab\r\n.\r\n.\r\nxy"  # raw octets: no dot-unstuffing, "\r\n.\r\n" is content
    assert end == ev.MessageEnd(12, oversize=False, bare_line_ending=False, long_line=False)


def test_bdat_chunk_split_across_writes() -> None:
    driver = Driver()
    driver.feed(OPEN + b"BDAT 10 LAST\r\n01234")
    assert driver.feed(b"56789QUIT\r\n").endswith(b"250 2.0.0 OK queued as Q1\r\n221 2.0.0 Bye\r\n")
    assert driver.messages[0][0] == b"0123456789"


def test_bdat_bare_lf_is_flagged() -> None:
    driver = Driver()
    driver.feed(OPEN + b"BDAT 4\r\na\n.\n" + b"BDAT 1 LAST\r\n\r")
    assert driver.messages[0][1].bare_line_ending


def test_bdat_crlf_split_between_chunks_is_clean() -> None:
    driver = Driver()
    driver.feed(OPEN + b"BDAT 2\r\na\r" + b"BDAT 1 LAST\r\n\n")
    assert not driver.messages[0][1].bare_line_ending


def test_refused_bdat_still_consumes_its_octets() -> None:
    driver = Driver()
    hidden = b"MAIL FROM:<e@vil.test>\r\n"
    out = driver.feed(b"EHLO client.test\r\nBDAT %d\r\n%sNOOP\r\n" % (len(hidden), hidden))
    assert out.endswith(b"503 5.5.1 Need MAIL command first\r\n250 2.0.0 OK\r\n")
    assert not driver.of_type(ev.MailFrom)


def test_caller_refusing_a_chunk_fails_the_transaction() -> None:
    driver = Driver(overrides={ev.BdatChunkEnd: Reply(452, "4.3.1", "Insufficient storage")})
    out = driver.feed(OPEN + b"BDAT 3\r\nabcBDAT 3 LAST\r\nQUI")
    assert out.endswith(b"452 4.3.1 Insufficient storage\r\n503 5.5.1 Need MAIL command first\r\n")
    assert driver.messages == []


def test_data_after_bdat_is_a_bad_sequence() -> None:
    driver = Driver()
    out = driver.feed(OPEN + b"BDAT 3\r\nabcDATA\r\n")
    assert out.endswith(b"503 5.5.1 Bad sequence of commands\r\n")


def test_bdat_without_chunking_is_refused_but_framed() -> None:
    driver = Driver(make_settings(chunking=False))
    out = driver.feed(OPEN + b"BDAT 6 LAST\r\nRSET\r\nNOOP\r\n")
    assert out.endswith(b"502 5.5.1 Command not implemented\r\n250 2.0.0 OK\r\n")
    assert not driver.of_type(ev.Reset)


def test_bdat_oversize_is_flagged_at_each_chunk() -> None:
    driver = Driver(make_settings(max_message_size=10))
    driver.feed(OPEN + b"BDAT 8\r\n12345678BDAT 8\r\n12345678BDAT 0 LAST\r\n")
    chunk_ends = driver.of_type(ev.BdatChunkEnd)
    assert chunk_ends == [ev.BdatChunkEnd(8, False), ev.BdatChunkEnd(8, True)]
    body, end = driver.messages[0]
    assert end.oversize and end.size == 16 and body == b"12345678"


# --- the scanner and inspector on their own ---------------------------------------------------


def test_scanner_holds_back_a_possible_terminator() -> None:
    scanner = DotBodyScanner()
    assert scanner.scan(b"abc\r\n.") == (b"abc", 3, False)
    assert scanner.scan(b"\r\n.") == (b"", 0, False)
    assert scanner.scan(b"\r\n.\r\nrest") == (b"\r\n", 5, True)


def test_inspector_counts_pairs_across_chunks() -> None:
    inspector = BodyInspector(max_size=0, max_line=1000)
    for chunk in (b"a\r", b"\nb\r", b"\n"):
        inspector.inspect(chunk)
    assert not inspector.bare_line_ending and inspector.size == 6 and not inspector.oversize


def test_inspector_measures_lines_across_chunks() -> None:
    inspector = BodyInspector(max_size=0, max_line=10)
    inspector.inspect(b"12345\r\n12345")
    assert not inspector.long_line
    inspector.inspect(b"6789\r\n")
    assert inspector.long_line


# --- bare line endings under every server.bare_newline mode (issue 13 item 10) -----------------

MODES = ["normalize", "reject", "no"]


def _relayed(stored: bytes) -> bytes:
    """What a next hop reads when mailgate relays `stored` with DATA: the delivery encoder's
    bytes fed to a fresh server scanner, which must end the data exactly at the real end."""
    encoder = BodyEncoder()
    wire = encoder.encode(stored) + encoder.finish()
    body, consumed, done = DotBodyScanner().scan(wire)
    assert done and consumed == len(wire), "the next hop saw an end of data before the real one"
    return body


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fake_end", SMUGGLING, ids=repr)
def test_smuggling_gives_one_message_in_every_mode(mode: str, fake_end: bytes) -> None:
    """End of data only at CRLF.CRLF whatever the mode; what is stored, relayed onwards with
    DATA, is one message at the next hop too (its fake end is dot-stuffed or made harmless)."""
    driver = Driver(make_settings(bare_line_endings=mode))
    driver.feed(OPEN + b"DATA\r\n" + b"Subject: real\r\n\r\nhello" + fake_end + FAKE_TRANSACTION + b".\r\nQUIT\r\n")
    assert len(driver.messages) == 1
    stored, end = driver.messages[0]
    assert b"ceo@bank.test" in stored and b"QUIT" not in stored
    assert len(driver.of_type(ev.MailFrom)) == 1
    assert isinstance(driver.events[-2], ev.Quit)
    assert end.bare_line_ending is (fake_end != b"\r\n\x00.\r\n")
    if mode == "normalize":  # every line ends in CRLF; nothing bare is left
        assert stored.count(b"\r\n") == stored.count(b"\n") == stored.count(b"\r")
    else:
        assert fake_end.replace(b"\r\n.", b"\r\n") in stored  # kept as it came (unstuffed)
    assert b"ceo@bank.test" in _relayed(stored)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fake_end", SMUGGLING, ids=repr)
def test_bdat_smuggling_gives_one_message_in_every_mode(mode: str, fake_end: bytes) -> None:
    """BDAT is framed by its size: a fake end of data inside a chunk is content, and a chunk
    that claims less than what follows leaves the rest to be read as (refused) commands."""
    content = b"Subject: real\r\n\r\nhello" + fake_end + FAKE_TRANSACTION + b".\r\n"
    driver = Driver(make_settings(bare_line_endings=mode))
    driver.feed(OPEN + b"BDAT %d LAST\r\n" % len(content) + content + b"QUIT\r\n")
    [(stored, end)] = driver.messages
    assert len(driver.of_type(ev.MailFrom)) == 1 and isinstance(driver.events[-2], ev.Quit)
    assert end.bare_line_ending is (fake_end != b"\r\n\x00.\r\n")
    if mode == "normalize":
        assert stored.count(b"\r\n") == stored.count(b"\n") == stored.count(b"\r")
    else:
        assert stored == content
    assert b"ceo@bank.test" in _relayed(stored)


@pytest.mark.parametrize(
    ("pieces", "stored", "bare"),
    [
        ([b"a\nb\rc\r\nd\r\n.\r\n"], b"a\r\nb\r\nc\r\nd\r\n", True),
        ([b"a\r", b"\nb\r\n.\r\n"], b"a\r\nb\r\n", False),  # a CRLF split between reads stays one
        ([b"a\r", b"b\r\n.\r\n"], b"a\r\nb\r\n", True),  # a CR at the end of a read, then no LF
        # Dots are unstuffed only after CRLF (RFC 5321 §4.5.2): after a bare LF a dot is text.
        ([b"a\n", b".\n", b"..x\r\n.\r\n"], b"a\r\n.\r\n..x\r\n", True),
        ([b"\n\n\r\r\n.\r\n"], b"\r\n\r\n\r\n\r\n", True),
    ],
)
def test_normalize_turns_every_bare_cr_or_lf_into_crlf(pieces: list[bytes], stored: bytes, bare: bool) -> None:
    driver = Driver(make_settings(bare_line_endings="normalize"))
    driver.feed(OPEN + b"DATA\r\n")
    for piece in pieces:
        driver.feed(piece)
    [(body, end)] = driver.messages
    assert body == stored and end.bare_line_ending is bare
    assert _relayed(body) == stored


def test_normalize_joins_a_crlf_split_between_bdat_chunks() -> None:
    driver = Driver(make_settings(bare_line_endings="normalize"))
    driver.feed(OPEN + b"BDAT 4\r\nab\nc" + b"BDAT 2\r\nd\r" + b"BDAT 3 LAST\r\n\nef")
    [(body, end)] = driver.messages
    assert body == b"ab\r\ncd\r\nef" and end.bare_line_ending


def test_normalize_measures_lf_only_lines_as_lines() -> None:
    """An LF-only message of short lines is not one long line once normalized."""
    body = b"x" * 500 + b"\n"
    assert not send_data(body * 4 + b"\r\n.\r\n", Driver(make_settings(bare_line_endings="normalize"))).messages[0][1].long_line


@given(st.lists(st.binary(min_size=1, max_size=12).map(lambda b: bytes(b"ab\r\n"[x % 4] for x in b)),
                min_size=1, max_size=8))
def test_the_inspector_passes_on_exactly_what_the_normalizer_makes_of_any_chunking(chunks) -> None:
    """It skips the normalizer for chunks its own scan found clean: never for a CR at a chunk's
    end or an LF that pairs with the chunk before, whatever the cut points."""
    inspector = BodyInspector(0, 1000, normalize=True)
    normalizer = LineEndingNormalizer()
    passed = b"".join(out for out in (inspector.inspect(chunk) for chunk in chunks) if out)
    assert passed == b"".join(normalizer.normalize(chunk) for chunk in chunks)
