"""One MIME leaf: what is known about it, and the bounded collection of its decoded bytes.

Owns: `Needs` (what the rules want from each part), `LeafPart` (a leaf's headers, names, place
in the raw message, size, sniffed kind, text, zip listing), `decoded` (header values as text:
raw 8-bit as UTF-8, RFC 2047 encoded words), `part_names` (RFC 2231 and RFC 2047 file names),
`Decoder` (Content-Transfer-Encoding, RFC 2045 §6.7 quoted-printable and §6.8 base64, fed block
by block) and `LeafSink` (keeps, within its limits, only what `Needs` asks for).
`unseen_in` names what of a part its limits hid (bounds.py).
Must not: find boundaries or read the message (mime.py does).

Memory per part: `sniff.HEAD_BYTES` of head, `MAX_TEXT_CHARS` of text (only with a body rule), and
a zip candidate in memory up to `ZIP_MEMORY_BYTES`, then on disk up to `MAX_ZIP_BYTES` (only with
an `in_zip` rule). Decoding stops as soon as no rule needs more of the part.
"""

from __future__ import annotations

import binascii
import codecs
import re
import email.errors
import email.utils
import tempfile
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message

from mailgate.screen import sniff as sniffing
from mailgate.screen.archives import MAX_DEPTH, MAX_ENTRIES, ZipListing, list_zip
from mailgate.screen.bounds import TEXT, ZIP_KINDS, ZIP_NAMES, Unseen

MAX_TEXT_CHARS = 1024 * 1024  # decoded text kept per part for body rules
ZIP_MEMORY_BYTES = 1024 * 1024
MAX_ZIP_BYTES = 32 * 1024 * 1024  # larger zips are not listed (`zip_too_big` is set)

# Python codecs that are not MIME charsets (Python's codecs docs: "Binary Transforms", "Text
# Transforms", "Python Specific Encodings"): a `charset=zlib` would inflate without a bound, and
# the others raise on bytes or on errors="replace". Such a part's text is read as Latin-1.
_NOT_CHARSETS = frozenset({
    "base64", "bz2", "hex", "quopri", "uu", "zlib", "rot-13",
    "idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape",
})
# binascii.a2b_qp reads "=" CR as a soft line break and drops everything up to the next LF; RFC
# 2045 §6.7 only knows "=" CRLF, so "=" before a bare CR stays an "=" (as lenient readers show it).
_SOFT_BREAK_WITHOUT_LF = re.compile(rb"=\r(?!\n)")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_BASE64 = bytes(byte for byte in range(256) if byte not in _BASE64_ALPHABET)


@dataclass(frozen=True, slots=True)
class Needs:
    """Which expensive facts the rules need; the walk skips what nobody asked for."""

    decode: bool = False  # sniffing (the decoded head of each part)
    size: bool = False  # the exact decoded size (else decoding stops once nothing else needs it)
    text: bool = False  # decoded text of text/* parts
    zips: bool = False  # names inside zip archives


@dataclass
class LeafPart:
    """One leaf entity. `start`/`end` delimit it in the raw message: its first header byte to the
    byte before the line break that precedes the next boundary (RFC 2046 §5.1.1)."""

    path: str  # "1.2.1": position under the root ("" is the root itself)
    headers: Message
    content_type: str
    names: list[str]
    start: int
    end: int
    in_multipart: bool  # False for the root and for the body of a message/rfc822
    size: int = 0  # decoded octets; exact only when `Needs.size` was asked for
    sniffed: sniffing.Sniffed | None = None
    text: str | None = None
    zip: ZipListing | None = None
    zip_too_big: bool = False


def decoded(value: object) -> str:
    """A header value as text: raw 8-bit bytes as UTF-8, RFC 2047 encoded words decoded."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError, email.errors.MessageError):
        # MessageError: CharsetError for an encoded word whose charset name is not ASCII.
        return text


def part_names(headers: Message) -> list[str]:
    """Content-Disposition filename and Content-Type name, decoded: RFC 2231 (charset, language,
    continuations) and the RFC 2047 encoded words some mailers put in quoted parameters."""
    names: list[str] = []
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        try:
            raw = headers.get_param(param, None, header)
            value = decoded(email.utils.collapse_rfc2231_value(raw)) if raw else ""
        except (ValueError, LookupError, TypeError, UnicodeError):
            value = ""
        value = value.strip()
        if value and value not in names:
            names.append(value)
    return names


class Decoder:
    """Content-Transfer-Encoding decoding, block by block (RFC 2045 §6), giving the same octets
    however the part is cut into blocks (an over-long line arrives in pieces), then `finish()`.

    Base64 (§6.8) never drops data: octets outside the alphabet are ignored, and an "=" ends the
    quantum in progress, after which decoding goes on, as lenient mail readers do (binascii on
    a block with "=" inside raised, and the whole block was lost: an executable behind an
    "A===" line went unsniffed). Quoted-printable (§6.7) holds back an "=" in a block's last two
    octets, so an escape or soft line break cut in two decodes as if whole.
    """

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._carry = b""  # base64: a quantum not yet complete; quoted-printable: "=", "=X"

    def feed(self, raw: bytes) -> bytes:
        if self._encoding == "base64":
            *ended, open_run = (self._carry + raw.translate(None, _NOT_BASE64)).split(b"=")
            usable = len(open_run) - len(open_run) % 4
            self._carry = open_run[usable:]
            return b"".join(map(_base64_run, ended)) + binascii.a2b_base64(open_run[:usable])
        if self._encoding == "quoted-printable":
            data = self._carry + raw
            escape = data.rfind(b"=", max(len(data) - 2, 0))
            cut = escape if escape >= 0 else len(data)
            run = cut - len(data[:cut].rstrip(b"="))
            cut -= run % 2  # a2b_qp reads "==" as "=": never cut a run of "=" between a pair
            self._carry = data[cut:]
            return binascii.a2b_qp(_SOFT_BREAK_WITHOUT_LF.sub(b"=3D\r", data[:cut]))
        return raw

    def finish(self) -> bytes:
        """What the carry still holds at the end of the part."""
        carry, self._carry = self._carry, b""
        if self._encoding == "base64":
            return _base64_run(carry)
        return binascii.a2b_qp(carry) if carry else b""


def _base64_run(run: bytes) -> bytes:
    """A run of base64 characters that an "=" ended: whole quanta, then a final 2 or 3
    characters padded as RFC 4648 §4 pads them (a single one holds no whole octet)."""
    whole = len(run) - len(run) % 4
    rest = run[whole:]
    tail = binascii.a2b_base64(rest + b"=" * (4 - len(rest))) if len(rest) >= 2 else b""
    return binascii.a2b_base64(run[:whole]) + tail


class TextDecoder:
    """Decodes a part's text in its declared charset (RFC 2046 §4.1.2), never raising.

    Latin-1 stands in when the name is not a charset Python knows (LookupError; ValueError for a
    name holding NUL) or is a Python codec that is not a charset (`_NOT_CHARSETS`), and for the
    rest of the part when the codec fails on the bytes (UTF-16 and UTF-32 raise UnicodeError on
    a missing byte-order mark even with errors="replace"): text rules still see the text.
    """

    def __init__(self, charset: str) -> None:
        try:
            codec = codecs.lookup(charset)
        except (LookupError, ValueError):
            codec = None
        if codec is None or codec.name in _NOT_CHARSETS:
            codec = codecs.lookup("latin-1")
        self._decoder = codec.incrementaldecoder(errors="replace")

    def decode(self, data: bytes, final: bool = False) -> str:
        try:
            return self._decoder.decode(data, final)
        except UnicodeError:
            self._decoder = codecs.getincrementaldecoder("latin-1")()
            return self._decoder.decode(data, final)


class LeafSink:
    """Collects what the rules need from one leaf's decoded bytes, within the module's bounds."""

    def __init__(self, part: LeafPart, needs: Needs) -> None:
        self._part = part
        self._needs = needs
        self._head = bytearray()
        self._macro: sniffing.MacroScanner | None = None
        self._text_decoder = None
        self._text: list[str] = []
        self._text_chars = 0
        self._zip = None
        if needs.text and part.content_type.startswith("text/"):
            self._text_decoder = TextDecoder(part.headers.get_content_charset() or "us-ascii")
        if needs.zips and not part.content_type.startswith("text/"):
            self._zip = tempfile.SpooledTemporaryFile(max_size=ZIP_MEMORY_BYTES)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._part.size += len(data)
        if len(self._head) < sniffing.HEAD_BYTES:
            self._head += data[: sniffing.HEAD_BYTES - len(self._head)]
            if len(self._head) >= 8 and self._macro is None and self._head.startswith(b"\xd0\xcf\x11\xe0"):
                self._macro = sniffing.MacroScanner()
        if self._macro is not None:
            self._macro.feed(data)
        if self._text_decoder is not None and self._text_chars < MAX_TEXT_CHARS:
            chunk = self._text_decoder.decode(data)[: MAX_TEXT_CHARS - self._text_chars]
            self._text.append(chunk)
            self._text_chars += len(chunk)
        if self._zip is not None:
            if len(self._head) >= 4 and not self._head.startswith(b"PK"):
                self._drop_zip()
            elif self._part.size > MAX_ZIP_BYTES:
                self._part.zip_too_big = True
                self._drop_zip()
            else:
                self._zip.write(data)

    @property
    def text_cut(self) -> bool:
        """Body rules see only the first `MAX_TEXT_CHARS` of this part's text."""
        return self._text_decoder is not None and self._text_chars >= MAX_TEXT_CHARS

    @property
    def wants_more(self) -> bool:
        """Whether any rule still needs this part's decoded bytes."""
        return (self._needs.size or len(self._head) < sniffing.HEAD_BYTES or self._zip is not None
                or (self._macro is not None and not self._macro.found)
                or (self._text_decoder is not None and self._text_chars < MAX_TEXT_CHARS))

    def _drop_zip(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def finish(self) -> None:
        part = self._part
        part.sniffed = sniffing.sniff(bytes(self._head))
        if part.sniffed is not None and part.sniffed.kind == "ole2" and self._macro and self._macro.found:
            part.sniffed = sniffing.OLE2_MACRO
        if self._text_decoder is not None and self._text_chars < MAX_TEXT_CHARS:
            # Octets of an unfinished character, only when the text was not cut at the limit
            # (then how many were pending would depend on where the part was cut into blocks).
            self._text.append(self._text_decoder.decode(b"", final=True)[: MAX_TEXT_CHARS - self._text_chars])
        if self._text_decoder is not None:
            part.text = "".join(self._text)
        if self._zip is not None:
            if part.sniffed is not None and part.sniffed.kind in ("zip", "ooxml", "odf", "jar"):
                self._zip.seek(0)
                part.zip = list_zip(self._zip)  # type: ignore[arg-type]
            self._drop_zip()


def unseen_in(part: LeafPart, sink: LeafSink) -> list[Unseen]:
    """What of this part the limits hid from the rules (bounds.py)."""
    unseen = []
    if sink.text_cut:
        unseen.append(Unseen(part.path, frozenset({TEXT}), f"text past {MAX_TEXT_CHARS} characters"))
    zip_limit = None
    if part.zip_too_big:
        zip_limit = f"zip over {MAX_ZIP_BYTES} bytes"
    elif part.zip is not None and part.zip.truncated:
        zip_limit = f"zip nested deeper than {MAX_DEPTH} or over {MAX_ENTRIES} entries"
    elif part.zip is not None and part.zip.unreadable:
        zip_limit = "zip unreadable"
    if zip_limit is not None:
        unseen.append(Unseen(part.path, frozenset({ZIP_NAMES, ZIP_KINDS}), zip_limit))
    elif part.zip is not None and part.zip.encrypted:
        unseen.append(Unseen(part.path, frozenset({ZIP_KINDS}), "encrypted zip entries"))
    return unseen
