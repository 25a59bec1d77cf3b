"""Names inside zip archives, to a bounded depth, safe against zip bombs.

Owns: `list_zip(file)`, which reads a zip's central directory (names only, no decompression),
sniffs the first bytes of each entry (an .exe renamed .txt inside a zip is still caught), and
opens zips nested inside zips up to `MAX_DEPTH`, each nested one decompressed into a bounded
buffer.
Must not: parse MIME, or decompress anything without a byte limit: an entry's declared size may
lie, so every read is capped by what we allow, not by what the archive claims.

Uses the stdlib `zipfile`, which reads names from the central directory without decompressing;
other archive formats (rar, 7z, gzip'd tar) need native libraries and are only sniffed, not opened.
"""

from __future__ import annotations

import io
import lzma
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from mailgate.screen.sniff import Sniffed, sniff

MAX_DEPTH = 3  # a zip in a zip in a zip; deeper nesting is reported, not opened
MAX_ENTRIES = 2000  # per archive, across all depths; past it the listing is marked truncated
MAX_NESTED_BYTES = 16 * 1024 * 1024  # total decompressed bytes spent opening nested zips
ENTRY_SNIFF_BYTES = 64  # enough for every magic in sniff.py except ISO images


@dataclass
class ZipListing:
    """What was found: entry names (nested ones as `outer.zip/inner.exe`), kinds, and limits hit."""

    names: list[str] = field(default_factory=list)
    kinds: dict[str, Sniffed] = field(default_factory=dict)  # name -> what its content is
    encrypted: bool = False
    truncated: bool = False  # a limit (entries, depth, nested bytes) stopped the walk
    unreadable: bool = False  # the archive (or a nested one) is corrupt


@dataclass
class _Budget:
    entries: int
    nested_bytes: int


def list_zip(file: BinaryIO) -> ZipListing:
    """List a zip held in a seekable binary file; never raises on a corrupt archive."""
    listing = ZipListing()
    _walk(file, prefix="", depth=1, listing=listing, budget=_Budget(MAX_ENTRIES, MAX_NESTED_BYTES))
    return listing


def _walk(file: BinaryIO, *, prefix: str, depth: int, listing: ZipListing, budget: _Budget) -> None:
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        # NotImplementedError: an entry needs a newer "version needed to extract" (APPNOTE §4.4.3).
        listing.unreadable = True
        return
    with archive:
        for info in archive.infolist():
            if budget.entries <= 0:
                listing.truncated = True
                return
            budget.entries -= 1
            name = prefix + info.filename
            listing.names.append(name)
            if info.flag_bits & 0x1:  # APPNOTE.TXT §4.4.4 bit 0: encrypted entry
                listing.encrypted = True
                continue
            if info.filename.endswith("/"):  # a directory (ZipInfo.is_dir fails on an empty name)
                continue
            head = _read_capped(archive, info, ENTRY_SNIFF_BYTES, listing)
            kind = sniff(head) if head else None
            if kind is not None:
                listing.kinds[name] = kind
            if (kind is not None and kind.kind == "zip") or info.filename.lower().endswith(".zip"):
                _open_nested(archive, info, name, depth, listing, budget)


def _open_nested(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, depth: int,
    listing: ZipListing, budget: _Budget,
) -> None:
    if depth >= MAX_DEPTH:
        listing.truncated = True
        return
    if info.file_size > budget.nested_bytes:
        listing.truncated = True
        return
    data = _read_capped(archive, info, budget.nested_bytes + 1, listing)
    if len(data) > budget.nested_bytes:  # the header lied about the size: a bomb
        listing.truncated = True
        return
    budget.nested_bytes -= len(data)
    _walk(io.BytesIO(data), prefix=name + "/", depth=depth + 1, listing=listing, budget=budget)


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, listing: ZipListing) -> bytes:
    try:
        with archive.open(info) as entry:
            return entry.read(limit)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError,
            zlib.error, lzma.LZMAError):
        # RuntimeError: encrypted without password; NotImplementedError: unknown compression;
        # zlib.error, LZMAError: corrupt compressed data (zipfile lets them through; bz2's is OSError).
        listing.unreadable = True
        return b""
