"""Content sniffing: what a part really is, from its first bytes, whatever its name claims.

Owns: the magic-number table (kind -> categories) and `sniff(head)`, plus the streaming
`MacroScanner` that notices a VBA project inside an OLE2 (doc/xls/ppt) file.
Must not: read files or parse MIME; it only looks at bytes it is given.

Hand-written because `python-magic` needs libmagic and its full database, while a relay only needs
the dozen executable, archive and macro-document formats that mail-borne malware actually uses;
a short table is faster and has no native dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

# ISO 9660 puts its "CD001" volume descriptor at 0x8001 (ECMA-119 §8.1), so a part's head must be
# this long to recognise a disc image; every other magic sits in the first few hundred bytes.
ISO_MAGIC_OFFSET = 0x8001
HEAD_BYTES = ISO_MAGIC_OFFSET + 5

EXECUTABLE = "executable"
ARCHIVE = "archive"
DOCUMENT = "document"
MACRO = "macro"
SCRIPT = "script"


@dataclass(frozen=True, slots=True)
class Sniffed:
    """A recognised format: its short kind name and the categories rules may name instead."""

    kind: str
    categories: frozenset[str]

    def matches(self, wanted: str) -> bool:
        """True when `wanted` (lower case) is this kind or one of its categories."""
        return wanted == self.kind or wanted in self.categories


def _of(kind: str, *categories: str) -> Sniffed:
    return Sniffed(kind, frozenset(categories))


# (offset, magic, result), checked in order; the first hit wins.
_MAGIC_TABLE: tuple[tuple[int, bytes, Sniffed], ...] = (
    (0, b"MZ", _of("pe", EXECUTABLE)),  # DOS/PE header ("MZ", Microsoft PE/COFF spec §2)
    (0, b"\x7fELF", _of("elf", EXECUTABLE)),
    (0, b"\xfe\xed\xfa\xce", _of("macho", EXECUTABLE)),
    (0, b"\xfe\xed\xfa\xcf", _of("macho", EXECUTABLE)),
    (0, b"\xce\xfa\xed\xfe", _of("macho", EXECUTABLE)),
    (0, b"\xcf\xfa\xed\xfe", _of("macho", EXECUTABLE)),
    (0, b"\xca\xfe\xba\xbe", _of("macho", EXECUTABLE)),  # universal binary (also Java class)
    (0, b"#!", _of("script", EXECUTABLE, SCRIPT)),
    (0, b"Rar!\x1a\x07", _of("rar", ARCHIVE)),
    (0, b"7z\xbc\xaf\x27\x1c", _of("7z", ARCHIVE)),
    (0, b"\x1f\x8b", _of("gzip", ARCHIVE)),
    (0, b"BZh", _of("bzip2", ARCHIVE)),
    (0, b"\xfd7zXZ\x00", _of("xz", ARCHIVE)),
    (0, b"MSCF", _of("cab", ARCHIVE)),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", _of("ole2", DOCUMENT)),  # MS-CFB §2.2 header signature
    (0, b"%PDF-", _of("pdf", DOCUMENT)),
    (0, b"{\\rtf", _of("rtf", DOCUMENT)),
    (ISO_MAGIC_OFFSET, b"CD001", _of("iso", ARCHIVE)),
)

# ZIP local file header (APPNOTE.TXT §4.3.7); the first entry's name tells the zip-based formats apart.
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_EMPTY = b"PK\x05\x06"
_ZIP_NAME_LENGTH_OFFSET = 26
_ZIP_NAME_OFFSET = 30
_ZIP_FLAVOURS: tuple[tuple[bytes, Sniffed], ...] = (
    (b"[Content_Types].xml", _of("ooxml", DOCUMENT)),  # ECMA-376 Part 2 §10.1.2.4
    (b"mimetype", _of("odf", DOCUMENT)),  # OpenDocument v1.2 Part 3 §3.3
    (b"META-INF/", _of("jar", EXECUTABLE, ARCHIVE)),
)
ZIP = _of("zip", ARCHIVE)


def _sniff_zip(head: bytes) -> Sniffed:
    if len(head) >= _ZIP_NAME_OFFSET:
        length = int.from_bytes(head[_ZIP_NAME_LENGTH_OFFSET:_ZIP_NAME_OFFSET], "little")
        first_name = head[_ZIP_NAME_OFFSET:_ZIP_NAME_OFFSET + length]
        for prefix, flavour in _ZIP_FLAVOURS:
            if first_name.startswith(prefix):
                return flavour
    return ZIP


def sniff(head: bytes) -> Sniffed | None:
    """The format `head` (a part's first decoded bytes) starts with, or None if not recognised."""
    if head.startswith(_ZIP_LOCAL_HEADER) or head.startswith(_ZIP_EMPTY):
        return _sniff_zip(head)
    for offset, magic, result in _MAGIC_TABLE:
        if head[offset:offset + len(magic)] == magic:
            return result
    return None


# MS-OVBA §2.2.1: a VBA project lives in an OLE2 storage named "_VBA_PROJECT_CUR" (Word, Excel) or
# "_VBA_PROJECT"; directory entry names are UTF-16LE (MS-CFB §2.6.1).
_VBA_MARKER = "_VBA_PROJECT".encode("utf-16-le")
OLE2_MACRO = _of("ole2_macro", DOCUMENT, MACRO)


class MacroScanner:
    """Streaming search for the VBA marker, across chunk boundaries, in constant memory."""

    def __init__(self) -> None:
        self._tail = b""
        self.found = False

    def feed(self, chunk: bytes) -> None:
        if self.found:
            return
        window = self._tail + chunk
        if _VBA_MARKER in window:
            self.found = True
            return
        self._tail = window[-(len(_VBA_MARKER) - 1):]


def known_names() -> frozenset[str]:
    """Every kind and category a rule's `sniffed_type` may name (for configuration checks)."""
    results = [entry[2] for entry in _MAGIC_TABLE] + [entry[1] for entry in _ZIP_FLAVOURS]
    results += [ZIP, OLE2_MACRO]
    names: set[str] = set()
    for result in results:
        names.add(result.kind)
        names.update(result.categories)
    return frozenset(names)
