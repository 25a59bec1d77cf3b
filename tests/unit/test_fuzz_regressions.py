"""Inputs the coverage-guided fuzzers (tests/fuzz/) found that broke an invariant, kept as fast,
socket-free unit tests: each one failed before its fix."""

from __future__ import annotations

import io

import pytest

from mailgate.screen.mime import LeafPart, Needs, walk

ALL = Needs(decode=True, size=True, text=True, zips=True)


def _text_of(charset: bytes, body: bytes) -> str | None:
    message = b"Content-Type: text/plain; charset=\"" + charset + b"\"\r\n\r\n" + body
    parts: list[LeafPart] = []
    walk(io.BytesIO(message), ALL, parts.append)
    [part] = parts
    return part.text


@pytest.mark.parametrize("charset", [
    b"a\x00b",  # codecs.lookup: ValueError "embedded null character"
    b"zlib", b"bz2", b"base64", b"hex", b"uu", b"quopri",  # bytes-to-bytes codecs
    b"rot13",  # str-to-str: TypeError on bytes
    b"idna", b"undefined",  # text codecs that refuse errors="replace" or everything
    b"utf-16", b"utf-32",  # UnicodeError on a missing byte-order mark, whatever `errors` says
])
def test_a_charset_that_is_not_a_usable_codec_reads_as_latin_1(charset: bytes) -> None:
    """screen/leaf.py: a part's charset name reached codecs unchecked; these names raised out of
    the walk (the screener then tempfailed the message, every retry, with a traceback)."""
    text = _text_of(charset, b"invoice caf\xe9\r\n")
    assert text is not None and "invoice" in text


def test_a_zlib_charset_is_not_inflated() -> None:
    """`charset=zlib` would have decompressed the body without a bound (a zip bomb in text)."""
    import zlib

    bomb = zlib.compress(b"A" * 10_000_000)
    text = _text_of(b"zlib", bomb)
    assert text is not None and len(text) <= len(bomb) + 2


EXE = b"MZ\x90\x00" + bytes(200)


@pytest.mark.parametrize("before", [b"A===\r\n", b"=\r\n", b"==\r\n=\r\n"])
def test_an_equals_sign_early_in_base64_does_not_hide_the_rest(before: bytes) -> None:
    """screen/leaf.py: a base64 block with "=" inside made binascii raise and the whole block was
    dropped, so an executable behind one "A===" line was never sniffed (a sniffed_type rule passed
    it), and what was decoded depended on how the file was read."""
    import base64

    body = before + base64.encodebytes(EXE).replace(b"\n", b"\r\n")
    message = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body
    parts: list[LeafPart] = []
    walk(io.BytesIO(message), ALL, parts.append)
    [part] = parts
    assert part.sniffed is not None and part.sniffed.kind == "pe"


def test_base64_decoding_does_not_depend_on_how_the_part_is_cut() -> None:
    from mailgate.screen.leaf import Decoder

    body = b"QQ==QUJD\r\nRA=\r\n=RUZH\r\nSA=!\r\nSUo"  # "A", "ABCD", "EFG", "H", then "IJ" unfinished
    whole = Decoder("base64").feed(body)
    decoder = Decoder("base64")
    assert b"".join(decoder.feed(body[i:i + 1]) for i in range(len(body))) == whole == b"AABCDEFGH"


@pytest.mark.parametrize("encoding,body", [
    ("quoted-printable", b"caf=E9 soft=\r\nbreak =3D=\r\n=41=4"),
    ("quoted-printable", b"=\n===x==41"),  # a2b_qp reads "==" as "=": a cut inside the pair lost it
    ("base64", b"TVqQ AAMA\r\nAAAE=\r\nQQ"),
])
def test_transfer_decoding_does_not_depend_on_where_blocks_are_cut(encoding: str, body: bytes) -> None:
    """screen/leaf.py: an "=E9" escape or "=CRLF" soft break cut between two blocks (an over-long
    line is read in pieces) decoded differently from the same text in one block, and a base64
    quantum left at the end of a part was dropped."""
    from mailgate.screen.leaf import Decoder

    whole = Decoder(encoding)
    expected = whole.feed(body) + whole.finish()
    for cut in range(len(body) + 1):
        decoder = Decoder(encoding)
        assert decoder.feed(body[:cut]) + decoder.feed(body[cut:]) + decoder.finish() == expected, cut
    assert expected in (b"caf\xe9 softbreak =A=4", b"==x=41", b"MZ\x90\x00\x03\x00\x00\x00\x04A")


@pytest.mark.parametrize("read_chunk", [1, 3, 64 * 1024])
def test_a_crlf_at_a_line_piece_boundary_stays_with_the_delimiter(
    monkeypatch: pytest.MonkeyPatch, read_chunk: int,
) -> None:
    """screen/mime.py: an over-long line is read in MAX_LINE pieces; a cut between its CR and LF
    left a piece "\\n", so the part before a delimiter ended one octet late (its CR kept), and
    where depended on the read size."""
    from mailgate.screen import mime

    monkeypatch.setattr(mime, "MAX_LINE", 8)
    monkeypatch.setattr(mime, "READ_CHUNK", read_chunk)
    message = (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\n"
               b"1234567\r\n--z--\r\n")  # "1234567\r" is one whole piece of 8
    parts: list[LeafPart] = []
    walk(io.BytesIO(message), ALL, parts.append)
    [part] = parts
    assert message[part.start:part.end] == b"\r\n1234567"


def _zip(compression: int) -> bytearray:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        archive.writestr("a.txt", b"hello world" * 100)
    return bytearray(buffer.getvalue())


@pytest.mark.parametrize("compression,offset", [("deflated", 0), ("lzma", 8)])
def test_corrupt_compressed_data_in_a_zip_is_unreadable_not_an_exception(compression: str, offset: int) -> None:
    """screen/archives.py: zipfile lets zlib.error and LZMAError through from a corrupt entry;
    they left the walk, and every delivery attempt of the message was tempfailed."""
    import zipfile

    from mailgate.screen.archives import list_zip

    data = _zip(zipfile.ZIP_DEFLATED if compression == "deflated" else zipfile.ZIP_LZMA)
    start = data.find(b"a.txt") + 5 + offset  # in the first entry's compressed data
    data[start:start + 12] = b"\xff" * 12
    listing = list_zip(io.BytesIO(bytes(data)))
    assert listing.names == ["a.txt"] and listing.unreadable


def test_a_zip_entry_with_an_empty_name_is_listed() -> None:
    """zipfile.ZipInfo.is_dir() raised IndexError on an entry whose name is empty (zipfile
    cannot write one; this is the stored layout of APPNOTE.TXT §4.3.7, §4.3.12, §4.3.16)."""
    import struct
    import zlib

    from mailgate.screen.archives import list_zip

    content = b"MZ"
    crc = zlib.crc32(content)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, 2, 2, 0, 0) + content
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, 2, 2, 0, 0, 0, 0, 0, 0, 0)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    listing = list_zip(io.BytesIO(local + central + end))
    assert listing.names == [""] and not listing.unreadable


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN a\rb\r\n", b"PROXY UNKNOWN ffff::1\r\r\n", b"PROXY UNKNOWN a\nb\r\n"])
def test_a_bare_cr_or_lf_in_a_proxy_v1_header_is_refused_however_it_arrives(header: bytes) -> None:
    """server/proxy_protocol.py: read octet by octet (as `read_proxy_header` does) such a header
    was refused, parsed whole it was accepted: UNKNOWN skipped the check."""
    from mailgate.server.proxy_protocol import ProxyError, parse

    assert isinstance(parse(header + b"EHLO x\r\n"), ProxyError)
    assert isinstance(parse(header[:-1]), ProxyError)


@pytest.mark.parametrize("path", ["<a@[IPv6:fe80::1%eth0]>", "<a@[IPv6:::1%25]>", "a@[IPv6:::1%lo]"])
def test_an_ipv6_zone_in_an_address_literal_is_refused(path: str) -> None:
    """core/address.py: ipaddress accepts "fe80::1%eth0", so `a@[IPv6:::1%lo]` was a valid
    address whose literal compares unequal to ::1 (a loop to ourselves not seen as one)."""
    from mailgate.core.address import AddressError, parse_path

    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


def test_an_encoded_word_with_a_non_ascii_charset_name_is_kept_as_it_came() -> None:
    """screen/leaf.py: email's make_header raised CharsetError (not a ValueError) for
    `=?ut\\xe9f-8?q?...?=`; with a subject or header rule the screener failed on every such
    message (451 and a traceback, at every retry)."""
    from mailgate.screen.leaf import decoded

    assert "invoice" in decoded("=?ut\udce9f-8?q?invoice?=")
    message = b"Subject: =?ut\xe9f-8?q?invoice?=\r\nContent-Type: text/plain; name==?ut\xe9f-8?q?a.exe?=\r\n\r\nx\r\n"
    parts: list[LeafPart] = []
    walk(io.BytesIO(message), ALL, parts.append)
    assert parts[0].names and "a.exe" in parts[0].names[0]


def test_a_zip_needing_a_newer_version_to_extract_is_unreadable_not_an_exception() -> None:
    """screen/archives.py: zipfile.ZipFile raises NotImplementedError for a central directory
    entry whose "version needed to extract" is over 6.3 (APPNOTE.TXT §4.4.3); the walk raised
    and the screener tempfailed the message at every retry."""
    import zipfile

    from mailgate.screen.archives import list_zip

    data = _zip(zipfile.ZIP_STORED)
    central = data.find(b"PK\x01\x02")
    data[central + 6] = 192  # version needed to extract: 19.2
    listing = list_zip(io.BytesIO(bytes(data)))
    assert listing.unreadable


def test_stripping_an_empty_last_part_keeps_the_delimiter_line_whole() -> None:
    """screen/actions.py: a message ending in "--b" (no line break) has an empty last part at
    its very end; its notice was written onto the delimiter line ("--bContent-Type: ..."), so
    the stripped message had no notice and a broken delimiter."""
    from mailgate.screen import actions

    message = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhello\r\n--b"
    parts: list[LeafPart] = []
    result = walk(io.BytesIO(message), ALL, parts.append)
    assert [p.path for p in parts] == ["1", "2"] and parts[1].start == len(message)
    removals = actions.plan_removals({"2": ((), "test")}, result.entities)
    out = bytearray()
    actions.write_stripped(lambda: io.BytesIO(message), removals, b"\r\n", out.extend)
    again: list[LeafPart] = []
    walk(io.BytesIO(bytes(out)), ALL, again.append)
    assert b"\r\n--b\r\nContent-Type: text/plain" in out
    assert again[0].text == "hello" and again[1].text is not None and again[1].text.startswith("mailgate removed")


@pytest.mark.parametrize("name", [
    b"a%1Eb.exe",  # \x1e: a line break to str.splitlines, so to email.header.Header
    b"x.exe%0D%0A--b%0D%0AContent-Type:%20text/html%0D%0A%0D%0A<script>evil</script>",  # RFC 2231 CR LF
    b"y.exe%0D%0AX-Spam-Flag:%20NO",
])
def test_a_part_name_cannot_add_lines_to_the_stripped_message(name: bytes) -> None:
    """screen/actions.py: the removed part's name (the sender's) went raw into our
    X-Mailgate-Stripped header and into the notice: \\x1e split the header (the message lost its
    structure), CR LF made the rewrite raise (the message was refused at every retry)."""
    from mailgate.screen import actions

    message = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
               b"--b\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Disposition: attachment; filename*=us-ascii''" + name + b"\r\n\r\nMZ\r\n--b--\r\n")
    parts: list[LeafPart] = []
    result = walk(io.BytesIO(message), ALL, parts.append)
    removals = actions.plan_removals({"2": (tuple(parts[1].names), "exe")}, result.entities)
    out = bytearray()
    actions.write_stripped(lambda: io.BytesIO(message), removals, b"\r\n", out.extend)
    head = bytes(out).split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert [line.split(b":")[0] for line in head if not line.startswith((b" ", b"\t"))] == [
        b"X-Mailgate-Stripped", b"Content-Type"]
    again: list[LeafPart] = []
    walk(io.BytesIO(bytes(out)), ALL, again.append)
    assert [p.content_type for p in again] == ["text/plain", "text/plain"] and again[0].text == "hi"
    assert again[1].text is not None and again[1].text.startswith("mailgate removed")


def test_quoted_printable_equals_before_a_bare_cr_hides_nothing() -> None:
    """screen/leaf.py: binascii.a2b_qp takes "=" CR as a soft line break and drops everything up
    to the next LF, so with `bare_newline = "no"` a body word behind "=\\r" was never seen by a
    body rule; where the part was cut into blocks changed the result too."""
    from mailgate.screen.leaf import Decoder

    body = b"hello =\rEICAR hidden\r\nsoft =\r\nbreak"
    whole = Decoder("quoted-printable")
    expected = whole.feed(body) + whole.finish()
    assert expected == b"hello =\rEICAR hidden\r\nsoft break"
    for cut in range(len(body) + 1):
        decoder = Decoder("quoted-printable")
        assert decoder.feed(body[:cut]) + decoder.feed(body[cut:]) + decoder.finish() == expected, cut


@pytest.mark.parametrize("read_chunk", [1, 5, 64 * 1024])
def test_text_cut_at_its_limit_does_not_depend_on_the_read_size(monkeypatch: pytest.MonkeyPatch, read_chunk: int) -> None:
    """screen/leaf.py: the final flush of the text decoder added a replacement character past
    MAX_TEXT_CHARS when a multi-octet character was pending, which depended on the read size."""
    from mailgate.screen import leaf, mime

    monkeypatch.setattr(leaf, "MAX_TEXT_CHARS", 4)
    monkeypatch.setattr(mime, "READ_CHUNK", read_chunk)
    text = _text_of(b"utf-16", b"\xff\xfe" + "hello world".encode("utf-16-le") + b"h")
    assert text == "hell"
