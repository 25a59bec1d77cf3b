"""Magic-number sniffing, the OLE2 macro scanner, zip listing (bounded) and clamd reply parsing."""

from __future__ import annotations

import io
import zipfile

import pytest

from mailgate.screen import archives
from mailgate.screen.archives import list_zip
from mailgate.screen.clamd import ClamdError, parse_address, parse_reply
from mailgate.screen.sniff import ISO_MAGIC_OFFSET, MacroScanner, known_names, sniff

PE = b"MZ\x90\x00" + b"\x00" * 60


def _zip(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(("head", "kind", "category"), [
    (PE, "pe", "executable"),
    (b"\x7fELF\x02\x01\x01", "elf", "executable"),
    (b"\xcf\xfa\xed\xfe\x07\x00", "macho", "executable"),
    (b"#!/bin/sh\necho hi\n", "script", "executable"),
    (b"Rar!\x1a\x07\x01\x00", "rar", "archive"),
    (b"7z\xbc\xaf\x27\x1c\x00\x04", "7z", "archive"),
    (b"\x1f\x8b\x08\x00", "gzip", "archive"),
    (b"MSCF\x00\x00\x00\x00", "cab", "archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 8, "ole2", "document"),
    (b"%PDF-1.7\n", "pdf", "document"),
    (b"\x00" * ISO_MAGIC_OFFSET + b"CD001\x01", "iso", "archive"),
    (_zip({"a.txt": b"x"}), "zip", "archive"),
    (_zip({"[Content_Types].xml": b"<x/>", "word/document.xml": b"<x/>"}), "ooxml", "document"),
    (_zip({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\n"}), "jar", "executable"),
])
def test_known_formats(head: bytes, kind: str, category: str) -> None:
    found = sniff(head)
    assert found is not None and found.kind == kind
    assert found.matches(category) and found.matches(kind)
    assert kind in known_names() and category in known_names()


@pytest.mark.parametrize("head", [b"", b"hello world", b"<html>", b"\x89PNG\r\n\x1a\n", b"M"])
def test_unrecognised_content(head: bytes) -> None:
    assert sniff(head) is None


def test_macro_marker_found_across_chunk_boundaries() -> None:
    marker = "_VBA_PROJECT".encode("utf-16-le")
    scanner = MacroScanner()
    data = b"\xd0\xcf\x11\xe0" + b"\x00" * 5000 + marker + b"\x00" * 100
    cut = 4 + 5000 + 7  # inside the marker
    scanner.feed(data[:cut])
    assert not scanner.found
    scanner.feed(data[cut:])
    assert scanner.found
    clean = MacroScanner()
    clean.feed(b"\xd0\xcf\x11\xe0" + b"\x00" * 100)
    assert not clean.found


def test_zip_names_and_entry_kinds() -> None:
    listing = list_zip(io.BytesIO(_zip({"docs/readme.txt": b"hi", "docs/report.txt": PE})))
    assert listing.names == ["docs/readme.txt", "docs/report.txt"]
    assert listing.kinds["docs/report.txt"].kind == "pe"
    assert not listing.truncated and not listing.unreadable


def test_nested_zips_are_opened_to_the_depth_limit() -> None:
    level3 = _zip({"deepest.exe": PE})
    level2 = _zip({"l3.zip": level3})
    level1 = _zip({"l2.zip": level2, "top.txt": b"x"})
    listing = list_zip(io.BytesIO(_zip({"l1.zip": level1})))
    assert "l1.zip/l2.zip" in listing.names
    assert "l1.zip/l2.zip/l3.zip" in listing.names
    assert not any(name.endswith("deepest.exe") for name in listing.names)  # beyond MAX_DEPTH
    assert listing.truncated


def test_zip_bomb_is_not_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_NESTED_BYTES", 64 * 1024)
    # The nested zip stores 4 MiB of zeros uncompressed; the outer one deflates it to a few KiB.
    inner = _zip({"zeros.bin": b"\0" * (4 * 1024 * 1024)}, compression=zipfile.ZIP_STORED)
    listing = list_zip(io.BytesIO(_zip({"bomb.zip": inner})))
    assert listing.names == ["bomb.zip"]  # not opened: it would inflate past the budget
    assert listing.truncated


def test_entry_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_ENTRIES", 5)
    listing = list_zip(io.BytesIO(_zip({f"f{index}.txt": b"x" for index in range(20)})))
    assert len(listing.names) == 5 and listing.truncated


def test_corrupt_and_encrypted_archives_do_not_raise() -> None:
    assert list_zip(io.BytesIO(b"PK\x03\x04 this is not really a zip")).unreadable
    data = bytearray(_zip({"secret.exe": PE}, compression=zipfile.ZIP_STORED))
    # Set the "encrypted" flag (APPNOTE.TXT §4.4.4 bit 0) in the local and central headers.
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = data.find(signature)
        data[position + flag_offset] |= 1
    listing = list_zip(io.BytesIO(bytes(data)))
    assert listing.names == ["secret.exe"] and listing.encrypted


def test_clamd_replies_and_addresses() -> None:
    assert not parse_reply(b"stream: OK\0").infected
    found = parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\0")
    assert found.infected and found.signature == "Win.Test.EICAR_HDB-1"
    with pytest.raises(ClamdError):
        parse_reply(b"INSTREAM size limit exceeded. ERROR\0")
    assert parse_address("unix:/run/clamd.ctl") == ("unix", "/run/clamd.ctl", 0)
    assert parse_address("tcp:127.0.0.1:3310") == ("tcp", "127.0.0.1", 3310)
    assert parse_address("tcp:[::1]:3310") == ("tcp", "::1", 3310)
    for bad in ("clamd.sock", "tcp:host", "tcp:host:0", "unix:relative"):
        with pytest.raises(ValueError):
            parse_address(bad)
